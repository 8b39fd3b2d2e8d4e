"""to_precision: bf16 and int8 inference against fp32 on the parity fixtures, within the stated tolerances, and the
errors for precisions a device, an installation or a model cannot run.

int8 is checked on its quantized graph in eager mode (``compile=False``: the same quantize/dequantize arithmetic
inductor lowers onto oneDNN's int8 kernels, in seconds); the compiled path is the slow test at the end.
"""
from __future__ import annotations

import copy
import shutil
import sys

import pytest
import torch
from profiling_cases import CASES, fixture_model, one_thread  # noqa: F401  (autouse fixture)
from torch import nn

from crossformers.errors import PrecisionError
from crossformers.inference import precision as precision_mod
from crossformers.inference import precision_support, to_precision
from crossformers.inference.precision import TOLERANCE, ReducedPrecision

needs_bf16 = pytest.mark.skipif(precision_support("bf16") is not None, reason="this CPU has no oneDNN bf16 support")
needs_int8 = pytest.mark.skipif(precision_support("int8") is not None, reason="int8 needs x86, torchao and a C++ "
                                                                               "compiler")


def _drift(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out - expected).abs().max() / expected.abs().max()).item()


def _assert_near_fp32(case: str, precision: str, out: torch.Tensor, expected: torch.Tensor) -> None:
    """Within the precision's stated tolerance, not equal (it really ran reduced), the same top-1."""
    drift = _drift(out, expected)
    assert 0 < drift <= TOLERANCE[precision], f"{case}: {precision} drift {drift:.2e}"
    assert torch.equal(out.argmax(-1), expected.argmax(-1))


@needs_bf16
@pytest.mark.parametrize("case", CASES)
def test_bf16_matches_fp32_on_parity_fixtures(case):
    model, x, _ = fixture_model(case)
    with torch.no_grad():
        expected, out = model(x), to_precision(model, "bf16")(x)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    _assert_near_fp32(case, "bf16", out, expected)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the fp32 model is left as it was


@needs_int8
@pytest.mark.parametrize("case", CASES)
def test_int8_dynamic_matches_fp32_on_parity_fixtures(case):
    model, x, _ = fixture_model(case)
    with torch.no_grad():
        expected = model(x)
        q = to_precision(model, "int8", compile=False)
        out = q(x)
        out_one = q(x[:1])  # the batch stays free after capture
    graph = q.modules_per_size[tuple(x.shape[1:])]
    ops = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in o for o in ops), "activations are not quantized"
    assert any("dequantize_per_channel" in o for o in ops), "weights are not quantized per channel"
    _assert_near_fp32(case, "int8", out, expected)
    # dynamic scales are per batch, so batch 1 rounds differently but stays as close to fp32
    assert out_one.shape == (1, *out.shape[1:]) and _drift(out_one, expected[:1]) <= TOLERANCE["int8"]


@needs_int8
def test_int8_keeps_activations_to_0_127_on_cpus_without_vnni(monkeypatch):
    """Without VNNI, x86 int8 products sum u8 x s8 pairs in 16 bits, which saturates for 0-255 activations
    (CrossViT's logits drifted 0.23 from fp32 on an AVX2 CPU): the quantizer then uses torchao's reduced range."""
    import crossformers

    model = crossformers.create_model("fcaformer_nano", num_classes=3, img_size=32).eval()
    ranges = {}
    for vnni in (False, True):
        monkeypatch.setattr(precision_mod, "cpu_has_vnni", lambda v=vnni: v)
        q = to_precision(model, "int8", compile=False)
        q(torch.randn(1, 1, 32, 32))
        (graph, _), = q._per_size.values()
        ranges[vnni] = {a for n in graph.graph.nodes if "choose_qparams" in str(n.target) for a in n.args
                        if isinstance(a, int) and a > 1}
    assert ranges == {False: {127}, True: {255}}


@needs_int8
def test_int8_graph_takes_the_cached_attention_biases_as_constants():
    """The int8 graph is captured after one eager call, inside frozen_caches: CrossFormer's position-bias MLP is not
    in it (fewer linear products than when the caches are off), and the result stays within int8's tolerance."""
    import crossformers
    from crossformers.inference import set_bias_cache

    torch.manual_seed(0)
    model = crossformers.create_model("crossformer_tiny", img_size=64, embed_dim=16, depths=(1, 2, 1, 1),
                                      num_heads=(1, 2, 2, 4), group_size=(4, 4, 4, 2), num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    products, outputs = {}, {}
    for cache in (False, True):
        set_bias_cache(model, cache)
        with torch.no_grad():
            q = to_precision(model, "int8", compile=False)
            outputs[cache] = q(x)
        graph = q.modules_per_size[tuple(x.shape[1:])]
        products[cache] = sum(n.op == "call_function" and "linear" in str(n.target) for n in graph.graph.nodes)
    assert products[True] < products[False]
    # the bias stays fp32 (not quantized with the MLP that computes it): no further from fp32 than before
    assert _drift(outputs[True], expected) <= max(_drift(outputs[False], expected), 1e-6) * 1.5
    assert _drift(outputs[True], expected) <= TOLERANCE["int8"]


@needs_int8
def test_int8_static_calibration_matches_fp32_and_checks_the_image_size():
    model, x, _ = fixture_model("fcaformer_tiny128")
    g = torch.Generator().manual_seed(1)
    calibration = [(x + 0.1 * torch.randn(x.shape, generator=g), torch.zeros(len(x))) for _ in range(3)]
    with torch.no_grad():
        expected = model(x)
        q = to_precision(model, "int8", calibration=calibration, compile=False)
        out = q(x)
    assert _drift(out, expected) <= TOLERANCE["int8"]
    assert torch.equal(out.argmax(-1), expected.argmax(-1))
    with pytest.raises(PrecisionError, match="calibrated on .* calibrate again at this size"):
        q(x[:, :, :64, :64])
    with pytest.raises(PrecisionError, match="no batches"):
        to_precision(model, "int8", calibration=[])


def test_fp32_is_the_model_itself_and_bad_requests_name_the_fix():
    model = nn.Sequential(nn.Linear(4, 3)).train()
    assert to_precision(model, "fp32") is model and not model.training
    with pytest.raises(PrecisionError, match="unknown precision 'fp16': use one of fp32, bf16, int8"):
        to_precision(model, "fp16")
    with pytest.raises(PrecisionError, match="calibration applies to int8 only"):
        to_precision(model, "bf16", calibration=[torch.randn(2, 4)])
    assert "use --device cpu" in precision_support("int8", "cuda")


def test_bf16_on_a_cpu_without_bf16_support_is_refused(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(PrecisionError, match="no bf16 support in oneDNN .*use --precision fp32"):
        to_precision(nn.Linear(4, 3), "bf16")


def test_int8_without_torchao_or_compiler_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e", None)  # import fails as if not installed
    with pytest.raises(PrecisionError, match="needs the torchao package: pip install"):
        to_precision(nn.Linear(4, 3), "int8")
    monkeypatch.undo()
    monkeypatch.setattr(precision_mod, "_has_cxx", lambda: False)
    if precision_support("int8") is not None and "C++" not in precision_support("int8"):
        pytest.skip("int8 unavailable here for another reason")
    with pytest.raises(PrecisionError, match="needs a C\\+\\+ compiler"):
        to_precision(nn.Linear(4, 3), "int8")


class _DataDependent(nn.Module):
    """Branches on a tensor value: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


@needs_int8
def test_int8_of_a_model_export_cannot_capture_names_the_alternative():
    q = to_precision(_DataDependent(), "int8", compile=False)
    with pytest.raises(PrecisionError, match="int8 needs a model torch.export can capture.*use precision bf16"):
        q(torch.randn(2, 1, 2, 2))


@needs_bf16
def test_bf16_wrapper_keeps_the_model_interface():
    model, x, _ = fixture_model("crossvit_ibm_tiny")
    wrapped = to_precision(model, "bf16")
    assert isinstance(wrapped, ReducedPrecision) and wrapped.source is model
    assert wrapped.num_classes == model.num_classes and wrapped.pretrained_cfg == model.pretrained_cfg
    assert all(p.dtype == torch.bfloat16 for p in wrapped.module.parameters())
    assert copy.deepcopy(wrapped)(x).dtype == torch.float32


@pytest.mark.slow
@needs_int8
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_compiled_int8_runs_onednn_int8_kernels_within_tolerance():
    from torch._inductor.utils import run_and_get_cpp_code

    torch._dynamo.reset()
    model, x, _ = fixture_model("crossvit_ibm_tiny")
    with torch.no_grad():
        expected = model(x)
    q = to_precision(model, "int8")
    out, code = run_and_get_cpp_code(q, x)
    assert "qlinear" in code  # oneDNN's quantized linear, not fp32 products on dequantized weights
    assert "AOTInductorModel" in code  # compiled ahead of time (compile_for_inference)
    assert _drift(out, expected) <= TOLERANCE["int8"]
    assert torch.equal(out.argmax(-1), expected.argmax(-1))
    torch._dynamo.reset()
