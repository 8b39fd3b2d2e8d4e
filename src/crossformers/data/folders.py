"""Image-folder datasets (``root/{train,val}/<class>/<image>``) on top of torchvision's ImageFolder.

torchvision reports layout problems with bare ``FileNotFoundError`` s raised deep inside its
constructor and corrupt images with PIL errors raised inside a DataLoader worker. Here the
layout is checked up front and every problem becomes one :class:`DataError` naming the
folder or file at fault and what to do about it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataError

__all__ = ["IMAGE_SPLITS", "ImageFolderDataset", "is_image_file", "load_image", "verify_images"]

IMAGE_SPLITS: tuple[str, ...] = ("train", "val", "test")

# Everything PIL is known to raise for unreadable, truncated or hostile files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
_GREY_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def is_image_file(path: str) -> bool:
    """True for a non-hidden file with an image extension known to torchvision (case-insensitive).

    Hidden files (``.foo.jpg``, macOS ``._foo.jpg`` resource forks) are skipped: they are
    almost never images and would otherwise fail to decode.
    """
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _to_standard_mode(img: Image.Image) -> Image.Image:
    """Map any PIL mode to ``'L'`` (grey) or ``'RGB'``; 16-bit grey is rescaled, not clipped."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in _GREY_HIGH_DEPTH:
        arr = np.asarray(img).astype(np.float64)
        if img.mode != "I" or arr.max(initial=0) > 255:
            arr = arr * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if img.mode in ("1", "LA", "F") or (img.mode in ("P", "PA") and _palette_is_grey(img)):
        return img.convert("L")
    return img.convert("RGB")


def _palette_is_grey(img: Image.Image) -> bool:
    palette = img.getpalette()
    if not palette:
        return True
    rgb = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image file.

    Returns:
        A PIL image in mode ``'L'`` (grey inputs, including 1-bit, palette-grey and 16-bit, which is
        rescaled to 8 bits) or ``'RGB'`` (everything else; alpha is dropped).

    Raises:
        DataError: the file is missing, corrupt, truncated or not an image; the message names the
            file and suggests removing or replacing it.
    """
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            img.load()
            return _to_standard_mode(img)
    except _PIL_ERRORS as err:
        raise DataError(
            f"Cannot read image file {os.fspath(path)} ({type(err).__name__}: {err}): the file is corrupt, "
            "truncated or not an image; remove or replace it (verify_images() / --check-images lists every bad file)."
        ) from None


def _class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the non-hidden sub-directories of ``split_dir``."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _has_image(class_dir: Path) -> bool:
    for dirpath, _dirs, files in os.walk(class_dir, followlinks=True):
        if any(is_image_file(os.path.join(dirpath, f)) for f in files):
            return True
    return False


def _check_layout(root: Path, split: str, check_splits: bool) -> Path:
    """Validate ``root/split/<class>/...``; return the split directory or raise :class:`DataError`."""
    layout = "a directory with train/ and val/ subfolders, each holding one subfolder of images per class"
    if not root.exists():
        raise DataError(f"Dataset root {root} does not exist: pass {layout} (e.g. root/train/cat/001.png).")
    if not root.is_dir():
        raise DataError(f"Dataset root {root} is a file, not a directory: pass {layout}.")
    if split not in IMAGE_SPLITS:
        raise DataError(f"Unknown split {split!r}: use one of {', '.join(map(repr, IMAGE_SPLITS))}.")
    split_dir = root / split
    if not split_dir.is_dir():
        found = _class_dirs(root)
        raise DataError(
            f"Split folder {split_dir} not found (subfolders of {root}: {found or 'none'}): the root must be {layout}; "
            f"create {split_dir} with the same class subfolders as the other split."
        )
    classes = _class_dirs(split_dir)
    if not classes:
        raise DataError(
            f"No class folders in {split_dir}: put the images of each class in their own subfolder, "
            f"e.g. {split_dir / 'cat' / '001.png'}."
        )
    empty = [c for c in classes if not _has_image(split_dir / c)]
    if empty:
        shown = ", ".join(str(split_dir / c) for c in empty[:10]) + (
            f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        )
        raise DataError(
            f"Class folder(s) with no images: {shown} (image extensions: {' '.join(IMG_EXTENSIONS)}): "
            "add images to them or delete the folders (from every split, so the class lists stay equal)."
        )
    if check_splits:
        for other in IMAGE_SPLITS:
            other_dir = root / other
            if other == split or not other_dir.is_dir():
                continue
            other_classes = _class_dirs(other_dir)
            if other_classes != classes:
                only_here = sorted(set(classes) - set(other_classes))
                only_there = sorted(set(other_classes) - set(classes))
                raise DataError(
                    f"Class folders differ between {split_dir} and {other_dir}: only in {split}: {only_here or 'none'}; "
                    f"only in {other}: {only_there or 'none'}. Labels come from the sorted folder names, so every split "
                    "needs the same class subfolders: add or remove folders so they match."
                )
    return split_dir


class ImageFolderDataset(ImageFolder):
    """``root/<split>/<class>/<image>`` dataset: torchvision's ImageFolder with clear errors.

    Labels are the indices of the sorted class-folder names (hidden folders ignored), identical
    across splits. Images are returned as PIL ``'L'`` or ``'RGB'`` (see :func:`load_image`)
    before ``transform``.

    Args:
        root: dataset directory containing ``train/`` and ``val/`` (``test/`` optional).
        split: ``'train'`` -> ``root/train``, ``'val'`` -> ``root/val``, ``'test'`` -> ``root/test``.
        transform: applied to the PIL image.
        target_transform: applied to the integer label.
        limit: keep only the first ``limit`` samples in torchvision's order (sorted by class, then
            path); for a class-balanced subset use :func:`crossformers.data.take_subset` instead.
        check_splits: also check that every other split folder present has the same classes.

    Attributes:
        classes, class_to_idx, samples (list of ``(path, label)``), targets (list of int): as in
        torchvision; ``root`` is the split folder, ``dataset_root`` the directory given, ``split`` the split.

    Raises:
        DataError: root or split folder missing, no class folders, a class folder without images
            (named), class lists differing between splits, bad ``limit``. Reading a corrupt image
            later raises DataError naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        limit: int | None = None,
        check_splits: bool = True,
    ) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise DataError(f"limit must be a non-negative int or None, got {limit!r}: pass e.g. limit=1000.")
        dataset_root = Path(root).expanduser()
        split_dir = _check_layout(dataset_root, split, check_splits)
        try:
            super().__init__(
                str(split_dir),
                transform=transform,
                target_transform=target_transform,
                loader=load_image,
                is_valid_file=is_image_file,
            )
        except (FileNotFoundError, ValueError) as err:  # pre-checks should make this unreachable
            raise DataError(
                f"Cannot index images under {split_dir}: {err}. Fix the folder layout described above."
            ) from None
        self.dataset_root = dataset_root
        self.split = split
        if limit is not None:
            self.samples = self.samples[:limit]
            self.imgs = self.samples
            self.targets = [t for _, t in self.samples]

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        """Class names = sorted non-hidden sub-folders of ``directory``; returns ``(classes, class_to_idx)``."""
        classes = _class_dirs(Path(directory))
        if not classes:
            raise DataError(f"No class folders in {directory}: put the images of each class in their own subfolder.")
        return classes, {c: i for i, c in enumerate(classes)}


def _sample_paths(dataset: Dataset) -> list[str]:
    """File paths behind ``dataset`` (follows ``Subset`` wrappers); empty for in-memory datasets."""
    if isinstance(dataset, Subset):
        paths = _sample_paths(dataset.dataset)
        return [paths[i] for i in dataset.indices] if paths else []
    samples: Sequence[tuple[str, int]] | None = getattr(dataset, "samples", None)
    if samples is None:
        return []
    return [os.fspath(p) for p, _ in samples]


def _is_bad(path: str) -> bool:
    try:
        load_image(path)
    except DataError:
        return True
    return False


def verify_images(dataset: Dataset, num_threads: int = 4) -> list[str]:
    """Fully decode every image file of ``dataset`` and return the paths that fail.

    Works on :class:`ImageFolderDataset` (and any dataset with torchvision-style ``samples``,
    also wrapped in ``torch.utils.data.Subset``); in-memory datasets such as
    :class:`~crossformers.data.FashionMNIST` have no files and give ``[]``.

    Args:
        dataset: the dataset to check.
        num_threads: decoding threads (PIL releases the GIL while decoding).

    Returns:
        Paths of corrupt, truncated or unreadable files, in dataset order (empty if all are fine).
    """
    paths = _sample_paths(dataset)
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, int(num_threads))) as pool:
        bad = list(pool.map(_is_bad, paths))
    return [p for p, b in zip(paths, bad, strict=True) if b]
