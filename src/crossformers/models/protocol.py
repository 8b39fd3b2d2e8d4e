"""The family protocol: what a model family tells the packages around it, so that they never name a family.

Analysis, export, inference transforms, profiling and the dense backbones work on any model that implements the
methods below on its own class (all three families do; a new family implements them in its own file). A model that
implements none still works wherever a generic fallback exists (timm models with ``blocks.N`` modules: activation
amplitudes; export at fixed sizes), and gets a clear error elsewhere.

Methods (all optional; see :class:`FamilyModel` for the signatures):

* ``block_infos()`` — every block in execution order as :class:`BlockInfo`: its module, kind, stage/branch, and the
  :class:`~crossformers.layers.attention.ScaledDotProduct` whose ``probs`` hook point carries its attention
  probabilities (None for blocks without attention).
* ``attention_layout(block, args, kwargs, image_size)`` — called from a forward pre-hook on ``block.module`` with the
  block's own inputs: how the query and key axes of that call map to input pixels (:class:`AttentionLayout`).
* ``attention_map_blocks()`` — names of the blocks attention maps show by default (None: every attention block).
* ``input_modules()`` — modules whose first input is the image batch (the model itself, and its stem so that a direct
  ``forward_features`` call is seen too).
* ``input_size_rule()`` — the input sizes on which the model takes one code path (:class:`SizeRule`), used by the
  exporter for dynamic shapes.
* ``cam_target_layers()`` — module names that class activation maps use by default.
* ``default_out_indices()`` — feature indices a dense backbone returns by default.
* ``prefers_channels_last`` — class attribute: channels-last memory speeds the model up (measured).
* ``linear_calibration_model`` — class attribute: the name of the model whose timings in this machine's linear-path
  calibration decide MKL or oneDNN for the family (:mod:`crossformers.layers.linear_calibration`; one of
  :data:`crossformers.profiling.calibrate.CALIBRATION_MODELS` for the built-in families).
* ``linear_calibration_large_model`` — class attribute: one large variant of the family (9-15 GMACs) that the
  calibration also times in its optimized forms; ``optimize_for_inference`` of a model nearer its size follows its
  ratio (:func:`crossformers.layers.linear_calibration.calibrated_inference_choice`).
* ``fuse()`` on any submodule — fold inference-time affine layers into the layer before them, in place
  (:func:`crossformers.inference.fuse` calls it on every module that has it, as timm's ``reparameterize_model``).
* ``convert_state_dict(state_dict)`` — the family's checkpoint filter (official layouts -> ours); the family also
  registers the key markers that recognise its checkpoints (:func:`crossformers.checkpoint.register_checkpoint_markers`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

from ..layers.geometry import Lattice

__all__ = ["BlockInfo", "TokenSegment", "AttentionLayout", "SizeRule", "FamilyModel", "call_arg", "lcm",
           "smallest_multiple_above"]


@dataclass
class BlockInfo:
    """One block of a model, as its family describes it.

    Attributes:
        name: module path inside the model, e.g. ``stages.2.blocks.1`` or ``encoders.0.fusion.blocks.1.0``.
        index: position in the model's execution order of all blocks (convolutional ones included), from 0.
        module: the block.
        family: the family's name (``crossformer``, ``fcaformer``, ``crossvit``, ``generic`` ...), for display.
        kind: the family's name for the block's kind (``sda``/``lda``, ``fca``/``convnext``, ``self``, ``cross``,
            ``all``, ``fusion``, ``block``).
        stage: stage (or encoder) index, or None.
        branch: branch whose tokens the block updates (CrossViT; for ``cross``: the branch whose CLS token queries).
        attention: the :class:`~crossformers.layers.attention.ScaledDotProduct` of the block, None without attention.
        acl: the block ends with an amplitude cooling layer (CrossFormer++ Sec. 4.2).
        position: index of the block inside its stage.
        siblings: names of the blocks of the same stage, in order.
        sources: names of the earlier blocks whose tokens this block also attends to (FcaFormer cross tokens).
        label: short label for plots (default ``s{stage}.b{position} {KIND}``).
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
    sources: list[str] = field(default_factory=list)
    label: str | None = None

    @property
    def has_attention(self) -> bool:
        """Whether the block computes attention that can be captured."""
        return self.attention is not None

    def describe(self) -> str:
        """Short label for plots, e.g. ``s2.b1 LDA``."""
        if self.label is not None:
            return self.label
        stage = f"s{self.stage}." if self.stage is not None else ""
        return f"{stage}b{self.position} {self.kind.upper()}"


@dataclass
class TokenSegment:
    """A run of tokens along the query or key axis.

    Attributes:
        label: ``cls`` (a token without position), ``tokens`` (the block's own tokens / group members), ``cross``
            (tokens made by an earlier block, e.g. FcaFormer cross tokens) or ``patches`` (patch tokens of a branch).
        start, stop: the slice of the axis.
        lattice: where the segment's tokens sit in the image (None for ``cls``).
        source: for ``cross``: the block that made the tokens; for branch tokens: ``branchN``.
    """

    label: str
    start: int
    stop: int
    lattice: Lattice | None = None
    source: str | None = None


@dataclass
class AttentionLayout:
    """How the axes of one attention call map to input pixels.

    Attributes:
        query_segments, key_segments: what the query / key axes hold, in order.
        query_cells, key_cells: int64 (nG, Nq) / (nG, Nk): flat index of each token in its segment's lattice, -1 for
            tokens without a position (class tokens, padding); ``nG`` groups (CrossFormer SDA/LDA groups; 1 otherwise).
        meta: geometry of the call for reports: ``grid`` (H, W tokens) and ``stride_px`` (sy, sx) always, plus the
            family's own keys (``group_size``, ``interval``, ``lda``, ``padded`` ...; ``cross_grid``, ``sources`` ...;
            ``branch``, ``key_branch`` ...).
        caption: one line describing the call for plot titles, e.g. ``LDA G=7 I=8`` or ``2 sources``.
    """

    query_segments: list[TokenSegment]
    key_segments: list[TokenSegment]
    query_cells: np.ndarray
    key_cells: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    caption: str = ""


@dataclass(frozen=True)
class SizeRule:
    """Input sizes one exported graph serves: H a multiple of ``period[0]`` and at least ``minimum[0]``, same for W.

    Attributes:
        period: (ph, pw) pixels (1 = any size).
        minimum: (min_h, min_w) pixels (multiples of the period).
        why: one sentence saying what makes the sizes outside the set different.
        exact_branch_sizes: sizes at which the model takes another branch whose result is the same (CrossViT skips
            its resize, which would be the identity, at a branch's native size). ``torch.export`` cannot prove that
            and guards against these sizes; the exporter defers those guards (they are not in the ONNX graph) and
            verifies the file at these sizes instead.
    """

    period: tuple[int, int]
    minimum: tuple[int, int]
    why: str
    exact_branch_sizes: tuple[tuple[int, int], ...] = ()

    def contains(self, height: int, width: int) -> bool:
        """True if (height, width) pixels is a size of the set."""
        return (height % self.period[0] == 0 and width % self.period[1] == 0 and height >= self.minimum[0]
                and width >= self.minimum[1])

    def nearest(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size of the set that is at least (height, width)."""
        def up(v: int, p: int, lo: int) -> int:
            return max(lo, -(-v // p) * p)

        return up(height, self.period[0], self.minimum[0]), up(width, self.period[1], self.minimum[1])

    def describe(self) -> str:
        """E.g. 'H, W multiples of 224, at least 448 x 448' or 'any H x W from 16 x 16'."""
        (ph, pw), (mh, mw) = self.period, self.minimum
        if ph == pw == 1:
            return f"any H x W from {mh} x {mw}"
        per = f"multiples of {ph}" if ph == pw else f"H a multiple of {ph}, W of {pw}"
        return f"H, W {per}, at least {mh} x {mw}"


@runtime_checkable
class FamilyModel(Protocol):
    """The methods a family implements on its model class (see the module docs; all are optional)."""

    def block_infos(self) -> list[BlockInfo]: ...

    def attention_layout(self, block: BlockInfo, args: tuple, kwargs: dict[str, Any],
                         image_size: tuple[int, int] | None) -> AttentionLayout: ...

    def input_size_rule(self) -> SizeRule: ...


def call_arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str) -> Any:
    """Argument ``index`` (positional) or ``name`` (keyword) of a module call seen by a forward pre-hook."""
    return args[index] if len(args) > index else kwargs[name]


def lcm(values: Iterable[int]) -> int:
    """Least common multiple of ``values`` (1 for none): the period of a size rule."""
    out = 1
    for v in values:
        out = out * int(v) // math.gcd(out, int(v))
    return out


def smallest_multiple_above(values: Iterable[int], period: int) -> int:
    """The smallest multiple of ``period`` larger than every one of ``values`` (at least ``period``): the minimum of
    a size rule whose maps must exceed given sizes."""
    return period * max([1] + [int(v) // period + 1 for v in values])
