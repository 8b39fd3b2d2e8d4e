"""compile_for_inference: inductor with frozen weights, linear layers lowered to oneDNN (packed weights) on request.

These compile for real with inductor (a C++ compiler is needed), on a small two-layer MLP so that each case takes
seconds; the generated code shows which library the products call.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from crossformers.inference.compile import compile_for_inference, onednn_weight_packing
from crossformers.layers.linear import onednn_available

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="inductor on CPU needs a C++ compiler")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_compiled_linear_layers_call_onednn_with_packed_weights_and_match_eager():
    model = _mlp()
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        expected = model(x)
    compiled = compile_for_inference(model, onednn=True)
    out, (code, *_) = run_and_get_code(compiled, x)
    assert "mkldnn._linear_pointwise" in code and "_mkl_linear" not in code
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not out.requires_grad and compiled.module is model and not model.training


@pytest.mark.skipif(not torch._C.has_mkl, reason="inductor's own fp32 lowering is MKL's packed sgemm")
def test_without_the_switch_inductor_keeps_its_mkl_lowering():
    compiled = compile_for_inference(_mlp(), onednn=False)
    _, (code, *_) = run_and_get_code(compiled, torch.randn(2, 50, 64))
    assert "_mkl_linear" in code and "mkldnn._linear_pointwise" not in code


def test_weight_packing_switch_is_scoped():
    from torch._inductor.fx_passes import mkldnn_fusion

    op = mkldnn_fusion.CpuMkldnnDeviceOp
    before = (op.pack_linear_weight, op.pack_linear)
    with onednn_weight_packing() as active:
        assert active and (op.pack_linear_weight, op.pack_linear) != before
    assert (op.pack_linear_weight, op.pack_linear) == before


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_a_model_with_packed_onednn_weights_compiles():
    """optimize_for_inference then compile_for_inference (the eager paths first, as documented): the packed-weight
    layers step aside while dynamo traces instead of breaking the graph, also under torch.inference_mode."""
    from crossformers.inference import optimize_for_inference
    from crossformers.layers import linear

    model = _mlp()
    x = torch.randn(2, 300, 64)  # above linear.MIN_MACS, so eager inference uses the packed weights
    assert x.numel() * 256 >= linear.MIN_MACS
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, onednn_linear=True)
    assert fast[0].pack_weights
    compiled = compile_for_inference(fast, onednn=True)
    with torch.inference_mode():
        out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
