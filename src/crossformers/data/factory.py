"""Dataset lookup by name or directory, and per-dataset defaults."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timm.data.constants import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .errors import DataError
from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST
from .folders import ImageFolderDataset, _check_layout, _class_dirs
from .subset import take_subset

__all__ = [
    "BUILTIN_DATASETS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "build_dataset",
    "canonical_dataset_name",
    "dataset_defaults",
]

# Per-channel statistics of the Fashion-MNIST *training* split, pixels scaled to 0..1:
# mean and population std (ddof=0) over all 60000*28*28 pixels, computed in float64 from
# train-images-idx3-ubyte.gz: mean = 0.286041, std = 0.353024 (tests/data recomputes them).
FASHION_MNIST_MEAN: tuple[float, ...] = (0.2860,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530,)

# canonical name -> accepted spellings (compared case-insensitively)
BUILTIN_DATASETS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "fmnist"),
}


def canonical_dataset_name(name_or_root: str | os.PathLike[str]) -> str | None:
    """Canonical built-in name for ``name_or_root`` (e.g. ``'FMNIST'`` -> ``'fashion-mnist'``), else ``None``."""
    key = os.fspath(name_or_root).strip().lower()
    for canonical, aliases in BUILTIN_DATASETS.items():
        if key in aliases:
            return canonical
    return None


def _unknown(name_or_root: str | os.PathLike[str]) -> DataError:
    names = "; ".join(f"{k} (also {', '.join(a for a in v if a != k)})" for k, v in BUILTIN_DATASETS.items())
    return DataError(
        f"{os.fspath(name_or_root)!r} is neither a built-in dataset nor an existing directory: use a built-in name "
        f"[{names}], or a directory with train/ and val/ subfolders holding one subfolder of images per class."
    )


def build_dataset(
    name_or_root: str | os.PathLike[str],
    split: str,
    transform: Callable[[Any], Any] | None = None,
    limit: int | None = None,
    *,
    stratified: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Build a dataset by built-in name or from an image-folder directory.

    Built-in names win over a same-named directory (write ``./fmnist`` to mean the folder).

    Args:
        name_or_root: ``'fashion-mnist'`` (or ``'fashion_mnist'``, ``'fmnist'``), or a directory
            with ``train/`` and ``val/`` subfolders of class folders.
        split: ``'train'`` or ``'val'`` (``'test'`` also works: Fashion-MNIST's test split = val;
            for a directory, ``root/test``).
        transform: applied to each PIL image (e.g. from :func:`build_transform`).
        limit: keep at most this many samples (``None`` = all).
        stratified: with ``limit``, pick samples balanced over classes instead of the first ``limit``.
        root: for built-in datasets, the directory holding their files (default: see
            :class:`~crossformers.data.FashionMNIST`). Ignored for directories.

    Returns:
        A map-style dataset with ``classes`` (list of names), ``targets`` (list of int) and
        ``len``; items are ``(transform(image), label)``.

    Raises:
        DataError: unknown name that is not a directory, or any problem reported by the dataset.
    """
    canonical = canonical_dataset_name(name_or_root)
    sub_limit = None if stratified else limit
    ds: Dataset
    if canonical == "fashion-mnist":
        ds = FashionMNIST(root=root, split=split, transform=transform, limit=sub_limit)
    elif Path(name_or_root).expanduser().exists():
        ds = ImageFolderDataset(name_or_root, split=split, transform=transform, limit=sub_limit)
    else:
        raise _unknown(name_or_root)
    if stratified and limit is not None:
        ds = take_subset(ds, limit, stratified=True)
    return ds


def dataset_defaults(name_or_root: str | os.PathLike[str]) -> dict[str, Any]:
    """Sensible model/transform defaults for a dataset.

    Returns:
        A dict with ``name``, ``num_classes``, ``classes``, ``in_chans``, ``img_size`` (native
        side in pixels), ``input_size`` ``(C, H, W)``, ``mean``, ``std`` (tuples in 0..1 units,
        length ``in_chans``), ``crop_pct`` and ``interpolation`` for :func:`build_transform`.
        Fashion-MNIST: 10 classes, 1 channel, 28 px, its train mean/std, ``crop_pct=1.0``.
        An image-folder directory: classes from ``root/train``, assumed RGB at 224 px with
        ImageNet mean/std and timm's 0.875 crop (override for grey or small images).

    Raises:
        DataError: unknown name that is not a directory, or a bad folder layout.
    """
    canonical = canonical_dataset_name(name_or_root)
    if canonical == "fashion-mnist":
        return {
            "name": canonical,
            "num_classes": len(FASHION_MNIST_CLASSES),
            "classes": list(FASHION_MNIST_CLASSES),
            "in_chans": 1,
            "img_size": 28,
            "input_size": (1, 28, 28),
            "mean": FASHION_MNIST_MEAN,
            "std": FASHION_MNIST_STD,
            "crop_pct": 1.0,
            "interpolation": "bicubic",
        }
    root = Path(name_or_root).expanduser()
    if not root.exists():
        raise _unknown(name_or_root)
    classes = _class_dirs(_check_layout(root, "train", check_splits=True))
    return {
        "name": root.name,
        "num_classes": len(classes),
        "classes": classes,
        "in_chans": 3,
        "img_size": 224,
        "input_size": (3, 224, 224),
        "mean": tuple(IMAGENET_DEFAULT_MEAN),
        "std": tuple(IMAGENET_DEFAULT_STD),
        "crop_pct": DEFAULT_CROP_PCT,
        "interpolation": "bicubic",
    }
