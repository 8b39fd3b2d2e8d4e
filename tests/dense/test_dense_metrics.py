"""COCO AP and mIoU / mAcc / aAcc on known answers; whole vs sliding-window inference."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

from crossformers.dense.data import CocoInstances, coco_split_paths
from crossformers.dense.metrics import (
    SegmentationMeter,
    coco_evaluate,
    detections_to_coco,
    slide_inference,
    whole_inference,
)


def _gt(coco_root, masks=True):
    images, ann = coco_split_paths(coco_root, "val")
    return CocoInstances(images, ann, masks=masks, train=False)


def _perfect_outputs(ds):
    outs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        outs.append({"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"], "scores": torch.ones(n),
                     "masks": t["masks"].as_subclass(torch.Tensor)[:, None].float()})
        ids.append(t["image_id"])
    return outs, ids


def test_perfect_predictions_give_ap_one(coco_root):
    ds = _gt(coco_root)
    outs, ids = _perfect_outputs(ds)
    res = coco_evaluate(ds.coco, detections_to_coco(outs, ids, ds.cat_ids), ("bbox", "segm"))
    for t in ("bbox", "segm"):
        assert res[f"{t}_AP"] == pytest.approx(1.0) and res[f"{t}_AP50"] == pytest.approx(1.0)
        assert res[f"{t}_AP75"] == pytest.approx(1.0)
    assert res["bbox_APl"] is None  # no object larger than 96^2 px: nothing to measure


def test_shifted_box_gives_the_iou_computed_by_hand():
    """One 40x40 box, detected 4 px to the right: IoU = (36*40) / (2*1600 - 36*40) = 1440 / 1760 = 0.818; it passes
    the IoU thresholds 0.50..0.80 (7 of the 10 in 0.50:0.95), so AP = 0.7, AP50 = AP75 = 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "a"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 40, 40], "area": 1600,
                                   "iscrowd": 0}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    out = {"boxes": torch.tensor([[24.0, 20.0, 64.0, 60.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    results = detections_to_coco([out], [1], [1])
    assert results[0]["bbox"] == [24.0, 20.0, 40.0, 40.0]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
    assert float(ev.ious[(1, 1)][0, 0]) == pytest.approx(1440 / 1760)
    res = coco_evaluate(gt, results)
    assert res["bbox_AP"] == pytest.approx(0.7, abs=1e-9)
    assert res["bbox_AP50"] == pytest.approx(1.0, abs=1e-9) and res["bbox_AP75"] == pytest.approx(1.0, abs=1e-9)
    assert res["bbox_APm"] == pytest.approx(0.7, abs=1e-9)  # 1600 px^2 is a medium object


def test_no_detection_and_wrong_class(coco_root):
    ds = _gt(coco_root)
    assert coco_evaluate(ds.coco, [], ("bbox", "segm"))["segm_AP"] == 0.0
    outs, ids = _perfect_outputs(ds)
    for o in outs:
        o["labels"] = 3 - o["labels"]  # swap the two classes: every box in the right place, wrong class
    assert coco_evaluate(ds.coco, detections_to_coco(outs, ids, ds.cat_ids))["bbox_AP"] == 0.0


def test_segmentation_meter_known_answers():
    m = SegmentationMeter(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    m.update(target.clone(), target)
    r = m.compute()
    assert r["mIoU"] == 1.0 and r["mAcc"] == 1.0 and r["aAcc"] == 1.0
    m = SegmentationMeter(3)
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    m.update(pred, target)
    r = m.compute()
    # class 0: TP 1, FN 1 (pred 1), FP 1 (pixel of class 2) -> IoU 1/3, Acc 1/2
    # class 1: TP 2, FP 1 -> IoU 2/3, Acc 1; class 2: TP 1, FN 1 -> IoU 1/2, Acc 1/2; ignored pixels not counted
    assert r["IoU"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert r["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["mAcc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3) and r["aAcc"] == pytest.approx(4 / 6)


def test_absent_class_is_left_out_of_the_mean():
    m = SegmentationMeter(4)
    t = torch.tensor([0, 1, 1])
    m.update(t, t)
    r = m.compute()
    assert r["IoU"][2:] == [None, None] and r["mIoU"] == 1.0
    with pytest.raises(ValueError, match="target labels must be in 0..3"):
        m.update(torch.tensor([0]), torch.tensor([5]))


class _Local(nn.Module):
    """A pointwise (1x1) convolution, so window borders change nothing; its input must be a multiple of 32."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
        return self.conv(x)


def test_whole_and_slide_inference_agree_for_a_pointwise_model():
    model = _Local()
    x = torch.randn(1, 3, 70, 100)
    whole = whole_inference(model, x)
    assert whole.shape == (1, 4, 70, 100)
    torch.testing.assert_close(whole, model.conv(x))
    slide = slide_inference(model, x, 4, crop_size=64, stride=40)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)
