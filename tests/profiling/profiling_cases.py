"""Helpers of the profiling tests: the parity fixtures as (model with official weights, input) pairs."""
from __future__ import annotations

import pytest
import torch

import crossformers
from threads import one_intra_op_thread

from parity_fixtures import load_case, loaded_case, official_state_dict  # noqa: F401  (re-exported to the profiling tests)

CASES = ["crossformer_v1_tiny64", "crossformer_pp_tiny96", "fcaformer_tiny128", "fcaformer_tiny128_maxd2",
         "crossvit_timm_tiny", "crossvit_ibm_tiny", "crossvit_ibm_dagger_tiny"]


def model_for_meta(meta: dict) -> torch.nn.Module:
    """Our model with the constructor arguments of a parity fixture (eval mode, random weights)."""
    kw = meta["reference_kwargs"]
    case = meta["case"]
    if case.startswith("crossformer"):
        return crossformers.create_model(
            "crossformer_tiny", img_size=kw["img_size"], num_classes=kw["num_classes"], embed_dim=kw["embed_dim"],
            depths=kw["depths"], num_heads=kw["num_heads"], group_size=kw["group_size"], interval=kw["crs_interval"],
            mlp_ratio=kw["mlp_ratio"], patch_size=kw["patch_size"], merge_size=kw["merge_size"], acl=kw["use_acl"],
            drop_path_rate=kw["drop_path_rate"]).eval()
    if case.startswith("fcaformer"):
        return crossformers.create_model(
            "fcaformer_l1", img_size=kw["img_size"], num_classes=kw["num_classes"], embed_dim=kw["embed_dims"],
            depths=kw["depths"], num_heads=kw["num_heads"], cab_max_d=kw["cab_max_d"]).eval()
    if isinstance(kw["img_size"], list):  # IBM CrossViT: one native size per branch
        size, scale = kw["img_size"][0], tuple(s / kw["img_size"][0] for s in kw["img_size"])
    else:
        size, scale = kw["img_size"], tuple(kw["img_scale"])
    return crossformers.create_model(
        "crossvit_9_240", img_size=size, img_scale=scale, patch_size=kw["patch_size"], num_classes=kw["num_classes"],
        embed_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"], mlp_ratio=kw["mlp_ratio"],
        multi_conv=kw.get("multi_conv", False)).eval()


def fixture_model(case: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model with the fixture's official weights in eval mode, fixture input, reference logits)."""
    _, t, model = loaded_case(case, model_for_meta)
    return model.eval(), t["input"], t["logits"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread (import this fixture into a test module to apply it there): the models are tiny, and on a
    loaded 2-core machine two OpenMP threads waiting for each other make them several times slower."""
    with one_intra_op_thread():
        yield
