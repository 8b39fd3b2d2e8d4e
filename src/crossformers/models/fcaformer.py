"""FcaFormer: Forward Cross Attention in Hybrid Vision Transformer (Zhang et al., 2023, arXiv:2211.07198).

Pieces, by the paper's terms:

* **Forward cross attention (Fca, Sec. 3.1, Fig. 2)** — each Fca block of a stage attends, besides its own tokens, to
  the *cross tokens* made by up to ``cab_max_d`` earlier blocks of the same stage (oldest first).
* **Learnable scale factors (LSF, Sec. 3.1)** — every cross token is multiplied by a learned factor before it is
  normalised and projected to keys/values (``cross_scale``).
* **Token merge and enhancement (TME, Sec. 3.1)** — *merge*: a 7x7 stride-4 depthwise convolution turns a block's
  token map into its cross tokens; *enhance*: a 3x3 depthwise conv + BN replaces the token map before the FFN.
* **Relative position bias** for regular tokens, indexed by absolute token offset (as LeViT), and a learned bias per
  cross token and head (the "relative depth" bias, ``cross_bias``).
* **Hybrid models L1-L4 (Sec. 3.2, Fig. 3b)**: conv stem to stride 4, two ConvNeXt stages, two Fca stages, each
  downsampling by 1x1 conv-BN, GELU, 3x3 depthwise stride-2 conv-BN, GELU, 1x1 conv-BN.
* **Plain model L0 (Sec. 3.2, Fig. 3a)**: DeiT-Tiny whose blocks are Fca blocks (16x16 patches, class token).

Ablation switches (paper Table 5), all constructor arguments: ``fca=False`` gives the ConvViT baseline (no cross
tokens); ``lsf=False`` removes the scale factors; ``tme=False`` replaces the merge convolution by average pooling to
the same cross-token grid and drops the enhancement convolution; ``cab_max_d`` bounds how many earlier blocks each
block reads.

Any input size: the tables above are sized for the construction ``img_size`` and adapted per forward without
changing module state; see :mod:`crossformers.layers.position_bias` (offset indexing when the grid fits, bicubic
resampling otherwise) and :meth:`FcaBlock.cross_tables` (cross-token tables resampled bicubically/bilinearly to the
new cross-token grid). A checkpoint trained at another size is resampled the same way when loaded.

Parity: with the official weights converted by :func:`checkpoint_filter_fn`, outputs equal the official
``image_classification/models/fcaformer.py`` within 1e-4 (``test_parity_with_official`` in
tests/models/test_fcaformer.py).
"""
from __future__ import annotations

import math
import re
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import (
    ConvNormAct,
    DropPath,
    LayerNorm2d,
    LayerScale,
    Mlp,
    NormMlpClassifierHead,
    PatchEmbed,
    trunc_normal_,
)
from timm.models import register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from ..checkpoint import check_family, register_checkpoint_markers
from ..errors import PretrainedUnavailableError
from ..factory import register_name
from ..layers.attention import ScaledDotProduct
from ..layers.bias_cache import InferenceCache
from ..layers.embed import conv_output_size
from ..layers.fold import scale_output_channels
from ..layers.geometry import Lattice, conv_lattice, cross_token_lattice, grid_convs
from ..layers.linear import LinearKernelMixin, linear_rows
from ..layers.position_bias import OffsetBiasTable, infer_grid, resample_grid_table, resample_pos_embed
from ._base import DenseBackboneHead, HierarchicalModel, OfficialLayoutHint, set_fused_attn
from ._helpers import build_dense_model, build_family_model, check_input
from .protocol import AttentionLayout, BlockInfo, SizeRule, TokenSegment, call_arg, smallest_multiple_above

__all__ = ["FcaBlock", "FcaStage", "FcaFormer", "FcaFormerPlain", "checkpoint_filter_fn"]

register_checkpoint_markers("FcaFormer (official layout)", ("s_token_bias", "patch_embed.seq.", "attention_biases"))
register_checkpoint_markers("FcaFormer (crossformers layout)", ("cross_bias", ".rel_pos.table", "stem.0.conv.weight"))


def _halve(size: int) -> int:
    """Output length of the stem's and the downsamplings' stride-2, kernel-3, padding-1 convolutions
    (= ceil(size / 2))."""
    return conv_output_size(size, kernel=3, stride=2, padding=1)


def cross_grid(height: int, width: int) -> tuple[int, int]:
    """Cross-token grid made by TME's 7x7 stride-4 merge from a (height, width) token map: ceil(/4) each."""
    return (height + 3) // 4, (width + 3) // 4


class FcaBlock(nn.Module):
    """One FcaFormer block (paper Sec. 3.1, Fig. 2).

    Token mixer: attention of the block's tokens (queries) over its own tokens plus the cross tokens of earlier
    blocks (keys/values), with an offset-indexed relative position bias on regular tokens and a learned per-head bias
    on cross tokens; then TME (merge -> this block's cross tokens, enhance -> the token map); then the FFN.

    Args:
        dim: channels C.
        num_heads: attention heads (C must divide).
        grid_size: (H0, W0) token grid the tables are sized for.
        num_sources: number of earlier blocks whose cross tokens this block reads (0 = plain attention).
        make_cross: whether this block produces cross tokens for later blocks.
        mlp_ratio: FFN hidden size / C.
        qkv_bias: bias in the qkv projection.
        drop_path: stochastic depth rate.
        proj_drop, attn_drop: dropout rates.
        ls_init_value: layer-scale initial value.
        lsf: learnable scale factors on cross tokens.
        tme: token merge (7x7/4 depthwise conv) and enhancement (3x3 depthwise conv-BN); False = average pooling
            merge and no enhancement.
        rel_pos: relative position bias on regular tokens (False in the plain L0, which has absolute embeddings).
        num_prefix_tokens: class tokens in front of the token map (plain model).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        num_sources: int = 0,
        make_cross: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        ls_init_value: float = 1e-6,
        lsf: bool = True,
        tme: bool = True,
        rel_pos: bool = True,
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}: choose num_heads dividing dim")
        self.dim = dim
        self.num_heads = num_heads
        self.grid_size = tuple(grid_size)
        self.num_sources = num_sources
        self.make_cross = make_cross
        self.tme = tme
        self.num_prefix_tokens = num_prefix_tokens

        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.sdpa = ScaledDotProduct(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos = OffsetBiasTable(num_heads, grid_size) if rel_pos else None
        if num_sources > 0:
            hs, ws = cross_grid(*grid_size)
            self.cross_norm = nn.LayerNorm(dim)
            self.cross_bias = nn.Parameter(torch.zeros(num_heads, num_sources, hs, ws))
            self.cross_scale = nn.Parameter(torch.ones(num_sources, hs, ws)) if lsf else None
        self.ls1 = LayerScale(dim, ls_init_value)
        self.merge = (nn.Conv2d(dim, dim, 7, stride=4, padding=3, groups=dim, bias=False)
                      if make_cross and tme else None)
        self.enhance = (ConvNormAct(dim, dim, 3, groups=dim, apply_act=False) if tme else nn.Identity())
        self.norm2 = nn.LayerNorm(dim)
        # the official FFN normalises its input a second time (its ``mlp.norm``). Not named ``mlp_norm``: torchvision's
        # FX feature extraction reads an unescaped module name as a regex, takes ``mlp_norm`` for a repeat of timm
        # Mlp's ``mlp.norm`` and fails to trace the block (whenever Mlp is not the oneDNN leaf module)
        self.ffn_norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.ls2 = LayerScale(dim, ls_init_value)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # inference-only cache of the attention bias and scale factors per grid/device/dtype (see attn_bias)
        self.bias_cache = InferenceCache()

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the layer scales into the projection in front of them (``ls1`` -> ``proj``, ``ls2`` -> ``mlp.fc2``),
        in place: the block computes the same function in eval mode (the family's part of
        :func:`crossformers.inference.fuse`)."""
        for ls_name, layer in (("ls1", self.proj), ("ls2", getattr(self.mlp, "fc2", None))):
            ls = getattr(self, ls_name)
            if isinstance(ls, LayerScale) and isinstance(layer, (nn.Linear, nn.Conv2d)):
                scale_output_channels(layer, ls.gamma)
                setattr(self, ls_name, nn.Identity())

    def cross_tables(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-token bias (heads, 1, S) and scale factors (S, 1) or None for a cross grid ``grid``.

        S = num_sources * Hs * Ws. Tables trained for another grid are resampled: the bias bicubically, the scale
        factors bilinearly (no overshoot below zero), both with ``align_corners=False`` (absolute positions).
        """
        bias = resample_grid_table(self.cross_bias, grid).flatten(1).unsqueeze(1)
        scale = None
        if self.cross_scale is not None:
            scale = resample_grid_table(self.cross_scale, grid, mode="bilinear").reshape(-1, 1)
        return bias, scale

    def _bias_tables(self) -> list[torch.Tensor]:
        return [t for t in (None if self.rel_pos is None else self.rel_pos.table, getattr(self, "cross_bias", None),
                            getattr(self, "cross_scale", None)) if t is not None]

    def attn_bias(self, height: int, width: int, device: torch.device, dtype: torch.dtype,
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Attention bias and cross-token scale factors for a (height, width) token grid.

        Returns:
            (bias (1, heads, N, N + S) or None, scale (S, 1) or None) in ``dtype`` on ``device``, with N = P + H*W
            queries/regular keys (P prefix tokens get zero bias) and S = num_sources * Hs * Ws cross keys: the
            relative position bias of regular tokens next to the per-head cross-token bias.

        In inference the result is computed once per grid, device, dtype and table storage/version and kept in
        ``bias_cache`` (:class:`~crossformers.layers.bias_cache.InferenceCache`).
        """
        return self.bias_cache.get((height, width, device, dtype), self._bias_tables(),
                                   lambda: self._compute_bias(height, width, device, dtype))

    def _compute_bias(self, height: int, width: int, device: torch.device, dtype: torch.dtype,
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        P = self.num_prefix_tokens
        N = P + height * width
        bias = scale = None
        if self.rel_pos is not None:
            bias = self.rel_pos(height, width)
            if P:
                bias = F.pad(bias, (P, 0, P, 0))
        if self.num_sources > 0:
            cbias, scale = self.cross_tables(cross_grid(height, width))
            cbias = cbias.expand(self.num_heads, N, cbias.shape[-1])
            regular = bias if bias is not None else cbias.new_zeros(self.num_heads, N, N)
            bias = torch.cat((regular, cbias), dim=-1)
            scale = scale if scale is None else scale.to(device=device, dtype=dtype)
        if bias is not None:
            bias = bias.to(device=device, dtype=dtype).unsqueeze(0)
        return bias, scale

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int], cross: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the block.

        Args:
            x: tokens (B, P + H*W, C), P prefix tokens then the (H, W) map in row-major order.
            grid: (H, W).
            cross: cross tokens of the ``num_sources`` earlier blocks, oldest first, each (B, Hs*Ws, C).

        Returns:
            (tokens (B, P + H*W, C), this block's cross tokens (B, Hs*Ws, C) or None).
        """
        B, N, C = x.shape
        H, W = grid
        P = self.num_prefix_tokens
        heads, hd = self.num_heads, C // self.num_heads
        if self.num_sources > 0 and (not cross or len(cross) != self.num_sources):
            raise ValueError(f"FcaBlock expects cross tokens of {self.num_sources} earlier blocks, "
                             f"got {0 if not cross else len(cross)}")

        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        bias, scale = self.attn_bias(H, W, q.device, q.dtype)
        if self.num_sources > 0:
            s = torch.cat(cross, dim=1)
            if scale is not None:
                s = s * scale
            s = self.cross_norm(s)
            kv = linear_rows(self.qkv, s, C)  # keys and values only: cross tokens are never queries
            ks, vs = kv.reshape(B, s.shape[1], 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
            k = torch.cat((k, ks), dim=2)
            v = torch.cat((v, vs), dim=2)
        out = self.sdpa(q, k, v, bias)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        x = x + self.drop_path(self.ls1(out))

        # token merge (-> cross tokens) and enhancement, on the spatial map only. The (B, H*W, C) tokens are viewed
        # as a channels-last (B, C, H, W) map (no copy); the depthwise convolutions then run channels-last and their
        # outputs view back as tokens (no transpose round-trips).
        tokens = x[:, P:] if P else x
        fmap = tokens.reshape(B, H, W, C).permute(0, 3, 1, 2)
        new_cross = None
        if self.make_cross:
            if self.merge is not None:
                merged = self.merge(fmap)
            else:
                merged = F.adaptive_avg_pool2d(fmap, cross_grid(H, W))
            new_cross = merged.permute(0, 2, 3, 1).reshape(B, merged.shape[-2] * merged.shape[-1], C)
        tokens = self.enhance(fmap).permute(0, 2, 3, 1).reshape(B, H * W, C)
        x = torch.cat((x[:, :P], tokens), dim=1) if P else tokens
        x = x + self.drop_path(self.ls2(self.mlp(self.ffn_norm(self.norm2(x)))))
        return x, new_cross


def fca_blocks(
    dim: int, depth: int, num_heads: int, grid_size: tuple[int, int], drop_path: list[float], fca: bool,
    cab_max_d: int, **block_kwargs,
) -> nn.ModuleList:
    """The blocks of one Fca stage: block i reads the cross tokens of min(i, cab_max_d) earlier blocks."""
    if fca and cab_max_d < 1:
        raise ValueError(f"cab_max_d must be >= 1 with forward cross attention (got {cab_max_d}); use fca=False "
                         "for the ConvViT baseline")
    return nn.ModuleList([
        FcaBlock(
            dim, num_heads, grid_size,
            num_sources=min(i, cab_max_d) if fca else 0,
            make_cross=fca and i < depth - 1,
            drop_path=drop_path[i],
            **block_kwargs,
        )
        for i in range(depth)
    ])


def run_fca_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, grid: tuple[int, int], cab_max_d: int, grad_checkpointing: bool,
) -> torch.Tensor:
    """Run Fca blocks in order, passing each the cross tokens of at most ``cab_max_d`` previous blocks."""
    history: list[torch.Tensor] = []
    for blk in blocks:
        sources = history[-blk.num_sources:] if blk.num_sources else None
        if grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            x, new = torch.utils.checkpoint.checkpoint(blk, x, grid, sources, use_reentrant=False)
        else:
            x, new = blk(x, grid, sources)
        if new is not None:
            history.append(new)
            history = history[-cab_max_d:]
    return x


def downsample(in_chs: int, out_chs: int) -> nn.Sequential:
    """FcaFormer's stride-2 transition (paper Fig. 3b): 1x1 conv-BN, GELU, 3x3 depthwise/2 conv-BN, GELU, 1x1 conv-BN."""
    return nn.Sequential(
        ConvNormAct(in_chs, out_chs, 1, act_layer=nn.GELU),
        ConvNormAct(out_chs, out_chs, 3, stride=2, groups=out_chs, act_layer=nn.GELU),
        ConvNormAct(out_chs, out_chs, 1, apply_act=False),
    )


class ConvStage(nn.Module):
    """A ConvNeXt stage (paper Fig. 3b): optional downsampling, then ConvNeXt blocks (timm's ``ConvNeXtBlock``).

    Input (B, C_in, H, W) -> output (B, C, H', W').
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, drop_path: list[float], down: bool,
                 ls_init_value: float = 1e-6):
        super().__init__()
        self.downsample = downsample(in_chs, out_chs) if down else nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_chs, drop_path=drop_path[i], ls_init_value=ls_init_value) for i in range(depth)
        ])
        self.grad_checkpointing = False

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold each ConvNeXt block's layer scale (``gamma``) into its second MLP layer, in place (the family's part
        of :func:`crossformers.inference.fuse`)."""
        for blk in self.blocks:
            fc2 = getattr(blk.mlp, "fc2", None)
            if getattr(blk, "gamma", None) is not None and isinstance(fc2, (nn.Linear, nn.Conv2d)):
                scale_output_channels(fc2, blk.gamma)
                blk.gamma = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class FcaStage(nn.Module):
    """An Fca stage (paper Fig. 2): optional downsampling, then Fca blocks with forward cross attention.

    Input (B, C_in, H, W) -> output (B, C, H', W') (NCHW in and out; tokens inside). The output is a channels-last
    view of the tokens (no copy); a channels-last input map becomes tokens without a copy as well.
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, num_heads: int, grid_size: tuple[int, int],
                 drop_path: list[float], down: bool, fca: bool = True, cab_max_d: int = 12, **block_kwargs):
        super().__init__()
        self.cab_max_d = cab_max_d
        self.downsample = downsample(in_chs, out_chs) if down else nn.Identity()
        self.blocks = fca_blocks(out_chs, depth, num_heads, grid_size, drop_path, fca, cab_max_d, **block_kwargs)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, C, H, W = x.shape
        x = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        x = run_fca_blocks(self.blocks, x, (H, W), self.cab_max_d, self.grad_checkpointing)
        return x.reshape(B, H, W, C).permute(0, 3, 1, 2)


def _fca_layout(block: BlockInfo, grid: tuple[int, int], lattice: Lattice,
                blocks: dict[str, nn.Module]) -> AttentionLayout:
    """Queries and keys of one Fca call (FcaFormer Sec. 3.1): prefix tokens (no position) and the (H, W) map as
    queries; the same plus the cross tokens of each source block (oldest first) as keys."""
    blk = block.module
    H, W = grid
    P = blk.num_prefix_tokens
    q_segs = ([TokenSegment("cls", 0, P)] if P else []) + [TokenSegment("tokens", P, P + H * W, lattice)]
    q_cells = np.concatenate([np.full(P, -1), np.arange(H * W)])[None]
    k_segs, k_cells, n = list(q_segs), [q_cells[0]], P + H * W
    cross_lat = None
    for src in block.sources:
        cross_lat = cross_token_lattice(lattice, merge_conv=blocks[src].merge is not None)
        k_segs.append(TokenSegment("cross", n, n + cross_lat.size, cross_lat, source=src))
        k_cells.append(np.arange(cross_lat.size))
        n += cross_lat.size
    meta = dict(grid=(H, W), stride_px=lattice.stride, prefix_tokens=P, sources=list(block.sources),
                cross_grid=None if cross_lat is None else (cross_lat.height, cross_lat.width),
                cross_stride_px=None if cross_lat is None else cross_lat.stride)
    return AttentionLayout(q_segs, k_segs, q_cells, np.concatenate(k_cells)[None], meta,
                           f"{len(block.sources)} sources")


def _fca_block_infos(model: nn.Module, blocks: nn.ModuleList, prefix: str, stage: int | None,
                     out: list[BlockInfo]) -> None:
    names = [f"{prefix}{j}" for j in range(len(blocks))]
    for j, blk in enumerate(blocks):
        out.append(BlockInfo(name=names[j], index=len(out), module=blk, family=model.family, kind="fca", stage=stage,
                             attention=blk.sdpa, position=j, siblings=names,
                             sources=names[j - blk.num_sources:j] if blk.num_sources else []))


def _size_rule(stages: list[tuple[int, tuple[int, int], bool]], period: int, why: str) -> SizeRule:
    """Sizes whose token grids (and cross-token grids) exceed the trained ones, in multiples of ``period`` pixels.

    Args:
        stages: per Fca stage, (stride in pixels, trained token grid (H0, W0), whether it reads cross tokens).
        period, why: as in :class:`SizeRule`.
    """
    need_h, need_w = [], []
    for stride, (h0, w0), cross in stages:
        if cross:  # the cross-token grid must exceed the trained one too: 4 tokens per cross token
            h0, w0 = (4 * g for g in cross_grid(h0, w0))
        need_h.append(stride * h0)
        need_w.append(stride * w0)
    return SizeRule((period, period), (smallest_multiple_above(need_h, period),
                                       smallest_multiple_above(need_w, period)), why)


class _FcaCommon:
    """timm API and protocol pieces common to the hybrid and plain FcaFormer."""

    family = "fcaformer"
    #: the model whose linear-path calibration stands for the family (crossformers.layers.linear_calibration)
    linear_calibration_model = "fcaformer_l1"
    #: the family's large variant the calibration also times (FcaFormer-L4, 14.5 GMACs)
    linear_calibration_large_model = "fcaformer_l4"

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official checkpoint's state dict in our layout (:func:`checkpoint_filter_fn`; ours passes unchanged)."""
        return checkpoint_filter_fn(dict(state_dict), self)

    def attention_layout(self, block: BlockInfo, args: tuple, kwargs: dict,
                         image_size: tuple[int, int] | None) -> AttentionLayout:
        """Queries and keys of one Fca block call, from its ``grid`` argument."""
        grid = tuple(int(g) for g in call_arg(args, kwargs, 1, "grid"))
        lattice = self.token_lattice(block.stage, *grid)
        siblings = {n: self.get_submodule(n) for n in block.sources}
        return _fca_layout(block, grid, lattice, siblings)

    def set_fused_attn(self, enable: bool = True) -> None:
        """Fused SDPA attention (default) or the explicit softmax path (analysis, MAC counting)."""
        set_fused_attn(self, enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay: position/cross-token tables, scale factors, class/pos
        tokens."""
        return {n for n, _ in self.named_parameters()
                if n.endswith(("rel_pos.table", "cross_bias", "cross_scale", "cls_token", "pos_embed"))}


class FcaFormer(_FcaCommon, HierarchicalModel):
    """Hybrid FcaFormer (paper Sec. 3.2, Fig. 3b): conv stem, 2 ConvNeXt stages, 2 Fca stages, pooled head.

    Args:
        img_size: input size the relative/cross-token tables are sized for (any size runs; see module docs).
        in_chans: input channels.
        num_classes: classes (0 = no classifier).
        embed_dim: channels per stage (4 values; the official ``embed_dims``).
        depths: blocks per stage (4 values).
        num_heads: heads per stage (0 for the two ConvNeXt stages).
        mlp_ratio: FFN ratio of Fca blocks.
        drop_rate: dropout before the classifier.
        proj_drop_rate, attn_drop_rate: dropout inside Fca blocks.
        drop_path_rate: stochastic depth, linear over all blocks.
        ls_init_value: layer-scale init.
        cab_max_d: at most this many earlier blocks' cross tokens per block (official default 12).
        fca, lsf, tme: ablation switches (paper Table 5).
        global_pool: 'avg' (official) or '' for no pooling.

    Input (B, in_chans, H, W), H and W >= 4 -> logits (B, num_classes).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: tuple[int, ...] = (64, 128, 192, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (0, 0, 6, 10),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ls_init_value: float = 1e-6,
        cab_max_d: int = 12,
        fca: bool = True,
        lsf: bool = True,
        tme: bool = True,
        global_pool: str = "avg",
    ):
        super().__init__()
        if len(embed_dim) != 4 or len(depths) != 4 or len(num_heads) != 4:
            raise ValueError("FcaFormer needs 4 stages: embed_dim, depths and num_heads must each have 4 values")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = tuple(embed_dim)
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.drop_rate = drop_rate
        self.min_input_size = 4  # one token after the stride-4 stem; smaller maps round up (ceil)

        self.stem = nn.Sequential(
            ConvNormAct(in_chans, embed_dim[0] // 2, 3, stride=2, act_layer=nn.GELU),
            ConvNormAct(embed_dim[0] // 2, embed_dim[0], 3, stride=2, apply_act=False),
        )
        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        grid = (_halve(_halve(img_size[0])), _halve(_halve(img_size[1])))
        stages = []
        self.feature_info = []
        prev = embed_dim[0]
        for i in range(4):
            if i > 0:
                grid = (_halve(grid[0]), _halve(grid[1]))
            if num_heads[i] > 0:
                stage = FcaStage(prev, embed_dim[i], depths[i], num_heads[i], grid, dpr[i], down=i > 0, fca=fca,
                                 cab_max_d=cab_max_d, mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate,
                                 attn_drop=attn_drop_rate, ls_init_value=ls_init_value, lsf=lsf, tme=tme)
            else:
                stage = ConvStage(prev, embed_dim[i], depths[i], dpr[i], down=i > 0, ls_init_value=ls_init_value)
            stages.append(stage)
            prev = embed_dim[i]
            self.feature_info.append(dict(num_chs=prev, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # the head normalises after pooling
        self.head = NormMlpClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                          norm_layer=partial(LayerNorm2d, eps=1e-5))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm convention)."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^head\.norm", (99999,))])

    # ---- the family protocol (crossformers.models.protocol)
    prefers_channels_last = True  # conv stem, ConvNeXt stages, depthwise convolutions on token maps (measured)

    def block_infos(self) -> list[BlockInfo]:
        """ConvNeXt blocks (no attention) and Fca blocks, stage by stage (FcaFormer Fig. 3b)."""
        out: list[BlockInfo] = []
        for s, stage in enumerate(self.stages):
            if isinstance(stage, FcaStage):
                _fca_block_infos(self, stage.blocks, f"stages.{s}.blocks.", s, out)
                continue
            names = [f"stages.{s}.blocks.{j}" for j in range(len(stage.blocks))]
            for j, blk in enumerate(stage.blocks):
                out.append(BlockInfo(name=names[j], index=len(out), module=blk, family=self.family, kind="convnext",
                                     stage=s, position=j, siblings=names))
        return out

    def input_modules(self) -> list[nn.Module]:
        """The model and its conv stem: both receive the image batch first."""
        return [self, self.stem]

    def token_lattice(self, stage: int, height: int, width: int) -> Lattice:
        """Where the tokens of a (height, width) map of ``stage`` sit in the input (receptive-field centres of the
        stem and the downsamplings), in pixels."""
        convs = grid_convs(self.stem) + [c for s in range(1, stage + 1) for c in grid_convs(self.stages[s].downsample)]
        return conv_lattice(convs, height, width)

    def input_size_rule(self) -> SizeRule:
        """Sizes whose token grids (and cross-token grids) are all larger than the trained ones, in multiples of
        4 x the largest stride: the position/cross-token tables are then resampled the same way at every size."""
        needs, strides = [], []
        for s, stage in enumerate(self.stages):
            if isinstance(stage, FcaStage):
                r = int(self.feature_info[s]["reduction"])
                strides.append(r)
                needs.append((r, stage.blocks[0].grid_size, any(b.num_sources for b in stage.blocks)))
        return _size_rule(needs, 4 * max(strides + [32]),
                          "FcaFormer indexes its position/cross-token tables directly when the token grid fits the "
                          "trained grid and resamples them when it is larger")

    def cam_target_layers(self) -> list[str]:
        """Class activation maps on the last stage's map."""
        return [f"stages.{len(self.stages) - 1}"]



class FcaFormerPlain(_FcaCommon, OfficialLayoutHint, LinearKernelMixin, nn.Module):
    """Plain FcaFormer (paper Sec. 3.2, Fig. 3a, "L0"): DeiT whose transformer blocks are Fca blocks.

    Patch embedding (conv p x p), class token, absolute position embedding (resampled bicubically for other input
    sizes), ``depth`` Fca blocks at one resolution, final LayerNorm, classifier on the class token.

    Args:
        img_size, in_chans, num_classes: as usual.
        patch_size: patch side p.
        embed_dim: D.
        depth: number of Fca blocks.
        num_heads: heads.
        mlp_ratio, drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate, ls_init_value: as in FcaFormer.
        cab_max_d, fca, lsf, tme: as in FcaFormer.
        global_pool: 'token' (class token, DeiT) or 'avg'.

    Input (B, in_chans, H, W), H and W >= patch_size -> logits (B, num_classes).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ls_init_value: float = 1e-6,
        cab_max_d: int = 12,
        fca: bool = True,
        lsf: bool = True,
        tme: bool = True,
        global_pool: str = "token",
    ):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.cab_max_d = cab_max_d
        self.min_input_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC",
                                      strict_img_size=False)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = fca_blocks(embed_dim, depth, num_heads, grid, dpr, fca, cab_max_d, mlp_ratio=mlp_ratio,
                                 proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, ls_init_value=ls_init_value,
                                 lsf=lsf, tme=tme, rel_pos=False, num_prefix_tokens=1)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(FcaFormer._init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # ---- the family protocol (crossformers.models.protocol)
    prefers_channels_last = False

    def block_infos(self) -> list[BlockInfo]:
        """The Fca blocks in order (FcaFormer Fig. 3a)."""
        out: list[BlockInfo] = []
        _fca_block_infos(self, self.blocks, "blocks.", None, out)
        return out

    def input_modules(self) -> list[nn.Module]:
        """The model and its patch embedding: both receive the image batch first."""
        return [self, self.patch_embed]

    def token_lattice(self, stage: int | None, height: int, width: int) -> Lattice:
        """Where the patch tokens of a (height, width) grid sit in the input, in pixels."""
        return conv_lattice([self.patch_embed.proj], height, width)

    def input_size_rule(self) -> SizeRule:
        """Sizes whose patch grid (and cross-token grid) is larger than the trained one, in multiples of 4 patches."""
        patch = int(self.patch_embed.patch_size[0])
        cross = any(b.num_sources for b in self.blocks)
        return _size_rule([(patch, tuple(self.patch_embed.grid_size), cross)], 4 * patch,
                          "plain FcaFormer uses its position embedding and cross-token tables as trained on the "
                          "trained grid and resamples them on larger grids")

    def cam_target_layers(self) -> list[str]:
        """Class activation maps on the input of the last block's attention (its ``norm1``)."""
        return [f"blocks.{len(self.blocks) - 1}.norm1"]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        ref = self.pos_embed
        self.head = (nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0
                     else nn.Identity()).train(self.training)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            check_input(x, self.in_chans, self.min_input_size, type(self).__name__)
        x = self.patch_embed(x)  # (B, h, w, D)
        B, h, w, D = x.shape
        pos = self.pos_embed
        grid = self.patch_embed.grid_size
        pos = resample_pos_embed(pos, tuple(grid), (h, w))
        x = torch.cat((self.cls_token.expand(B, -1, -1), x.reshape(B, h * w, D)), dim=1) + pos
        return x, (h, w)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-block patch tokens as NCHW maps (B, D, H/p, W/p) (timm ViT API)."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(x)
        out = []
        history: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x, new = blk(x, grid, history[-blk.num_sources:] if blk.num_sources else None)
            if new is not None:
                history = (history + [new])[-self.cab_max_d:]
            if i in take:
                t = self.norm(x) if norm else x
                t = t[:, 1:]
                out.append(t if output_fmt == "NLC" else t.transpose(1, 2).reshape(t.shape[0], t.shape[-1], *grid))
            if stop_early and i >= max_index:
                break
        if intermediates_only:
            return out
        return self.norm(x), out

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        last = self.blocks[-1]
        if last.make_cross:  # its cross tokens fed only the blocks pruned away: drop the merge (no unused weights)
            last.make_cross, last.merge = False, None
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, 1 + H/p * W/p, D)."""
        x, grid = self._embed(x)
        x = run_fca_blocks(self.blocks, x, grid, self.cab_max_d, self.grad_checkpointing)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class token (or mean of patch tokens with global_pool='avg') -> logits (B, num_classes)."""
        x = x[:, 1:].mean(1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------------
# official checkpoints -> ours

_OFFICIAL_BLOCK = {
    "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma", "dw_conv.weight": "merge.weight", "s_norm.weight":
    "cross_norm.weight", "s_norm.bias": "cross_norm.bias", "mlp.norm.weight": "ffn_norm.weight",
    "mlp.norm.bias": "ffn_norm.bias", "attention_biases": "rel_pos.table",
    "s_token_bias": "cross_bias", "s_scale_factors": "cross_scale",
}


def _map_official_key(key: str) -> str:
    """Our name for one key of the official hybrid layout (tables are reshaped separately)."""
    m = re.match(r"^patch_embed\.seq\.(\d)\.(c|bn)\.(.*)$", key)
    if m:  # official Sequential(conv-bn, GELU, conv-bn): indices 0, 2 -> our 0, 1
        return f"stem.{int(m.group(1)) // 2}.{'conv' if m.group(2) == 'c' else 'bn'}.{m.group(3)}"
    key = re.sub(r"^norm_head\.", "head.norm.", key)
    key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
    m = re.match(r"^layer_(\d)\.downsample\.conv(\d)\.(c|bn)\.(.*)$", key)
    if m:  # official: end of layer i; ours: start of stage i + 1
        part = "conv" if m.group(3) == "c" else "bn"
        return f"stages.{int(m.group(1)) + 1}.downsample.{int(m.group(2)) - 1}.{part}.{m.group(4)}"
    m = re.match(r"^layer_(\d)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        stage, blk, rest = m.groups()
        rest = {"dwconv.weight": "conv_dw.weight", "dwconv.bias": "conv_dw.bias", "pwconv1.weight": "mlp.fc1.weight",
                "pwconv1.bias": "mlp.fc1.bias", "pwconv2.weight": "mlp.fc2.weight",
                "pwconv2.bias": "mlp.fc2.bias"}.get(rest, rest)
        rest = _OFFICIAL_BLOCK.get(rest, rest)
        rest = re.sub(r"^local_conv\.c\.", "enhance.conv.", rest)
        rest = re.sub(r"^local_conv\.bn\.", "enhance.bn.", rest)
        return f"stages.{stage}.blocks.{blk}.{rest}"
    return key


def _official_table(key: str, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reshape an official flat table to our layout (grid from the model, or square for another training size).

    ``attention_biases`` (heads, H0*W0) -> (heads, H0, W0); ``s_token_bias`` (1, heads, 1, n*S0) ->
    (heads, n, h0, w0); ``s_scale_factors`` (1, n*S0, 1) -> (n, h0, w0).
    """
    if key.endswith("rel_pos.table"):
        return v.reshape(v.shape[0], *infer_grid(v.shape[-1], tuple(target.shape[-2:]), key))
    if key.endswith("cross_bias"):
        heads, n = target.shape[:2]
        flat = v.reshape(heads, n, -1)
    else:
        n = target.shape[0]
        flat = v.reshape(n, -1)
    return flat.reshape(*flat.shape[:-1], *infer_grid(flat.shape[-1], tuple(target.shape[-2:]), key))


def _fit_tables(state: dict[str, torch.Tensor], model: nn.Module, official: set[str]) -> dict[str, torch.Tensor]:
    """Bring position/cross-token tables to the model's grid: official flat tables are reshaped first, then any
    table trained for another grid is resampled (offset tables with anchored corners, cross tables bicubic/bilinear
    over absolute positions, position embeddings bicubic)."""
    own = model.state_dict()
    out = {}
    for k, v in state.items():
        target = own.get(k)
        if target is None or v.shape == target.shape:
            out[k] = v
            continue
        if k in official:
            v = _official_table(k, v, target)
        if v.shape != target.shape and v.ndim == target.ndim and v.shape[:-2] == target.shape[:-2]:
            if k.endswith("rel_pos.table"):
                v = resample_grid_table(v, tuple(target.shape[-2:]), align_corners=True)
            elif k.endswith(("cross_bias", "cross_scale")):
                v = resample_grid_table(v, tuple(target.shape[-2:]),
                                        mode="bilinear" if k.endswith("cross_scale") else "bicubic")
        elif k == "pos_embed" and v.ndim == 3 and v.shape[-1] == target.shape[-1]:
            side = math.isqrt(v.shape[1] - 1)
            v = resample_pos_embed(v, (side, side), tuple(model.patch_embed.grid_size))
        out[k] = v
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an FcaFormer checkpoint in the official layout (hkzhang-git/FcaFormer) to ours.

    Maps every official key (stem ``patch_embed.seq``, ``layer_i`` blocks and downsampling, Fca tables, head),
    reshapes the flat official tables (``attention_biases`` (heads, H*W), ``s_token_bias`` (1, heads, 1, n*S),
    ``s_scale_factors`` (1, n*S, 1)) to ours, and resamples tables trained at another input size to the model's.
    Official ``attention_bias_idxs`` buffers (older exports) are recomputed by us and dropped. Keys already in our
    layout pass unchanged (``mlp_norm`` of earlier crossformers versions becomes ``ffn_norm``); unknown keys are
    kept so that strict loading reports them.

    Raises:
        CheckpointError: a checkpoint of another architecture (names the family it looks like).
    """
    if not state_dict:
        return state_dict
    check_family(state_dict, "FcaFormer", "an")
    # crossformers before 2026-12-07 named the FFN's input norm ``mlp_norm``
    state_dict = {k.replace(".mlp_norm.", ".ffn_norm."): v for k, v in state_dict.items()}
    if isinstance(model, FcaFormerPlain):
        return _fit_tables(state_dict, model, set())
    state, official = {}, set()
    for k, v in state_dict.items():
        if k.endswith("attention_bias_idxs"):
            continue
        ours = _map_official_key(k)
        if ours != k and ours.endswith(("rel_pos.table", "cross_bias", "cross_scale")):
            official.add(ours)
        state[ours] = v
    return _fit_tables(state, model, official)


# ----------------------------------------------------------------------------------------------------------------
# pretrained configs and entrypoints

_PAPER = "arXiv:2211.07198"
_SOURCE = "https://github.com/hkzhang-git/FcaFormer"


def _cfg(**kwargs) -> dict:
    cfg = dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv="stem.0.conv", classifier="head.fc",
        license="unknown (official repository has no license file)", paper_ids=_PAPER, origin_url=_SOURCE,
        paper_name="Fcaformer: Forward Cross Attention in Hybrid Vision Transformer")
    cfg.update(kwargs)
    return cfg


def _register_cfgs():
    from timm.models import generate_default_cfgs

    return generate_default_cfgs({
        "fcaformer_l0.untrained": _cfg(classifier="head", first_conv="patch_embed.proj", pool_size=None,
                                       notes="plain FcaFormer of the paper (Fig. 3a); no released weights"),
        "fcaformer_l1.untrained": _cfg(notes="no released weights"),
        "fcaformer_l2.in1k": _cfg(
            notes="ImageNet-1k weights linked (Google Drive/Baidu, not a direct URL) from the official README: "
                  "download them and pass checkpoint_path=; eval protocol 224, crop 0.875, bicubic, ImageNet mean/std"),
        "fcaformer_l3.untrained": _cfg(notes="no released weights"),
        "fcaformer_l4.untrained": _cfg(notes="no released weights"),
        "fcaformer_nano.untrained": _cfg(
            num_classes=10, input_size=(1, 56, 56), pool_size=(2, 2), crop_pct=1.0, mean=(0.2860,), std=(0.3530,),
            notes="small CPU-scale variant for Fashion-MNIST-like data (28x28 images upsampled to 56); train it with `crossformers train`"),
    })


default_cfgs = _register_cfgs()

_MODEL_ARGS = {
    "fcaformer_l1": dict(embed_dim=(64, 128, 192, 320), depths=(2, 2, 6, 2), num_heads=(0, 0, 6, 10)),
    "fcaformer_l2": dict(embed_dim=(96, 192, 320, 480), depths=(2, 2, 7, 2), num_heads=(0, 0, 10, 15)),
    "fcaformer_l3": dict(embed_dim=(96, 192, 320, 512), depths=(3, 6, 12, 3), num_heads=(0, 0, 10, 16)),
    "fcaformer_l4": dict(embed_dim=(128, 256, 512, 768), depths=(3, 6, 12, 3), num_heads=(0, 0, 16, 24)),
    # CPU-scale variant: the hybrid layout at ~1.1 M params; 28x28 grey input runs at strides 4/8/16/32 with the
    # stem adapted by img_size (see README: Fashion-MNIST demo)
    "fcaformer_nano": dict(embed_dim=(32, 64, 128, 160), depths=(1, 1, 4, 2), num_heads=(0, 0, 4, 5),
                           img_size=56, in_chans=1, num_classes=10),
}


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    name = variant.split(".")[0]
    args = dict(_MODEL_ARGS.get(name, {}))
    args.update(kwargs)
    if name == "fcaformer_l0":
        return build_family_model(FcaFormerPlain, variant, pretrained, checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls="getter", out_indices=(11,)), **args)
    return build_family_model(FcaFormer, variant, pretrained, checkpoint_filter_fn,
                       feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **args)


@register_model
def fcaformer_l0(pretrained: bool = False, **kwargs) -> FcaFormerPlain:
    """FcaFormer-L0, plain (paper Fig. 3a): DeiT-Tiny with Fca blocks, patch 16, D=192, 12 blocks, 3 heads (~5.9 M)."""
    return _create("fcaformer_l0", pretrained, **kwargs)


@register_model
def fcaformer_l1(pretrained: bool = False, **kwargs) -> FcaFormer:
    """FcaFormer-L1 (6.2 M params, 1.4 GMACs at 224, 80.3 top-1)."""
    return _create("fcaformer_l1", pretrained, **kwargs)


@register_model
def fcaformer_l2(pretrained: bool = False, **kwargs) -> FcaFormer:
    """FcaFormer-L2 (16.3 M params, 3.6 GMACs at 224, 83.1 top-1)."""
    return _create("fcaformer_l2", pretrained, **kwargs)


@register_model
def fcaformer_l3(pretrained: bool = False, **kwargs) -> FcaFormer:
    """FcaFormer-L3 (27.9 M params, 6.7 GMACs at 224, 84.2 top-1)."""
    return _create("fcaformer_l3", pretrained, **kwargs)


@register_model
def fcaformer_l4(pretrained: bool = False, **kwargs) -> FcaFormer:
    """FcaFormer-L4 (65.6 M params, 14.5 GMACs at 224, 84.9 top-1)."""
    return _create("fcaformer_l4", pretrained, **kwargs)


@register_model
def fcaformer_nano(pretrained: bool = False, **kwargs) -> FcaFormer:
    """FcaFormer-nano: a CPU-scale hybrid FcaFormer for small grey images (Fashion-MNIST): 1 input channel, 10
    classes, tables sized for 56x56 input (28x28 images upsampled 2x by the default transforms)."""
    return _create("fcaformer_nano", pretrained, **kwargs)


for _name in ("fcaformer_l0", "fcaformer_l1", "fcaformer_l2", "fcaformer_l3", "fcaformer_l4", "fcaformer_nano"):
    register_name(_name)


# ================================================================================================================
# Dense (detection / segmentation) backbone: the authors' FcaFormer_SH_512
# ================================================================================================================
#
# hkzhang-git/FcaFormer ``object_detection/mmdet/models/backbones/fcaformer.py`` (= ``semantic-segmentation/backbone/
# fcaformer.py``), commit 7dcd8e0ed207a6c74708ab10553dcd6a6d4ea2bd. The trunk is FcaFormer-L2's (same blocks and
# weights); what differs from the classifier (checked against their code and by tests/fixtures/parity/dense):
#
# * the Fca stages attend inside windows (14 x 14 tokens in stage 3, 7 x 7 in stage 4, i.e. the classifier's grids at
#   224 px) instead of over the whole map; a map that is not a multiple of the window is zero-padded, at the top/left
#   before even blocks (0, 2, ...) and at the bottom/right before odd blocks, so the windows shift between blocks; the
#   padded tokens are attended like others (no mask), as theirs;
# * cross tokens are made and consumed per window: block i of a stage reads, in each window, the cross tokens that
#   blocks 0..i-1 made in the window with the same index;
# * each stage's map (before the next downsampling) goes through a 1x1 convolution (no bias) to 96/192/384/768
#   channels and a channels-first LayerNorm (eps 1e-6): the four outputs. There is no classifier head.


class WindowFcaStage(nn.Module):
    """An Fca stage run in windows, as the authors' dense ``FcaLayer`` (see the section comment above).

    Args:
        in_chs, out_chs: channels before / after the optional downsampling.
        depth: Fca blocks.
        num_heads: heads.
        window: window side (tokens); the blocks' position tables are sized for it.
        drop_path: stochastic depth rate per block.
        down: downsample by 2 first (FcaFormer's transition).
        **block_kwargs: :class:`FcaBlock` arguments.

    Input (B, C_in, H, W) -> (B, out_chs, H', W'), any H', W' >= 1.
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, num_heads: int, window: int, drop_path: list[float],
                 down: bool, **block_kwargs):
        super().__init__()
        self.window = window
        self.downsample = downsample(in_chs, out_chs) if down else nn.Identity()
        self.blocks = fca_blocks(out_chs, depth, num_heads, (window, window), drop_path, True, max(depth, 1),
                                 **block_kwargs)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, C, H, W = x.shape
        w = self.window
        ph, pw = (-H) % w, (-W) % w
        hn, wn = (H + ph) // w, (W + pw) // w
        history: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            top_left = i % 2 == 0
            xp = F.pad(x, (pw, 0, ph, 0) if top_left else (0, pw, 0, ph))
            tokens = xp.reshape(B, C, hn, w, wn, w).permute(0, 2, 4, 3, 5, 1).reshape(B * hn * wn, w * w, C)
            sources = history[-blk.num_sources:] if blk.num_sources else None
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                tokens, new = torch.utils.checkpoint.checkpoint(blk, tokens, (w, w), sources, use_reentrant=False)
            else:
                tokens, new = blk(tokens, (w, w), sources)
            if new is not None:
                history.append(new)
            xp = tokens.reshape(B, hn, wn, w, w, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, hn * w, wn * w)
            x = xp[:, :, ph:, pw:] if top_left else xp[:, :, :H, :W]
        return x


class FcaFormerDense(DenseBackboneHead, _FcaCommon, HierarchicalModel):
    """The authors' dense FcaFormer backbone ``FcaFormer_SH_512`` (Mask R-CNN / Cascade Mask R-CNN / UPerNet in the
    FcaFormer paper, Tables 3-4): FcaFormer-L2's trunk with windowed Fca stages and projected, normalised outputs.

    Args:
        in_chans: input channels.
        embed_dim: channels per stage (theirs: 96, 192, 320, 480).
        depths: blocks per stage (2, 2, 7, 2).
        num_heads: heads per stage (0 for the ConvNeXt stages; 10, 15).
        window_sizes: window side of each Fca stage (14, 7).
        out_dims: channels of the four outputs after the 1x1 projections (96, 192, 384, 768).
        mlp_ratio: FFN ratio of the Fca blocks.
        drop_path_rate: stochastic depth, linear over all blocks (their default 0.1).
        ls_init_value: layer-scale init.
        out_indices: which maps to return (default all four).
        img_size: accepted for API symmetry and ignored (the tables are sized by the windows).

    Input (B, in_chans, H, W), any H, W >= 4 -> list of NCHW maps (B, out_dims[i], ceil(H / 2^(i+2)),
    ceil(W / 2^(i+2))). ``feature_info`` (a timm ``FeatureInfo``) describes them.
    """

    classifier_model = "fcaformer_l2"

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: tuple[int, ...] = (96, 192, 320, 480),
        depths: tuple[int, ...] = (2, 2, 7, 2),
        num_heads: tuple[int, ...] = (0, 0, 10, 15),
        window_sizes: tuple[int, int] = (14, 7),
        out_dims: tuple[int, ...] = (96, 192, 384, 768),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        ls_init_value: float = 1e-6,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        img_size: int | tuple[int, int] | None = None,
    ):
        super().__init__()
        from timm.models._features import FeatureInfo

        if not (len(embed_dim) == len(depths) == len(num_heads) == len(out_dims) == 4) or len(window_sizes) != 2:
            raise ValueError("FcaFormerDense needs 4 stages (embed_dim, depths, num_heads, out_dims) and 2 window "
                             "sizes (one per Fca stage)")
        if num_heads[0] or num_heads[1] or not (num_heads[2] and num_heads[3]):
            raise ValueError(f"num_heads must be 0 for the two ConvNeXt stages and > 0 for the Fca stages, "
                             f"got {tuple(num_heads)}")
        self.in_chans = in_chans
        self.num_classes = 0
        self.embed_dim = tuple(embed_dim)
        self.window_sizes = tuple(window_sizes)
        self.num_features = self.head_hidden_size = out_dims[-1]
        self.min_input_size = 4
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, embed_dim[0] // 2, 3, stride=2, act_layer=nn.GELU),
            ConvNormAct(embed_dim[0] // 2, embed_dim[0], 3, stride=2, apply_act=False),
        )
        dpr = [r.tolist() for r in
               torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        stages: list[nn.Module] = []
        prev = embed_dim[0]
        for i in range(4):
            if i < 2:
                stages.append(ConvStage(prev, embed_dim[i], depths[i], dpr[i], down=i > 0,
                                        ls_init_value=ls_init_value))
            else:
                stages.append(WindowFcaStage(prev, embed_dim[i], depths[i], num_heads[i], window_sizes[i - 2], dpr[i],
                                             down=True, mlp_ratio=mlp_ratio, ls_init_value=ls_init_value))
            prev = embed_dim[i]
        self.stages = nn.Sequential(*stages)
        self.out_proj = nn.ModuleList([nn.Conv2d(embed_dim[i], out_dims[i], 1, bias=False) for i in range(4)])
        self.out_norm = nn.ModuleList([LayerNorm2d(out_dims[i], eps=1e-6) for i in range(4)])
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or any(i not in range(4) for i in self.out_indices):
            raise ValueError(f"out_indices {out_indices} must be stage indices among 0..3")
        self.feature_info = FeatureInfo(
            [dict(num_chs=out_dims[i], reduction=4 * 2 ** i, module=f"out_norm.{i}") for i in range(4)],
            self.out_indices)
        self.norm = nn.Identity()
        self.head = nn.Identity()
        self.apply(FcaFormer._init_weights)

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The authors' dense (or a classification) checkpoint in this backbone's layout
        (:func:`dense_checkpoint_filter_fn`)."""
        return dense_checkpoint_filter_fn(dict(state_dict), self)

    def dense_only_keys(self) -> list[str]:
        """Keys a classification (FcaFormer-L2) checkpoint does not have: the output projections and norms."""
        return [k for k in self.state_dict() if k.startswith(("out_proj.", "out_norm."))]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm convention)."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^out_(proj|norm)", (99999,))])


    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, C, H, W) -> the projected, normalised maps of ``out_indices`` (NCHW)."""
        x = self._embed(x)
        outs = []
        for i, stage in enumerate(self.stages[: max(self.out_indices) + 1]):
            x = stage(x)
            if i in self.out_indices:
                outs.append(self.out_norm[i](self.out_proj[i](x)))
        return outs


def dense_checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert the backbone part of a ``FcaFormer_SH_512`` checkpoint (keys without ``backbone.``), or a
    classification checkpoint, to :class:`FcaFormerDense`'s names: ``head<i>.weight`` -> ``out_proj.<i>.weight``,
    ``norm<i>.*`` -> ``out_norm.<i>.*``, the trunk as :func:`checkpoint_filter_fn` (so ``head.*`` of a classifier
    becomes ``head.norm``/``head.fc``, which the loader reports as dropped).

    Raises:
        CheckpointError: a checkpoint of another architecture.
    """
    renamed = {}
    for k, v in state_dict.items():
        k = re.sub(r"^head(\d)\.weight$", r"out_proj.\1.weight", k)
        k = re.sub(r"^norm(\d)\.(weight|bias)$", r"out_norm.\1.\2", k)
        renamed[k] = v
    return checkpoint_filter_fn(renamed, model)


def _create_dense(variant: str, **kwargs) -> FcaFormerDense:
    cfg = _cfg(num_classes=0, classifier="", input_size=(3, 512, 512), pool_size=None, crop_pct=1.0,
               first_conv="stem.0.conv", notes="the authors' dense backbone FcaFormer_SH_512 (detection/segmentation)")
    return build_dense_model(FcaFormerDense, variant, cfg, **kwargs)


@register_model
def fcaformer_sh_l2(pretrained: bool = False, **kwargs) -> FcaFormerDense:
    """FcaFormer-L2 dense backbone (the authors' ``FcaFormer_SH_512``): windowed Fca stages (14, 7), four maps of
    96/192/384/768 channels. Weights: an FcaFormer-L2 ImageNet checkpoint or their mmdet/mmseg checkpoint."""
    if pretrained:
        raise PretrainedUnavailableError(
            f"no direct download for fcaformer_sh_l2: the authors link their checkpoints from {_SOURCE}; download "
            "one and pass checkpoint_path=FILE")
    return _create_dense("fcaformer_sh_l2", **kwargs)


register_name("fcaformer_sh_l2", dense=True)
