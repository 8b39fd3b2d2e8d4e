"""Fixtures of tests/dense: tiny COCO and segmentation folders (see dense_synthetic.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pycocotools")

import crossformers.detection  # noqa: E402,F401  (registers the detection tasks)
import crossformers.segmentation  # noqa: E402,F401  (registers semantic-segmentation)

from dense_synthetic import write_coco, write_segmentation  # noqa: E402


def _two_splits(root: Path, write) -> Path:
    write(root, "train", 4, seed=0)
    write(root, "val", 2, seed=1)
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """4 training and 2 validation images, 2 rectangles each (categories 10 "dark", 20 "bright")."""
    return _two_splits(tmp_path / "coco", write_coco)


@pytest.fixture
def seg_root(tmp_path: Path) -> Path:
    """4 training and 2 validation images with index masks (0 background, 1 dark, 2 bright)."""
    return _two_splits(tmp_path / "seg", write_segmentation)
