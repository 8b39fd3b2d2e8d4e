"""A dense data set from real Fashion-MNIST garments: :func:`write_fashion_scenes` (``crossformers dense
fashion-scenes``).

Each scene is a grey canvas of 192-256 x 192-256 pixels (height and width drawn independently) with 2-6 Fashion-MNIST
garments, each scaled by a random factor (28 px -> ``28 * scale`` px, bilinear) and placed without touching another
(2 px apart), on a faint noise background. Training scenes use the official training split, validation scenes the
official test split, so no garment image is in both. Annotations come from the garments' own pixels (a pixel belongs
to a garment when its scaled intensity is > ``threshold``): the instance mask, the tight box around it, and the
semantic label map (0 = background, 1 + Fashion-MNIST class elsewhere).

Written (atomically: into a temporary sibling folder, renamed at the end; an existing non-empty folder is refused)::

    OUT/images/{train,val}/scene_00000.png          grey scenes (8-bit PNG)
    OUT/annotations/instances_{train,val}.json       COCO instances: boxes, RLE masks, areas, 10 categories
    OUT/annotations/{train,val}/scene_00000.png      label maps (8-bit index PNG, 0..10)
    OUT/classes.txt                                  the 11 semantic classes ("background", then the garments)

The folder is both a COCO-layout detection / instance-segmentation set and an ADE20K-layout semantic set (without
``reduce_zero_label``: the background is a class here).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import FASHION_MNIST_CLASSES, DataError, FashionMNIST
from ..engine.errors import OutputExistsError

__all__ = ["write_fashion_scenes", "make_scene"]


def make_scene(rng: np.random.Generator, garments: np.ndarray, labels: list[int], canvas: tuple[int, int] = (192, 256),
               count: tuple[int, int] = (2, 6), scale: tuple[float, float] = (1.6, 3.4), threshold: int = 24,
               noise: float = 6.0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One scene: ``(image (H, W) uint8, instances)``; each instance has ``label`` (0..9), ``mask`` (H, W) bool,
    ``bbox`` [x, y, w, h] (pixels, tight around the mask) and ``source`` (index into ``garments``).

    Garments that find no free place after 50 tries at shrinking sizes are left out (a scene keeps at least one).
    """
    H, W = (int(rng.integers(canvas[0], canvas[1] + 1)) for _ in range(2))
    image = np.clip(rng.normal(12.0, noise, (H, W)), 0, 255)
    taken = np.zeros((H, W), bool)
    instances: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        idx = int(rng.integers(len(garments)))
        s = float(rng.uniform(*scale))
        for attempt in range(50):
            side = max(12, round(28 * s * (0.97 ** attempt)))
            if side >= min(H, W):
                continue
            y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
            pixels = np.asarray(Image.fromarray(garments[idx]).resize((side, side), Image.BILINEAR))
            mask = pixels > threshold
            if not mask.any():
                break
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = y + ys.min(), y + ys.max() + 1, x + xs.min(), x + xs.max() + 1
            if taken[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2].any():
                continue
            full = np.zeros((H, W), bool)
            full[y:y + side, x:x + side] = mask
            image[full] = pixels[mask]
            taken[y0:y1, x0:x1] = True
            instances.append({"label": int(labels[idx]), "mask": full, "source": idx,
                              "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]})
            break
    return image.astype(np.uint8), instances


def _write_split(out: Path, split: str, n: int, data: FashionMNIST, rng: np.random.Generator,
                 kwargs: dict[str, Any]) -> dict[str, int]:
    from pycocotools import mask as mask_utils

    (out / "images" / split).mkdir(parents=True)
    (out / "annotations" / split).mkdir(parents=True)
    garments, labels = data.data, data.targets
    coco: dict[str, Any] = {"info": {"description": f"Fashion-MNIST scenes ({split}: official "
                                                    f"{'train' if split == 'train' else 'test'} split)"},
                            "images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(FASHION_MNIST_CLASSES)]}
    ann_id = 1
    for i in range(n):
        image, instances = make_scene(rng, garments, labels, **kwargs)
        name = f"scene_{i:05d}.png"
        Image.fromarray(image, mode="L").save(out / "images" / split / name)
        semantic = np.zeros(image.shape, np.uint8)
        coco["images"].append({"id": i + 1, "file_name": name, "height": int(image.shape[0]),
                               "width": int(image.shape[1])})
        for inst in instances:
            semantic[inst["mask"]] = inst["label"] + 1
            rle = mask_utils.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            coco["annotations"].append({"id": ann_id, "image_id": i + 1, "category_id": inst["label"] + 1,
                                        "bbox": inst["bbox"], "area": int(inst["mask"].sum()), "iscrowd": 0,
                                        "segmentation": rle, "fashion_mnist_index": inst["source"]})
            ann_id += 1
        Image.fromarray(semantic, mode="L").save(out / "annotations" / split / name)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco) + "\n")
    return {"scenes": n, "garments": ann_id - 1}


def write_fashion_scenes(output: str | os.PathLike, train_scenes: int = 2000, val_scenes: int = 300,
                         seed: int = 0, fashion_root: str | os.PathLike | None = None,
                         canvas: tuple[int, int] = (192, 256), count: tuple[int, int] = (2, 6),
                         scale: tuple[float, float] = (1.6, 3.4)) -> dict[str, Any]:
    """Write the Fashion-MNIST scene data set (layout in the module docs) to ``output``.

    Args:
        output: a new or empty folder. train_scenes, val_scenes: scenes per split. seed: the random seed (same seed,
            same data). fashion_root: Fashion-MNIST folder (default: :mod:`crossformers.data.fashion_mnist`'s lookup).
        canvas: side range (pixels). count: garments per scene. scale: garment scale range (28 px * scale).

    Returns:
        ``{"output", "train": {"scenes", "garments"}, "val": {...}}``.

    Raises:
        OutputExistsError: ``output`` exists and is not empty. DataError: Fashion-MNIST missing, bad ranges.
    """
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} exists and is not empty: choose a new --output folder")
    if train_scenes < 1 or val_scenes < 1:
        raise DataError("train_scenes and val_scenes must be >= 1")
    if not (1 <= count[0] <= count[1]) or not (16 <= canvas[0] <= canvas[1]) or not (0 < scale[0] <= scale[1]):
        raise DataError(f"bad ranges: count {count}, canvas {canvas}, scale {scale} (low <= high, positive)")
    train, val = FashionMNIST(fashion_root, "train"), FashionMNIST(fashion_root, "test")
    rng = np.random.default_rng(seed)
    kwargs = dict(canvas=tuple(canvas), count=tuple(count), scale=tuple(scale))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        summary = {"train": _write_split(tmp, "train", train_scenes, train, rng, kwargs),
                   "val": _write_split(tmp, "val", val_scenes, val, rng, kwargs)}
        (tmp / "classes.txt").write_text("\n".join(["background", *FASHION_MNIST_CLASSES]) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"output": str(out), **summary}
