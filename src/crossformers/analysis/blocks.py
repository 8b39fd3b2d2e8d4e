"""The blocks of a model, in execution order, and where each family's tokens sit in the input image.

:func:`model_blocks` lists every block of a CrossFormer / CrossFormer++, FcaFormer (hybrid and plain) or CrossViT
(and, for activation amplitudes only, the ``blocks.N`` modules of any other model), with the module that computes its
attention, if any. :func:`select_blocks` resolves user selections (names, glob patterns, indices).

The ``*_lattice`` functions give a block's token lattice in input pixels from the model's actual convolutions
(receptive-field centres, :func:`~crossformers.analysis.geometry.conv_chain`), so attention can be drawn on the image.
"""
from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from timm.utils import unwrap_model
from torch import nn

from ..layers.embed import CrossScaleEmbedding
from ..models.crossformer import CrossFormer
from ..models.crossvit import AllAttentionFusion, CrossAttentionFusion, CrossViT
from ..models.fcaformer import FcaFormer, FcaFormerPlain, FcaStage
from .errors import NoAttentionError, UnsupportedModelError
from .geometry import Lattice, conv_chain

__all__ = ["BlockInfo", "model_family", "model_blocks", "select_blocks", "token_lattice", "crossvit_branch_lattice"]


@dataclass
class BlockInfo:
    """One block of a model.

    Attributes:
        name: module path inside the model, e.g. ``stages.2.blocks.1`` or ``encoders.0.fusion.blocks.1.0``.
        index: position in the model's execution order of all blocks (convolutional ones included), from 0.
        module: the block.
        family: ``crossformer``, ``fcaformer``, ``crossvit`` or ``generic``.
        kind: ``sda``/``lda`` (CrossFormer), ``fca``/``convnext`` (FcaFormer), ``self`` (CrossViT branch block),
            ``cross`` (CrossViT cross-attention fusion), ``all`` (all-attention fusion), ``fusion`` (fusion without
            attention), ``block`` (generic).
        stage: stage index (CrossFormer, hybrid FcaFormer), encoder index (CrossViT), or None.
        branch: CrossViT branch whose tokens the block updates (for ``cross``: the branch whose CLS token queries).
        attention: the submodule with the ``fused_attn`` switch, None for blocks without attention.
        acl: the block ends with an amplitude cooling layer (CrossFormer++ Sec. 4.2).
        position: index of the block inside its stage (FcaFormer: for naming the sources of cross tokens).
        siblings: names of the blocks of the same stage, in order (FcaFormer).
    """

    name: str
    index: int
    module: nn.Module
    family: str
    kind: str
    stage: int | None = None
    branch: int | None = None
    attention: nn.Module | None = None
    acl: bool = False
    position: int = 0
    siblings: list[str] = field(default_factory=list)

    @property
    def has_attention(self) -> bool:
        """Whether the block computes attention that can be captured."""
        return self.attention is not None

    def describe(self) -> str:
        """Short label for plots, e.g. ``s2.b1 LDA``."""
        if self.family == "crossvit":
            return f"e{self.stage}.{self.name.split('.', 2)[-1]}"
        stage = f"s{self.stage}." if self.stage is not None else ""
        return f"{stage}b{self.position} {self.kind.upper()}"


def _unwrap(model: nn.Module) -> nn.Module:
    return unwrap_model(model)


def model_family(model: nn.Module) -> str:
    """``crossformer``, ``fcaformer`` (hybrid or plain), ``crossvit``, or ``generic`` for any other model."""
    model = _unwrap(model)
    if isinstance(model, CrossFormer):
        return "crossformer"
    if isinstance(model, (FcaFormer, FcaFormerPlain)):
        return "fcaformer"
    if isinstance(model, CrossViT):
        return "crossvit"
    return "generic"


def model_blocks(model: nn.Module) -> list[BlockInfo]:
    """Every block of ``model`` in execution order.

    Raises:
        UnsupportedModelError: a model of an unknown family with no ``blocks.N`` modules.
    """
    model = _unwrap(model)
    family = model_family(model)
    out: list[BlockInfo] = []

    def add(**kw) -> None:
        out.append(BlockInfo(index=len(out), family=family, **kw))

    if family == "crossformer":
        for s, stage in enumerate(model.stages):
            names = [f"stages.{s}.blocks.{j}" for j in range(len(stage.blocks))]
            for j, blk in enumerate(stage.blocks):
                add(name=names[j], module=blk, kind="lda" if blk.lda else "sda", stage=s, attention=blk.attn,
                    acl=blk.acl is not None, position=j, siblings=names)
    elif family == "fcaformer" and hasattr(model, "stages"):
        for s, stage in enumerate(model.stages):
            names = [f"stages.{s}.blocks.{j}" for j in range(len(stage.blocks))]
            fca = isinstance(stage, FcaStage)
            for j, blk in enumerate(stage.blocks):
                add(name=names[j], module=blk, kind="fca" if fca else "convnext", stage=s,
                    attention=blk if fca else None, position=j, siblings=names)
    elif family == "fcaformer":
        names = [f"blocks.{j}" for j in range(len(model.blocks))]
        for j, blk in enumerate(model.blocks):
            add(name=names[j], module=blk, kind="fca", attention=blk, position=j, siblings=names)
    elif family == "crossvit":
        for k, enc in enumerate(model.encoders):
            for b, branch in enumerate(enc.branches):
                for j, blk in enumerate(branch):
                    add(name=f"encoders.{k}.branches.{b}.{j}", module=blk, kind="self", stage=k, branch=b,
                        attention=blk.attn, position=j)
            fusion = enc.fusion
            if isinstance(fusion, CrossAttentionFusion):
                for i, layers in enumerate(fusion.blocks):
                    for m, blk in enumerate(layers):
                        add(name=f"encoders.{k}.fusion.blocks.{i}.{m}", module=blk, kind="cross", stage=k, branch=i,
                            attention=blk.attn, position=m)
            elif isinstance(fusion, AllAttentionFusion):
                for m, blk in enumerate(fusion.blocks):
                    add(name=f"encoders.{k}.fusion.blocks.{m}", module=blk, kind="all", stage=k, attention=blk.attn,
                        position=m)
            else:
                add(name=f"encoders.{k}.fusion", module=fusion, kind="fusion", stage=k)
    else:
        pattern = re.compile(r"(?:^|\.)blocks\.(\d+)$")
        for name, mod in model.named_modules():
            if pattern.search(name):
                add(name=name, module=mod, kind="block")
        if not out:
            raise UnsupportedModelError(
                f"{type(model).__name__} is not a CrossFormer, FcaFormer or CrossViT and has no 'blocks.N' modules: "
                "crossformers.analysis cannot find its blocks")
    return out


def select_blocks(blocks: Sequence[BlockInfo], spec: Sequence[str | int] | str | int | None = None,
                  attention_only: bool = False) -> list[BlockInfo]:
    """Resolve a block selection.

    Args:
        blocks: from :func:`model_blocks`.
        spec: None (all), or names (``stages.2.blocks.1``), shell patterns (``stages.2.*``) and indices (int or
            digit strings; negative counts from the end) into ``blocks``. Several entries are combined, in model order.
        attention_only: keep only blocks with attention. Blocks named or indexed explicitly must then have
            attention; patterns silently skip the others.

    Returns:
        The selected blocks in execution order.

    Raises:
        NoAttentionError: an explicitly chosen block has no attention, or nothing with attention is selected.
        UnsupportedModelError: a name, pattern or index that matches no block (the message lists valid names).
    """
    blocks = list(blocks)
    att_names = [b.name for b in blocks if b.has_attention]
    if spec is None:
        chosen = [b for b in blocks if b.has_attention] if attention_only else blocks
        if not chosen:
            raise NoAttentionError("this model has no attention blocks crossformers can read (supported: CrossFormer, "
                                   "FcaFormer, CrossViT)")
        return chosen
    entries = [spec] if isinstance(spec, (str, int)) else list(spec)
    picked: dict[int, BlockInfo] = {}
    for entry in entries:
        text = str(entry).strip()
        if re.fullmatch(r"-?\d+", text):
            i = int(text)
            if not -len(blocks) <= i < len(blocks):
                raise UnsupportedModelError(f"block index {i} is out of range: the model has {len(blocks)} blocks "
                                            f"(0..{len(blocks) - 1})")
            matches, explicit = [blocks[i]], True
        elif any(c in text for c in "*?["):
            matches, explicit = [b for b in blocks if fnmatch.fnmatchcase(b.name, text)], False
        else:
            matches, explicit = [b for b in blocks if b.name == text], True
        if not matches:
            raise UnsupportedModelError(f"no block matches {text!r}: blocks are named like {blocks[0].name!r}; "
                                        f"attention blocks: {_short_list(att_names)}")
        for b in matches:
            if attention_only and not b.has_attention:
                if explicit:
                    raise NoAttentionError(
                        f"block {b.name} ({b.kind}) has no attention: choose one of {_short_list(att_names)}")
                continue
            picked[b.index] = b
    if not picked:
        raise NoAttentionError(f"no attention block matches {entries}: choose among {_short_list(att_names)}")
    return [picked[i] for i in sorted(picked)]


def _short_list(names: list[str], n: int = 8) -> str:
    if not names:
        return "(none)"
    return ", ".join(names) if len(names) <= n else ", ".join(names[:n]) + f", ... ({len(names)} in all)"


# ---------------------------------------------------------------------------------------------------- lattices
def _spec(conv: nn.Module, axis: int) -> tuple[int, int, int]:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if isinstance(p, str):
        raise UnsupportedModelError(f"cannot place tokens for a convolution with padding={p!r}")
    return int(k[axis]), int(s[axis]), int(p[axis])


def _lattice_from_convs(convs: Sequence[nn.Module], height: int, width: int) -> Lattice:
    oy, sy = conv_chain([_spec(c, 0) for c in convs])
    ox, sx = conv_chain([_spec(c, 1) for c in convs])
    return Lattice(height, width, (sy, sx), (oy, ox))


def _convs(module: nn.Module) -> list[nn.Module]:
    """The convolutions that change the sampling grid, in order (1x1 convolutions skipped; CEL: the smallest kernel,
    all its kernels share centres)."""
    if isinstance(module, CrossScaleEmbedding):
        return [module.projs[0]]
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and
            not (m.kernel_size == (1, 1) and m.stride == (1, 1))]


def token_lattice(model: nn.Module, stage: int | None, height: int, width: int) -> Lattice:
    """Lattice of a (height, width) token map of ``stage`` (CrossFormer, hybrid FcaFormer) or of the plain FcaFormer
    (``stage=None``), in input pixels."""
    model = _unwrap(model)
    family = model_family(model)
    if family == "crossformer":
        convs = _convs(model.patch_embed) + [c for s in range(1, stage + 1) for c in _convs(model.stages[s].downsample)]
    elif family == "fcaformer" and hasattr(model, "stages"):
        convs = _convs(model.stem) + [c for s in range(1, stage + 1) for c in _convs(model.stages[s].downsample)]
    elif family == "fcaformer":
        convs = [model.patch_embed.proj]
    else:
        raise UnsupportedModelError(f"no token lattice for a {type(model).__name__}")
    return _lattice_from_convs(convs, height, width)


def crossvit_branch_lattice(model: nn.Module, branch: int, grid: tuple[int, int],
                            input_size: tuple[int, int]) -> Lattice:
    """Lattice of CrossViT branch ``branch`` (token grid ``grid``) for an input of ``input_size`` (H, W) pixels.

    The branch sees the input resized to its native size (or scaled by ``img_scale`` with ``dynamic_img_size``);
    patch centres follow its patch embedding and are mapped back through the resize (CrossViT Sec. 3.2).
    """
    model = _unwrap(model)
    H, W = input_size
    if model.dynamic_img_size:
        s = model.img_scale[branch]
        rh, rw = max(1, math.ceil(H * s - 1e-6)), max(1, math.ceil(W * s - 1e-6))
    else:
        rh, rw = model.branch_img_size[branch]
    specs = model.patch_embed[branch].specs
    oy, sy = conv_chain([(k, s, p) for k, s, p in specs])
    fy, fx = H / rh, W / rw
    return Lattice(grid[0], grid[1], (sy * fy, sy * fx), (oy * fy, oy * fx))
