"""ONNX / torch.export export with onnxruntime parity at two sizes, dynamic shapes per family, clear refusals."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import crossformers
from crossformers.cli import main
from crossformers.export import MIN_LOGIT_SCALE, ExportError, OnnxClassifier, dynamic_size_rule, export_model
from crossformers.export.core import _verify

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
    # the file says which sizes it serves, and the runner refuses others up front instead of a raw Reshape error
    clf = OnnxClassifier(tmp_path / "l0.onnx")
    assert clf.served_sizes == rule.describe() == "H, W multiples of 64, at least 128 x 128"
    assert clf.size_rule == {"channels": 3, "batch": None, "period": [64, 64], "minimum": [128, 128],
                             "describe": rule.describe()}
    x = torch.randn(3, 3, 128, 192)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(clf(x)), model(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ExportError, match=r"serves H, W multiples of 64, at least 128 x 128, got 130x192: resize or "
                                          r"pad the images to e.g. 192x192$"):
        clf(torch.randn(1, 3, 130, 192))
    with pytest.raises(ExportError, match="got 64x128: resize or pad the images to e.g. 128x128$"):
        clf(torch.randn(1, 3, 64, 128))
    with pytest.raises(ExportError, match="takes 3-channel images, got 1 channels"):
        clf(torch.randn(1, 1, 128, 128))


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
    assert json.loads(meta["crossformers.size_rule"]) == {"channels": 3, "batch": 2, "height": size[0],
                                                          "width": size[1]}
    clf = OnnxClassifier(tmp_path / "cf.onnx")
    with pytest.raises(ExportError, match=rf"serves {size[0]}x{size[1]} only, got 64x96: resize the images to "
                                          rf"{size[0]}x{size[1]}"):
        clf(torch.randn(2, 3, 64, 96))
    with pytest.raises(ExportError, match="exported for batch 2 only, got 1"):
        clf(torch.randn(1, 3, *size))
    assert clf(torch.randn(2, 3, *size)).shape == (2, 7)


class _Scaled:
    """A stand-in for the exported file: the model's logits times ``factor`` (plus an optional class swap)."""

    def __init__(self, model, factor=1.0, swap=False):
        self.model, self.factor, self.swap = model, factor, swap

    def __call__(self, x):
        with torch.no_grad():
            out = self.model(x) * self.factor
        return out[:, [1, 0, *range(2, out.shape[1])]] if self.swap else out


def test_verification_is_relative_to_the_logit_scale_and_compares_top1():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 6)).eval()
    with torch.no_grad():
        model[1].weight.mul_(100.0)  # logits of order 10
    ok = _verify(model, _Scaled(model, 1 + 1e-6), (4, 3, 4, 4), "match", 1e-4, seed=0)
    assert ok.passed and ok.top1_agree and ok.logit_scale > 5
    off = _verify(model, _Scaled(model, 1 + 1e-3), (4, 3, 4, 4), "match", 1e-4, seed=0)
    assert not off.passed and "exceeds atol 0.0001 x max(1, max|logit|)" in off.message
    swapped = _verify(model, _Scaled(model, swap=True), (64, 3, 4, 4), "match", 10.0, seed=0)
    assert swapped.max_abs_diff <= 10.0 * swapped.logit_scale  # within a loose --atol, yet the prediction changed:
    assert not swapped.passed and swapped.top1_agree is False and swapped.message == "the top-1 class differs"
    # tiny logits: a 0.1 % error is invisible in absolute terms, so the check does not count (a copy is checked)
    with torch.no_grad():
        model[1].weight.mul_(1e-20)
        model[1].bias.zero_()
    tiny = _verify(model, _Scaled(model, 1 + 1e-3), (4, 3, 4, 4), "match", 1e-4, seed=0)
    assert tiny.passed and tiny.logit_scale < 1e-15 and "too small to compare" in tiny.message
    probe = _verify(model, _Scaled(model, 1 + 1e-3), (4, 3, 4, 4), "match", 1e-4, seed=0, probe=True)
    assert probe.passed  # relative to max(1, scale): the caller fails probes whose logits stay tiny


def test_untrained_model_with_tiny_logits_is_verified_on_a_reinitialised_copy(tmp_path):
    """An untrained hybrid FcaFormer (layer scales 1e-6) gives logits of ~1e-17: its own check proves nothing, so a
    re-initialised copy is exported the same way and verified with order-1 logits and top-1."""
    name, kw = TINY["fcaformer"]
    model = crossformers.create_model(name, num_classes=7, **kw).eval()
    report = export_model(model, output=tmp_path / "fca.onnx", img_size=64)
    assert report.verified and (tmp_path / "fca.onnx").is_file()
    own, copies = [c for c in _matches(report) if not c.probe], [c for c in _matches(report) if c.probe]
    assert len(own) == 1 and own[0].logit_scale < 1e-10 and "too small to compare" in own[0].message
    assert len(copies) == 1 and copies[0].passed and copies[0].top1_agree
    assert copies[0].logit_scale >= MIN_LOGIT_SCALE and copies[0].max_abs_diff <= 1e-4 * max(1, copies[0].logit_scale)
    assert any("re-initialised weights" in n for n in report.notes)
    assert "[re-initialised copy]" in report.summary()
    assert len(list(tmp_path.iterdir())) == 1  # the copy's file is not left behind


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
# (CrossFormer / ++: periods of 64, sizes from 128; LDA with an interval of 2 in stage 2) and the tiny hybrid FcaFormer
# (two Fca blocks per Fca stage, so the second reads cross tokens; sizes multiples of 128 from 256). The ++ model has
# four blocks in its last stage, so its third block carries an amplitude cooling layer (CrossFormer++ puts one after
# every third block but the last of a stage); it covers every path of the plain CrossFormer model, whose case is
# therefore marked slow. They run in the default suite so CI exercises the README's `crossformers export fcaformer_l1
# --dynamic`; the families' real group sizes are in the slow test below.
SMALL_DYNAMIC = {
    "crossformer": dict(group_size=(2, 2, 2, 2), interval=(2, 2, 1, 1), depths=(1, 2, 1, 1)),
    "crossformer_pp": dict(group_size=(2, 2, 2, 2), interval=(2, 2, 1, 1), depths=(1, 2, 1, 4)),
    "fcaformer": dict(depths=(1, 1, 2, 2)),
}


@pytest.mark.parametrize("family", [pytest.param("crossformer", marks=pytest.mark.slow), "crossformer_pp", "fcaformer"])
def test_dynamic_onnx_hierarchical_small(tmp_path, family):
    """One small dynamic ONNX export per hierarchical family: verified at two sizes of its set, refused outside it."""
    model = _model(family, **SMALL_DYNAMIC[family])
    if family == "crossformer_pp":
        assert any(blk.acl is not None for stage in model.stages for blk in stage.blocks)
    rule = dynamic_size_rule(model)
    report = export_model(model, output=tmp_path / f"{family}.onnx", dynamic=True)
    assert report.verified and report.dynamic_batch and report.dynamic_hw, report.summary()
    matched = _matches(report)
    assert len({c.shape[2:] for c in matched}) == 2 and all(rule.contains(*c.shape[2:]) for c in matched)
    assert all(c.max_abs_diff is not None and c.max_abs_diff < 1e-4 for c in matched)
    assert _rejects(report) and all(not rule.contains(*c.shape[2:]) for c in _rejects(report))


class _GridOffsets(torch.nn.Module):
    """A classifier whose logits depend on H through ``repeat_interleave`` with a symbolic count (a model of a user's;
    ours build their grids with ``expand``)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[2], device=x.device).repeat_interleave(x.shape[3])
        return self.fc(x.mean((2, 3))) + rows.to(x.dtype).mean()


def test_dynamic_onnx_decomposes_repeat_interleave_only_where_the_graph_has_it(tmp_path, monkeypatch):
    """A graph with ``repeat_interleave`` of a symbolic count gets the decomposition pass before its ONNX translation
    (without it onnxruntime refuses the file: an invalid Expand) and verifies at other sizes; our models' graphs have
    no such node, so their exports skip that whole re-trace."""
    import crossformers.export.core as core

    calls = []
    original = torch.export.ExportedProgram.run_decompositions

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counted)
    report = export_model(_GridOffsets().eval(), output=tmp_path / "grid.onnx", dynamic=True, img_size=64)
    assert report.verified and report.dynamic_hw and len(_matches(report)) == 2, report.summary()
    assert any(torch.ops.aten.repeat_interleave.self_int in (a[0] or {}) for a in calls if a)
    for family in ("crossformer", "fcaformer"):  # the dynamic position bias and the offset index
        with torch.no_grad():
            ep = core._trace(_model(family), torch.randn(2, 3, 64, 64), None)
        assert not any(n.target is torch.ops.aten.repeat_interleave.self_int for n in ep.graph.nodes), family


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


def test_int8_onnx_is_quantised_verified_and_runs(tmp_path, capsys):
    """`--precision int8`: onnxruntime's dynamic quantisation of the exported graph (integer matrix products in the
    file), verified against fp32 PyTorch within the int8 tolerance, metadata kept; bf16 and int8 torch.export are
    refused with the reason, nothing written."""
    pytest.importorskip("onnxruntime")
    import onnx

    from crossformers.export.core import INT8_ATOL

    model = _model("crossformer")
    fp32 = export_model(model, output=tmp_path / "cf.onnx", img_size=64)
    report = export_model(model, output=tmp_path / "cf8.onnx", img_size=64, precision="int8")
    assert report.verified and report.precision == "int8" and report.tolerance == INT8_ATOL
    assert "int8" in report.summary().splitlines()[0]
    graph = onnx.load(str(tmp_path / "cf8.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "MatMulInteger" not in {
        n.op_type for n in onnx.load(str(tmp_path / "cf.onnx")).graph.node}
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["crossformers.precision"] == "int8" and "crossformers.size_rule" in meta
    assert report.file_mb < fp32.file_mb
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    got = torch.from_numpy(OnnxClassifier(tmp_path / "cf8.onnx")(x.numpy()))
    assert 0 < (got - ref).abs().max() <= INT8_ATOL * max(1.0, ref.abs().max().item())
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # the fp32 intermediate is gone
    for argv, message in ((["--precision", "bf16"], "precision bf16 is not exported: onnxruntime's CPU provider"),
                          (["--precision", "int8", "--format", "torch.export"], "precision int8 is exported to ONNX only")):
        assert main(["export", "crossformer_tiny", "--output", str(tmp_path / "no.onnx"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1
        assert not (tmp_path / "no.onnx").exists()
