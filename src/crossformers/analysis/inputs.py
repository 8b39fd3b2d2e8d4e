"""Models and images for the analyses: our checkpoints or model names, image files or dataset images, preprocessed
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

from .errors import AnalysisError, EmptyInputError

__all__ = ["LoadedModel", "load_model", "preprocessing_of", "prepare_images", "dataset_images", "display_images",
           "ImageBatch"]

log = logging.getLogger("crossformers.analysis")

ImageLike = str | os.PathLike | Image.Image


@dataclass
class LoadedModel:
    """A model ready for analysis.

    Attributes:
        model: in eval mode, on the CPU.
        name: registered model name.
        source: checkpoint directory, weight file, or ``random init``.
        classes: class names (our checkpoints) or None.
        preprocessing: eval preprocessing (``input_size`` (C, H, W) in pixels, ``mean``, ``std``, ``interpolation``,
            ``crop_pct``).
        label: short label for plots and JSON.
    """

    model: nn.Module
    name: str
    source: str
    classes: list[str] | None
    preprocessing: dict[str, Any]
    label: str


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
    from ..engine.modeling import model_preprocessing

    return model_preprocessing(model, img_size=img_size)


def load_model(
    spec: str | os.PathLike | nn.Module,
    checkpoint: str | os.PathLike | None = None,
    *,
    use_ema: bool = False,
    pretrained: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
    img_size: int | None = None,
    label: str | None = None,
) -> LoadedModel:
    """Load what the user named.

    Args:
        spec: one of our run / checkpoint directories (weights and preprocessing from its ``meta.json``), a model
            name (random init unless ``checkpoint`` or ``pretrained``), or an ``nn.Module``.
        checkpoint: with a model name: an official or state-dict weight file.
        use_ema: with our checkpoint: its EMA weights.
        pretrained: with a model name: the authors' released weights.
        model_kwargs: with a model name: constructor arguments (``num_classes``, ``depths``, ...).
        img_size: square input side in pixels: for model names also passed to the constructor (unless
            ``model_kwargs`` sets it); for checkpoints only the preprocessing changes.
        label: label for plots (default: the model name, plus ``(random init)`` for untrained models).

    Raises:
        CheckpointError, UnknownModelError, ConfigError: from the loaders; AnalysisError: ``model_kwargs`` with a
        checkpoint directory.
    """
    from ..engine.checkpoint_io import is_checkpoint_dir, load_trained, resolve_checkpoint_dir
    from ..engine.modeling import build_model
    from ..errors import CheckpointError

    if isinstance(spec, nn.Module):
        name = (getattr(spec, "pretrained_cfg", None) or {}).get("architecture", type(spec).__name__)
        return LoadedModel(spec.eval(), name, "module", None, preprocessing_of(spec, img_size), label or name)
    path = Path(spec).expanduser()
    is_ckpt = False
    if path.exists():
        try:
            is_ckpt = is_checkpoint_dir(path) or bool(resolve_checkpoint_dir(path))
        except CheckpointError:
            is_ckpt = False
    if is_ckpt:
        if checkpoint is not None:
            raise CheckpointError(f"{path} is already a checkpoint: drop --checkpoint {checkpoint}")
        if model_kwargs is not None:
            raise AnalysisError(f"{path} is a trained checkpoint: --model-kwargs applies to model names only")
        model, meta = load_trained(path, use_ema=use_ema)
        pre = preprocessing_of(model, img_size)
        if img_size:
            log.info("%s: analysing at %dx%d px instead of the training size %s", path, img_size, img_size,
                     "x".join(str(s) for s in (meta.get("preprocessing") or {}).get("input_size", [])[1:]))
        return LoadedModel(model, meta["model"], meta["checkpoint_dir"], list(meta["classes"]), pre,
                           label or meta["model"])
    if path.exists() and path.is_file():
        raise CheckpointError(f"{path} is a weight file, not a model: pass the model name and --checkpoint {path}")
    if use_ema:
        raise CheckpointError("--ema needs one of our checkpoints (trained with --ema-decay), not a model name")
    kwargs = dict(model_kwargs or {})
    if img_size and "img_size" not in kwargs:
        kwargs["img_size"] = img_size
    with torch.device("cpu"):
        model = build_model(str(spec), checkpoint_path=checkpoint, pretrained=pretrained, **kwargs)
    model.eval()
    size = img_size or kwargs.get("img_size")
    pre = preprocessing_of(model, int(size) if isinstance(size, int) else None)
    trained = checkpoint is not None or pretrained
    source = str(checkpoint) if checkpoint else ("pretrained" if pretrained else "random init")
    return LoadedModel(model, str(spec), source, None, pre, label or (str(spec) if trained else f"{spec} (random init)"))


def _transform(pre: Mapping[str, Any]):
    from ..data import build_transform

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
    from ..engine.predict import read_images
    from ..errors import InputSizeError

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
    from ..data import build_dataset

    if num_images < 1:
        raise EmptyInputError(f"--num-images must be >= 1, got {num_images}")
    ds = build_dataset(data, split, transform=_transform(preprocessing), limit=num_images, stratified=True)
    xs, labels = zip(*[ds[i] for i in range(len(ds))], strict=True)
    classes = getattr(ds, "classes", None)
    names = [f"{data}[{i}] {classes[y] if classes else y}" for i, y in enumerate(labels)]
    return ImageBatch(torch.stack(list(xs)), names, [int(y) for y in labels])


def display_images(x: torch.Tensor, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """Undo the normalisation for display: (B, C, H, W) -> (B, H, W, 3) float in [0, 1] (grey repeated)."""
    from ..data import denormalize

    img = denormalize(x.detach().float().cpu(), preprocessing["mean"], preprocessing["std"]).clamp(0, 1)
    img = img.permute(0, 2, 3, 1).numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img
