"""Data pipeline of crossformers: datasets, timm transforms, Mixup/CutMix and resumable loaders.

Typical use::

    from crossformers import data

    cfg = data.dataset_defaults("fashion-mnist")
    tf = data.build_transform(True, cfg["input_size"], cfg["mean"], cfg["std"], scale=(0.6, 1.0))
    ds = data.build_dataset("fashion-mnist", "train", transform=tf)
    loader = data.build_loader(ds, batch_size=128, is_training=True, seed=0)
    for epoch in range(start_epoch, epochs):
        data.set_epoch(loader, epoch, start_batch=resume_batch if epoch == start_epoch else 0)
        for x, y in loader: ...

Every bad input raises :class:`DataError` (a ``ValueError``) with a one-line explanation and fix.
"""

from __future__ import annotations

from .errors import DataError
from .factory import (
    BUILTIN_DATASETS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    build_dataset,
    canonical_dataset_name,
    dataset_defaults,
)
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_ENV, FashionMNIST, read_idx
from .folders import ImageFolderDataset, load_image, verify_images
from .loader import ResumableRepeatAugSampler, ResumableSampler, batches_per_epoch, build_loader, set_epoch
from .mixup import CheckedMixup, build_mixup
from .subset import LabeledSubset, stratified_indices, take_subset
from .transforms import ToMode, build_transform, denormalize

__all__ = [
    "BUILTIN_DATASETS",
    "CheckedMixup",
    "DataError",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNIST",
    "ImageFolderDataset",
    "LabeledSubset",
    "ResumableSampler",
    "ResumableRepeatAugSampler",
    "ToMode",
    "batches_per_epoch",
    "build_dataset",
    "build_loader",
    "build_mixup",
    "build_transform",
    "canonical_dataset_name",
    "dataset_defaults",
    "denormalize",
    "load_image",
    "read_idx",
    "set_epoch",
    "stratified_indices",
    "take_subset",
    "verify_images",
]
