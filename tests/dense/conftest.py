"""Fixtures of tests/dense: tiny COCO and segmentation folders (see dense_synthetic.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pycocotools")

import crossformers.detection  # noqa: E402,F401  (registers the detection tasks)
import crossformers.segmentation  # noqa: E402,F401  (registers semantic-segmentation)

from dense_synthetic import write_coco, write_segmentation  # noqa: E402


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    write_coco(root, "train", 4, seed=0)
    write_coco(root, "val", 2, seed=1)
    return root


@pytest.fixture
def seg_root(tmp_path: Path) -> Path:
    root = tmp_path / "seg"
    write_segmentation(root, "train", 4, seed=0)
    write_segmentation(root, "val", 2, seed=1)
    return root
