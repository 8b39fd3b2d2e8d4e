"""Multi-head attention with an additive bias, fused or explicit.

The fused path goes through :func:`torch.nn.functional.scaled_dot_product_attention`; the explicit path computes
``softmax(q k^T * scale + bias) v`` step by step and is used for analysis (attention maps) and for counting MACs
(``torch.utils.flop_counter`` counts nothing for the fused CPU kernel). Both give the same result within float
rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention", "explicit_attention"]


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


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
    dropout_p: float = 0.0, training: bool = False, fused: bool = True,
) -> torch.Tensor:
    """Scaled dot-product attention with an additive bias.

    Args:
        q, k, v, bias, dropout_p, training: as in :func:`explicit_attention`.
        fused: use ``F.scaled_dot_product_attention`` (default) or the explicit path.

    Returns:
        (B, heads, Nq, head_dim).
    """
    if fused:
        if bias is not None and bias.dtype != q.dtype:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p if training else 0.0)
    return explicit_attention(q, k, v, bias, dropout_p, training)[0]
