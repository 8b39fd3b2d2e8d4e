"""COCO instances and ADE20K-style folders: items, transforms keeping boxes/masks consistent, every bad-input case."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import masks_to_boxes

from crossformers.data import DataError
from crossformers.dense.data import (
    CocoInstances,
    SegmentationFolder,
    coco_split_paths,
    detection_transforms,
    segmentation_transforms,
)


def _load(root: Path, split: str = "train", **kw) -> CocoInstances:
    images, ann = coco_split_paths(root, split)
    return CocoInstances(images, ann, **kw)


def _edit(root: Path, fn, split: str = "train") -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def test_items_boxes_masks_and_contiguous_labels(coco_root):
    ds = _load(coco_root)
    assert ds.classes == ["background", "dark", "bright"] and ds.cat_ids == [10, 20]
    image, target = ds[0]
    assert image.shape == (3, 80, 96) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [1, 2]  # category ids 10, 20 -> labels 1, 2
    # the polygon masks are the rectangles: their tight boxes are the annotated boxes
    torch.testing.assert_close(masks_to_boxes(target["masks"]) + torch.tensor([0, 0, 1, 1]), target["boxes"].as_subclass(
        torch.Tensor), atol=1, rtol=0)
    assert ds.report == {"clipped_boxes": 0, "zero_area_skipped": 0, "crowd": 0, "images_without_annotations": 0,
                         "images_skipped": 0}


def test_flip_and_resize_keep_boxes_on_masks(coco_root):
    torch.manual_seed(0)
    ds = _load(coco_root, transforms=detection_transforms(True, hflip=1.0, scales=[40], max_size=1000))
    raw = _load(coco_root)
    image, target = ds[0]
    image0, target0 = raw[0]
    assert image.dtype == torch.float32 and image.shape[-2] == 40  # shorter side 40
    boxes = target["boxes"].as_subclass(torch.Tensor)
    scale = 40 / 80
    x1 = 96 - target0["boxes"][:, 2]  # flipped: x1' = W - x2
    torch.testing.assert_close(boxes[:, 0], x1.as_subclass(torch.Tensor) * scale, atol=1e-4, rtol=0)
    mask_boxes = masks_to_boxes(target["masks"])
    torch.testing.assert_close(mask_boxes[:, :2], boxes[:, :2], atol=1.0, rtol=0)  # masks moved with the boxes


def test_missing_image_file_is_one_clear_error(coco_root):
    (coco_root / "images" / "train" / "im2.png").unlink()
    with pytest.raises(DataError, match=r"1 of 4 image file\(s\) listed in .* are missing .*im2.png"):
        _load(coco_root)


def test_unknown_category_id(coco_root):
    _edit(coco_root, lambda d: d["annotations"][1].update(category_id=99))
    with pytest.raises(DataError, match=r"1 annotation\(s\) use a category_id not in \"categories\" \[10, 20\] "
                                        r"\(annotation ids 2\)"):
        _load(coco_root)


def test_annotation_of_unknown_image(coco_root):
    _edit(coco_root, lambda d: d["annotations"][0].update(image_id=77))
    with pytest.raises(DataError, match="refer to an image_id not in"):
        _load(coco_root)


def test_boxes_outside_clipped_zero_area_skipped_counted(coco_root, caplog):
    def bad(d):
        d["annotations"][0]["bbox"] = [90, 70, 20, 20]  # partly outside the 96x80 image -> clipped to 6x10
        d["annotations"][1]["bbox"] = [10, 10, 0, 5]  # zero area -> skipped
        d["annotations"][2]["bbox"] = [200, 10, 5, 5]  # entirely outside -> zero area after clipping -> skipped
    path = _edit(coco_root, bad)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="crossformers.dense"):
        ds = _load(coco_root)
    assert ds.report["clipped_boxes"] == 1 and ds.report["zero_area_skipped"] == 2
    assert "clipped boxes: 1" in caplog.text and "zero area skipped: 2" in caplog.text
    ann = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1]))[0]
    assert ann["bbox"] == [90.0, 70.0, 6.0, 10.0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the source is never rewritten


def test_images_without_annotations_skipped_for_training_kept_for_eval(coco_root):
    _edit(coco_root, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 3]))
    train = _load(coco_root)
    assert len(train) == 3 and train.report["images_skipped"] == 1
    val = _load(coco_root, train=False)
    assert len(val) == 4 and val.report["images_without_annotations"] == 1
    _, target = val[val.ids.index(3)]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 80, 96)


def test_no_usable_annotation_and_malformed_json(coco_root):
    _edit(coco_root, lambda d: d.update(annotations=[]))
    with pytest.raises(DataError, match="no image with a usable annotation"):
        _load(coco_root)
    (coco_root / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read .* as JSON"):
        _load(coco_root)
    with pytest.raises(DataError, match="no test annotations"):
        coco_split_paths(coco_root, "test")


def test_image_size_differs_from_json(coco_root):
    _edit(coco_root, lambda d: d["images"][0].update(width=100))
    ds = _load(coco_root)
    with pytest.raises(DataError, match=r"is 96x80 pixels but instances_train.json says 100x80"):
        ds[0]


def test_segmentation_items_and_crop_transforms(seg_root):
    ds = SegmentationFolder(seg_root, "train")
    image, mask = ds[0]
    assert ds.classes == ["background", "dark", "bright"]
    assert image.shape == (3, 64, 96) and mask.shape == (64, 96) and set(mask.unique().tolist()) <= {0, 1, 2}
    torch.manual_seed(0)
    tr = SegmentationFolder(seg_root, "train", transforms=segmentation_transforms(True, crop_size=64))
    image, mask = tr[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255}  # nearest interpolation: no new labels
    # the bright rectangles (label 2) of the image are where the mask says 2
    bright = image[0] > 0.8
    assert bright.any() and (mask[bright] == 2).float().mean() > 0.95


def test_reduce_zero_label(seg_root):
    ds = SegmentationFolder(seg_root, "val", classes=["dark", "bright"], reduce_zero_label=True)
    raw = np.array(Image.open(ds.samples[0][1]))
    mask = ds.read_mask(ds.samples[0][1]).numpy()
    assert (mask[raw == 0] == 255).all() and (mask[raw == 1] == 0).all() and (mask[raw == 2] == 1).all()


def test_mask_values_outside_class_range(seg_root):
    path = seg_root / "annotations" / "train" / "s1.png"
    arr = np.array(Image.open(path))
    arr[0, :3] = 7
    Image.fromarray(arr).save(path)
    ds = SegmentationFolder(seg_root, "train")
    with pytest.raises(DataError, match=r"mask .*s1.png has values 7 outside the 3 classes 0..2"):
        ds[1]
    ds[0]  # the other masks are fine


def test_rgb_mask_and_image_without_mask(seg_root):
    path = seg_root / "annotations" / "train" / "s0.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match="is a RGB image: masks must be single-channel"):
        SegmentationFolder(seg_root, "train")[0]
    (seg_root / "annotations" / "val" / "s1.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) in .* have no mask"):
        SegmentationFolder(seg_root, "val")
    (seg_root / "classes.txt").unlink()
    with pytest.raises(DataError, match="has no classes.txt"):
        SegmentationFolder(seg_root, "train")
