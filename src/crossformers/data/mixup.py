"""Mixup / CutMix via :class:`timm.data.Mixup`."""

from __future__ import annotations

import math

import torch
from timm.data import Mixup

from .errors import DataError

__all__ = ["CheckedMixup", "build_mixup"]


class CheckedMixup(Mixup):
    """:class:`timm.data.Mixup` that reports an odd batch or bad labels as :class:`DataError`.

    timm asserts an even batch size (images are mixed with the flipped batch); a training
    loader built with ``drop_last=True`` and an even ``batch_size`` always satisfies this.
    Randomness comes from numpy's global RNG (seed it for reproducibility).
    """

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch **in place**.

        Args:
            x: images ``(B, C, H, W)`` float, ``B`` even.
            target: integer labels ``(B,)`` in ``0..num_classes-1``.

        Returns:
            ``(x, soft_target)`` with ``soft_target`` float ``(B, num_classes)``, rows summing to 1.

        Raises:
            DataError: odd batch size, or target not a 1-D integer tensor of length ``B``.
        """
        if len(x) % 2:
            raise DataError(
                f"Mixup/CutMix needs an even batch size, got {len(x)}: use an even batch_size and drop_last=True "
                "for the training loader."
            )
        if target.ndim != 1 or target.shape[0] != x.shape[0] or target.is_floating_point():
            raise DataError(
                f"Mixup expects integer class labels of shape ({x.shape[0]},), got {tuple(target.shape)} "
                f"{target.dtype}: pass the raw labels, the soft targets are made here."
            )
        return super().__call__(x, target)


def build_mixup(
    mixup_alpha: float,
    cutmix_alpha: float,
    label_smoothing: float,
    num_classes: int,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
) -> Mixup | None:
    """Build a Mixup/CutMix batch transform, or ``None`` when both are off.

    Args:
        mixup_alpha: Beta(alpha, alpha) parameter of Mixup; 0 disables Mixup.
        cutmix_alpha: Beta parameter of CutMix; 0 disables CutMix.
        label_smoothing: smoothing folded into the soft targets, in [0, 1).
        num_classes: number of classes (width of the soft targets), >= 2.
        prob: probability of mixing a batch (or element, see ``mode``), in [0, 1].
        switch_prob: probability of CutMix instead of Mixup when both are on, in [0, 1].
        mode: ``'batch'`` (one lambda per batch), ``'pair'`` or ``'elem'``.

    Returns:
        A :class:`CheckedMixup` (a :class:`timm.data.Mixup`): ``mix(x, y) -> (x, soft_y)`` with
        ``x`` ``(B, C, H, W)`` (B even, modified in place) and ``soft_y`` float ``(B, num_classes)``.
        ``None`` if both alphas are 0 or ``prob`` is 0; then use plain cross-entropy with
        ``label_smoothing``.

    Raises:
        DataError: negative alpha, probabilities or smoothing out of range, ``num_classes < 2``,
            unknown ``mode``.
    """
    for name, v in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise DataError(
                f"{name} must be >= 0 (0 disables it), got {v!r}: typical values are 0.8 (mixup) and 1.0 (cutmix)."
            )
    for name, v in (("prob", prob), ("switch_prob", switch_prob)):
        if not 0.0 <= float(v) <= 1.0:
            raise DataError(f"{name} is a probability and must be in [0, 1], got {v!r}.")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise DataError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}: typical value 0.1.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise DataError(f"num_classes must be an int >= 2, got {num_classes!r}: pass len(dataset.classes).")
    if mode not in ("batch", "pair", "elem"):
        raise DataError(f"mode must be 'batch', 'pair' or 'elem', got {mode!r}.")
    if (mixup_alpha == 0 and cutmix_alpha == 0) or prob == 0:
        return None
    return CheckedMixup(
        mixup_alpha=float(mixup_alpha),
        cutmix_alpha=float(cutmix_alpha),
        prob=float(prob),
        switch_prob=float(switch_prob),
        mode=mode,
        label_smoothing=float(label_smoothing),
        num_classes=num_classes,
    )
