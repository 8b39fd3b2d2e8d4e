"""Models and images for the analyses: our checkpoints or model names (through the package's one loader,
:func:`crossformers.engine.loading.load_model`, re-exported here), image files or dataset images, preprocessed
exactly as the model expects.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import build_dataset, build_transform, denormalize
from ..engine.loading import LoadedModel, load_model
from ..engine.modeling import model_preprocessing
from ..engine.predict import read_images
from ..errors import InputSizeError
from .errors import EmptyInputError

__all__ = ["LoadedModel", "load_model", "preprocessing_of", "prepare_images", "dataset_images", "display_images",
           "ImageBatch"]

log = logging.getLogger("crossformers.analysis")

ImageLike = str | os.PathLike | Image.Image


@dataclass
class ImageBatch:
    """Preprocessed images.

    Attributes:
        tensor: (B, C, H, W) float32, normalised as the model expects; H, W in pixels.
        names: a name per image (file name, or ``<dataset>[index]``).
        labels: true class per image when known (dataset images), else None.
    """

    tensor: torch.Tensor
    names: list[str]
    labels: list[int] | None = None


def preprocessing_of(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """The model's eval preprocessing (from its ``pretrained_cfg``; ours carry the checkpoint's), optionally at
    another square size ``img_size`` (pixels)."""
    return model_preprocessing(model, img_size=img_size)


def _transform(pre: Mapping[str, Any]):
    return build_transform(False, tuple(pre["input_size"]), pre["mean"], pre["std"],
                           interpolation=pre["interpolation"], crop_pct=pre["crop_pct"])


def prepare_images(images: torch.Tensor | Sequence[ImageLike], preprocessing: Mapping[str, Any],
                   model: nn.Module | None = None) -> ImageBatch:
    """Turn images into a model input batch.

    Args:
        images: a preprocessed tensor (C, H, W) or (B, C, H, W) (used as is), or image files / PIL images, which are
            converted to the model's channel count and preprocessed like its validation data (resize the short side to
            ``size / crop_pct``, centre crop ``size``, normalise). Files of another size are resized that way; the
            log says so.
        preprocessing: from :func:`preprocessing_of` / :class:`LoadedModel`.
        model: used to check a tensor's channel count.

    Returns:
        An :class:`ImageBatch` (B, C, H, W).

    Raises:
        EmptyInputError: no images.
        ImageReadError: an image file is missing or unreadable.
        InputSizeError: a tensor of the wrong rank or channel count.
    """
    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[0] == 0:
            raise (EmptyInputError("no images given: the tensor is empty") if x.ndim == 4 else InputSizeError(
                f"images must be a (B, C, H, W) tensor, got shape {tuple(images.shape)}"))
        chans = int(preprocessing["input_size"][0])
        if x.shape[1] != chans:
            raise InputSizeError(f"the model takes {chans}-channel images but the tensor has {x.shape[1]} channels: "
                                 "pass image files (converted automatically) or convert the tensor")
        return ImageBatch(x.float(), [f"image[{i}]" for i in range(x.shape[0])])
    items = list(images)
    if not items:
        raise EmptyInputError("no images given: pass one or more image files (--images) or --data NAME")
    paths = [p for p in items if not isinstance(p, Image.Image)]
    loaded = iter(read_images(paths)) if paths else iter(())
    pil, names = [], []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            pil.append(item)
            names.append(f"image[{i}]")
        else:
            pil.append(next(loaded))
            names.append(Path(item).name)
    tf = _transform(preprocessing)
    size = tuple(int(s) for s in preprocessing["input_size"][1:])
    for name, img in zip(names, pil, strict=True):
        if (img.height, img.width) != size:
            log.info("%s: %dx%d (HxW) image resized to %dx%d (the model's preprocessing: short side to %d px, centre "
                     "crop %s, %s)", name, img.height, img.width, size[0], size[1],
                     int(min(size) / float(preprocessing["crop_pct"])), "x".join(map(str, size)),
                     preprocessing["interpolation"])
    x = torch.stack([tf(img) for img in pil])
    if model is not None and x.shape[1] != getattr(model, "in_chans", x.shape[1]):
        raise InputSizeError(f"preprocessing gives {x.shape[1]} channels but the model takes {model.in_chans}")
    return ImageBatch(x, names)


def dataset_images(data: str, num_images: int, preprocessing: Mapping[str, Any], split: str = "val") -> ImageBatch:
    """The first ``num_images`` images of a dataset split, balanced over classes, preprocessed for the model.

    Args:
        data: ``fashion-mnist`` or an image-folder root (``root/<split>/<class>/...``).
        num_images: how many (>= 1).
        preprocessing: the model's preprocessing.
        split: ``val`` (Fashion-MNIST: the test split), ``train`` or ``test``.

    Raises:
        EmptyInputError: ``num_images`` < 1. DataError: unknown or missing dataset.
    """
    if num_images < 1:
        raise EmptyInputError(f"--num-images must be >= 1, got {num_images}")
    ds = build_dataset(data, split, transform=_transform(preprocessing), limit=num_images, stratified=True)
    xs, labels = zip(*[ds[i] for i in range(len(ds))], strict=True)
    classes = getattr(ds, "classes", None)
    names = [f"{data}[{i}] {classes[y] if classes else y}" for i, y in enumerate(labels)]
    return ImageBatch(torch.stack(list(xs)), names, [int(y) for y in labels])


def display_images(x: torch.Tensor, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """Undo the normalisation for display: (B, C, H, W) -> (B, H, W, 3) float in [0, 1] (grey repeated)."""
    img = denormalize(x.detach().float().cpu(), preprocessing["mean"], preprocessing["std"]).clamp(0, 1)
    img = img.permute(0, 2, 3, 1).numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img
