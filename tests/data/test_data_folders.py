"""ImageFolderDataset on small generated PNG trees: layout errors, corrupt files, verify_images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Subset

from crossformers.data import (
    DataError,
    ImageFolderDataset,
    build_dataset,
    dataset_defaults,
    load_image,
    take_subset,
    verify_images,
)


def make_tree(root: Path, classes=("cat", "dog", "emu"), per_class: int = 3, splits=("train", "val")) -> Path:
    """root/<split>/<class>/<i>.png with grey images for even i and RGB for odd i (varied sizes)."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = 20 + i, 24
                shape = (h, w) if i % 2 == 0 else (h, w, 3)
                Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_loads_grey_and_rgb(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ds")
    ds = ImageFolderDataset(root, "train")
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 9
    assert ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    modes = [ds[i][0].mode for i in range(3)]
    assert modes == ["L", "RGB", "L"]
    assert ds.split == "train" and ds.dataset_root == root
    val = build_dataset(str(root), "val", limit=4)
    assert isinstance(val, ImageFolderDataset) and len(val) == 4 and val.targets == [0, 0, 0, 1]
    bal = build_dataset(str(root), "val", limit=3, stratified=True)
    assert sorted(bal.targets) == [0, 1, 2] and bal.classes == ds.classes
    assert dataset_defaults(str(root))["num_classes"] == 3


def test_hidden_files_and_folders_ignored(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ds")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    ds = ImageFolderDataset(root, "train")
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 9


def test_16bit_grey_is_rescaled(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(path)
    img = load_image(path)
    assert img.mode == "L" and np.asarray(img).max() == 255
    Image.fromarray(np.full((8, 8), 257 * 100, dtype=np.uint16)).save(path)
    assert np.asarray(load_image(path)).max() == 100


def test_root_and_split_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist: pass a directory with train/ and val/"):
        ImageFolderDataset(tmp_path / "nope", "train")
    root = make_tree(tmp_path / "ds", splits=("train",))
    with pytest.raises(DataError, match=r"Split folder .*val not found"):
        ImageFolderDataset(root, "val")
    with pytest.raises(DataError, match="Unknown split 'valid'"):
        ImageFolderDataset(root, "valid")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file, not a directory"):
        ImageFolderDataset(tmp_path / "file", "train")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "ds" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="No class folders in"):
        ImageFolderDataset(tmp_path / "ds", "train")


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ds")
    for split in ("train", "val"):
        (root / split / "fox").mkdir()
        (root / split / "fox" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as exc:
        ImageFolderDataset(root, "train")
    msg = str(exc.value)
    assert str(root / "train" / "fox") in msg and "no images" in msg and "delete the folders" in msg


def test_class_lists_differ(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ds")
    shutil.rmtree(root / "val" / "emu")
    (root / "val" / "owl").mkdir()
    Image.new("L", (4, 4)).save(root / "val" / "owl" / "a.png")
    for split in ("train", "val"):
        with pytest.raises(DataError, match=r"Class folders differ .*'emu'.*'owl'|Class folders differ .*'owl'.*'emu'"):
            ImageFolderDataset(root, split)
    assert len(ImageFolderDataset(root, "val", check_splits=False)) == 7


def test_corrupt_image_names_file_and_verify(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ds")
    garbage = root / "train" / "dog" / "1.png"
    garbage.write_bytes(b"this is not a png at all" * 10)
    truncated = root / "train" / "emu" / "2.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    ds = ImageFolderDataset(root, "train")
    idx = [p for p, _ in ds.samples].index(str(garbage))
    with pytest.raises(DataError) as exc:
        ds[idx]
    assert str(garbage) in str(exc.value) and "remove or replace it" in str(exc.value)
    with pytest.raises(DataError, match=r"2\.png.*remove or replace"):
        ds[[p for p, _ in ds.samples].index(str(truncated))]
    assert verify_images(ds) == [str(garbage), str(truncated)]
    assert verify_images(Subset(ds, [0, idx])) == [str(garbage)]
    assert verify_images(take_subset(ds, 3)) == []
    assert verify_images(ImageFolderDataset(root, "val")) == []


def test_corrupt_image_in_worker_keeps_clean_message(tmp_path: Path) -> None:
    from crossformers.data import build_loader, build_transform

    root = make_tree(tmp_path / "ds", per_class=2)
    bad = root / "train" / "cat" / "0.png"
    bad.write_bytes(b"junk")
    tf = build_transform(False, (1, 16, 16), (0.5,), (0.5,), crop_pct=1.0)
    loader = build_loader(ImageFolderDataset(root, "train", transform=tf), 2, is_training=False, num_workers=1)
    with pytest.raises(DataError) as exc:
        next(iter(loader))
    assert str(exc.value).startswith(f"Cannot read image file {bad} ")
    assert "Traceback" not in str(exc.value) and "worker" in (exc.value.worker_traceback or "")
