"""The attention layers: the single-query shortcut against projecting every token; which form a fused call runs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from crossformers.layers import attention as attention_module
from crossformers.layers.attention import dot_product_attention, explicit_attention, single_query_attention


def _projected(q: torch.Tensor, x: torch.Tensor, wk: nn.Linear, wv: nn.Linear, h: int) -> torch.Tensor:
    """The textbook path: keys and values of every token, then attention of the one query."""
    B, N, D = x.shape
    d = D // h
    k = wk(x).reshape(B, N, h, d).transpose(1, 2)
    v = wv(x).reshape(B, N, h, d).transpose(1, 2)
    out = dot_product_attention(q.reshape(B, 1, h, d).transpose(1, 2), k, v, fused=False)
    return out.transpose(1, 2).reshape(B, 1, D)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 17, 24, 3), (1, 50, 64, 1), (3, 5, 32, 8)])
def test_single_query_attention_equals_projecting_every_token(shape, bias):
    """Same values and the same gradients for every parameter and input (the key bias's is zero: softmax ignores a
    per-head constant, but it stays in the graph so that no parameter goes without a gradient)."""
    torch.manual_seed(0)
    B, N, D, h = shape
    wk, wv = nn.Linear(D, D, bias=bias).double(), nn.Linear(D, D, bias=bias).double()
    q = torch.randn(B, 1, D, dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, N, D, dtype=torch.float64, requires_grad=True)
    got, want = single_query_attention(q, x, wk, wv, h), _projected(q, x, wk, wv, h)
    assert got.shape == (B, 1, D)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    params = [q, x, *wk.parameters(), *wv.parameters()]
    g = torch.randn_like(got)
    grads_got = torch.autograd.grad(got, params, g)
    grads_want = torch.autograd.grad(want, params, g)
    for a, b in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    if bias:
        assert grads_got[3].abs().max() < 1e-10  # the key bias: no effect on the output


def test_single_query_attention_in_float32_is_within_rounding():
    torch.manual_seed(1)
    wk, wv = nn.Linear(192, 192), nn.Linear(192, 192)
    q, x = torch.randn(2, 1, 192), torch.randn(2, 401, 192)
    with torch.no_grad():
        got, want = single_query_attention(q, x, wk, wv, 3), _projected(q, x, wk, wv, 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls that reach PyTorch's fused kernel."""
    calls: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_groups_run_explicitly_in_eager_cpu_inference_and_match_the_kernel(monkeypatch, dtype):
    calls = _sdpa_calls(monkeypatch)
    g = torch.Generator().manual_seed(0)
    small = [torch.randn(2, 8, 3, 16, 32, generator=g, dtype=dtype) for _ in range(3)]  # (B, groups, heads, 16, d)
    bias = torch.randn(3, 16, 16, generator=g)  # fp32 bias, as the position-bias modules give it
    with torch.inference_mode():
        got = dot_product_attention(*small, bias)
        assert not calls  # 16 keys: the explicit form
        monkeypatch.setattr(attention_module, "EXPLICIT_MAX_KEYS", 0)  # the rule off: the kernel
        kernel = dot_product_attention(*small, bias)
        assert len(calls) == 1
    assert got.dtype == dtype and got.shape == small[0].shape
    assert torch.allclose(got.float(), kernel.float(), atol=1e-5 if dtype == torch.float32 else 3e-2)
    assert torch.allclose(got.float(), explicit_attention(*small, bias.to(dtype))[0].float(), atol=1e-6)


def test_large_groups_autograd_and_compilers_keep_the_kernel(monkeypatch):
    calls = _sdpa_calls(monkeypatch)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # beyond EXPLICIT_MAX_KEYS keys: the kernel
        dot_product_attention(*(torch.randn(1, 2, attention_module.EXPLICIT_MAX_KEYS + 1, 8, generator=g)
                                for _ in range(3)))
    assert len(calls) == 1
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g, requires_grad=True) for _ in range(3))
    out = dot_product_attention(q, k, v)  # training: the kernel and its backward
    assert len(calls) == 2
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    monkeypatch.setattr(attention_module, "tool_is_running", lambda: True)  # compiling, exporting, counting FLOPs
    with torch.no_grad():
        dot_product_attention(q.detach(), k.detach(), v.detach())
    assert len(calls) == 3
