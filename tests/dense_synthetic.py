"""Tiny dense data sets written on the fly (rectangles on noise, exact boxes and masks) and a tiny backbone, shared by
tests/dense (a module of its own so that tests can import it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: a CrossFormer small enough for a training step in well under a second at 64-96 px
TINY_BACKBONE = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}


def rect_scene(rng: np.random.Generator, h: int = 80, w: int = 96, n: int = 2):
    """A grey (h, w) uint8 image with ``n`` non-overlapping bright rectangles; their [x, y, w, h] boxes, labels 1/2."""
    img = rng.integers(0, 30, (h, w)).astype(np.uint8)
    boxes, labels = [], []
    for i in range(n):
        bw, bh = int(rng.integers(14, 28)), int(rng.integers(14, 28))
        x = 4 + i * (w // n)
        y = int(rng.integers(2, h - bh - 2))
        label = 1 + (i % 2)
        img[y:y + bh, x:x + bw] = 150 + 80 * (label - 1)
        boxes.append([x, y, bw, bh])
        labels.append(label)
    return img, boxes, labels


def write_coco(root: Path, split: str, n_images: int = 4, seed: int = 0, h: int = 80, w: int = 96) -> Path:
    """``root/images/{split}/`` + ``root/annotations/instances_{split}.json`` (polygon masks = the rectangles)."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img, boxes, labels = rect_scene(rng, h, w)
        name = f"im{i}.png"
        Image.fromarray(img).save(root / "images" / split / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for b, lab in zip(boxes, labels, strict=True):
            x, y, bw, bh = b
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 10 * lab, "bbox": b,
                         "area": bw * bh, "iscrowd": 0,
                         "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
    cats = [{"id": 10, "name": "dark"}, {"id": 20, "name": "bright"}]
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def write_segmentation(root: Path, split: str, n_images: int = 4, seed: int = 0, h: int = 64, w: int = 96) -> Path:
    """``root/images/{split}/`` + ``root/annotations/{split}/`` index masks (0 background, 1/2 rectangles) and
    ``root/classes.txt``."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        img, boxes, labels = rect_scene(rng, h, w)
        mask = np.zeros((h, w), np.uint8)
        for (x, y, bw, bh), lab in zip(boxes, labels, strict=True):
            mask[y:y + bh, x:x + bw] = lab
        Image.fromarray(img).save(root / "images" / split / f"s{i}.png")
        Image.fromarray(mask).save(root / "annotations" / split / f"s{i}.png")
    (root / "classes.txt").write_text("background\ndark\nbright\n")
    return root
