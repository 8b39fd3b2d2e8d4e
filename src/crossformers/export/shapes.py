"""Which input sizes one exported graph can serve, per family.

``torch.export`` produces a graph that is valid for a whole range of input sizes only if the model takes the same
code path for all of them. Our models adapt to the input size in Python (the official code does too), so each family
has a set of sizes on which one graph is exact:

* **CrossViT** (default mode) resizes every input to its branches' native sizes: any H, W >= the largest patch.
* **CrossFormer / CrossFormer++** pad each map to a multiple of the group extent (G for SDA, G*I for LDA) and mask
  the padded keys, and a map no larger than G becomes one group: the padding, the masks and the grouping change with
  the size. With H and W multiples of P = lcm over blocks of (stride * group extent) (224 for CrossFormer v1, 448 for
  CrossFormer++ with its progressive groups), large enough that no map is smaller than its group, no padding or
  masking happens anywhere and the graph is the same.
* **FcaFormer** (hybrid and plain) uses its relative-position and cross-token tables as trained when the token grid
  matches the training grid and resamples them otherwise: one graph covers the sizes whose grids (and cross-token
  grids) are all larger than the trained ones, in multiples of 4 x the largest stride (128 hybrid, 64 plain).

:func:`dynamic_size_rule` computes this set from the model's own attributes; the exporter checks the traced graph at
two sizes of the set with onnxruntime and puts a check into the graph that rejects sizes outside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..models.crossformer import CrossFormer
from ..models.crossvit import CrossViT
from ..models.fcaformer import FcaFormer, FcaFormerPlain, FcaStage

__all__ = ["SizeRule", "dynamic_size_rule"]


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


def _lcm(values: list[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


def _k_min(needs_more_than: list[int], period: int) -> int:
    """Smallest k with period * k > every value of ``needs_more_than``."""
    return max([1] + [v // period + 1 for v in needs_more_than])


def _crossformer_rule(model: nn.Module) -> SizeRule:
    stride0 = int(model.patch_embed.stride)
    periods = [stride0 * 2 ** (len(model.stages) - 1)]  # even maps before every merging
    larger = []
    for s, stage in enumerate(model.stages):
        r = stride0 * 2 ** s
        for blk in stage.blocks:
            periods.append(r * blk.group_size * (blk.interval if blk.lda else 1))
            larger.append(r * blk.group_size)  # a map of at most G tokens is one group of its own size
    p = _lcm(periods)
    m = p * _k_min(larger, p)
    return SizeRule((p, p), (m, m), "CrossFormer pads every map to a multiple of its group extent and masks the "
                                     "padding, and a map no larger than a group becomes one group")


def _fcaformer_rule(model: nn.Module) -> SizeRule:
    need_h, need_w, strides = [], [], []
    for s, stage in enumerate(model.stages):
        if not isinstance(stage, FcaStage):
            continue
        r = int(model.feature_info[s]["reduction"])
        strides.append(r)
        h0, w0 = stage.blocks[0].grid_size
        cross = any(b.num_sources for b in stage.blocks)
        need_h.append(r * (4 * ((h0 + 3) // 4) if cross else h0))
        need_w.append(r * (4 * ((w0 + 3) // 4) if cross else w0))
    p = 4 * max(strides + [32])
    return SizeRule((p, p), (p * _k_min(need_h, p), p * _k_min(need_w, p)),
                    "FcaFormer indexes its position/cross-token tables directly when the token grid fits the trained "
                    "grid and resamples them when it is larger")


def _fcaformer_plain_rule(model: nn.Module) -> SizeRule:
    patch = int(model.patch_embed.patch_size[0])
    h0, w0 = model.patch_embed.grid_size
    cross = any(b.num_sources for b in model.blocks)
    need_h = patch * (4 * ((h0 + 3) // 4) if cross else h0)
    need_w = patch * (4 * ((w0 + 3) // 4) if cross else w0)
    p = 4 * patch
    return SizeRule((p, p), (p * _k_min([need_h], p), p * _k_min([need_w], p)),
                    "plain FcaFormer uses its position embedding and cross-token tables as trained on the trained "
                    "grid and resamples them on larger grids")


def dynamic_size_rule(model: nn.Module) -> SizeRule:
    """The input sizes on which ``model`` takes one code path (see the module docs).

    Args:
        model: a crossformers classifier (or any model: unknown ones get 'any size from 32', which the exporter then
            tries and verifies).

    Returns:
        The :class:`SizeRule`.
    """
    if isinstance(model, CrossFormer):
        return _crossformer_rule(model)
    if isinstance(model, FcaFormer):
        return _fcaformer_rule(model)
    if isinstance(model, FcaFormerPlain):
        return _fcaformer_plain_rule(model)
    if isinstance(model, CrossViT) and not model.dynamic_img_size:
        m = int(model.min_input_size)
        native = tuple(dict.fromkeys((int(h), int(w)) for h, w in model.branch_img_size))
        return SizeRule((1, 1), (m, m), "CrossViT resizes every input to its branches' native sizes",
                        exact_branch_sizes=native)
    m = int(getattr(model, "min_input_size", 32) or 32)
    return SizeRule((1, 1), (m, m), "no size rule is known for this model")
