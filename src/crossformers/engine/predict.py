"""Top-k class predictions for image files with a trained checkpoint: :func:`predict`."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..data import DataError, build_transform, load_image
from ..hub import is_local_dir
from .checkpoint_io import resolve_checkpoint_dir
from .distributed import resolve_device
from .errors import ConfigError, ImageReadError, PartialPredictionError
from .loading import load_model
from .modeling import check_model_input

__all__ = ["predict", "read_images"]


def read_images(paths: Sequence[str | os.PathLike]) -> list:
    """Open and fully decode every image (PIL, mode ``'L'`` or ``'RGB'``) before any computation.

    Raises:
        ImageReadError: a file is missing, not a file, or cannot be decoded; the message names it.
    """
    images = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise ImageReadError(f"image not found: {path}")
        if not path.is_file():
            raise ImageReadError(f"{path} is not an image file (it is a directory)")
        try:
            images.append(load_image(path))
        except DataError as e:
            raise ImageReadError(str(e)) from None
    return images


def predict(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    topk: int = 5,
    *,
    use_ema: bool = False,
    device: str = "auto",
    batch_size: int = 32,
    model_transform: Callable[[nn.Module], nn.Module] | None = None,
) -> list[list[tuple[str, float]]]:
    """Classify image files with one of our checkpoints.

    Each image is converted to the checkpoint's channel count (grey or RGB) and preprocessed exactly like the
    checkpoint's validation data (``meta.json``: input size, mean/std, crop_pct, interpolation).

    Args:
        checkpoint: checkpoint or run directory (``best/`` preferred), or a converted folder (``crossformers convert``).
        images: image file paths (any format PIL reads).
        topk: number of classes returned per image (clipped to the class count).
        use_ema: use the EMA weights.
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        batch_size: images per forward pass.
        model_transform: applied to the loaded model (eval mode, on ``device``) before prediction, e.g.
            ``lambda m: crossformers.inference.to_precision(m, "int8")``; it must keep the fp32 image interface.

    Returns:
        For each image, in input order, ``topk`` pairs ``(class name, probability in [0, 1])`` sorted by
        decreasing probability.

    Raises:
        PartialPredictionError: (an :class:`ImageReadError`) some images are missing or corrupt: every other image
            is still classified; the error names each bad image with its reason and carries ``predictions`` (None
            for the bad ones) and ``failures``.
        CheckpointError: no usable checkpoint at ``checkpoint``.
        ConfigError: ``topk`` < 1 or no images.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"topk must be an int >= 1, got {topk!r}")
    if not images:
        raise ConfigError("no images given: pass one or more image files")
    if not is_local_dir(checkpoint):  # prediction needs class names: our checkpoints and converted folders have them
        resolve_checkpoint_dir(checkpoint)
    loaded = load_model(checkpoint, use_ema=use_ema)
    model, classes, pre = loaded.model, list(loaded.classes or []), loaded.preprocessing
    dev = resolve_device(device)
    tf = build_transform(False, tuple(pre["input_size"]), pre["mean"], pre["std"], interpolation=pre["interpolation"],
                         crop_pct=pre["crop_pct"])
    model.to(dev)
    check_model_input(model, pre["input_size"], loaded.name)
    if model_transform is not None:
        model = model_transform(model)
    k = min(topk, len(classes))
    out: list[list[tuple[str, float]] | None] = [None] * len(images)
    failures: list[tuple[str, str]] = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            # each image on its own: one unreadable file is reported, the others are still classified
            good, tensors = [], []
            for j in range(i, min(i + batch_size, len(images))):
                try:
                    (img,) = read_images([images[j]])
                except ImageReadError as e:
                    failures.append((str(images[j]), str(e)))
                    continue
                good.append(j)
                tensors.append(tf(img))
            if not good:
                continue
            probs = model(torch.stack(tensors).to(dev)).float().softmax(dim=-1)
            top = probs.topk(k, dim=-1)
            for j, values, indices in zip(good, top.values.tolist(), top.indices.tolist(), strict=True):
                out[j] = [(classes[c], float(v)) for v, c in zip(values, indices, strict=True)]
    if failures:
        n, total = len(failures), len(images)
        done = f"the other {total - n} were classified" if n < total else "no image was classified"
        raise PartialPredictionError(
            f"{n} of {total} images could not be read ({done}): " + "; ".join(reason for _, reason in failures),
            out, failures)
    return out
