"""The Fashion-MNIST scene data set: real garments, consistent boxes / masks / label maps, disjoint sources."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crossformers.data import FashionMNIST
from crossformers.dense.data import CocoInstances, SegmentationFolder, coco_split_paths
from crossformers.dense.fashion_scenes import write_fashion_scenes
from crossformers.engine.errors import OutputExistsError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("fs") / "scenes"
    summary = write_fashion_scenes(out, train_scenes=4, val_scenes=3, seed=1)
    return out, summary


def test_layout_and_counts(scenes):
    out, summary = scenes
    assert summary["train"]["scenes"] == 4 and summary["val"]["scenes"] == 3
    for split in ("train", "val"):
        coco = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == summary[split]["scenes"]
        assert len(coco["annotations"]) == summary[split]["garments"]
        per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=len(coco["images"]) + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 6
        for im in coco["images"]:
            assert 192 <= im["width"] <= 256 and 192 <= im["height"] <= 256
    assert (out / "classes.txt").read_text().split("\n")[:2] == ["background", "T-shirt/top"]


def test_boxes_masks_and_label_maps_agree(scenes):
    out, _ = scenes
    images, ann = coco_split_paths(out, "train")
    ds = CocoInstances(images, ann, train=False)
    seg = SegmentationFolder(out, "train")
    assert ds.report == {"clipped_boxes": 0, "zero_area_skipped": 0, "crowd": 0, "images_without_annotations": 0}
    for i in range(len(ds)):
        image, target = ds[i]
        _, label_map = seg[i]
        masks = target["masks"].bool()
        assert not (masks.sum(0) > 1).any()  # garments do not overlap
        for m, box, lab in zip(masks, target["boxes"], target["labels"], strict=True):
            ys, xs = np.nonzero(m.numpy())
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.round().int().tolist()
            assert (label_map[m] == lab).all()  # semantic label = 1 + Fashion-MNIST class = COCO label
            assert image[0][m].min() > 24  # a garment pixel is a scaled Fashion-MNIST pixel above the threshold
        assert (label_map[~masks.any(0)] == 0).all()


def test_garments_are_real_fashion_mnist_images_from_the_right_split(scenes):
    out, _ = scenes
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    for split, source in (("train", train), ("val", test)):
        coco = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        for a in coco["annotations"]:
            assert a["category_id"] == source.targets[a["fashion_mnist_index"]] + 1
        # the first garment, cut out and scaled back to 28 px, correlates with its source image
        a = coco["annotations"][0]
        name = next(im["file_name"] for im in coco["images"] if im["id"] == a["image_id"])
        img = np.asarray(Image.open(out / "images" / split / name), dtype=np.float64)
        x, y, w, h = a["bbox"]
        crop = np.asarray(Image.fromarray(img[y:y + h, x:x + w].astype(np.uint8)).resize((28, 28)), np.float64)
        src = source.data[a["fashion_mnist_index"]].astype(np.float64)
        ys, xs = np.nonzero(src > 24)
        src = np.asarray(Image.fromarray(src[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8))
                         .resize((28, 28)), np.float64)
        assert np.corrcoef(crop.ravel(), src.ravel())[0, 1] > 0.8


def test_refuses_a_non_empty_output(scenes):
    out, _ = scenes
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputExistsError, match="exists and is not empty"):
        write_fashion_scenes(out, 1, 1)
    assert sorted(p.name for p in out.iterdir()) == before
