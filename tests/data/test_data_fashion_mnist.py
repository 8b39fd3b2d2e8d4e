"""Fashion-MNIST reader: the real Debian files, and small synthetic IDX files for the error paths."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from crossformers.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DataError,
    FashionMNIST,
    read_idx,
)
from crossformers.data.fashion_mnist import FASHION_MNIST_DEFAULT_ROOT
from real_data import require_fashion_mnist

REAL_ROOT = Path(FASHION_MNIST_DEFAULT_ROOT)
needs_real = pytest.mark.usefixtures("fmnist")  # skips without the data, fails on CI (tests/conftest.py)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Serialise a uint8 array in IDX format (magic 0x0000 08 <ndim>, big-endian sizes, data)."""
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fake(root: Path, prefix: str = "train", n: int = 12, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = idx_bytes(arr)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / stem).write_bytes(raw)
    return images, labels


@needs_real
def test_real_sizes_labels_and_classes() -> None:
    train = FashionMNIST(split="train")
    val = FashionMNIST(split="val")
    test = FashionMNIST(split="test")
    assert (len(train), len(val), len(test)) == (60000, 10000, 10000)
    assert train.data.shape == (60000, 28, 28) and train.data.dtype == np.uint8
    # the official label names, in label order, as torchvision (an independent reader of the same files) lists them
    assert train.classes == list(FASHION_MNIST_CLASSES) == torchvision.datasets.FashionMNIST.classes
    for ds in (train, val):
        t = np.asarray(ds.targets)
        assert t.min() == 0 and t.max() == 9
        assert np.all(np.bincount(t) == len(ds) // 10)  # both splits are exactly balanced
    img, label = train[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28)
    assert isinstance(label, int) and label == 9  # first training image is an ankle boot


@needs_real
def test_real_mean_std_match_hardcoded() -> None:
    pixels = FashionMNIST(split="train").data.astype(np.float64) / 255.0
    assert pixels.mean() == pytest.approx(FASHION_MNIST_MEAN[0], abs=5e-5)
    assert pixels.std() == pytest.approx(FASHION_MNIST_STD[0], abs=5e-5)


@needs_real
def test_limit_and_transform() -> None:
    ds = FashionMNIST(split="val", limit=5, transform=lambda im: np.asarray(im).shape, target_transform=str)
    assert len(ds) == 5
    assert ds[4] == ((28, 28), str(ds.targets[4]))


def test_root_argument_env_var_and_uncompressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = write_fake(tmp_path / "a", "t10k", n=7, gz=False)
    ds = FashionMNIST(root=tmp_path / "a", split="test")
    assert len(ds) == 7 and ds.targets == labels.tolist()
    assert np.array_equal(np.asarray(ds[3][0]), images[3])
    write_fake(tmp_path / "b", "train", n=5)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "b"))
    assert len(FashionMNIST(split="train")) == 5
    assert len(FashionMNIST(split="train", limit=100)) == 5


def test_missing_root_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(FASHION_MNIST_ENV, str(missing))
    with pytest.raises(DataError) as exc:
        FashionMNIST(split="train")
    msg = str(exc.value)
    assert f"Fashion-MNIST not found at {missing}" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "root=" in msg and FASHION_MNIST_ENV in msg
    assert isinstance(exc.value, ValueError)


def test_truncated_gzip(tmp_path: Path) -> None:
    write_fake(tmp_path, "train", n=12)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt or truncated.*reinstall"):
        FashionMNIST(root=tmp_path, split="train")


def test_truncated_idx_payload(tmp_path: Path) -> None:
    write_fake(tmp_path, "train", n=12, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"truncated: its header announces shape \(12, 28, 28\)"):
        read_idx(path, 2051)
    with pytest.raises(DataError, match="truncated"):
        FashionMNIST(root=tmp_path, split="train")


def test_wrong_magic_and_label_mismatch(tmp_path: Path) -> None:
    write_fake(tmp_path, "train", n=12, gz=False)
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        read_idx(tmp_path / "train-labels-idx1-ubyte", 2051)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(DataError, match="11 labels but .* 12 images"):
        FashionMNIST(root=tmp_path, split="train")


def test_bad_split_and_limit(tmp_path: Path) -> None:
    write_fake(tmp_path, "train")
    with pytest.raises(DataError, match="Unknown Fashion-MNIST split 'validation'"):
        FashionMNIST(root=tmp_path, split="validation")
    with pytest.raises(DataError, match="limit must be"):
        FashionMNIST(root=tmp_path, limit=-1)


def test_cache_sees_replaced_files(tmp_path: Path) -> None:
    write_fake(tmp_path / "src1", "train", n=4)
    write_fake(tmp_path / "src2", "train", n=9)
    target = tmp_path / "root"
    shutil.copytree(tmp_path / "src1", target)
    assert len(FashionMNIST(root=target)) == 4
    for f in (tmp_path / "src2").iterdir():
        shutil.copy(f, target / f.name)
    assert len(FashionMNIST(root=target)) == 9


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_dataset_skips_locally_and_fails_on_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome) as exc:
        require_fashion_mnist()
    assert "Fashion-MNIST not installed" in str(exc.value) and str(tmp_path / "nowhere") in str(exc.value)
    assert ("CI=true" in str(exc.value)) == bool(ci)
    monkeypatch.delenv(FASHION_MNIST_ENV)
    if REAL_ROOT.is_dir():
        assert require_fashion_mnist() == "fashion-mnist"
