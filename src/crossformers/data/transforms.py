"""Image transforms: a thin wrapper over :func:`timm.data.create_transform` that handles grey images.

timm's pipelines assume the image mode matches ``mean``/``std``: RandAugment fills the
background of geometric ops with ``mean`` scaled to 0..255, and PIL refuses a 3-value fill
for an ``'L'`` image (``TypeError: color must be int or single-element tuple``); a 1-channel
tensor normalised with 3 means fails too. :func:`build_transform` therefore first converts
every input to the mode implied by ``input_size[0]`` (``'L'`` for 1, ``'RGB'`` for 3) and
adapts ``mean``/``std`` to that channel count, so grey and colour inputs work either way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms

from .errors import DataError
from .folders import _to_standard_mode

__all__ = ["INTERPOLATIONS", "ToMode", "adapt_stats", "build_transform", "denormalize"]

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")


class ToMode:
    """Convert a PIL image (or an ``HxW`` / ``HxWxC`` uint8 array) to PIL mode ``'L'`` or ``'RGB'``.

    Colour -> grey uses PIL's ITU-R 601 luma; grey -> RGB repeats the channel; 16-bit grey is
    rescaled to 8 bits rather than clipped.

    Raises:
        DataError: (on call) the input is neither a PIL image nor a numpy array.
    """

    def __init__(self, mode: str) -> None:
        if mode not in ("L", "RGB"):
            raise DataError(f"ToMode supports mode 'L' or 'RGB', got {mode!r}: use 'L' for 1 channel, 'RGB' for 3.")
        self.mode = mode

    def __call__(self, img: Any) -> Image.Image:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        if not isinstance(img, Image.Image):
            raise DataError(
                f"The transform expects a PIL image, got {type(img).__name__}: convert it with PIL.Image.fromarray "
                "(tensors are not accepted because the timm pipeline starts with PIL operations)."
            )
        if img.mode != self.mode:
            img = _to_standard_mode(img)
            if img.mode != self.mode:
                img = img.convert(self.mode)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _check_pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(
            f"{name} must be a pair (low, high) of numbers, got {value!r}: e.g. {name}=(0.6, 1.0)."
        ) from None
    if not (0 < lo <= hi) or not math.isfinite(hi):
        raise DataError(f"{name} must satisfy 0 < low <= high, got {value!r}: e.g. {name}=(0.6, 1.0).")
    return lo, hi


def adapt_stats(name: str, values: Any, channels: int) -> tuple[float, ...]:
    """Per-channel ``mean`` / ``std`` (0..1 units) for ``channels`` channels: 3 values averaged for 1 channel, 1
    value repeated for 3 (timm's resolver does not adapt them).

    Raises:
        DataError: not 1 or 3 finite numbers, or a non-positive std.
    """
    if isinstance(values, numbers.Real):
        values = (values,)
    try:
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a sequence of 1 or 3 numbers, got {values!r}: e.g. {name}=(0.5,).") from None
    if len(vals) not in (1, 3) or not all(math.isfinite(v) for v in vals):
        raise DataError(f"{name} must hold 1 or 3 finite numbers (per channel), got {values!r}.")
    if name == "std" and any(v <= 0 for v in vals):
        raise DataError(f"std must be positive, got {values!r}: use the per-channel standard deviation of the data.")
    if channels == 1 and len(vals) == 3:
        return (sum(vals) / 3.0,)
    if channels == 3 and len(vals) == 1:
        return vals * 3
    return vals


def build_transform(
    is_training: bool,
    input_size: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_pct: float | None = None,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    color_jitter: float | tuple[float, ...] | None = None,
    re_mode: str = "pixel",
    re_count: int = 1,
    vflip: float = 0.0,
) -> transforms.Compose:
    """Build a timm train or eval transform that maps a PIL image to a normalised float tensor.

    Training: RandomResizedCrop(``scale``, ``ratio``) -> flips -> RandAugment/AutoAugment/AugMix
    (``auto_augment``; colour jitter is then disabled by timm) or ``color_jitter`` -> to tensor ->
    normalise -> RandomErasing (``re_prob``). Eval: resize the short side to
    ``floor(size / crop_pct)`` -> center crop ``size`` -> to tensor -> normalise.

    Args:
        is_training: random training augmentation if True, deterministic eval pipeline if False.
        input_size: ``(channels, height, width)`` of the output; channels 1 (images converted to
            ``'L'``) or 3 (converted to ``'RGB'``).
        mean: per-channel mean in 0..1, length 1 or 3; averaged to 1 value for 1 channel,
            repeated for 3 channels when a single value is given.
        std: per-channel standard deviation, same rules as ``mean``.
        interpolation: ``'bilinear'``, ``'bicubic'``, ``'nearest'``, ``'lanczos'``, ``'box'``,
            ``'hamming'`` or (training only; eval falls back to bilinear) ``'random'``.
        crop_pct: eval only, fraction of the resized image kept by the center crop; ``None`` =
            timm's 0.875. Use 1.0 to evaluate small images (e.g. 28x28) at native size without cropping.
        auto_augment: timm policy string, e.g. ``'rand-m9-mstd0.5-inc1'`` (RandAugment),
            ``'augmix-m5-w4-d2'``, ``'original'``; ``None`` for none.
        re_prob: RandomErasing probability (training only), in [0, 1].
        hflip: horizontal flip probability (training only).
        scale: RandomResizedCrop area range, e.g. ``(0.6, 1.0)`` for 28x28 data.
        ratio: RandomResizedCrop aspect-ratio range.
        color_jitter: brightness/contrast/saturation factor (or 3-4 tuple); ``None``/0 = off.
        re_mode: RandomErasing fill, ``'pixel'`` (per-pixel normal noise), ``'rand'`` or ``'const'``.
        re_count: maximum number of erased boxes per image.
        vflip: vertical flip probability (training only).

    Returns:
        A ``torchvision.transforms.Compose``; called on a PIL image (any mode) or uint8 array it
        returns a ``float32`` tensor of shape ``input_size``. Picklable (DataLoader workers).

    Raises:
        DataError: an argument is out of range or of the wrong form, or timm rejects the
            ``auto_augment`` string.
    """
    try:
        channels, height, width = (int(v) for v in input_size)
        valid = len(tuple(input_size)) == 3
    except (TypeError, ValueError):
        valid = False
    if not valid or channels not in (1, 3) or height <= 0 or width <= 0:
        raise DataError(
            f"input_size must be (channels, height, width) with channels 1 or 3, got {input_size!r}: "
            "e.g. (1, 28, 28) or (3, 224, 224)."
        )
    mean_t = adapt_stats("mean", mean, channels)
    std_t = adapt_stats("std", std, channels)
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"Unknown interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}.")
    if not is_training and interpolation == "random":
        interpolation = "bilinear"
    if crop_pct is not None and not (0 < float(crop_pct) and math.isfinite(float(crop_pct))):
        raise DataError(
            f"crop_pct must be a positive number or None, got {crop_pct!r}: e.g. 0.875, or 1.0 for no crop."
        )
    for name, p in (("re_prob", re_prob), ("hflip", hflip), ("vflip", vflip)):
        if not 0.0 <= float(p) <= 1.0:
            raise DataError(f"{name} is a probability and must be in [0, 1], got {p!r}.")
    if re_mode not in ("pixel", "rand", "const"):
        raise DataError(f"re_mode must be 'pixel', 'rand' or 'const', got {re_mode!r}.")
    if int(re_count) < 1:
        raise DataError(f"re_count must be >= 1, got {re_count!r}.")
    scale = _check_pair("scale", scale)
    ratio = _check_pair("ratio", ratio)
    if auto_augment is not None and not isinstance(auto_augment, str):
        raise DataError(
            f"auto_augment must be a timm policy string or None, got {auto_augment!r}: e.g. 'rand-m9-mstd0.5'."
        )
    if color_jitter is not None and not isinstance(color_jitter, numbers.Real):
        jitter = tuple(color_jitter)
        if len(jitter) not in (3, 4):
            raise DataError(f"color_jitter must be a number or a 3/4-tuple, got {color_jitter!r}: e.g. 0.4.")
        color_jitter = jitter
    elif color_jitter is not None and float(color_jitter) == 0.0:
        color_jitter = None

    try:
        tf = create_transform(
            input_size=(channels, height, width),
            is_training=is_training,
            scale=scale,
            ratio=ratio,
            hflip=float(hflip),
            vflip=float(vflip),
            color_jitter=color_jitter,  # type: ignore[arg-type]  # timm accepts None = off
            auto_augment=auto_augment or None,
            interpolation=interpolation,
            mean=mean_t,
            std=std_t,
            re_prob=float(re_prob),
            re_mode=re_mode,
            re_count=int(re_count),
            crop_pct=crop_pct,
        )
    except (AssertionError, KeyError, ValueError, IndexError) as err:
        what = f"auto_augment={auto_augment!r}" if auto_augment else "these arguments"
        raise DataError(
            f"timm could not build a transform from {what} ({type(err).__name__}: {err}): use a valid policy such as "
            "'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2' or 'original', or None."
        ) from None
    return transforms.Compose([ToMode("L" if channels == 1 else "RGB"), *tf.transforms])


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo normalisation: ``x * std + mean`` per channel, for ``(C, H, W)`` or ``(B, C, H, W)`` tensors.

    ``mean``/``std`` follow :func:`build_transform`'s rules (adapted to ``C``). Returns values in
    the input's dtype, nominally in 0..1 (not clamped).
    """
    channels = x.shape[-3]
    m = torch.tensor(adapt_stats("mean", mean, channels), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(adapt_stats("std", std, channels), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * s + m
