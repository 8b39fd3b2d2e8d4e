"""CrossFormer (Wang et al., ICLR 2022, arXiv:2108.00154) and CrossFormer++ (Wang et al., TPAMI 2023,
arXiv:2303.06908), one model with options.

Pieces, by the papers' terms:

* **Cross-scale embedding layer (CEL, Sec. 3.1)** — the stem (kernels 4/8/16/32, stride 4) and every patch merging
  (kernels 2/4, stride 2) concatenate convolutions of several kernel sizes: :class:`~crossformers.layers.embed.
  CrossScaleEmbedding`.
* **Short- and long-distance attention (SDA/LDA, Sec. 3.2.1)** — blocks alternate (even index SDA, odd LDA):
  attention inside G x G groups, either contiguous windows or tokens sampled every I tokens:
  :mod:`crossformers.layers.grouping`.
* **Dynamic position bias (DPB, Sec. 3.2.2)** — an MLP gives the relative-position bias of any group size:
  :class:`~crossformers.layers.position_bias.DynamicPosBias`. In inference (eval mode, gradients off) the bias of each
  group size and map size is computed once and cached; the cache is cleared by ``train()`` and by loading weights.
* **Progressive group size (PGS, CrossFormer++ Sec. 4.1)** — group sizes per stage/block (``group_size``,
  ``group_type`` in ``constant``, ``linear``, ``linear_div``, ``alter``, ``7_14``): :func:`progressive_group_sizes`.
* **Amplitude cooling layer (ACL, CrossFormer++ Sec. 4.2)** — a depthwise 3x3 conv + LayerNorm (no residual) after
  every third block (``(i + 1) % 3 == 0`` and not the last block of a stage), which keeps activation amplitudes from
  growing with depth: ``acl=True``.

Any input size: padding and masking follow the official code (pad bottom/right to a multiple of the group extent,
mask padded keys with -1e6), computed per forward from the actual map size, so outputs equal the official ones at
every size where the official code runs and the model also runs at sizes it refuses (non-square, odd). A map no larger
than the group size is attended as one SDA group of its smaller side (as the official rule at construction time).
Odd maps are padded to even before patch merging. The group sizes themselves are fixed at construction from
``img_size`` (as officially).
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
from timm.layers import ClassifierHead, DropPath, Mlp, register_notrace_function, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..checkpoint import check_family, register_checkpoint_markers
from ..errors import CheckpointError, PretrainedUnavailableError
from ..factory import register_name
from ..layers.attention import Attention
from ..layers.bias_cache import InferenceCache
from ..layers.embed import CrossScaleEmbedding
from ..layers.geometry import Lattice, conv_lattice
from ..layers.grouping import group_coordinates, group_tokens, padded_size, padding_key_mask, ungroup_tokens
from ..layers.position_bias import DynamicPosBias
from ._base import DenseBackboneHead, HierarchicalModel
from ._helpers import build_dense_model, build_family_model
from .protocol import AttentionLayout, BlockInfo, SizeRule, TokenSegment, call_arg, lcm, smallest_multiple_above

__all__ = ["CrossFormer", "CrossFormerBlock", "progressive_group_sizes", "checkpoint_filter_fn"]

register_checkpoint_markers("CrossFormer/CrossFormer++ (official layout)", ("layers.0.blocks.0.attn.pos.",))
register_checkpoint_markers("CrossFormer/CrossFormer++ (crossformers layout)", (".attn.pos.pos_proj.",))

#: Additive attention bias of a padded key (LDA/SDA groups padded to a multiple of the group size): large enough that
#: exp() of it underflows to exactly 0 in fp32 and bf16 (so a padded key gets no attention), finite so that the sum
#: with the position bias and the fused kernels stay NaN-free. -1e6 is the official code's value (parity).
PADDED_KEY_BIAS = -1e6

GROUP_TYPES = ("constant", "linear", "linear_div", "alter", "7_14")


def progressive_group_sizes(group_size: tuple[int, ...], depths: tuple[int, ...], resolution: int,
                            group_type: str = "constant") -> list[list[int]]:
    """Group size of every block (progressive group size, CrossFormer++ Sec. 4.1; official schedules).

    Args:
        group_size: per-stage group size G (used by ``constant`` and ``7_14``).
        depths: blocks per stage.
        resolution: token-map side after the stem (img_size // 4).
        group_type: ``constant`` (G per stage); ``linear`` (the group covers a fraction of the stage's map that grows
            linearly from 4/resolution to 1 over all blocks, at least 4); ``linear_div`` (as linear, but in stage 3 a
            group over half the map stays at half unless it exceeds 3/4, and elsewhere jumps to the whole map);
            ``alter`` (as linear, but past half the map alternate half/whole in stage 3); ``7_14`` (stage 3's first
            four blocks use G/2).

    Returns:
        ``sizes[stage][block]``.

    Raises:
        ValueError: unknown ``group_type``.
    """
    if group_type not in GROUP_TYPES:
        raise ValueError(f"unknown group_type '{group_type}': choose one of {', '.join(GROUP_TYPES)}")
    total = sum(depths)
    start = 4 / resolution
    step = (1 - start) / total
    out: list[list[int]] = []
    cnt = 0
    for stage, depth in enumerate(depths):
        side = resolution // 2 ** stage
        sizes = []
        for block in range(depth):
            if group_type == "constant":
                g = group_size[stage]
            elif group_type == "7_14":
                g = group_size[stage] // 2 if stage == 2 and block < 4 else group_size[stage]
            else:
                gz = side * (start + cnt * step)
                if gz > side // 2 and group_type == "linear_div":
                    gz = side if gz > side * 3 / 4 or stage != 2 else side // 2
                elif gz > side // 2 and group_type == "alter":
                    gz = side if cnt % 2 != 0 or stage != 2 else side // 2
                g = max(4, math.ceil(gz))
            sizes.append(int(g))
            cnt += 1
        out.append(sizes)
    return out


@register_notrace_function  # size-dependent: an FX leaf
def block_grouping(height: int, width: int, group_size: int, lda: bool) -> tuple[int, bool]:
    """(G, lda) used on a (height, width) map: a map no larger than G is one SDA group of its smaller side."""
    if min(height, width) <= group_size:
        return min(height, width), False
    return group_size, lda


@register_notrace_function  # size-dependent: an FX leaf
def mask_padded_keys(bias: torch.Tensor, height: int, width: int, group_size: int, interval: int,
                     lda: bool) -> torch.Tensor:
    """Add the official mask value to the bias (1, heads, N, N) of keys that are padding: (nG or 1, heads, N, N)."""
    pad = padding_key_mask(height, width, group_size, interval, lda, device=bias.device)
    if pad is not None:
        bias = bias + (pad.to(bias.dtype) * PADDED_KEY_BIAS)[:, None, None, :]
    return bias


class GroupAttention(Attention):
    """Multi-head self-attention inside groups with a dynamic position bias (CrossFormer Sec. 3.2): the shared
    :class:`~crossformers.layers.attention.Attention` owning a :class:`~crossformers.layers.position_bias.
    DynamicPosBias` (``pos``).

    Input (B, nG, N, C) groups of N = Gh * Gw tokens and an additive bias broadcastable to (nG, heads, N, N);
    output (B, nG, N, C).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, pos=DynamicPosBias(dim, num_heads))


class AmplitudeCooling(nn.Module):
    """Amplitude cooling layer (ACL, CrossFormer++ Sec. 4.2): depthwise 3x3 conv then LayerNorm, no residual.

    Input/output (B, H, W, C).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class CrossFormerBlock(nn.Module):
    """A CrossFormer block: SDA or LDA with DPB, MLP, optional ACL (CrossFormer Fig. 2; CrossFormer++ Fig. 5).

    Args:
        dim: channels C.
        num_heads: heads.
        group_size: G.
        interval: I (LDA).
        lda: long-distance attention if True, else short-distance.
        mlp_ratio: MLP hidden / C.
        qkv_bias: bias in qkv.
        drop_path, proj_drop, attn_drop: regularisation rates.
        acl: append an amplitude cooling layer.

    Input/output (B, H, W, C), any H, W.
    """

    def __init__(self, dim: int, num_heads: int, group_size: int, interval: int, lda: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 acl: bool = False):
        super().__init__()
        self.group_size = group_size
        self.interval = interval
        self.lda = lda
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GroupAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.acl = AmplitudeCooling(dim) if acl else None
        self.bias_cache = InferenceCache()

    def grouping(self, height: int, width: int) -> tuple[int, bool]:
        """(G, lda) used on a (height, width) map: a map no larger than G is one SDA group of its smaller side."""
        return block_grouping(height, width, self.group_size, self.lda)

    def interval_for(self, height: int, width: int) -> int:
        """LDA interval I used on a (height, width) map (fixed here; the dense block may adapt it)."""
        return self.interval

    def attn_bias(self, height: int, width: int) -> torch.Tensor:
        """DPB plus padding mask for a (height, width) map: (nG or 1, heads, G*G, G*G).

        Cached in inference per map size and per storage and version of the DPB parameters
        (:class:`~crossformers.layers.bias_cache.InferenceCache`)."""
        G, lda = self.grouping(height, width)
        interval = self.interval_for(height, width)

        def compute() -> torch.Tensor:
            return mask_padded_keys(self.attn.pos(G, G).unsqueeze(0), height, width, G, interval, lda)

        return self.bias_cache.get((height, width, G, lda, interval), self.attn.pos.parameters(), compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        G, lda = self.grouping(H, W)
        interval = self.interval_for(H, W)
        groups = group_tokens(self.norm1(x), G, interval, lda)
        groups = self.attn(groups, self.attn_bias(H, W))
        x = x + self.drop_path(ungroup_tokens(groups, H, W, G, interval, lda))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.acl is not None:
            x = self.acl(x)
        return x


class CrossFormerStage(nn.Module):
    """Patch merging by CEL (stages 2-4), then blocks alternating SDA (even) / LDA (odd). (B, H, W, C) in and out."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, group_sizes: list[int], interval: int,
                 merge_size: tuple[int, ...] | None, drop_path: list[float], acl: bool, **block_kwargs):
        super().__init__()
        self.downsample = (CrossScaleEmbedding(in_dim, dim, merge_size, 2, nn.LayerNorm, norm_first=True,
                                               input_fmt="NHWC", pad_to_stride=True)
                           if merge_size else nn.Identity())
        self.blocks = nn.ModuleList([
            CrossFormerBlock(dim, num_heads, group_sizes[i], interval, lda=i % 2 == 1, drop_path=drop_path[i],
                             acl=acl and (i + 1) % 3 == 0 and i < depth - 1, **block_kwargs)
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class CrossFormer(HierarchicalModel):
    """CrossFormer / CrossFormer++ classifier and backbone.

    Args:
        img_size: construction size; sets the progressive group sizes (as officially). Any size runs.
        in_chans: input channels.
        num_classes: classes (0 = features only).
        embed_dim: channels of stage 1 (doubling each stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        group_size: G per stage (base of the schedule).
        interval: LDA interval I per stage.
        mlp_ratio: MLP ratio (one value or one per stage).
        qkv_bias: bias in qkv.
        drop_rate: dropout before the classifier.
        proj_drop_rate, attn_drop_rate: dropout in blocks.
        drop_path_rate: stochastic depth, linear over blocks.
        patch_size: CEL kernel sizes of the stem (stride = the smallest).
        merge_size: CEL kernel sizes of the three patch mergings.
        group_type: progressive group size schedule (see :func:`progressive_group_sizes`).
        acl: amplitude cooling layers (CrossFormer++).
        global_pool: 'avg' or ''.

    Input (B, in_chans, H, W), H, W >= 32 -> logits (B, num_classes). Stage maps are channels-last (as timm's Swin);
    ``forward_intermediates`` returns NCHW by default.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        group_size: tuple[int, ...] = (7, 7, 7, 7),
        interval: tuple[int, ...] = (8, 4, 2, 1),
        mlp_ratio: float | tuple[float, ...] = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        patch_size: tuple[int, ...] = (4, 8, 16, 32),
        merge_size: tuple[tuple[int, ...], ...] = ((2, 4), (2, 4), (2, 4)),
        group_type: str = "constant",
        acl: bool = False,
        global_pool: str = "avg",
    ):
        super().__init__()
        self.map_fmt = "NHWC"
        n = len(depths)
        if not (len(num_heads) == len(group_size) == len(interval) == n and len(merge_size) == n - 1):
            raise ValueError(f"depths has {n} stages: num_heads, group_size and interval need {n} values and "
                             f"merge_size {n - 1}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        mlp_ratios = [mlp_ratio] * n if isinstance(mlp_ratio, (int, float)) else list(mlp_ratio)
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (n - 1)
        stride = min(patch_size)
        self.min_input_size = stride * 2 ** (n - 1)
        self.patch_embed = CrossScaleEmbedding(in_chans, embed_dim, patch_size, stride, nn.LayerNorm)
        groups = progressive_group_sizes(tuple(group_size), tuple(depths), img_size[0] // stride, group_type)
        self.group_sizes = groups
        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        self.stages = nn.Sequential(*[
            CrossFormerStage(embed_dim * 2 ** max(i - 1, 0), embed_dim * 2 ** i, depths[i], num_heads[i], groups[i],
                             interval[i], merge_size[i - 1] if i > 0 else None, dpr[i], acl,
                             mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                             attn_drop=attn_drop_rate)
            for i in range(n)
        ])
        self.feature_info = [dict(num_chs=embed_dim * 2 ** i, reduction=stride * 2 ** i, module=f"stages.{i}")
                             for i in range(n)]
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt="NHWC")
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """CEL stem: images (B, C, H, W) -> tokens (B, H/4, W/4, embed_dim), LayerNorm applied."""
        return self.patch_embed(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The DPB MLPs are position encodings: no weight decay on them (norms/biases are excluded by 1-D rule)."""
        return {n for n, _ in self.named_parameters() if ".attn.pos." in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))])

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official checkpoint's state dict in our layout (:func:`checkpoint_filter_fn`; ours passes unchanged)."""
        return checkpoint_filter_fn(dict(state_dict), self)

    # ---- the family protocol (crossformers.models.protocol)
    family = "crossformer"
    prefers_channels_last = False  # maps are channels-last tokens already; the stem convolutions gain nothing
    #: the model whose linear-path calibration stands for the family (crossformers.layers.linear_calibration)
    linear_calibration_model = "crossformer_tiny"
    #: the family's large variant the calibration also times (CrossFormer-B, 9.2 GMACs)
    linear_calibration_large_model = "crossformer_base"

    def block_infos(self) -> list[BlockInfo]:
        """Every SDA/LDA block in execution order (CrossFormer Sec. 3.2)."""
        out = []
        for s, stage in enumerate(self.stages):
            names = [f"stages.{s}.blocks.{j}" for j in range(len(stage.blocks))]
            for j, blk in enumerate(stage.blocks):
                out.append(BlockInfo(name=names[j], index=len(out), module=blk, family=self.family,
                                     kind="lda" if blk.lda else "sda", stage=s, attention=blk.attn.sdpa,
                                     acl=blk.acl is not None, position=j, siblings=names))
        return out

    def input_modules(self) -> list[nn.Module]:
        """The model and its CEL stem: both receive the image batch first."""
        return [self, self.patch_embed]

    def token_lattice(self, stage: int, height: int, width: int) -> Lattice:
        """Where the tokens of a (height, width) map of ``stage`` sit in the input, in pixels: the receptive-field
        centres of the stem and the patch mergings (CEL: the smallest kernel; all its kernels share centres)."""
        convs = [self.patch_embed.projs[0]] + [self.stages[s].downsample.projs[0] for s in range(1, stage + 1)]
        return conv_lattice(convs, height, width)

    def attention_layout(self, block: BlockInfo, args: tuple, kwargs: dict,
                         image_size: tuple[int, int] | None) -> AttentionLayout:
        """Queries and keys of one SDA/LDA call: the G x G members of every group, padding without a position."""
        blk = block.module
        x = call_arg(args, kwargs, 0, "x")
        H, W = int(x.shape[1]), int(x.shape[2])
        G, lda = blk.grouping(H, W)
        interval = blk.interval_for(H, W)
        lattice = self.token_lattice(block.stage, H, W)
        coords, valid = group_coordinates(H, W, G, interval, lda)
        cells = np.where(valid, coords[..., 0] * W + coords[..., 1], -1)
        Hp, Wp = padded_size(H, W, G, interval, lda)
        seg = [TokenSegment("tokens", 0, G * G, lattice)]
        span = (G - 1) * (interval if lda else 1) + 1
        meta = dict(grid=(H, W), stride_px=lattice.stride, group_size=G, interval=interval, lda=lda,
                    padded=(Hp, Wp), num_groups=int(cells.shape[0]), padding_tokens=int(Hp * Wp - H * W),
                    group_span_px=(span * lattice.stride[0], span * lattice.stride[1]))
        caption = f"LDA G={G} I={interval}" if lda else f"SDA G={G}"
        return AttentionLayout(seg, list(seg), cells, cells.copy(), meta, caption)

    def input_size_rule(self) -> SizeRule:
        """Sizes on which no map is padded or masked and none is smaller than its group: H, W multiples of
        P = lcm(stride * group extent) over blocks, large enough that every map exceeds its group."""
        stride0 = int(self.patch_embed.stride)
        periods = [stride0 * 2 ** (len(self.stages) - 1)]  # even maps before every merging
        larger = []
        for s, stage in enumerate(self.stages):
            r = stride0 * 2 ** s
            for blk in stage.blocks:
                periods.append(r * blk.group_size * (blk.interval if blk.lda else 1))
                larger.append(r * blk.group_size)  # a map of at most G tokens is one group of its own size
        p = lcm(periods)
        m = smallest_multiple_above(larger, p)
        return SizeRule((p, p), (m, m), "CrossFormer pads every map to a multiple of its group extent and masks the "
                                         "padding, and a map no larger than a group becomes one group")

    def cam_target_layers(self) -> list[str]:
        """Class activation maps on the last stage's map."""
        return [f"stages.{len(self.stages) - 1}"]


# ----------------------------------------------------------------------------------------------------------------
# official checkpoints -> ours

_DERIVED = ("attn.biases", "attn.relative_position_index", "attn_mask")


def _map_official_key(key: str) -> str | None:
    """Our name for an official key; None for buffers we derive (older releases saved the DPB coordinate set
    ``biases``, ``relative_position_index`` and ``attn_mask``; they depend only on the group size)."""
    if key.endswith(_DERIVED):
        return None
    m = re.match(r"^layers\.(\d+)\.downsample\.(norm|reductions)\.(.*)$", key)
    if m:  # official: end of stage i; ours: start of stage i + 1
        part = "norm" if m.group(2) == "norm" else "projs"
        return f"stages.{int(m.group(1)) + 1}.downsample.{part}.{m.group(3)}"
    key = re.sub(r"^layers\.", "stages.", key)
    key = key.replace(".ex_conv.", ".acl.conv.").replace(".ex_ln.", ".acl.norm.")
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert a cheerss/CrossFormer checkpoint (CrossFormer or CrossFormer++, current or older layout) to ours.

    Renames ``layers.i`` -> ``stages.i`` (the merging at the end of official stage i is the start of our stage i+1),
    ACL ``ex_conv``/``ex_ln`` -> ``acl.conv``/``acl.norm``, ``head`` -> ``head.fc``; drops the derived buffers of older
    releases (``biases``, ``relative_position_index``, ``attn_mask``) after checking that their group size matches the
    model's. Keys in our layout pass unchanged.

    Raises:
        CheckpointError: another architecture, or derived buffers of a different group size.
    """
    check_family(state_dict, "CrossFormer")
    out = {}
    for k, v in state_dict.items():
        new = _map_official_key(k)
        if new is None:
            _check_derived(k, v, model)
            continue
        out[new] = v
    return out


def _check_derived(key: str, value: torch.Tensor, model: nn.Module) -> None:
    m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.biases$", key)
    if not m or not isinstance(model, CrossFormer):
        return
    stage, block = int(m.group(1)), int(m.group(2))
    try:
        blk = model.stages[stage].blocks[block]
    except (IndexError, AttributeError):
        return
    side = math.isqrt(value.shape[0])
    expected = model.img_size[0] // model.patch_embed.stride // 2 ** stage
    g = blk.grouping(expected, expected)[0]
    if side != 2 * g - 1:
        raise CheckpointError(f"{key} was saved for group size {(side + 1) // 2} but the model uses {g} there: "
                              "build the model with the img_size/group_size of the checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# configs and entrypoints

_V1 = "https://github.com/cheerss/CrossFormer"


def _cfg(**kwargs) -> dict:
    cfg = dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
               interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               first_conv="patch_embed.projs.0", classifier="head.fc", license="mit", origin_url=_V1)
    cfg.update(kwargs)
    return cfg


_DRIVE = ("weights on Google Drive / BaiduCloud linked from the official README (not direct downloads): download "
          "the .pth and pass checkpoint_path=")
default_cfgs = generate_default_cfgs({
    "crossformer_tiny.in1k": _cfg(paper_ids="arXiv:2108.00154", notes=_DRIVE),
    "crossformer_small.in1k": _cfg(paper_ids="arXiv:2108.00154", notes=_DRIVE),
    "crossformer_base.in1k": _cfg(paper_ids="arXiv:2108.00154", notes=_DRIVE),
    "crossformer_large.in1k": _cfg(paper_ids="arXiv:2108.00154", notes=_DRIVE),
    "crossformer_pp_small.in1k": _cfg(paper_ids="arXiv:2303.06908", notes=_DRIVE),
    "crossformer_pp_base.in1k": _cfg(paper_ids="arXiv:2303.06908", notes=_DRIVE),
    "crossformer_pp_large.in1k": _cfg(paper_ids="arXiv:2303.06908", notes=_DRIVE),
    "crossformer_pp_huge.in1k": _cfg(paper_ids="arXiv:2303.06908", notes=_DRIVE),
})

_V1_ARGS = dict(group_size=(7, 7, 7, 7), interval=(8, 4, 2, 1))
_PP_ARGS = dict(group_size=(4, 4, 14, 7), interval=(4, 2, 1, 1), acl=True)
_MODEL_ARGS = {
    "crossformer_tiny": dict(embed_dim=64, depths=(1, 1, 8, 6), num_heads=(2, 4, 8, 16), drop_path_rate=0.1,
                             **_V1_ARGS),
    "crossformer_small": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2,
                              **_V1_ARGS),
    "crossformer_base": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3,
                             **_V1_ARGS),
    "crossformer_large": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5,
                              **_V1_ARGS),
    "crossformer_pp_small": dict(embed_dim=64, depths=(2, 2, 18, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.2,
                                 **_PP_ARGS),
    "crossformer_pp_base": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3,
                                **_PP_ARGS),
    "crossformer_pp_large": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5,
                                 **_PP_ARGS),
    "crossformer_pp_huge": dict(embed_dim=128, depths=(6, 6, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5,
                                **_PP_ARGS),
}


def _create(variant: str, pretrained: bool = False, **kwargs) -> CrossFormer:
    args = dict(_MODEL_ARGS[variant.split(".")[0]])
    args.update(kwargs)
    return build_family_model(CrossFormer, variant, pretrained, checkpoint_filter_fn,
                       feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **args)


@register_model
def crossformer_tiny(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-T (27.8 M params, 2.9 GMACs, 81.5 top-1)."""
    return _create("crossformer_tiny", pretrained, **kwargs)


@register_model
def crossformer_small(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-S (30.7 M params, 4.9 GMACs, 82.5 top-1)."""
    return _create("crossformer_small", pretrained, **kwargs)


@register_model
def crossformer_base(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-B (52.0 M params, 9.2 GMACs, 83.4 top-1)."""
    return _create("crossformer_base", pretrained, **kwargs)


@register_model
def crossformer_large(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-L (92.0 M params, 16.1 GMACs, 84.0 top-1)."""
    return _create("crossformer_large", pretrained, **kwargs)


@register_model
def crossformer_pp_small(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-S (23.3 M params, 4.9 GMACs, 83.2 top-1): PGS [4, 4, 14, 7] and ACL."""
    return _create("crossformer_pp_small", pretrained, **kwargs)


@register_model
def crossformer_pp_base(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-B (52.0 M params, 9.5 GMACs, 84.2 top-1)."""
    return _create("crossformer_pp_base", pretrained, **kwargs)


@register_model
def crossformer_pp_large(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-L (92.0 M params, 16.6 GMACs, 84.7 top-1)."""
    return _create("crossformer_pp_large", pretrained, **kwargs)


@register_model
def crossformer_pp_huge(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-H (96.0 M params, 21.8 GMACs, 84.9 top-1)."""
    return _create("crossformer_pp_huge", pretrained, **kwargs)


for _name in _MODEL_ARGS:
    register_name(_name)


# ================================================================================================================
# Dense (detection / segmentation) backbones: the authors' ``models/crossformer_backbone_det.py`` (= ``_seg.py``)
# ================================================================================================================
#
# How the authors' dense backbone differs from the classifier above (each checked against their code, commit
# 795201075f0066e78408882617312084e25aef61, and by the parity fixtures in tests/fixtures/parity/dense):
#
# * every stage's map is returned *before* the patch merging that follows it, and there is no final norm and no head;
# * a map whose smaller side is no larger than the group size is attended as ONE SDA group of its *larger* side, the
#   smaller side padded up to it (padded keys masked); the classifier uses a group of the smaller side instead;
# * the detection/segmentation configs use a constant group size (7 in every stage) and intervals [8, 4, 2, 1] for
#   CrossFormer++ too (its classifier uses PGS [4, 4, 14, 7] and intervals [4, 2, 1, 1]); ACL stays on;
# * ``adaptive_interval=True`` (their option, off in every released config) sets the LDA interval of a block from
#   the map in each forward: ceil(max(H, W) / G).
#
# Their blocks also *remember* a small map: once a block has seen a map no larger than its group it stays SDA for
# every later call (they overwrite ``self.lsda_flag``). We do not keep such state: every forward depends only on its
# own input (the two agree for any single size and whenever no map is that small, e.g. at detection sizes).



class DenseCrossFormerBlock(CrossFormerBlock):
    """A CrossFormer block with the grouping rule of the authors' dense backbone.

    As :class:`CrossFormerBlock`, except: a map no larger than G (smaller side) is attended as one SDA group of its
    larger side (padded, padded keys masked), and with ``adaptive_interval`` the LDA interval is ceil(max(H, W) / G)
    per forward. Input/output (B, H, W, C), any H, W.
    """

    def __init__(self, *args, adaptive_interval: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.adaptive_interval = adaptive_interval

    def grouping(self, height: int, width: int) -> tuple[int, bool]:
        """(G, lda) used on a (height, width) map: a map no larger than G is one SDA group of its LARGER side."""
        if min(height, width) <= self.group_size:
            return max(height, width), False
        return self.group_size, self.lda

    def interval_for(self, height: int, width: int) -> int:
        """LDA interval on a (height, width) map: fixed, or ceil(max(H, W) / G) with ``adaptive_interval``."""
        if not self.adaptive_interval:
            return self.interval
        G, _ = self.grouping(height, width)
        return math.ceil(max(height, width) / G)


class DenseCrossFormerStage(CrossFormerStage):
    """A stage of the dense backbone: patch merging (stages 2-4), then :class:`DenseCrossFormerBlock` s.

    (B, H, W, C) in and out; the output is the map the authors' dense code returns for this stage.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, group_size: int, interval: int,
                 merge_size: tuple[int, ...] | None, drop_path: list[float], acl: bool, adaptive_interval: bool,
                 **block_kwargs):
        super().__init__(in_dim, dim, 0, num_heads, [], interval, merge_size, [], acl)
        self.blocks = nn.ModuleList([
            DenseCrossFormerBlock(dim, num_heads, group_size, interval, lda=i % 2 == 1, drop_path=drop_path[i],
                                  acl=acl and (i + 1) % 3 == 0 and i < depth - 1,
                                  adaptive_interval=adaptive_interval, **block_kwargs)
            for i in range(depth)
        ])


class DenseCrossFormer(DenseBackboneHead, HierarchicalModel):
    """The authors' dense CrossFormer / CrossFormer++ backbone (their ``CrossFormer_S/B/L/S2`` of
    ``detection/crossformer_factory.py`` and ``segmentation/crossformer_factory.py``).

    Args:
        in_chans: input channels.
        embed_dim: channels of stage 1 (doubling each stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        group_size: constant group size G per stage (their configs: 7 everywhere).
        interval: LDA interval per stage (their configs: [8, 4, 2, 1]).
        adaptive_interval: LDA interval ceil(max(H, W) / G) per forward (their option; off in their configs).
        acl: amplitude cooling layers (CrossFormer++).
        mlp_ratio, qkv_bias: block settings.
        drop_path_rate: stochastic depth, linear over blocks (their factory: S 0.2, B 0.3, L 0.5, S2 0.2).
        proj_drop_rate, attn_drop_rate: dropout in blocks.
        patch_size: CEL kernel sizes of the stem (stride = the smallest).
        merge_size: CEL kernel sizes of the three patch mergings.
        out_indices: which stage maps to return (default all four).
        img_size: accepted for API symmetry and ignored (the group sizes are constant; any size runs).

    Input (B, in_chans, H, W), H, W >= 32 -> list of NCHW maps, stage i: (B, embed_dim * 2^i, ~H / 2^(i+2),
    ~W / 2^(i+2)) (floor at the stem as theirs; odd maps are padded to even before merging, where theirs refuses).
    ``feature_info`` (a timm ``FeatureInfo``) gives channels and reductions of the returned maps.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        group_size: int | tuple[int, ...] = (7, 7, 7, 7),
        interval: tuple[int, ...] = (8, 4, 2, 1),
        adaptive_interval: bool = False,
        acl: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        patch_size: tuple[int, ...] = (4, 8, 16, 32),
        merge_size: tuple[tuple[int, ...], ...] = ((2, 4), (2, 4), (2, 4)),
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        img_size: int | tuple[int, int] | None = None,
    ):
        super().__init__()
        from timm.models._features import FeatureInfo

        self.map_fmt = "NHWC"
        n = len(depths)
        group_size = (group_size,) * n if isinstance(group_size, int) else tuple(group_size)
        if not (len(num_heads) == len(group_size) == len(interval) == n and len(merge_size) == n - 1):
            raise ValueError(f"depths has {n} stages: num_heads, group_size and interval need {n} values and "
                             f"merge_size {n - 1}")
        self.in_chans = in_chans
        self.num_classes = 0
        self.group_size = group_size
        self.interval = tuple(interval)
        self.adaptive_interval = adaptive_interval
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (n - 1)
        stride = min(patch_size)
        self.min_input_size = stride * 2 ** (n - 1)
        self.patch_embed = CrossScaleEmbedding(in_chans, embed_dim, patch_size, stride, nn.LayerNorm)
        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        self.stages = nn.Sequential(*[
            DenseCrossFormerStage(embed_dim * 2 ** max(i - 1, 0), embed_dim * 2 ** i, depths[i], num_heads[i],
                                  group_size[i], interval[i], merge_size[i - 1] if i > 0 else None, dpr[i], acl,
                                  adaptive_interval, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                  proj_drop=proj_drop_rate, attn_drop=attn_drop_rate)
            for i in range(n)
        ])
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or any(i not in range(n) for i in self.out_indices):
            raise ValueError(f"out_indices {out_indices} must be stage indices among 0..{n - 1}")
        self.feature_info = FeatureInfo(
            [dict(num_chs=embed_dim * 2 ** i, reduction=stride * 2 ** i, module=f"stages.{i}") for i in range(n)],
            self.out_indices)
        self.norm = nn.Identity()  # no final norm in the dense backbone
        self.head = nn.Identity()
        self.apply(CrossFormer._init_weights)

    # the same CEL stem, weight-decay rule, checkpoint filter and protocol as the classifier
    stem = CrossFormer.stem
    no_weight_decay = CrossFormer.no_weight_decay
    convert_state_dict = CrossFormer.convert_state_dict
    family = CrossFormer.family
    prefers_channels_last = CrossFormer.prefers_channels_last
    linear_calibration_model = CrossFormer.linear_calibration_model
    linear_calibration_large_model = CrossFormer.linear_calibration_large_model
    block_infos = CrossFormer.block_infos
    input_modules = CrossFormer.input_modules
    token_lattice = CrossFormer.token_lattice
    attention_layout = CrossFormer.attention_layout
    cam_target_layers = CrossFormer.cam_target_layers

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)])


    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, C, H, W) -> the maps of ``out_indices`` (NCHW, contiguous), as the authors' ``forward``."""
        x = self._embed(x)
        outs = []
        last = max(self.out_indices)
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        return outs


#: dense variant -> (constructor arguments, the authors' class, non-dense model whose weights it takes)
_DENSE_ARGS = {
    "crossformer_small_dense": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                    drop_path_rate=0.2),
    "crossformer_base_dense": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                                   drop_path_rate=0.3),
    "crossformer_large_dense": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                    drop_path_rate=0.5),
    "crossformer_pp_small_dense": dict(embed_dim=64, depths=(2, 2, 18, 2), num_heads=(2, 4, 8, 16),
                                       drop_path_rate=0.2, acl=True),
}
#: the authors' class name of each dense variant (detection/segmentation ``crossformer_factory.py``)
DENSE_OFFICIAL_CLASS = {"crossformer_small_dense": "CrossFormer_S", "crossformer_base_dense": "CrossFormer_B",
                        "crossformer_large_dense": "CrossFormer_L", "crossformer_pp_small_dense": "CrossFormer_S2"}


def _dense_cfg(name: str) -> dict:
    return _cfg(num_classes=0, classifier="", input_size=(3, 800, 1280), pool_size=None, crop_pct=1.0,
                paper_ids="arXiv:2303.06908" if "_pp_" in name else "arXiv:2108.00154",
                notes=f"the authors' dense backbone {DENSE_OFFICIAL_CLASS[name]} (detection/segmentation); weights: "
                      "their mmdet/mmseg checkpoints (Google Drive, linked from their README) via checkpoint_path=")


def _create_dense(variant: str, pretrained: bool, **kwargs) -> DenseCrossFormer:
    if pretrained:
        raise PretrainedUnavailableError(
            f"no direct download for {variant}: the authors publish their detection/segmentation checkpoints on "
            f"Google Drive ({_V1}); download one and pass checkpoint_path=FILE")
    return build_dense_model(DenseCrossFormer, variant, _dense_cfg(variant), **(_DENSE_ARGS[variant] | kwargs))


@register_model
def crossformer_small_dense(pretrained: bool = False, **kwargs) -> DenseCrossFormer:
    """CrossFormer-S dense backbone (the authors' ``CrossFormer_S``): G 7, intervals [8, 4, 2, 1], four maps."""
    return _create_dense("crossformer_small_dense", pretrained, **kwargs)


@register_model
def crossformer_base_dense(pretrained: bool = False, **kwargs) -> DenseCrossFormer:
    """CrossFormer-B dense backbone (the authors' ``CrossFormer_B``): G 7, intervals [8, 4, 2, 1], four maps."""
    return _create_dense("crossformer_base_dense", pretrained, **kwargs)


@register_model
def crossformer_large_dense(pretrained: bool = False, **kwargs) -> DenseCrossFormer:
    """CrossFormer-L dense backbone (the authors' ``CrossFormer_L``): G 7, intervals [8, 4, 2, 1], four maps."""
    return _create_dense("crossformer_large_dense", pretrained, **kwargs)


@register_model
def crossformer_pp_small_dense(pretrained: bool = False, **kwargs) -> DenseCrossFormer:
    """CrossFormer++-S dense backbone (the authors' ``CrossFormer_S2``): G 7, intervals [8, 4, 2, 1], ACL on."""
    return _create_dense("crossformer_pp_small_dense", pretrained, **kwargs)


for _name in _DENSE_ARGS:
    register_name(_name, dense=True)
