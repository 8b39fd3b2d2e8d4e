"""torch.compile without graph breaks (fullgraph=True) on one small model per family, fast paths on.

The ``aot_eager`` backend traces and functionalises the whole graph like inductor does, without needing a C++
compiler, so graph breaks and untraceable code show up here quickly.
"""
from __future__ import annotations

import pytest
import torch
from profiling_cases import one_thread  # noqa: F401  (autouse fixture)

import crossformers
from crossformers.layers.linear import set_onednn_linear
from crossformers.profiling import fuse, set_channels_last

SMALL = {
    "crossformer": ("crossformer_pp_small", dict(img_size=64, embed_dim=16, depths=(1, 1, 3, 1), num_heads=(2, 2, 4, 4),
                                                 group_size=(4, 4, 4, 4), interval=(4, 2, 1, 1), num_classes=5), 64),
    "fcaformer": ("fcaformer_l1", dict(img_size=64, embed_dim=(16, 32, 48, 64), depths=(1, 1, 3, 2),
                                       num_heads=(0, 0, 2, 4), num_classes=5), 64),
    "crossvit": ("crossvit_9_240", dict(img_size=48, img_scale=(1.0, 32 / 48), patch_size=(12, 16), embed_dim=(16, 32),
                                        num_heads=(2, 2), depth=((1, 1, 0), (1, 1, 0)), mlp_ratio=(2, 2, 1),
                                        num_classes=5), 48),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family", sorted(SMALL))
def test_inference_compiles_without_graph_breaks(family):
    name, kwargs, side = SMALL[family]
    model = crossformers.create_model(name, **kwargs).eval()
    fuse(model)
    set_onednn_linear(model)
    set_channels_last(model)
    x = torch.randn(2, 3, side, side)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_training_step_compiles_without_graph_breaks():
    name, kwargs, side = SMALL["fcaformer"]
    model = crossformers.create_model(name, **kwargs).train()
    set_onednn_linear(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, side, side)
    loss = compiled(x).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
