"""The attention layers: the single-query shortcut against projecting every token."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from crossformers.layers.attention import dot_product_attention, single_query_attention


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
