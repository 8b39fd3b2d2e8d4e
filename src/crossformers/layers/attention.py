"""Multi-head attention with an additive bias, fused or explicit: :func:`dot_product_attention` (the function has
its own name, so ``crossformers.layers.attention`` is always this module).

The fused path goes through :func:`torch.nn.functional.scaled_dot_product_attention`; the explicit path computes
``softmax(q k^T * scale + bias) v`` step by step and is used for analysis (attention maps) and for counting MACs
(``torch.utils.flop_counter`` counts nothing for the fused CPU kernel). Both give the same result within float
rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["dot_product_attention", "explicit_attention"]


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
    dropout_p: float = 0.0, training: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention computed step by step (Vaswani et al. 2017, Eq. 1).

    Args:
        q: queries (B, heads, Nq, head_dim).
        k: keys (B, heads, Nk, head_dim).
        v: values (B, heads, Nk, head_dim).
        bias: additive attention bias broadcastable to (B, heads, Nq, Nk), or None.
        dropout_p: dropout on the attention probabilities (training only).
        training: whether dropout applies.

    Returns:
        (out (B, heads, Nq, head_dim), probabilities (B, heads, Nq, Nk)).
    """
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    out = F.dropout(attn, dropout_p, training) @ v
    return out, attn


@register_notrace_function  # branches on devices, ranks and autograd state: an FX leaf
def dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
    dropout_p: float = 0.0, training: bool = False, fused: bool = True,
) -> torch.Tensor:
    """Scaled dot-product attention with an additive bias.

    Args:
        q, k, v, bias, dropout_p, training: as in :func:`explicit_attention`.
        fused: use ``F.scaled_dot_product_attention`` (default) or the explicit path.

    Inputs with more than one leading (batch) dim, e.g. (B, groups, heads, N, head_dim), are flattened to 4-D for
    the fused path: PyTorch's fast CPU kernel (flash attention) takes 4-D inputs only and would otherwise fall back
    to a much slower decomposed ("math") implementation.

    Returns:
        (B, heads, Nq, head_dim) (or q's leading dims, heads, Nq, head_dim).
    """
    if fused and bias is not None and bias.requires_grad and torch.is_grad_enabled() and q.device.type == "cpu":
        # PyTorch's fused CPU kernel has no gradient for the bias: SDPA would fall back to its decomposed path, which
        # is this explicit path plus NaN guards for fully masked rows (none here: the bias is finite)
        fused = False
    if fused:
        if bias is not None and bias.dtype != q.dtype:
            bias = bias.to(q.dtype)
        lead = q.shape[:-3]
        if len(lead) > 1:
            q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
            bias = None if bias is None else _flatten_bias(bias, lead)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p if training else 0.0)
            return out.reshape(*lead, *out.shape[-3:])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p if training else 0.0)
    return explicit_attention(q, k, v, bias, dropout_p, training)[0]


def _flatten_bias(bias: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """A bias broadcastable to (*lead, heads, Nq, Nk) as a 4-D bias for the flattened batch prod(lead).

    Leading dims of size 1 stay broadcast (no copy); a bias that varies over the leading dims is expanded (one copy of
    (prod(lead), heads, Nq, Nk), only when the groups carry different masks and the batch is larger than one).
    """
    while bias.ndim < len(lead) + 3:
        bias = bias.unsqueeze(0)
    blead = bias.shape[:-3]
    if all(d == 1 for d in blead):
        return bias.reshape(1, *bias.shape[-3:])
    return bias.expand(*lead, *bias.shape[-3:]).reshape(-1, *bias.shape[-3:])
