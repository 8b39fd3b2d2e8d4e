"""CrossViT: Cross-Attention Multi-Scale Vision Transformer (Chen, Fan and Panda, ICCV 2021, arXiv:2103.14899).

Pieces, by the paper's terms:

* **Two branches (Sec. 3.2, Fig. 2)** — a *small* branch (S) on fine patches ``P_s`` (12) with a narrow embedding
  and a *large* branch (L) on coarse patches ``P_l`` (16) with a wide one. Each branch has its own patch embedding,
  class token (CLS) and absolute position embedding. More than two branches also work (fusion is cyclic).
* **Multi-scale transformer encoders (Sec. 3.2)** — ``K`` encoders; each runs ``N`` transformer blocks on the small
  branch and ``M`` on the large branch, then fuses the branches with ``L`` fusion blocks. ``depth`` is written as in
  the official code and timm: one ``(N, M, L)`` tuple per encoder, where ``L = 0`` (the released configs) means one
  fusion block.
* **Multi-scale feature fusion (Sec. 3.3, Fig. 3)**, chosen with ``fusion=``; ``f`` projects a branch to the fusion
  width and ``g`` back (LayerNorm, GELU, Linear, as in the official code):

  - ``'cross_attn'`` (d, default, the paper's method): the CLS token of each branch, projected by ``f``, is the only
    query of an attention over the *other* branch's patch tokens; ``g`` brings it back and it replaces the CLS token.
    Cost per encoder and branch O(N_other * D^2): linear in the number of tokens.
  - ``'all_attn'`` (a): every token of both branches, projected to a common width ``D_f = max(embed_dim)``, goes
    through ``L`` self-attention layers together; ``g`` brings each branch back. O((N_s + N_l)^2 * D_f): quadratic.
  - ``'class_token'`` (b): the projected CLS tokens are summed; each branch gets ``g`` of the sum as its CLS token.
    O(D_i * D_f) per branch: the cheapest; patch tokens never meet.
  - ``'pairwise'`` (c): as (b) for the CLS tokens; the projected patch maps are interpolated (bilinear) to each
    branch's grid and summed position by position, then ``g`` maps the sum back. O((N_s + N_l) * D_i * D_f).

  The official code stacks ``L > 1`` cross-attention blocks so that the second one sees only the CLS token (each
  block returns only the CLS token); here every fusion layer attends over the other branch's patch tokens again, as
  the paper describes. The released models have a single fusion block, where both agree.
* **Dagger models (Sec. 4, Table 1, "†")** — the linear patch embedding replaced by three convolutions
  (``multi_conv=True``; 7x7 stride 4, then two 3x3 convolutions).

Input sizes (``img_size`` and ``img_scale``, timm's semantics): ``img_size`` is the *model's* input size (240 for
``crossvit_*_240``) and branch ``i`` has the native size ``ceil(img_size * img_scale[i])`` (240 for the small
branch, 224 for the large one). Two modes:

* default (``dynamic_img_size=False``, the official behaviour): each branch resizes the input (bicubic,
  ``align_corners=False``) to its native size unless it is already that size. A 240x240 input reproduces timm's
  ``crossvit_*_240``; a 224x224 input reproduces the authors' ``crossvit_*_224`` (their small branch resizes 224 to
  240). Non-square inputs are resized too (the authors' code assumes square ones).
* ``dynamic_img_size=True``: each branch scales the input by ``img_scale[i]`` (so an input of ``img_size`` runs
  exactly as in the default mode when the native sizes are multiples of the patches), pads it on the right/bottom to a multiple of its patch and resamples its position
  embedding (bicubic) to the resulting grid; maps then have ``ceil(H / stride)`` rows with stride
  ``patch / img_scale``. This is the default for ``features_only`` models (dense backbones keep the geometry).

A new native size is chosen at creation (``img_size=480`` or ``(240, 320)``): position embeddings are sized for it,
and checkpoints trained at another size are resampled (bicubic) when loaded.

Checkpoints: timm's layout (``pos_embed_0``) and the authors' (``pos_embed.0``) are converted on load by
:func:`checkpoint_filter_fn`; with either, outputs equal the reference implementation within 1e-4
(tests/models/test_crossvit.py). timm registers the plain names (``crossvit_15_240``) for its own model; ours are
registered in timm as ``cf_crossvit_15_240`` and reached by the plain names through :func:`crossformers.create_model`.
"""
from __future__ import annotations

import math
import re
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import nn

from ..checkpoint import check_family, register_checkpoint_markers
from ..factory import register_name
from ..layers.attention import Attention, ScaledDotProduct, single_query_attention
from ..layers.embed import conv_output_size
from ..layers.geometry import Lattice, conv_chain
from ..layers.linear import LinearKernelMixin
from ..layers.position_bias import infer_grid, resample_pos_embed
from ._base import OfficialLayoutHint, set_fused_attn
from ._helpers import build_family_model, check_input
from .protocol import AttentionLayout, BlockInfo, SizeRule, TokenSegment

__all__ = [
    "CrossViT", "MultiScaleEncoder", "CrossAttentionFusion", "AllAttentionFusion", "ClassTokenFusion",
    "PairwiseFusion", "FUSIONS", "checkpoint_filter_fn",
]

register_checkpoint_markers("CrossViT (crossformers layout)", ("encoders.0.fusion.", "encoders.0.branches."))
register_checkpoint_markers("CrossViT (official layout)", ("pos_embed.0", "cls_token.0"))
register_checkpoint_markers("CrossViT (timm layout)", ("pos_embed_0", "cls_token_0"))


def _scaled(size: int, scale: float) -> int:
    """ceil(size * scale), robust to float rounding (240 * (224 / 240) -> 224)."""
    return max(1, math.ceil(size * scale - 1e-6))


def resized_branch_size(height: int, width: int, native_size: tuple[int, int], scale: float,
                        dynamic: bool) -> tuple[int, int]:
    """(H, W) a branch resizes a (height, width) input to: its ``native_size``, or with ``dynamic`` the input scaled by
    ``scale`` (ceil), before any padding to a multiple of its patch."""
    return (_scaled(height, scale), _scaled(width, scale)) if dynamic else tuple(native_size)


@register_notrace_function  # size-dependent: an FX leaf
def fit_branch_image(x: torch.Tensor, native_size: tuple[int, int], scale: float, patch: int,
                     dynamic: bool) -> torch.Tensor:
    """Images (B, C, H, W) as one branch sees them: resized (bicubic) to ``native_size``, or with ``dynamic`` scaled
    by ``scale`` (ceil) and zero-padded bottom/right to a multiple of ``patch``."""
    H, W = x.shape[-2:]
    size = resized_branch_size(H, W, native_size, scale, dynamic)
    if (H, W) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    if dynamic:
        pad_h, pad_w = -size[0] % patch, -size[1] % patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


# ----------------------------------------------------------------------------------------------------------------
# embedding and transformer blocks


class PatchEmbed(nn.Module):
    """Patch embedding of one branch: a p x p stride-p convolution, or the dagger 3-convolution stem.

    Dagger (``multi_conv=True``, paper "†"): 7x7 stride 4 (pad 3) to D/4 channels, ReLU, 3x3 to D/2, ReLU, 3x3 to D,
    with the last two strides multiplying to p / 4 (p = 12: strides 3 (pad 0) and 1; p = 16: 2 and 2; p = 8: 2 and 1).

    Input (B, C, H, W) -> (B, D, h, w) with (h, w) = :meth:`grid_size` (H, W).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, multi_conv: bool = False):
        super().__init__()
        self.patch_size = patch_size
        if not multi_conv:
            self.specs = [(patch_size, patch_size, 0)]
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
            return
        rest = patch_size // 4
        if patch_size % 4 or rest not in (2, 3, 4):
            raise ValueError(f"the dagger (multi_conv) patch embedding supports patch sizes 8, 12 and 16, got "
                             f"{patch_size}: use multi_conv=False for other patch sizes")
        second, third = ((3, 3, 0), (3, 1, 1)) if rest == 3 else ((3, 2, 1), (3, rest // 2, 1))
        self.specs = [(7, 4, 3), second, third]
        chans = [in_chans, embed_dim // 4, embed_dim // 2, embed_dim]
        layers: list[nn.Module] = []
        for i, (k, s, p) in enumerate(self.specs):
            if i:
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Conv2d(chans[i], chans[i + 1], kernel_size=k, stride=s, padding=p))
        self.proj = nn.Sequential(*layers)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid produced from a (height, width) image (floor for the linear embedding, as the official code)."""
        for k, s, p in self.specs:
            height, width = conv_output_size(height, k, s, p), conv_output_size(width, k, s, p)
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


#: multi-head self-attention of the branches and of the all-attention fusion (keys ``qkv``, ``proj`` as timm's ViT)
SelfAttention = Attention


class Block(nn.Module):
    """Pre-norm transformer block of a branch (ViT): x + MSA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = True, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttention(nn.Module):
    """Cross-attention of the paper (Sec. 3.3, Eq. 8-9): the first token is the only query.

    Input (B, 1 + N, C) = [CLS || patch tokens] -> (B, 1, C). Keys ``wq``, ``wk``, ``wv``, ``proj`` (official names).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}: choose num_heads dividing dim")
        self.num_heads = num_heads
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.sdpa = ScaledDotProduct(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        if self.sdpa.fused_attn and not (self.training and self.sdpa.attn_drop > 0):
            # the keys and values of all N tokens folded into the one query: 2 C^2 + 2 N C multiply-adds instead of
            # 2 N C^2 (layers.attention.single_query_attention); the explicit path below computes the paper's
            # products (attention maps, MAC counts)
            out = single_query_attention(self.wq(x[:, :1]), x, self.wk, self.wv, h)
            return self.proj_drop(self.proj(out))
        q = self.wq(x[:, :1]).reshape(B, 1, h, d).transpose(1, 2)
        k = self.wk(x).reshape(B, N, h, d).transpose(1, 2)
        v = self.wv(x).reshape(B, N, h, d).transpose(1, 2)
        out = self.sdpa(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, 1, C)))


class _PreNormAttention(nn.Module):
    """x -> residual + DropPath(attention(LN(x))) with no FFN: the fusion layers of Sec. 3.3. Subclasses choose the
    attention module and whether the residual is the CLS token only."""

    attn_cls: type[nn.Module]
    cls_residual: bool

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = self.attn_cls(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x[:, :1] if self.cls_residual else x
        return residual + self.drop_path(self.attn(self.norm1(x)))


class CrossAttentionBlock(_PreNormAttention):
    """One cross-attention fusion layer (Eq. 10): CLS + MCA(LN([CLS || patches])) -> (B, 1, C); no FFN."""

    attn_cls = CrossAttention
    cls_residual = True


class SelfAttentionLayer(_PreNormAttention):
    """One all-attention fusion layer (Eq. 5): y + MSA(LN(y)) -> (B, N, C); no FFN."""

    attn_cls = SelfAttention
    cls_residual = False


class Projection(nn.Module):
    """The paper's alignment projections f(.) and back-projections g(.): LayerNorm, GELU, Linear."""

    def __init__(self, in_dim: int, out_dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(in_dim)
        self.act = nn.GELU()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.norm(x)))


# ----------------------------------------------------------------------------------------------------------------
# the four fusion strategies of Sec. 3.3 (Fig. 3); each maps per-branch tokens [CLS || patches] to new ones


class CrossAttentionFusion(nn.Module):
    """(d) Cross-attention fusion, the paper's method (Sec. 3.3, Eq. 8-11).

    For branch i and the next branch j = (i + 1) mod n: ``cls = f_i(CLS_i)`` (width D_j), then ``L`` times
    ``cls = cls + MCA(LN([cls || patches_j]))``, and branch i's CLS token becomes ``g_i(cls)``; its patch tokens are
    unchanged. Cost per branch: projections of one token, keys/values of N_j + 1 tokens (2 (N_j + 1) D_j^2 MACs per
    layer), attention of one query (2 (N_j + 1) D_j): linear in the number of tokens.

    Keys: ``f.{i}``, ``blocks.{i}.{layer}`` (``norm1``, ``attn.wq/wk/wv/proj``), ``g.{i}``.
    """

    def __init__(self, dims, num_heads, depth: int, qkv_bias=True, proj_drop=0.0, attn_drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        n = len(dims)
        nxt = [(i + 1) % n for i in range(n)]
        self.f = nn.ModuleList([Projection(dims[i], dims[nxt[i]], norm_layer) for i in range(n)])
        self.blocks = nn.ModuleList([
            nn.Sequential(*[
                CrossAttentionBlock(dims[nxt[i]], num_heads[nxt[i]], qkv_bias, proj_drop, attn_drop, drop_path,
                                    norm_layer)
                for _ in range(max(depth, 1))
            ])
            for i in range(n)
        ])
        self.g = nn.ModuleList([Projection(dims[nxt[i]], dims[i], norm_layer) for i in range(n)])

    def forward(self, xs: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        n = len(xs)
        out = []
        for i, (f, blocks, g) in enumerate(zip(self.f, self.blocks, self.g, strict=True)):
            patches = xs[(i + 1) % n][:, 1:]
            cls = f(xs[i][:, :1])
            for blk in blocks:
                cls = blk(torch.cat((cls, patches), dim=1))
            out.append(torch.cat((g(cls), xs[i][:, 1:]), dim=1))
        return out


class AllAttentionFusion(nn.Module):
    """(a) All-attention fusion (Sec. 3.3, Eq. 5).

    Every token of every branch is projected by ``f_i`` to the common width D_f = max(embed_dim); the concatenation
    ``y`` goes through ``L`` layers ``y = y + MSA(LN(y))`` (heads of the widest branch); each branch's part is mapped
    back by ``g_i`` and replaces all its tokens. Cost per layer with T = sum of all tokens: 4 T D_f^2 (qkv, proj) +
    2 T^2 D_f (attention), plus 2 T D_i D_f for f and g: quadratic in the number of tokens.

    Keys: ``f.{i}``, ``blocks.{layer}`` (``norm1``, ``attn.qkv``, ``attn.proj``), ``g.{i}``.
    """

    def __init__(self, dims, num_heads, depth: int, qkv_bias=True, proj_drop=0.0, attn_drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        width = max(dims)
        heads = num_heads[list(dims).index(width)]
        self.f = nn.ModuleList([Projection(d, width, norm_layer) for d in dims])
        self.blocks = nn.Sequential(*[
            SelfAttentionLayer(width, heads, qkv_bias, proj_drop, attn_drop, drop_path, norm_layer)
            for _ in range(max(depth, 1))
        ])
        self.g = nn.ModuleList([Projection(width, d, norm_layer) for d in dims])

    def forward(self, xs: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        lengths = [x.shape[1] for x in xs]
        y = self.blocks(torch.cat([f(x) for f, x in zip(self.f, xs, strict=True)], dim=1))
        return [g(part) for g, part in zip(self.g, y.split(lengths, dim=1), strict=True)]


class ClassTokenFusion(nn.Module):
    """(b) Class-token fusion (Sec. 3.3, Eq. 6): every branch's CLS token becomes ``g_i(sum_j f_j(CLS_j))``.

    Patch tokens are unchanged. Cost: 2 D_i D_f MACs per branch (one token each way), no attention; the fusion
    depth L must be 0 or 1 (there are no layers to stack). Keys: ``f.{i}``, ``g.{i}``.
    """

    name = "class_token"

    def __init__(self, dims, num_heads, depth: int, norm_layer=nn.LayerNorm, **_):
        super().__init__()
        if depth > 1:
            raise ValueError(f"fusion='{self.name}' has no stacked layers: the fusion depth (last entry of each depth "
                             f"tuple) must be 0 or 1, got {depth}")
        width = max(dims)
        self.f = nn.ModuleList([Projection(d, width, norm_layer) for d in dims])
        self.g = nn.ModuleList([Projection(width, d, norm_layer) for d in dims])

    def fused_cls(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([f(x[:, :1]) for f, x in zip(self.f, xs, strict=True)]).sum(0)

    def forward(self, xs: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        cls = self.fused_cls(xs)
        return [torch.cat((g(cls), x[:, 1:]), dim=1) for g, x in zip(self.g, xs, strict=True)]


class PairwiseFusion(ClassTokenFusion):
    """(c) Pairwise fusion (Sec. 3.3, Eq. 7): CLS tokens as in (b); patch tokens position by position.

    Each branch's patch tokens are projected by ``f_j`` to D_f, laid out as their (h_j, w_j) map and interpolated
    (bilinear, ``align_corners=False``) to branch i's grid; the sum over branches is mapped back by ``g_i`` and
    replaces branch i's patch tokens. Cost: 2 (N_s + N_l) D_i D_f MACs (f and g on every token), no attention.
    Keys: ``f.{i}``, ``g.{i}``.
    """

    name = "pairwise"

    def forward(self, xs: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        B = xs[0].shape[0]
        cls = self.fused_cls(xs)
        projected = [f(x[:, 1:]) for f, x in zip(self.f, xs, strict=True)]
        maps = [t.transpose(1, 2).reshape(B, t.shape[-1], *grid) for t, grid in zip(projected, grids, strict=True)]
        out = []
        for g, grid in zip(self.g, grids, strict=True):
            fused = sum(m if tuple(m.shape[-2:]) == tuple(grid) else
                        F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps)
            out.append(g(torch.cat((cls, fused.flatten(2).transpose(1, 2)), dim=1)))
        return out


FUSIONS: dict[str, type[nn.Module]] = {
    "cross_attn": CrossAttentionFusion, "all_attn": AllAttentionFusion, "class_token": ClassTokenFusion,
    "pairwise": PairwiseFusion,
}


class MultiScaleEncoder(nn.Module):
    """One of the K multi-scale transformer encoders (Sec. 3.2, Fig. 2): per-branch transformer blocks (N on the
    small branch, M on the large one), then the fusion of Sec. 3.3.

    Args:
        dims, num_heads, mlp_ratio: per branch.
        depth: (blocks of branch 0, ..., blocks of branch n-1, fusion layers L); L = 0 means one fusion layer.
        fusion: a key of :data:`FUSIONS`.
        drop_path: stochastic depth per position, ``max(branch depths) + L`` values (the last for the fusion).
    """

    def __init__(self, dims, num_heads, mlp_ratio, depth, fusion: str = "cross_attn", qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: list[float] | None = None,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        n = len(dims)
        drop_path = drop_path or [0.0] * (max(depth[:n]) + depth[-1] or 1)
        self.branches = nn.ModuleList([
            nn.Sequential(*[
                Block(dims[b], num_heads[b], mlp_ratio[b], qkv_bias, proj_drop, attn_drop, drop_path[i], norm_layer)
                for i in range(depth[b])
            ])
            for b in range(n)
        ])
        self.fusion = FUSIONS[fusion](dims, num_heads, depth[-1], qkv_bias=qkv_bias, proj_drop=proj_drop,
                                      attn_drop=attn_drop, drop_path=drop_path[-1], norm_layer=norm_layer)
        self.grad_checkpointing = False

    def forward(self, xs: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Tokens per branch, each (B, 1 + h_b * w_b, D_b), and the branch grids -> the same shapes."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            ckpt = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
            out = []
            for blocks, x in zip(self.branches, xs, strict=True):
                for blk in blocks:
                    x = ckpt(blk, x)
                out.append(x)
            return ckpt(self.fusion, out, grids)
        return self.fusion([blocks(x) for blocks, x in zip(self.branches, xs, strict=True)], grids)


# ----------------------------------------------------------------------------------------------------------------
# the model


class CrossViT(OfficialLayoutHint, LinearKernelMixin, nn.Module):
    """CrossViT (paper Fig. 2): branch embeddings, K multi-scale encoders, per-branch LayerNorm and classifier; the
    logits are the mean of the branches' logits.

    Args:
        img_size: the model's input size (int or (H, W)); branch i is native at ``ceil(img_size * img_scale[i])``.
        img_scale: scale of each branch's native size relative to ``img_size`` (timm's argument).
        patch_size: patch size per branch (P_s, P_l).
        in_chans, num_classes: as usual (0 classes = no classifier; the output is the concatenated pooled tokens).
        embed_dim, num_heads: per branch.
        depth: one (N, M, L) tuple per encoder (K = len(depth)); L = 0 is one fusion layer, as in the official code.
        mlp_ratio: FFN ratio per branch (extra entries, such as the official third value, are ignored).
        multi_conv: dagger 3-convolution patch embedding.
        fusion: 'cross_attn' (default), 'all_attn', 'class_token' or 'pairwise' (see the module docs).
        dynamic_img_size: scale the input per branch instead of resizing it to the native size (see module docs).
        qkv_bias: bias in the query/key/value projections.
        drop_rate: dropout before the classifiers; pos_drop_rate after adding position embeddings;
            proj_drop_rate, attn_drop_rate inside blocks; drop_path_rate: stochastic depth, linear over encoders.
        global_pool: 'token' (CLS, official) or 'avg' (mean of patch tokens) per branch.
        norm_eps: LayerNorm epsilon (1e-6 in the released models).

    Input (B, in_chans, H, W), H and W >= max(patch_size) -> logits (B, num_classes).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 240,
        img_scale: tuple[float, ...] = (1.0, 224 / 240),
        patch_size: tuple[int, ...] = (12, 16),
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: tuple[int, ...] = (192, 384),
        depth: tuple[tuple[int, ...], ...] = ((1, 5, 0), (1, 5, 0), (1, 5, 0)),
        num_heads: tuple[int, ...] = (6, 6),
        mlp_ratio: float | tuple[float, ...] = (3.0, 3.0, 1.0),
        multi_conv: bool = False,
        fusion: str = "cross_attn",
        dynamic_img_size: bool = False,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        n = len(patch_size)
        if n < 2 or len(embed_dim) != n or len(num_heads) != n:
            raise ValueError(f"CrossViT needs >= 2 branches with one patch_size, embed_dim and num_heads each, got "
                             f"{len(patch_size)}, {len(embed_dim)} and {len(num_heads)} values")
        img_scale = tuple(float(s) for s in (img_scale if isinstance(img_scale, (tuple, list)) else [img_scale] * n))
        if len(img_scale) != n:
            raise ValueError(f"img_scale needs one value per branch ({n}), got {len(img_scale)}")
        mlp_ratio = tuple(mlp_ratio) if isinstance(mlp_ratio, (tuple, list)) else (mlp_ratio,) * n
        if len(mlp_ratio) < n:
            raise ValueError(f"mlp_ratio needs one value per branch ({n}), got {len(mlp_ratio)}")
        depth = [tuple(int(d) for d in cfg) for cfg in depth]
        if not depth or any(len(cfg) != n + 1 for cfg in depth):
            raise ValueError(f"depth needs one (blocks per branch..., fusion layers) tuple of {n + 1} values per "
                             f"encoder, got {depth}")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion '{fusion}': choose one of {', '.join(FUSIONS)}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got '{global_pool}'")

        self.num_branches = n
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.fusion = fusion
        self.dynamic_img_size = dynamic_img_size
        self.img_size = to_2tuple(img_size)
        self.img_scale = img_scale
        self.patch_size = tuple(int(p) for p in patch_size)
        self.embed_dim = tuple(int(d) for d in embed_dim)
        self.num_features = self.head_hidden_size = sum(self.embed_dim)
        self.min_input_size = max(self.patch_size)
        self.branch_img_size = [(_scaled(self.img_size[0], s), _scaled(self.img_size[1], s)) for s in img_scale]
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.patch_embed = nn.ModuleList([
            PatchEmbed(p, in_chans, d, multi_conv) for p, d in zip(self.patch_size, self.embed_dim, strict=True)
        ])
        self.grid_size = [pe.grid_size(*size) for pe, size in zip(self.patch_embed, self.branch_img_size, strict=True)]
        if any(h < 1 or w < 1 for h, w in self.grid_size):
            raise ValueError(f"img_size {self.img_size} leaves no patch in some branch (native sizes "
                             f"{self.branch_img_size}, patches {self.patch_size}): use a larger img_size")
        self.cls_token = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, d)) for d in self.embed_dim])
        self.pos_embed = nn.ParameterList([
            nn.Parameter(torch.zeros(1, 1 + h * w, d)) for (h, w), d in zip(self.grid_size, self.embed_dim, strict=True)
        ])
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # stochastic depth as the official code: max(branch depths) + L rates per encoder, the last one for fusion
        lengths = [max(cfg[:-1]) + cfg[-1] for cfg in depth]
        dpr = torch.linspace(0, drop_path_rate, sum(lengths), device="cpu").tolist()
        starts = [sum(lengths[:k]) for k in range(len(depth))]
        self.encoders = nn.ModuleList([
            MultiScaleEncoder(self.embed_dim, num_heads, mlp_ratio, cfg, fusion, qkv_bias, proj_drop_rate,
                              attn_drop_rate, dpr[s:s + length] or [0.0], norm_layer)
            for cfg, s, length in zip(depth, starts, lengths, strict=True)
        ])
        self.norm = nn.ModuleList([norm_layer(d) for d in self.embed_dim])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.ModuleList([
            nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity() for d in self.embed_dim
        ])

        # features: patch tokens of branch b after encoder k, branch-major (index b * K + k), as timm's CrossVit
        # fixed at creation so that indices keep their meaning after prune_intermediate_layers drops encoders
        self.num_feature_blocks = K = len(depth)
        self.feature_info = [
            dict(num_chs=d, reduction=self._reduction(p, s), module=f"encoders.{k}")
            for d, p, s in zip(self.embed_dim, self.patch_size, img_scale, strict=True) for k in range(K)
        ]

        for p in (*self.cls_token, *self.pos_embed):
            trunc_normal_(p, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _reduction(patch: int, scale: float) -> int | float:
        r = patch / scale
        return round(r) if abs(r - round(r)) < 1e-6 else r

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm API ------------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Class tokens and position embeddings of every branch."""
        return {f"{name}.{i}" for name in ("cls_token", "pos_embed") for i in range(self.num_branches)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^encoders\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block and each fusion in the backward pass to save memory."""
        for enc in self.encoders:
            enc.grad_checkpointing = enable

    def set_fused_attn(self, enable: bool = True) -> None:
        """Fused SDPA (default) or explicit softmax attention (for attention maps and MAC counting) everywhere."""
        set_fused_attn(self, enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.ModuleList:
        """The per-branch classifiers."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifiers for ``num_classes`` on every branch (0 = none: the model returns the concatenated
        pooled features, (B, num_features))."""
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg', got '{global_pool}'")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.cls_token[0]
        self.head = nn.ModuleList([
            nn.Linear(d, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else nn.Identity()
            for d in self.embed_dim
        ]).train(self.training)

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A timm or official checkpoint's state dict in our layout (:func:`checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(dict(state_dict), self)

    # ---- the family protocol (crossformers.models.protocol) -----------------------------------------------------
    family = "crossvit"
    prefers_channels_last = False  # one patch convolution per branch: nothing to gain
    #: the model whose linear-path calibration stands for the family (crossformers.layers.linear_calibration)
    linear_calibration_model = "crossvit_9_240"
    #: the family's large variant the calibration also times (CrossViT-18, 9.0 GMACs)
    linear_calibration_large_model = "crossvit_18_240"

    def block_infos(self) -> list[BlockInfo]:
        """Per encoder: each branch's transformer blocks, then the fusion (its attention layers, or the fusion
        module itself when it has none) (CrossViT Fig. 2-3)."""
        out: list[BlockInfo] = []

        def add(**kw) -> None:
            label = f"e{kw['stage']}.{kw['name'].split('.', 2)[-1]}"
            out.append(BlockInfo(index=len(out), family=self.family, label=label, **kw))

        for k, enc in enumerate(self.encoders):
            for b, branch in enumerate(enc.branches):
                for j, blk in enumerate(branch):
                    add(name=f"encoders.{k}.branches.{b}.{j}", module=blk, kind="self", stage=k, branch=b,
                        attention=blk.attn.sdpa, position=j)
            fusion = enc.fusion
            if isinstance(fusion, CrossAttentionFusion):
                for i, layers in enumerate(fusion.blocks):
                    for m, blk in enumerate(layers):
                        add(name=f"encoders.{k}.fusion.blocks.{i}.{m}", module=blk, kind="cross", stage=k, branch=i,
                            attention=blk.attn.sdpa, position=m)
            elif isinstance(fusion, AllAttentionFusion):
                for m, blk in enumerate(fusion.blocks):
                    add(name=f"encoders.{k}.fusion.blocks.{m}", module=blk, kind="all", stage=k,
                        attention=blk.attn.sdpa, position=m)
            else:
                add(name=f"encoders.{k}.fusion", module=fusion, kind="fusion", stage=k)
        return out

    def attention_map_blocks(self) -> list[str] | None:
        """Attention maps show the fusion layers by default (the paper's cross-attention, Fig. 4)."""
        return [b.name for b in self.block_infos() if b.kind in ("cross", "all")] or None

    def input_modules(self) -> list[nn.Module]:
        """The model itself (each branch sees a resized copy of the image)."""
        return [self]

    def branch_size(self, branch: int, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the image branch ``branch`` embeds for an input of ``image_size``: its native size, or with
        ``dynamic_img_size`` the input scaled by ``img_scale`` (ceil) and padded to a multiple of its patch
        (what :func:`fit_branch_image` produces)."""
        h, w = self._resized_size(branch, image_size)
        if not self.dynamic_img_size:
            return h, w
        p = self.patch_size[branch]
        return h + -h % p, w + -w % p

    def _resized_size(self, branch: int, image_size: tuple[int, int]) -> tuple[int, int]:
        return resized_branch_size(*image_size, self.branch_img_size[branch], self.img_scale[branch],
                                   self.dynamic_img_size)

    def branch_lattice(self, branch: int, image_size: tuple[int, int]) -> Lattice:
        """Where branch ``branch``'s patch tokens sit in an input of ``image_size`` (H, W) pixels: patch centres of
        its embedding, mapped back through the resize (CrossViT Sec. 3.2)."""
        H, W = image_size
        rh, rw = self._resized_size(branch, image_size)
        grid = self.patch_embed[branch].grid_size(*self.branch_size(branch, image_size))
        oy, sy = conv_chain(self.patch_embed[branch].specs)
        fy, fx = H / rh, W / rw
        return Lattice(grid[0], grid[1], (sy * fy, sy * fx), (oy * fy, oy * fx))

    def attention_layout(self, block: BlockInfo, args: tuple, kwargs: dict,
                         image_size: tuple[int, int] | None) -> AttentionLayout:
        """Queries and keys of a branch block ([CLS || patches] of its branch), a cross-attention layer (the CLS
        token of one branch over [CLS || patches] of the next) or an all-attention layer (every branch's tokens)."""
        if image_size is None:
            raise ValueError("CrossViT attention was captured outside a full forward pass of the model: call the "
                             "model itself (not a submodule) while capturing")

        def branch_segments(b: int, start: int) -> tuple[list[TokenSegment], np.ndarray]:
            lat = self.branch_lattice(b, image_size)
            segs = [TokenSegment("cls", start, start + 1, source=f"branch{b}"),
                    TokenSegment("patches", start + 1, start + 1 + lat.size, lat, source=f"branch{b}")]
            return segs, np.concatenate([[-1], np.arange(lat.size)])

        if block.kind == "self":
            segs, cells = branch_segments(block.branch, 0)
            lat = segs[1].lattice
            meta = dict(grid=(lat.height, lat.width), stride_px=lat.stride, branch=block.branch)
            return AttentionLayout(segs, list(segs), cells[None], cells[None].copy(), meta)
        if block.kind == "cross":
            j = (block.branch + 1) % self.num_branches
            segs, cells = branch_segments(j, 0)
            segs[0] = TokenSegment("cls", 0, 1, source=f"branch{block.branch}")
            lat = segs[1].lattice
            meta = dict(grid=(lat.height, lat.width), stride_px=lat.stride, branch=block.branch, key_branch=j)
            return AttentionLayout([TokenSegment("cls", 0, 1, source=f"branch{block.branch}")], segs,
                                   np.full((1, 1), -1), cells[None], meta)
        segs, cells, start = [], [], 0
        for b in range(self.num_branches):
            sg, c = branch_segments(b, start)
            segs += sg
            cells.append(c)
            start += len(c)
        cells = np.concatenate(cells)[None]
        lats = [sg.lattice for sg in segs if sg.lattice is not None]
        meta = dict(grid=(lats[0].height, lats[0].width), stride_px=lats[0].stride,
                    grids=[(lt.height, lt.width) for lt in lats])
        return AttentionLayout(segs, list(segs), cells, cells.copy(), meta)

    def input_size_rule(self) -> SizeRule:
        """Default mode: every input is resized to the branches' native sizes, so one graph serves any size from
        the largest patch. With ``dynamic_img_size`` the padding changes with the size: no rule is claimed."""
        m = int(self.min_input_size)
        if self.dynamic_img_size:
            return SizeRule((1, 1), (m, m), "no size rule is known for this model")
        native = tuple(dict.fromkeys((int(h), int(w)) for h, w in self.branch_img_size))
        return SizeRule((1, 1), (m, m), "CrossViT resizes every input to its branches' native sizes",
                        exact_branch_sizes=native)

    def cam_target_layers(self) -> list[str]:
        """``norm1`` of the last block of each branch in the last encoder."""
        k = len(self.encoders) - 1
        return [f"encoders.{k}.branches.{b}.{len(br) - 1}.norm1" for b, br in enumerate(self.encoders[k].branches)
                if len(br)]

    def default_out_indices(self) -> tuple[int, ...]:
        """Dense features: the last (kept) encoder of every branch."""
        K, last = self.num_feature_blocks, len(self.encoders) - 1
        return tuple(b * K + last for b in range(self.num_branches))

    # ---- forward -------------------------------------------------------------------------------------------------

    def _branch_image(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The input as branch i sees it: resized to its native size (default), or scaled by img_scale[i] and padded
        to a multiple of its patch (dynamic_img_size)."""
        return fit_branch_image(x, tuple(self.branch_img_size[i]), self.img_scale[i], self.patch_size[i],
                                self.dynamic_img_size)

    def _embed(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Image -> per-branch tokens [CLS || patches] + position embedding, and the branch grids."""
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            check_input(x, self.in_chans, self.min_input_size, type(self).__name__)
        B = x.shape[0]
        xs, grids = [], []
        for i, (embed, cls, pos) in enumerate(zip(self.patch_embed, self.cls_token, self.pos_embed, strict=True)):
            t = embed(self._branch_image(x, i))
            grid = (t.shape[-2], t.shape[-1])
            t = torch.cat((cls.expand(B, -1, -1), t.flatten(2).transpose(1, 2)), dim=1)
            xs.append(self.pos_drop(t + resample_pos_embed(pos, self.grid_size[i], grid)))
            grids.append(grid)
        return xs, grids

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list | tuple[list[torch.Tensor], list]:
        """Patch tokens of each branch after each encoder (timm API).

        Args:
            x: (B, C, H, W).
            indices: feature indices, branch-major: index b * K + k is branch b after encoder k (int n = last n;
                None = all).
            norm: apply the branch's final LayerNorm to the intermediates.
            stop_early: stop after the last encoder needed.
            output_fmt: 'NCHW' (B, D_b, h_b, w_b) maps or 'NLC' (B, h_b * w_b, D_b) tokens.
            intermediates_only: return only the intermediates.
            return_prefix_tokens: return (patch tokens, CLS token (B, 1, D_b)) pairs.

        Returns:
            (per-branch normalised final tokens as :meth:`forward_features`, intermediates) or the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got '{output_fmt}'")
        K = self.num_feature_blocks
        take, _ = feature_take_indices(self.num_branches * K, indices)
        last = max(i % K for i in take)
        xs, grids = self._embed(x)
        encoders = self.encoders[: last + 1] if stop_early else self.encoders
        per_branch: list[list] = [[] for _ in range(self.num_branches)]
        for k, enc in enumerate(encoders):
            xs = enc(xs, grids)
            for b in range(self.num_branches):
                if b * K + k not in take:
                    continue
                y = self.norm[b](xs[b]) if norm else xs[b]
                tokens = y[:, 1:]
                if output_fmt == "NCHW":
                    tokens = tokens.transpose(1, 2).reshape(y.shape[0], y.shape[-1], *grids[b])
                per_branch[b].append((tokens, y[:, :1]) if return_prefix_tokens else tokens)
        intermediates = [t for branch in per_branch for t in branch]
        if intermediates_only:
            return intermediates
        return [norm_layer(t) for norm_layer, t in zip(self.norm, xs, strict=True)], intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop encoders after the last one needed for ``indices`` (timm API)."""
        K = self.num_feature_blocks
        take, _ = feature_take_indices(self.num_branches * K, indices)
        self.encoders = self.encoders[: max(i % K for i in take) + 1]
        if prune_norm:
            self.norm = nn.ModuleList([nn.Identity() for _ in range(self.num_branches)])
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> per-branch normalised tokens, each (B, 1 + h_b * w_b, D_b)."""
        xs, grids = self._embed(x)
        for enc in self.encoders:
            xs = enc(xs, grids)
        return [norm(t) for norm, t in zip(self.norm, xs, strict=True)]

    def forward_head(self, xs: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """Pool each branch (CLS or mean), classify, average the branches' logits -> (B, num_classes); with
        ``pre_logits`` or no classifier, the pooled features concatenated -> (B, num_features)."""
        pooled = [self.head_drop(t[:, 1:].mean(1) if self.global_pool == "avg" else t[:, 0]) for t in xs]
        if pre_logits or self.num_classes == 0:
            return torch.cat(pooled, dim=1)
        return torch.stack([head(p) for head, p in zip(self.head, pooled, strict=True)]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: timm's and the authors' layouts -> ours

_KEY_RULES = [
    (re.compile(r"^(pos_embed|cls_token)_(\d+)$"), r"\1.\2"),  # timm: pos_embed_0 -> pos_embed.0
    (re.compile(r"^blocks\.(\d+)\.blocks\.(\d+)\."), r"encoders.\1.branches.\2."),
    (re.compile(r"^blocks\.(\d+)\.projs\.(\d+)\.0\."), r"encoders.\1.fusion.f.\2.norm."),
    (re.compile(r"^blocks\.(\d+)\.projs\.(\d+)\.2\."), r"encoders.\1.fusion.f.\2.fc."),
    (re.compile(r"^blocks\.(\d+)\.revert_projs\.(\d+)\.0\."), r"encoders.\1.fusion.g.\2.norm."),
    (re.compile(r"^blocks\.(\d+)\.revert_projs\.(\d+)\.2\."), r"encoders.\1.fusion.g.\2.fc."),
    (re.compile(r"^blocks\.(\d+)\.fusion\.(\d+)\.(\d+)\."), r"encoders.\1.fusion.blocks.\2.\3."),  # L > 0
    (re.compile(r"^blocks\.(\d+)\.fusion\.(\d+)\.(?=\D)"), r"encoders.\1.fusion.blocks.\2.0."),  # L = 0
]


def _map_key(key: str) -> str:
    """Our name for a key of timm's or the authors' layout (keys of ours pass unchanged)."""
    for pattern, repl in _KEY_RULES:
        new, hits = pattern.subn(repl, key)
        if hits:
            return new
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert a CrossViT checkpoint in timm's layout (``pos_embed_0``, timm ``crossvit_*``) or the authors' layout
    (``pos_embed.0``, IBM/CrossViT ``crossvit_*_224``) to ours.

    Renames ``blocks.k.blocks.b`` -> ``encoders.k.branches.b``, ``projs``/``revert_projs`` -> ``fusion.f``/``fusion.g``
    (``.0`` -> ``norm``, ``.2`` -> ``fc``), ``fusion.b`` -> ``fusion.blocks.b.0`` (or ``fusion.blocks.b.l`` for
    L > 0), and resamples position embeddings trained for another grid to the model's (bicubic; the source grid is
    square unless it equals the model's). Keys already in our layout pass unchanged; unknown keys are kept so that
    strict loading reports them.

    Raises:
        CheckpointError: a checkpoint of another architecture (names the family it looks like), or a non-square
            position embedding of another size.
    """
    if not state_dict:
        return state_dict
    check_family(state_dict, "CrossViT")
    out = {_map_key(k): v for k, v in state_dict.items()}
    for i, grid in enumerate(getattr(model, "grid_size", [])):
        key = f"pos_embed.{i}"
        v = out.get(key)
        if v is None or v.ndim != 3 or v.shape[1] == 1 + grid[0] * grid[1] or v.shape[-1] != model.embed_dim[i]:
            continue
        src = infer_grid(v.shape[1] - 1, tuple(grid), key)
        out[key] = resample_pos_embed(v, src, tuple(grid))
    return out


# ----------------------------------------------------------------------------------------------------------------
# pretrained configs, weights and entrypoints

_PAPER = "arXiv:2103.14899"
_SOURCE = "https://github.com/IBM/CrossViT"
_IBM_RELEASE = "https://github.com/IBM/CrossViT/releases/download/weights-0.1/"


def _cfg(**kwargs) -> dict:
    cfg = dict(
        url="", num_classes=1000, input_size=(3, 240, 240), pool_size=None, crop_pct=0.875, interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, fixed_input_size=True,
        first_conv=("patch_embed.0.proj", "patch_embed.1.proj"),
        classifier=("head.0", "head.1"), paper_ids=_PAPER, origin_url=_SOURCE,
        paper_name="CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification")
    cfg.update(kwargs)
    return cfg


def _weights_cfgs(name: str, ibm_name: str, size: int) -> dict:
    """Two tags per variant: timm's port on the Hugging Face hub (default) and the authors' GitHub release."""
    dagger = "dagger" in name
    extra = dict(first_conv=("patch_embed.0.proj.0", "patch_embed.1.proj.0")) if dagger else {}
    ibm_size = 224 if size == 240 else 384
    crop = 0.875 if size == 240 else 1.0
    return {
        f"cf_{name}.in1k": _cfg(
            hf_hub_id=f"timm/{name}.in1k", input_size=(3, size, size), crop_pct=crop, license="apache-2.0",
            notes=f"timm's ImageNet-1k weights (timm layout, converted on load); evaluate at {size}", **extra),
        f"cf_{name}.ibm_in1k": _cfg(
            url=f"{_IBM_RELEASE}{ibm_name}.pth", input_size=(3, ibm_size, ibm_size), crop_pct=crop,
            license="see IBM/CrossViT (README: CC-BY-NC 4.0; code headers: Apache-2.0)",
            notes=f"the authors' release '{ibm_name}' (IBM layout, converted on load); evaluate at {ibm_size}: the "
                  f"small branch resizes it to {size} as in the authors' code", **extra),
    }


_MODEL_ARGS = {
    "crossvit_tiny_240": dict(embed_dim=(96, 192), depth=((1, 4, 0),) * 3, num_heads=(3, 3), mlp_ratio=(4, 4, 1)),
    "crossvit_small_240": dict(embed_dim=(192, 384), depth=((1, 4, 0),) * 3, num_heads=(6, 6), mlp_ratio=(4, 4, 1)),
    "crossvit_base_240": dict(embed_dim=(384, 768), depth=((1, 4, 0),) * 3, num_heads=(12, 12), mlp_ratio=(4, 4, 1)),
    "crossvit_9_240": dict(embed_dim=(128, 256), depth=((1, 3, 0),) * 3, num_heads=(4, 4), mlp_ratio=(3, 3, 1)),
    "crossvit_15_240": dict(embed_dim=(192, 384), depth=((1, 5, 0),) * 3, num_heads=(6, 6), mlp_ratio=(3, 3, 1)),
    "crossvit_18_240": dict(embed_dim=(224, 448), depth=((1, 6, 0),) * 3, num_heads=(7, 7), mlp_ratio=(3, 3, 1)),
}
for _n in ("9", "15", "18"):
    _MODEL_ARGS[f"crossvit_{_n}_dagger_240"] = dict(_MODEL_ARGS[f"crossvit_{_n}_240"], multi_conv=True)
for _n in ("15", "18"):
    _MODEL_ARGS[f"crossvit_{_n}_dagger_408"] = dict(_MODEL_ARGS[f"crossvit_{_n}_240"], multi_conv=True, img_size=408,
                                                    img_scale=(1.0, 384 / 408))
for _args in _MODEL_ARGS.values():
    _args.setdefault("img_size", 240)
    _args.setdefault("img_scale", (1.0, 224 / 240))
    _args.setdefault("patch_size", (12, 16))

#: our variant name -> the authors' name of the same weights
IBM_NAMES = {name: name.replace("_240", "_224").replace("_408", "_384") for name in _MODEL_ARGS}


def _register_cfgs():
    from timm.models import generate_default_cfgs

    cfgs = {}
    for name in _MODEL_ARGS:
        cfgs.update(_weights_cfgs(name, IBM_NAMES[name], 408 if name.endswith("_408") else 240))
    return generate_default_cfgs(cfgs)


default_cfgs = _register_cfgs()


def _create(name: str, pretrained: bool = False, **kwargs) -> CrossViT:
    variant = f"cf_{name}"
    args = dict(_MODEL_ARGS[name])
    args.update(kwargs)
    if args.get("features_only"):
        args.setdefault("dynamic_img_size", True)  # dense features follow the input's geometry
    K, n = len(args["depth"]), len(args["patch_size"])
    return build_family_model(CrossViT, variant, pretrained, checkpoint_filter_fn,
                       feature_cfg=dict(feature_cls="getter", out_indices=tuple((b + 1) * K - 1 for b in range(n))),
                       **args)


@register_model
def cf_crossvit_tiny_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-Ti: dims (96, 192), K=3 x (N=1, M=4, L=1), 3 heads, mlp 4 (7.0 M params, 1.6 GMACs, 73.4 top-1)."""
    return _create("crossvit_tiny_240", pretrained, **kwargs)


@register_model
def cf_crossvit_small_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-S: dims (192, 384), K=3 x (1, 4, 1), 6 heads, mlp 4 (26.9 M, 5.6 GMACs, 81.0)."""
    return _create("crossvit_small_240", pretrained, **kwargs)


@register_model
def cf_crossvit_base_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-B: dims (384, 768), K=3 x (1, 4, 1), 12 heads, mlp 4 (105.0 M, 21.2 GMACs, 82.2)."""
    return _create("crossvit_base_240", pretrained, **kwargs)


@register_model
def cf_crossvit_9_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-9: dims (128, 256), K=3 x (1, 3, 1), 4 heads, mlp 3 (8.6 M, 1.8 GMACs, 74.0)."""
    return _create("crossvit_9_240", pretrained, **kwargs)


@register_model
def cf_crossvit_15_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-15: dims (192, 384), K=3 x (1, 5, 1), 6 heads, mlp 3 (27.5 M, 5.8 GMACs, 81.5)."""
    return _create("crossvit_15_240", pretrained, **kwargs)


@register_model
def cf_crossvit_18_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-18: dims (224, 448), K=3 x (1, 6, 1), 7 heads, mlp 3 (43.3 M, 9.0 GMACs, 82.4)."""
    return _create("crossvit_18_240", pretrained, **kwargs)


@register_model
def cf_crossvit_9_dagger_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-9†: CrossViT-9 with the 3-convolution patch embedding (8.8 M, 2.0 GMACs, 77.0)."""
    return _create("crossvit_9_dagger_240", pretrained, **kwargs)


@register_model
def cf_crossvit_15_dagger_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-15†: CrossViT-15 with the 3-convolution patch embedding (28.2 M, 6.1 GMACs, 82.3)."""
    return _create("crossvit_15_dagger_240", pretrained, **kwargs)


@register_model
def cf_crossvit_18_dagger_240(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-18†: CrossViT-18 with the 3-convolution patch embedding (44.3 M, 9.5 GMACs, 82.5)."""
    return _create("crossvit_18_dagger_240", pretrained, **kwargs)


@register_model
def cf_crossvit_15_dagger_408(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-15† at 408 (large branch 384), the authors' ``crossvit_15_dagger_384`` (28.5 M, 83.8)."""
    return _create("crossvit_15_dagger_408", pretrained, **kwargs)


@register_model
def cf_crossvit_18_dagger_408(pretrained: bool = False, **kwargs) -> CrossViT:
    """CrossViT-18† at 408 (large branch 384), the authors' ``crossvit_18_dagger_384`` (44.6 M, 84.2)."""
    return _create("crossvit_18_dagger_408", pretrained, **kwargs)


for _name in _MODEL_ARGS:
    register_name(_name, f"cf_{_name}")
