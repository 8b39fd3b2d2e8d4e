"""The helper scripts' own logic (not their training runs): the ablation verdicts and the precision recorder."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_verdict_compares_the_mean_difference_with_twice_its_standard_error():
    ab = _load("seeded_ablation")
    diff, se, verdict = ab._verdict([70.0, 71.0, 72.0], [74.0, 75.0, 76.0])
    assert diff == pytest.approx(4.0) and se == pytest.approx(math.sqrt(2 / 3)) and verdict == "holds"
    assert ab._verdict([74.0, 75.0, 76.0], [70.0, 71.0, 72.0])[2] == "reversed"
    assert ab._verdict([70.0, 72.0, 74.0], [71.0, 73.0, 75.0])[2] == "within noise"  # 1 < 2 * 1.63
    assert ab._verdict([70.0], [75.0])[2] == "one seed: no noise estimate"


def test_every_ablation_configuration_is_a_model_that_builds():
    import crossformers

    ab = _load("seeded_ablation")
    for spec in ab.ABLATIONS.values():
        slugs = {ab._slug(switch) for _, switch in spec["configs"]}
        assert len(slugs) == len(spec["configs"])  # one run folder per configuration
        assert all(0 <= i < len(spec["configs"]) for pair in spec["orderings"] for i in pair)
        for _, switch in spec["configs"]:
            crossformers.create_model(spec["model"], **{**spec["arch"], **switch}, in_chans=1, num_classes=10,
                                      device="meta")


def test_precision_recorder_keeps_every_output_and_passes_it_on():
    pa = _load("precision_accuracy")
    rec = pa._Recording(torch.nn.Linear(3, 2))
    outs = [rec(torch.randn(4, 3)), rec(torch.randn(1, 3))]
    assert [o.shape for o in rec.outputs] == [(4, 2), (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(rec.outputs, outs, strict=True))


def test_precision_drift_covers_the_full_size_classifiers_and_measures_bf16():
    pd = _load("precision_drift")
    names = pd.full_size_models(["*"])
    assert "crossformer_pp_huge" in names and "fcaformer_l0" in names and "crossvit_18_dagger_408" in names
    assert not [n for n in names if n.endswith(("_nano", "_dense")) or n == "fcaformer_sh_l2"]
    from crossformers.inference import precision_support

    if precision_support("bf16") is not None:
        pytest.skip(f"bf16: {precision_support('bf16')}")
    (row,) = pd.drift("crossvit_tiny_240", ["bf16"], batch=2)
    assert row["precision"] == "bf16" and row["input"] == [3, 240, 240]
    assert 0 < row["rel_drift"] < 5e-2 and row["max_abs_fp32"] > 0.1  # order-one logits, bf16-sized drift
    assert 0 <= row["clear_agree"] <= row["clear"] <= 2
