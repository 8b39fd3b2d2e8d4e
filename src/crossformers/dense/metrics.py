"""Dense-prediction metrics: COCO box / mask AP through ``pycocotools``' COCOeval, and mIoU / mAcc / aAcc.

* :func:`detections_to_coco` turns torchvision detector outputs into COCO result entries (boxes XYWH, masks as
  RLE); :func:`coco_evaluate` runs COCOeval (Lin et al. 2014, the COCO detection protocol: AP averaged over IoU
  thresholds 0.50:0.05:0.95 with 101-point interpolated precision, AP50, AP75, and AP for small / medium / large
  objects: area < 32², 32²..96², > 96² pixels).
* :class:`SegmentationMeter` accumulates a confusion matrix over pixels (ignore index skipped) and gives mIoU, mAcc
  and aAcc as mmsegmentation defines them: IoU_c = TP / (TP + FP + FN), Acc_c = TP / (TP + FN), both averaged over
  the classes present (a class with no ground-truth pixel and no prediction is NaN and left out of the mean),
  aAcc = correctly labelled pixels / labelled pixels. All values are fractions in [0, 1].
* :func:`whole_inference` and :func:`slide_inference` are the two test modes of mmseg: the whole image at once
  (padded to a multiple of the model's stride), or overlapping crops whose logits are averaged.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["COCO_STATS", "detections_to_coco", "coco_evaluate", "SegmentationMeter", "whole_inference",
           "slide_inference"]

#: names of COCOeval's first six summary numbers
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(outputs: Iterable[Mapping[str, torch.Tensor]], image_ids: Iterable[int],
                       cat_ids: Sequence[int], mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO result entries for torchvision detector outputs.

    Args:
        outputs: per image ``boxes`` (N, 4) XYXY pixels, ``scores`` (N,), ``labels`` (N,) in 1..K and, for instance
            segmentation, ``masks`` (N, 1, H, W) probabilities (binarised at ``mask_threshold``).
        image_ids: the COCO image id of each output.
        cat_ids: COCO category id of each label 1..K (``cat_ids[label - 1]``).

    Returns:
        ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection, plus ``"segmentation"`` (RLE
        with ``counts`` as text) when masks are given.
    """
    from pycocotools import mask as mask_utils

    results: list[dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().float().cpu()
        scores = out["scores"].detach().float().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        rles = None
        if "masks" in out:
            m = (out["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0))) if len(m) else []
        for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels, strict=True)):
            x1, y1, x2, y2 = box
            entry = {"image_id": int(image_id), "category_id": int(cat_ids[int(label) - 1]),
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
            if rles is not None:
                rle = dict(rles[i])
                rle["counts"] = rle["counts"].decode("ascii")
                entry["segmentation"] = rle
            results.append(entry)
    return results


def coco_evaluate(coco_gt, results: Sequence[Mapping[str, Any]], iou_types: Sequence[str] = ("bbox",),
                  image_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """COCO AP of ``results`` against the ground truth ``coco_gt`` (a ``pycocotools.coco.COCO``).

    Args:
        coco_gt: the ground truth (e.g. :attr:`crossformers.dense.data.CocoInstances.coco`).
        results: :func:`detections_to_coco` entries.
        iou_types: ``"bbox"`` and/or ``"segm"``.
        image_ids: evaluate these images only (default: every image of ``coco_gt``).

    Returns:
        ``{f"{iou_type}_{name}": value}`` for ``name`` in :data:`COCO_STATS`, fractions in [0, 1]; ``None`` where
        COCOeval has nothing to measure (e.g. APs without small objects). No detection at all gives 0.0.
    """
    from pycocotools.cocoeval import COCOeval

    ids = sorted(coco_gt.getImgIds() if image_ids is None else {int(i) for i in image_ids})
    out: dict[str, float | None] = {}
    for iou_type in iou_types:
        if iou_type == "segm" and results and "segmentation" not in results[0]:
            raise ValueError("segm evaluation needs results with masks (detections_to_coco of a mask model)")
        if not results:
            out.update({f"{iou_type}_{k}": 0.0 for k in COCO_STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            dt = coco_gt.loadRes([dict(r) for r in results])
            ev = COCOeval(coco_gt, dt, iou_type)
            ev.params.imgIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for name, v in zip(COCO_STATS, ev.stats[:6], strict=True):
            out[f"{iou_type}_{name}"] = None if v < 0 else float(v)
    return out


class SegmentationMeter:
    """Confusion matrix of semantic segmentation over pixels, with mIoU / mAcc / aAcc (mmseg's definitions).

    Args:
        num_classes: K (labels 0..K-1).
        ignore_index: label of pixels that are not counted (255).

    ``update(pred (…), target (…))`` takes integer label maps of the same shape (any leading dims); target pixels
    equal to ``ignore_index`` are skipped; a target outside 0..K-1 raises ValueError.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)  # [target, pred]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"target labels must be in 0..{self.num_classes - 1} or {self.ignore_index}")
        pred = pred.clamp(0, self.num_classes - 1)
        self.confusion += torch.bincount(target * self.num_classes + pred,
                                         minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def merge(self, confusion: torch.Tensor) -> None:
        """Add another meter's ``confusion`` (e.g. gathered from other processes)."""
        self.confusion += confusion.to(self.confusion)

    def compute(self) -> dict[str, Any]:
        """``mIoU``, ``mAcc``, ``aAcc`` (fractions, None without any labelled pixel) and per-class ``IoU`` / ``Acc``
        lists (None for classes that are absent from target and prediction / from the target)."""
        c = self.confusion.double()
        tp = c.diag()
        gt = c.sum(1)
        union = gt + c.sum(0) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, math.nan))
        total = gt.sum().item()

        def mean(v: torch.Tensor) -> float | None:
            v = v[~torch.isnan(v)]
            return float(v.mean()) if v.numel() else None

        def plain(v: torch.Tensor) -> list[float | None]:
            return [None if math.isnan(x) else float(x) for x in v.tolist()]

        return {"mIoU": mean(iou), "mAcc": mean(acc), "aAcc": float(tp.sum().item() / total) if total else None,
                "IoU": plain(iou), "Acc": plain(acc)}


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), H, W


@torch.no_grad()
def whole_inference(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    size_divisor: int = 32) -> torch.Tensor:
    """Logits of whole images: (B, C, H, W) normalised images -> (B, K, H, W), padded (bottom/right, zeros) to a
    multiple of ``size_divisor`` for the forward pass and cropped back."""
    x, H, W = _pad_to(images, size_divisor)
    return model(x)[..., :H, :W].float()


@torch.no_grad()
def slide_inference(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, num_classes: int,
                    crop_size: int | tuple[int, int], stride: int | tuple[int, int],
                    size_divisor: int = 32) -> torch.Tensor:
    """Logits by sliding windows (mmseg's ``slide`` mode): (B, C, H, W) -> (B, K, H, W).

    Windows of ``crop_size`` (h, w) pixels every ``stride`` pixels, the last one aligned to the bottom/right edge,
    each padded to a multiple of ``size_divisor``; overlapping logits are averaged.
    """
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    B, _, H, W = images.shape
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    logits = images.new_zeros(B, num_classes, H, W, dtype=torch.float32)
    count = images.new_zeros(1, 1, H, W, dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh, max(H - ch, 0)), min(c * sw, max(W - cw, 0))
            y2, x2 = min(y1 + ch, H), min(x1 + cw, W)
            logits[:, :, y1:y2, x1:x2] += whole_inference(model, images[:, :, y1:y2, x1:x2], size_divisor)
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count
