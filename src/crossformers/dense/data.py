"""Dense-prediction data: COCO-format instances (detection, instance segmentation) and ADE20K-style semantic masks.

* :class:`CocoInstances` — images + an instances JSON in the COCO format, read with ``pycocotools``. Items are
  ``(image, target)`` with ``image`` a ``tv_tensors.Image`` (3, H, W) and ``target`` a dict of ``boxes``
  (``tv_tensors.BoundingBoxes``, XYXY pixels), ``labels`` (int64, 1..K: contiguous indices of the categories sorted by
  id, 0 = background as torchvision's detectors expect), ``masks`` (``tv_tensors.Mask`` (N, H, W) uint8, with
  ``masks=True``) and ``image_id``.
* :class:`SegmentationFolder` — ``images/<split>/NAME.{jpg,png}`` with ``annotations/<split>/NAME.png`` index masks
  (the ADE20K release layout: split ``training`` / ``validation``, or ``train`` / ``val``); ``reduce_zero_label``
  maps 0 to the ignore index 255 and every other value v to v - 1 (ADE20K's 0 means "other"). Items are
  ``(image, mask)``, ``mask`` a ``tv_tensors.Mask`` (H, W) int64.
* :func:`detection_transforms` / :func:`segmentation_transforms` — ``torchvision.transforms.v2`` pipelines that
  keep boxes and masks consistent with the image (flip, multi-scale resize, crop; masks use nearest interpolation).

Bad input: every problem that makes the data unusable raises :class:`~crossformers.data.DataError` with one line
naming it and the fix (missing image files, unknown category ids, annotations of unknown images, a malformed JSON,
an image whose size differs from the JSON, mask values outside the class range, an RGB mask, images without a
mask). Problems with a safe reading are handled and counted in :attr:`CocoInstances.report` (logged once): boxes
partly outside the image are clipped to it; boxes of zero area (also after clipping, e.g. entirely outside) are
skipped; crowd annotations (``iscrowd=1``) are not training targets (COCOeval still uses them to ignore
detections); images without usable annotations are skipped for training and kept for evaluation. Nothing is
written: the source files are never changed.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..data import DataError, load_image

__all__ = ["CocoInstances", "SegmentationFolder", "detection_transforms", "segmentation_transforms",
           "collate_lists", "coco_split_paths", "IGNORE_INDEX", "IMAGE_SUFFIXES"]

log = logging.getLogger("crossformers.dense")

#: label of pixels that no loss or metric counts (mmseg's and ADE20K's convention)
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _examples(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in list(items)[:n])
    return shown + (" ..." if len(items) > n else "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"annotation file {path} not found: pass the instances JSON of the split") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path} as JSON ({e}): it is damaged or not a COCO instances file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds no JSON object: expected a COCO instances file with images, annotations and "
                        "categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path} has no list \"{key}\": a COCO instances file needs images, annotations and "
                            "categories")
    if not data["categories"]:
        raise DataError(f"{path} lists no categories: add the object classes to \"categories\"")
    return data


class CocoInstances(Dataset):
    """COCO-format detection / instance-segmentation data (see the module docs for the item layout and checks).

    Args:
        images_dir: folder the ``file_name`` of each image is relative to.
        ann_file: the instances JSON.
        transforms: a ``torchvision.transforms.v2`` callable ``(image, target) -> (image, target)``
            (:func:`detection_transforms`).
        masks: also return instance masks (from polygons or RLE, ``pycocotools`` ``annToMask``).
        train: skip images without usable annotations (they give no training signal); evaluation keeps them.
        check_files: check at construction that every image file exists.

    Attributes:
        coco: the ground truth as a ``pycocotools.coco.COCO`` (cleaned: clipped boxes, without the skipped zero-area
            annotations), for :func:`crossformers.dense.metrics.coco_evaluate`.
        classes: ``["background", *category names]`` (index = label).
        cat_ids: COCO category id of each label 1..K (``cat_ids[label - 1]``).
        report: counts of what was handled: ``clipped_boxes``, ``zero_area_skipped``, ``crowd``,
            ``images_without_annotations`` (and ``images_skipped`` in training).

    Raises:
        DataError: malformed JSON, missing image files, unknown category or image ids in annotations.
    """

    def __init__(self, images_dir: str | os.PathLike, ann_file: str | os.PathLike, transforms=None,
                 masks: bool = True, train: bool = True, check_files: bool = True):
        from pycocotools.coco import COCO  # optional dependency (the dense extra), needed only for COCO data

        self.images_dir = Path(images_dir).expanduser()
        self.ann_file = Path(ann_file).expanduser()
        self.transforms = transforms
        self.masks = masks
        data = _read_json(self.ann_file)
        if not self.images_dir.is_dir():
            raise DataError(f"image folder {self.images_dir} not found: pass the folder the JSON's file_name entries "
                            "are relative to")
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.cat_ids = [int(c["id"]) for c in cats]
        self.classes = ["background", *[str(c.get("name", c["id"])) for c in cats]]
        if len(set(self.classes)) != len(self.classes):
            raise DataError(f"{self.ann_file}: category names are not distinct: {self.classes[1:]}")
        cat_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        images = {int(im["id"]): im for im in data["images"]}
        unknown_cat = [a.get("id") for a in data["annotations"] if int(a.get("category_id", -1)) not in cat_to_label]
        if unknown_cat:
            raise DataError(f"{self.ann_file}: {len(unknown_cat)} annotation(s) use a category_id not in "
                            f"\"categories\" {self.cat_ids} (annotation ids {_examples(unknown_cat)}): add the "
                            "categories or remove those annotations")
        unknown_img = [a.get("id") for a in data["annotations"] if int(a.get("image_id", -1)) not in images]
        if unknown_img:
            raise DataError(f"{self.ann_file}: {len(unknown_img)} annotation(s) refer to an image_id not in "
                            f"\"images\" (annotation ids {_examples(unknown_img)}): fix their image_id")
        if check_files:
            missing = [im["file_name"] for im in images.values() if not (self.images_dir / im["file_name"]).is_file()]
            if missing:
                raise DataError(f"{len(missing)} of {len(images)} image file(s) listed in {self.ann_file} are missing "
                                f"under {self.images_dir}: {_examples(missing)}; restore them or remove them from "
                                "the JSON")
        report = {"clipped_boxes": 0, "zero_area_skipped": 0, "crowd": 0, "images_without_annotations": 0}
        kept = []
        for a in data["annotations"]:
            im = images[int(a["image_id"])]
            W, H = float(im["width"]), float(im["height"])
            x, y, w, h = (float(v) for v in a["bbox"])
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(W, x + w), min(H, y + h)
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                report["zero_area_skipped"] += 1
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                report["clipped_boxes"] += 1
                a = {**a, "bbox": [x1, y1, x2 - x1, y2 - y1]}
            if a.get("iscrowd", 0):
                report["crowd"] += 1
            if "area" not in a:
                a = {**a, "area": (x2 - x1) * (y2 - y1)}
            kept.append(a)
        clean = {**data, "annotations": kept}
        self.coco = COCO()
        self.coco.dataset = clean
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            self.coco.createIndex()
        self.cat_to_label = cat_to_label
        ids = sorted(images)
        usable = {int(a["image_id"]) for a in kept if not a.get("iscrowd", 0)}
        report["images_without_annotations"] = sum(1 for i in ids if i not in usable)
        if train:
            report["images_skipped"] = report["images_without_annotations"]
            ids = [i for i in ids if i in usable]
        self.ids = ids
        self.report = report
        handled = {k: v for k, v in report.items() if v}
        if handled:
            log.warning("%s: %s", self.ann_file.name, ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in
                                                                 handled.items()))
        if not usable:
            raise DataError(f"{self.ann_file}: no image with a usable annotation ({len(images)} images, "
                            f"{len(data['annotations'])} annotations): nothing to train on or evaluate")

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict[str, Any]:
        """The JSON entry (``id``, ``file_name``, ``width``, ``height``) of item ``index``."""
        return self.coco.imgs[self.ids[index]]

    def __getitem__(self, index: int):
        info = self.image_info(index)
        path = self.images_dir / info["file_name"]
        pil = load_image(path).convert("RGB")
        if pil.size != (int(info["width"]), int(info["height"])):
            raise DataError(f"image {path} is {pil.size[0]}x{pil.size[1]} pixels but {self.ann_file.name} says "
                            f"{info['width']}x{info['height']}: fix width/height in the JSON or replace the image")
        image = tv_tensors.Image(TF.pil_to_tensor(pil))
        H, W = image.shape[-2:]
        anns = [a for a in self.coco.imgToAnns.get(self.ids[index], []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W)),
            "labels": torch.tensor([self.cat_to_label[int(a["category_id"])] for a in anns], dtype=torch.int64),
            "image_id": int(self.ids[index]),
        }
        if self.masks:
            m = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, H, W), np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(m))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _split_dir(parent: Path, split: str) -> Path:
    aliases = {"train": ("training", "train"), "val": ("validation", "val"), "test": ("testing", "test")}
    for name in aliases.get(split, (split,)):
        if (parent / name).is_dir():
            return parent / name
    raise DataError(f"no {split} split in {parent}: expected a sub-folder {' or '.join(aliases.get(split, (split,)))}")


class SegmentationFolder(Dataset):
    """ADE20K-style semantic segmentation: ``ROOT/images/<split>/`` and ``ROOT/annotations/<split>/`` (same stems,
    masks as single-channel index PNGs).

    Args:
        root: the data set folder.
        split: ``'train'`` (folder ``training`` or ``train``), ``'val'`` (``validation`` or ``val``), ...
        classes: class names in label order; default: ``ROOT/classes.txt`` (one name per line).
        reduce_zero_label: label 0 becomes :data:`IGNORE_INDEX`, v becomes v - 1 (ADE20K: 0 = "other", 150 classes).
        transforms: ``(image, mask) -> (image, mask)`` (:func:`segmentation_transforms`).

    Items: ``(tv_tensors.Image (3, H, W) uint8, tv_tensors.Mask (H, W) int64)`` with labels in 0..K-1 or 255.

    Raises:
        DataError: missing folders, images without a mask, no class list; when an item is read: an RGB mask, a mask
            whose size differs from its image, or values outside 0..K-1 (after ``reduce_zero_label``) other than 255.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: Sequence[str] | None = None,
                 reduce_zero_label: bool = False, transforms=None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"segmentation data folder {self.root} not found")
        img_dir = _split_dir(self.root / "images", split)
        ann_dir = _split_dir(self.root / "annotations", split)
        if classes is None:
            names = self.root / "classes.txt"
            if not names.is_file():
                raise DataError(f"{self.root} has no classes.txt: write the class names one per line (label order) "
                                "or pass classes=")
            classes = [ln.strip() for ln in names.read_text(encoding="utf-8").splitlines() if ln.strip()]
        self.classes = list(classes)
        if not self.classes:
            raise DataError(f"no class names for {self.root}")
        self.reduce_zero_label = reduce_zero_label
        self.transforms = transforms
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        masks = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
        unmatched = [p.name for p in images if p.stem not in masks]
        if unmatched:
            raise DataError(f"{len(unmatched)} image(s) in {img_dir} have no mask {ann_dir}/NAME.png: "
                            f"{_examples(unmatched)}; add the masks or remove the images")
        if not images:
            raise DataError(f"no images in {img_dir}")
        self.samples = [(p, masks[p.stem]) for p in images]

    def __len__(self) -> int:
        return len(self.samples)

    def read_mask(self, path: Path) -> torch.Tensor:
        """The label map of ``path`` (H, W) int64, ``reduce_zero_label`` applied and values checked."""
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise DataError(f"mask {path} is a {im.mode} image: masks must be single-channel index PNGs "
                                    "(one class index per pixel)")
                arr = np.array(im, dtype=np.int64)
        except OSError as e:
            raise DataError(f"cannot read mask {path} ({e}): replace it") from None
        if self.reduce_zero_label:
            arr = np.where(arr == 0, IGNORE_INDEX, arr - 1)
            arr[arr == IGNORE_INDEX - 1] = IGNORE_INDEX  # 255 stays ignored
        bad = np.unique(arr[(arr != IGNORE_INDEX) & ((arr < 0) | (arr >= len(self.classes)))])
        if bad.size:
            hint = (" (ADE20K masks need reduce_zero_label)" if not self.reduce_zero_label and bad.max() ==
                    len(self.classes) else "")
            raise DataError(f"mask {path} has values {_examples(bad.tolist())} outside the {len(self.classes)} "
                            f"classes 0..{len(self.classes) - 1} and the ignore index {IGNORE_INDEX}{hint}: fix the "
                            "mask or the class list")
        return torch.from_numpy(arr)

    def __getitem__(self, index: int):
        img_path, mask_path = self.samples[index]
        image = tv_tensors.Image(TF.pil_to_tensor(load_image(img_path).convert("RGB")))
        mask = self.read_mask(mask_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} pixels, its image {img_path} "
                            f"{image.shape[-1]}x{image.shape[-2]}: they must match")
        mask = tv_tensors.Mask(mask)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


def _to_float():
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


def detection_transforms(train: bool, hflip: float = 0.5, scales: Sequence[int] | None = None,
                         max_size: int | None = None):
    """``torchvision.transforms.v2`` pipeline for :class:`CocoInstances` items.

    Training: horizontal flip with probability ``hflip``, then, with ``scales``, a random shorter side among them
    (longer side at most ``max_size``; the papers' 3x schedule: 480..800 step 32, max 1333), then
    ``SanitizeBoundingBoxes`` (drops boxes that became degenerate, with their labels and masks). Both: uint8 ->
    float32 in 0..1 (the detector normalises and resizes to its ``min_size`` / ``max_size`` itself).
    """
    steps: list[Any] = []
    if train:
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if scales:
            steps.append(v2.RandomShortestSize(list(scales), max_size=max_size))
    steps.append(_to_float())
    if train:
        steps.append(v2.SanitizeBoundingBoxes())
    return v2.Compose(steps)


def segmentation_transforms(train: bool, crop_size: int | None = None, scale: tuple[float, float] = (0.5, 2.0),
                            hflip: float = 0.5, base_size: int | None = None):
    """``torchvision.transforms.v2`` pipeline for :class:`SegmentationFolder` items (masks: nearest interpolation).

    Training (mmseg's ADE20K recipe): resize the shorter side to ``base_size * s``, ``s`` uniform in ``scale``
    (``base_size`` default ``crop_size``), random ``crop_size`` crop (padding: image 0, mask 255), horizontal flip.
    Evaluation: shorter side resized to ``base_size`` when given, else the image as it is. Both: uint8 -> float32
    in 0..1.
    """
    steps: list[Any] = []
    if train:
        if crop_size is None:
            raise ValueError("training transforms need crop_size (pixels)")
        base = base_size or crop_size
        lo, hi = max(1, int(base * scale[0])), max(2, int(base * scale[1]))
        steps += [v2.RandomResize(lo, hi + 1),
                  v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
                  v2.RandomHorizontalFlip(hflip)]
    elif base_size:
        steps.append(v2.Resize(base_size))
    steps.append(_to_float())
    return v2.Compose(steps)


def collate_lists(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """``[(image, target), ...]`` -> ``([images], [targets])``: images of different sizes stay separate (the
    detector batches them itself; segmentation stacks equal-size crops)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def coco_split_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``(images folder, instances JSON)`` of split ``split`` (``train`` / ``val``) of a COCO-layout root.

    Looks for ``annotations/instances_{split}.json`` or ``annotations/instances_{split}2017.json`` (COCO 2017) and
    the images in ``images/{split}``, ``{split}2017`` or ``{split}``.

    Raises:
        DataError: no such JSON or image folder (the paths tried are named).
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"data folder {base} not found: pass a COCO-layout folder (annotations/instances_train.json, "
                        "images/train/, ...)")
    names = (split, f"{split}2017")
    anns = [base / "annotations" / f"instances_{n}.json" for n in names]
    ann = next((a for a in anns if a.is_file()), None)
    if ann is None:
        raise DataError(f"no {split} annotations in {base}: expected {' or '.join(str(a) for a in anns)}")
    dirs = [base / "images" / split, base / f"{split}2017", base / split]
    img = next((d for d in dirs if d.is_dir()), None)
    if img is None:
        raise DataError(f"no {split} image folder in {base}: expected {' or '.join(str(d) for d in dirs)}")
    return img, ann
