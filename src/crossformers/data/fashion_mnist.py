"""Fashion-MNIST read from local IDX files (as shipped by Debian's ``dataset-fashion-mnist``).

Nothing is downloaded: the files are looked up in ``root``, else in the directory named by
the environment variable ``CROSSFORMERS_FASHION_MNIST``, else in
``/usr/share/datasets/fashion-mnist``. Both gzip-compressed (``*.gz``) and uncompressed
IDX files are accepted.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_DEFAULT_ROOT",
    "FashionMNIST",
    "read_idx",
    "resolve_fashion_mnist_root",
]

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "CROSSFORMERS_FASHION_MNIST"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# split -> file stem prefix; 'val' and 'test' both mean the official 10k test split.
_SPLIT_PREFIX = {"train": "train", "val": "t10k", "test": "t10k"}
_REINSTALL_HINT = (
    "re-install it with `sudo apt-get install --reinstall dataset-fashion-mnist` "
    "or replace the file with an intact copy"
)


def resolve_fashion_mnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory to read Fashion-MNIST from.

    Args:
        root: explicit directory; when ``None`` the environment variable
            ``CROSSFORMERS_FASHION_MNIST`` is used if set, else ``/usr/share/datasets/fashion-mnist``.

    Returns:
        The directory as a :class:`~pathlib.Path` (not checked for existence).
    """
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT
    return Path(root).expanduser()


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping ``*.gz``; errors become :class:`DataError`."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"Cannot read {path} ({type(err).__name__}: {err}): the file is corrupt or truncated; {_REINSTALL_HINT}."
        ) from None


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the MNIST file format).

    The layout is a big-endian int32 magic number ``0x0000 08 <ndim>``, ``ndim`` big-endian
    int32 sizes, then ``prod(sizes)`` bytes of data.

    Args:
        path: file to read; gzip-compressed if the name ends in ``.gz``.
        expected_magic: 2051 for image files (3-D), 2049 for label files (1-D).

    Returns:
        A read-only ``uint8`` array whose shape is given by the header, e.g. ``(N, 28, 28)``.

    Raises:
        DataError: if the file cannot be read or decompressed, has the wrong magic number, or
            holds more or fewer bytes than its header announces (truncated or corrupt).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path} is truncated ({len(raw)} bytes, no IDX header); {_REINSTALL_HINT}.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path} has IDX magic number {magic}, expected {expected_magic}: it is not the right IDX file "
            f"or it is corrupt; {_REINSTALL_HINT}."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated ({len(raw)} bytes, header needs {header}); {_REINSTALL_HINT}.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "corrupt (trailing bytes)"
        raise DataError(
            f"{path} is {what}: its header announces shape {shape} ({expected} bytes of data) but it holds "
            f"{actual}; {_REINSTALL_HINT}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_file(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _load_arrays(images_path: str, labels_path: str, _stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate one split; cached per process (``_stamp`` invalidates on file change)."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path} holds images of shape {images.shape[1:]}, expected (28, 28); {_REINSTALL_HINT}."
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path} has {labels.shape[0]} labels but {images_path} has {images.shape[0]} images; "
            f"{_REINSTALL_HINT}."
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path} holds label {int(labels.max())}, expected 0..9; {_REINSTALL_HINT}.")
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST (Xiao et al., 2017): 28x28 grey images of 10 clothing classes.

    The whole split is parsed once into memory as ``uint8`` (47 MB for train) and cached per
    process, so building several instances is cheap.

    Args:
        root: directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; defaults to
            ``$CROSSFORMERS_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``.
        split: ``'train'`` (60 000 images) or ``'val'`` / ``'test'`` (the official 10 000 test images).
        transform: applied to the PIL image (mode ``'L'``, 28x28).
        target_transform: applied to the integer label.
        limit: keep only the first ``limit`` samples (all if ``None`` or larger than the split).

    Attributes:
        classes: the 10 official class names, index = label.
        class_to_idx: name -> label.
        data: ``uint8`` array ``(N, 28, 28)``, read-only.
        targets: list of ``N`` integer labels in ``0..9``.

    Raises:
        DataError: unknown split, bad ``limit``, files missing (with install instructions) or corrupt.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        limit: int | None = None,
    ) -> None:
        if split not in _SPLIT_PREFIX:
            raise DataError(
                f"Unknown Fashion-MNIST split {split!r}: use one of 'train', 'val' or 'test' ('val' = 'test')."
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise DataError(f"limit must be a non-negative int or None, got {limit!r}: pass e.g. limit=1000.")
        self.root = resolve_fashion_mnist_root(root)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.classes: list[str] = list(FASHION_MNIST_CLASSES)
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}

        prefix = _SPLIT_PREFIX[split]
        stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
        paths = [_find_file(self.root, stem) for stem in stems]
        missing = [stem + ".gz" for stem, p in zip(stems, paths, strict=True) if p is None]
        if missing:
            raise DataError(
                f"Fashion-MNIST not found at {self.root} (missing {', '.join(missing)}): install it with "
                f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass root=... / set {FASHION_MNIST_ENV}"
            )
        images_path, labels_path = (str(p) for p in paths)
        stamp = tuple(v for p in paths for v in (p.stat().st_mtime_ns, p.stat().st_size))  # type: ignore[union-attr]
        images, labels = _load_arrays(images_path, labels_path, stamp)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.data: np.ndarray = images
        self.targets: list[int] = labels.astype(np.int64).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """Return ``(transform(image), target_transform(label))``; the raw image is a 28x28 PIL ``'L'`` image."""
        img: Any = Image.fromarray(self.data[index])
        target: Any = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, num_samples={len(self)})"
