"""ONNX / torch.export export with onnxruntime parity at two sizes, dynamic shapes per family, clear refusals."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import crossformers
from crossformers.cli import main
from crossformers.export import ExportError, dynamic_size_rule, export_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
from test_backbones import TINY  # noqa: E402


def _model(family: str, **overrides) -> torch.nn.Module:
    """A small model with non-trivial weights (layer scales of 1e-6 would make every output equal)."""
    name, kw = TINY[family]
    model = crossformers.create_model(name, num_classes=7, **{**kw, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _matches(report) -> list:
    return [c for c in report.checks if c.expected == "match"]


def _rejects(report) -> list:
    return [c for c in report.checks if c.expected == "reject"]


def test_crossvit_dynamic_onnx_from_the_command_line(tmp_path, capsys):
    """CrossViT: dynamic batch and any H x W; parity at two sizes and at the branches' native sizes."""
    out = tmp_path / "cv.onnx"
    name, kw = TINY["crossvit"]
    code = main(["export", name, "--model-kwargs", json.dumps(dict(kw, num_classes=5)), "--dynamic",
                 "--output", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["verified"] and report["dynamic_batch"] and report["dynamic_hw"]
    sizes = {tuple(c["shape"][2:]) for c in report["checks"] if c["expected"] == "match"}
    assert {(48, 48), (32, 32)} <= sizes and len(sizes) >= 3  # two sizes plus the native ones
    assert all(c["max_abs_diff"] <= 1e-4 for c in report["checks"] if c["expected"] == "match")
    refused = [c for c in report["checks"] if c["expected"] == "reject"]
    assert refused and all(c["passed"] and c["max_abs_diff"] is None for c in refused)  # smaller than a patch


def test_fcaformer_plain_dynamic_onnx(tmp_path):
    """FcaFormer: dynamic H/W over multiples of 4 x patch above the trained grid; other sizes refused by the graph."""
    model = _model("fcaformer_plain", depth=2)
    report = export_model(model, output=tmp_path / "l0.onnx", dynamic=True)
    rule = dynamic_size_rule(model)
    assert report.verified and report.dynamic_hw and report.size_rule["period"] == list(rule.period)
    shapes = [c.shape for c in _matches(report)]
    assert len({s[2:] for s in shapes}) == 2 and {s[0] for s in shapes} == {1, 2}
    assert all(c.max_abs_diff <= 1e-4 for c in _matches(report))
    refused = _rejects(report)
    assert len(refused) == 2 and all(c.passed and c.max_abs_diff is None for c in refused)
    assert "multiples of 64" in report.summary()


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_crossformer_static_onnx_at_two_sizes(tmp_path, size):
    """CrossFormer: fixed-size graphs (fast to export), onnxruntime parity, other sizes refused."""
    model = _model("crossformer")
    report = export_model(model, output=tmp_path / "cf.onnx", img_size=size, batch_size=2)
    assert report.verified and not report.dynamic_batch and not report.dynamic_hw
    (match,) = _matches(report)
    assert match.shape == (2, 3, *size) and match.max_abs_diff <= 1e-4
    (refused,) = _rejects(report)
    assert refused.passed and "invalid dimensions" in refused.message.lower()
    import onnx

    graph = onnx.load(str(tmp_path / "cf.onnx"))
    assert [i.name for i in graph.graph.input] == ["images"]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["crossformers.valid_sizes"] == f"{size[0]}x{size[1]}"


def test_a_model_that_cannot_be_dynamic_says_so(tmp_path):
    """CrossViT with dynamic_img_size pads per size: exported at a fixed size with a dynamic batch, told clearly,
    and the other size is verified to be refused (torch.export format)."""
    model = _model("crossvit", dynamic_img_size=True)
    report = export_model(model, format="torch.export", output=tmp_path / "cv.pt2", dynamic=True)
    assert report.verified and report.dynamic_batch and not report.dynamic_hw
    assert any("cannot be exported with dynamic height/width" in n for n in report.notes)
    assert "fixed 48x48" in report.summary()
    assert [c.shape[0] for c in _matches(report)] == [2, 1]
    (refused,) = _rejects(report)
    assert refused.passed and refused.max_abs_diff is None


def test_sizes_outside_the_dynamic_set_are_refused_up_front(tmp_path):
    model = _model("fcaformer")
    with pytest.raises(ExportError, match=r"only for H, W multiples of 128, at least 256 x 256.*256 256"):
        export_model(model, output=tmp_path / "x.onnx", img_size=(224, 224), dynamic=True)
    assert not (tmp_path / "x.onnx").exists()


def test_command_line_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "x.onnx").write_text("keep me")
    assert main(["export", "crossvit_9_240", "--output", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists" in err and "--force" in err
    assert (tmp_path / "x.onnx").read_text() == "keep me"
    assert main(["export", "crossformer_tny"]) == 2
    assert "did you mean crossformer_tiny" in capsys.readouterr().err.lower()
    assert main(["export", "crossvit_9_240", "--img-size", "1", "2", "3"]) == 2


# The smallest models of each hierarchical family that still have every code path of the dynamic export: groups of 2
# (CrossFormer / ++: periods of 64, sizes from 128; ++ keeps its amplitude cooling layers) and the tiny
# hybrid FcaFormer (two Fca blocks per Fca stage, so the second reads cross tokens; sizes multiples of 128 from 256).
# They run in the default suite so CI exercises the README's `crossformers export fcaformer_l1 --dynamic`; the
# families' real group sizes are in the slow test below.
SMALL_DYNAMIC = {
    "crossformer": dict(group_size=(2, 2, 2, 2), interval=(2, 2, 1, 1), depths=(1, 2, 1, 1)),
    "crossformer_pp": dict(group_size=(2, 2, 2, 2), interval=(2, 2, 1, 1), depths=(1, 1, 2, 1)),
    "fcaformer": dict(depths=(1, 1, 2, 2)),
}


@pytest.mark.parametrize("family", sorted(SMALL_DYNAMIC))
def test_dynamic_onnx_hierarchical_small(tmp_path, family):
    """One small dynamic ONNX export per hierarchical family: verified at two sizes of its set, refused outside it."""
    model = _model(family, **SMALL_DYNAMIC[family])
    rule = dynamic_size_rule(model)
    report = export_model(model, output=tmp_path / f"{family}.onnx", dynamic=True)
    assert report.verified and report.dynamic_batch and report.dynamic_hw, report.summary()
    matched = _matches(report)
    assert len({c.shape[2:] for c in matched}) == 2 and all(rule.contains(*c.shape[2:]) for c in matched)
    assert all(c.max_abs_diff is not None and c.max_abs_diff < 1e-4 for c in matched)
    assert _rejects(report) and all(not rule.contains(*c.shape[2:]) for c in _rejects(report))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["crossformer", "crossformer_pp", "fcaformer"])
def test_dynamic_onnx_hierarchical(tmp_path, family):
    """CrossFormer (multiples of 224 from 448; ++: of 448) and hybrid FcaFormer: dynamic H/W, parity at two sizes,
    off-period and too-small sizes refused (several minutes: symbolic tracing of the grouping reshapes)."""
    model = _model(family)
    report = export_model(model, output=tmp_path / f"{family}.onnx", dynamic=True)
    assert report.verified and report.dynamic_hw, report.summary()
    assert len({c.shape[2:] for c in _matches(report)}) == 2
    assert _rejects(report) and all(c.max_abs_diff is None for c in _rejects(report))


@pytest.mark.slow
def test_torch_export_format_dynamic(tmp_path):
    model = _model("fcaformer_plain", depth=2)
    report = export_model(model, format="torch.export", output=tmp_path / "l0.pt2", dynamic=True)
    assert report.verified and report.dynamic_hw
    loaded = torch.export.load(str(tmp_path / "l0.pt2")).module()
    x = torch.randn(3, 3, 192, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=0)
