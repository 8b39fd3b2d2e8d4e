"""Multi-head attention with an additive bias, fused or explicit: :func:`dot_product_attention` (the function has
its own name, so ``crossformers.layers.attention`` is always this module), the module every family's attention runs
through (:class:`ScaledDotProduct`, with the observation point :class:`AttentionProbs`) and the multi-head
self-attention shared by CrossFormer's groups and CrossViT's branches (:class:`Attention`).

The fused path goes through :func:`torch.nn.functional.scaled_dot_product_attention`; the explicit path computes
``softmax(q k^T * scale + bias) v`` step by step and is used for analysis (attention maps) and for counting MACs
(``torch.utils.flop_counter`` counts nothing for the fused CPU kernel). Both give the same result within float
rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

from .tracing import tool_is_running

__all__ = ["dot_product_attention", "explicit_attention", "single_query_attention", "AttentionProbs",
           "ScaledDotProduct", "Attention", "EXPLICIT_MAX_KEYS"]

#: Eager CPU inference over at most this many keys runs the explicit form even where the fused path is asked for
#: (0 turns the rule off). PyTorch's flash kernel has a fixed cost per call and block that the short softmax rows of
#: small groups do not repay: on CrossFormer++'s 16-token groups the explicit form took 0.44-0.54x the kernel's time,
#: on 49-token groups 0.67-0.81x (AMD EPYC Zen 3 / 4 / 5), while from about 196 keys on the kernel is level or faster
#: (docs/profiling.md, 2026-12-08). Compiled, exported, traced and autograd paths keep the kernel (compiled, the
#: fused kernel is the faster).
EXPLICIT_MAX_KEYS = 64


def _explicit_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the fused call should run explicitly here (see :data:`EXPLICIT_MAX_KEYS`)."""
    return (k.shape[-2] <= EXPLICIT_MAX_KEYS and q.device.type == "cpu"
            and not (torch.is_grad_enabled() and q.requires_grad) and not tool_is_running())


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
    dropout_p: float = 0.0, training: bool = False, observe: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention computed step by step (Vaswani et al. 2017, Eq. 1).

    Args:
        q: queries (B, heads, Nq, head_dim).
        k: keys (B, heads, Nk, head_dim).
        v: values (B, heads, Nk, head_dim).
        bias: additive attention bias broadcastable to (B, heads, Nq, Nk), or None.
        dropout_p: dropout on the attention probabilities (training only).
        training: whether dropout applies.
        observe: a module the probabilities pass through before dropout (the :class:`AttentionProbs` hook point).

    Returns:
        (out (B, heads, Nq, head_dim), probabilities (B, heads, Nq, Nk)).
    """
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    if observe is not None:
        attn = observe(attn)
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
        fused: use ``F.scaled_dot_product_attention`` (default) or the explicit path. Eager CPU inference over at
            most :data:`EXPLICIT_MAX_KEYS` keys runs the explicit path either way (faster there; same result within
            float rounding).

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
    if fused and bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)  # the kernel takes the bias in q's dtype; so does the small-group form below
    if fused and _explicit_is_faster(q, k):
        return explicit_attention(q, k, v, bias, dropout_p, training)[0]
    if fused:
        lead = q.shape[:-3]
        if len(lead) > 1:
            q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
            bias = None if bias is None else _flatten_bias(bias, lead)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p if training else 0.0)
            return out.reshape(*lead, *out.shape[-3:])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p if training else 0.0)
    return explicit_attention(q, k, v, bias, dropout_p, training)[0]


def single_query_attention(q: torch.Tensor, x: torch.Tensor, wk: nn.Linear, wv: nn.Linear,
                           num_heads: int) -> torch.Tensor:
    """Multi-head attention of one query over tokens ``x`` whose keys and values are linear maps of ``x``, with the
    key and value products folded into the query side (the same function as projecting every token, rearranged).

    For head h with query q_h (scaled by d^-1/2), keys k_n = W_k,h x_n + b_k,h and values v_n = W_v,h x_n + b_v,h:
    q_h . k_n = (W_k,h^T q_h) . x_n + q_h . b_k,h, and sum_n p_n v_n = W_v,h (sum_n p_n x_n) + b_v,h because the
    probabilities p sum to 1. So instead of 2 N D^2 multiply-adds for the N keys and values of width D, this costs
    2 D^2 + 2 N D (heads x head_dim = D): for CrossViT's cross-attention (Sec. 3.3, Eq. 8-9: the CLS token is the
    only query) about head_dim times fewer. The rearranged sums round differently from the projected ones (float
    rounding only); every parameter keeps its gradient.

    Args:
        q: the query, already projected: (B, 1, D) or (B, D).
        x: the tokens the keys and values come from (B, N, D).
        wk, wv: the key and value projections (``nn.Linear(D, D)``, bias optional).
        num_heads: heads (divides D).

    Returns:
        The attended values (B, 1, D), heads concatenated (before the output projection). No dropout on the
        probabilities: use the projected path (:func:`dot_product_attention`) when attention dropout is active.
    """
    B, N, D = x.shape
    h, d = num_heads, D // num_heads
    qh = q.reshape(B, h, d) * d ** -0.5
    u = torch.einsum("bhd,hdc->bhc", qh, wk.weight.reshape(h, d, D))  # W_k,h^T q_h: the query in token space
    logits = u @ x.transpose(1, 2)  # (B, h, N)
    if wk.bias is not None:  # the same for every token (softmax ignores it), kept so that the graph is the model's
        logits = logits + (qh * wk.bias.reshape(h, d)).sum(-1, keepdim=True)
    z = logits.softmax(dim=-1) @ x  # (B, h, D): probability-weighted tokens
    out = torch.einsum("bhc,hdc->bhd", z, wv.weight.reshape(h, d, D))
    if wv.bias is not None:
        out = out + wv.bias.reshape(h, d)
    return out.reshape(B, 1, D)


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


class AttentionProbs(nn.Identity):
    """The observation point of attention: on the explicit path the probabilities (..., heads, Nq, Nk) pass through
    this identity module, so a forward hook on it sees them (as timm's ``AttentionExtract`` hooks its models'
    attention modules). The fused path computes no probabilities and does not call it."""


class ScaledDotProduct(nn.Module):
    """softmax(q k^T / sqrt(d) + bias) v as a module (Vaswani et al. 2017, Eq. 1): the one place every family's
    attention is computed.

    Attributes:
        fused_attn: use :func:`torch.nn.functional.scaled_dot_product_attention` (default; in eager CPU inference
            calls over at most :data:`EXPLICIT_MAX_KEYS` keys are written out, which is faster there) or the explicit
            path, whose probabilities pass through ``probs`` (:class:`AttentionProbs`).
        attn_drop: dropout on the probabilities in training.

    Inputs q (..., heads, Nq, d), k and v (..., heads, Nk, d), bias broadcastable to (..., heads, Nq, Nk) or None;
    output (..., heads, Nq, d). No parameters (no state-dict keys).
    """

    def __init__(self, attn_drop: float = 0.0):
        super().__init__()
        self.attn_drop = float(attn_drop)
        self.fused_attn = True
        self.probs = AttentionProbs()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused_attn:
            return dot_product_attention(q, k, v, bias, self.attn_drop, self.training, fused=True)
        return explicit_attention(q, k, v, bias, self.attn_drop, self.training, self.probs)[0]


class Attention(nn.Module):
    """Multi-head self-attention with an optional additive bias over any leading dims (keys ``qkv``, ``proj`` as
    timm's ViT): CrossViT's branch and all-attention layers (CrossViT Sec. 3.2-3.3) and, with a dynamic position bias,
    CrossFormer's group attention (CrossFormer Sec. 3.2).

    Input (..., N, C) tokens (e.g. (B, N, C), or (B, groups, N, C)) and a bias broadcastable to
    (..., heads, N, N) or None; output (..., N, C).

    Args:
        dim, num_heads, qkv_bias, attn_drop, proj_drop: as timm's ViT attention.
        pos: a position-bias module owned by the attention (CrossFormer's DPB, key ``attn.pos``), registered first
            so that its parameters come first, as in the official code; the caller computes the bias from it.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, pos: nn.Module | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}: choose num_heads dividing dim")
        if pos is not None:
            self.pos = pos
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.sdpa = ScaledDotProduct(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.num_heads
        qkv = self.qkv(x).unflatten(-1, (3, h, x.shape[-1] // h))  # (..., N, 3, heads, d); FX-traceable
        q, k, v = qkv.unbind(-3)  # each (..., N, heads, d)
        q, k, v = q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)
        out = self.sdpa(q, k, v, None if bias is None else bias.to(q.dtype))
        return self.proj_drop(self.proj(out.transpose(-3, -2).flatten(-2)))
