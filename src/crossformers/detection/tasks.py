"""Detection and instance segmentation as dense tasks (:class:`crossformers.dense.tasks.DenseTask`): COCO-format data,
torchvision RetinaNet / Mask R-CNN on a crossformers backbone, COCO box / mask AP. Registered as ``detection`` and
``instance-segmentation`` when :mod:`crossformers.detection` is imported."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data import DataError
from ..dense.data import CocoInstances, coco_split_paths, detection_transforms
from ..dense.metrics import coco_evaluate, detections_to_coco
from ..dense.tasks import DenseTask, dense_preprocessing, prefixed_group_matcher, register_task
from ..dense.train import unwrap_dataset
from .detectors import mask_rcnn, retinanet

__all__ = ["DetectionTask", "InstanceSegmentationTask", "DEFAULT_MIN_SIZE"]

#: the papers' COCO test size: shorter side 800, longer at most 1333
DEFAULT_MIN_SIZE = 800


def _roi_heads(width: int | None, channels: int, num_classes: int) -> dict[str, nn.Module]:
    """Mask R-CNN box and mask heads of ``width`` (torchvision's own classes; {} = its defaults 1024 / 256)."""
    if width is None:
        return {}
    return {"box_head": TwoMLPHead(channels * 7 * 7, width), "box_predictor": FastRCNNPredictor(width, num_classes),
            "mask_head": MaskRCNNHeads(channels, [width] * 4, 1),
            "mask_predictor": MaskRCNNPredictor(width, width, num_classes)}


class DetectionTask(DenseTask):
    """Boxes: RetinaNet (or Mask R-CNN, evaluated on boxes only) on COCO-format data; ``best/`` by bbox AP."""

    name = "detection"
    heads = ("retinanet", "mask_rcnn")
    best_key = "bbox_AP"
    masks = False
    iou_types: tuple[str, ...] = ("bbox",)

    def _dataset(self, cfg, data: str, split: str, train: bool) -> CocoInstances:
        images, ann = coco_split_paths(data, split)
        size = cfg.img_size or DEFAULT_MIN_SIZE
        tf = detection_transforms(train, cfg.hflip, cfg.train_scales or None, cfg.max_size or round(size * 1333 / 800))
        return CocoInstances(images, ann, tf, masks=self.masks or cfg.resolved_head == "mask_rcnn", train=train,
                             check_files=True)

    def datasets(self, cfg):
        train = self._dataset(cfg, cfg.data, "train", True)
        val = self._dataset(cfg, cfg.data, "val", False)
        if val.classes != train.classes or val.cat_ids != train.cat_ids:
            raise DataError(f"the categories of {val.ann_file} differ from those of {train.ann_file}: both splits need "
                            "the same \"categories\" list")
        return train, val, train.classes

    def eval_dataset(self, cfg, data: str, split: str) -> CocoInstances:
        return self._dataset(cfg, data, split, False)

    def build_model(self, cfg, classes, checkpoint_path) -> nn.Module:
        size = cfg.img_size or DEFAULT_MIN_SIZE
        kwargs: dict[str, Any] = dict(num_classes=len(classes), checkpoint_path=checkpoint_path, min_size=size,
                                      max_size=cfg.max_size or round(size * 1333 / 800),
                                      backbone_kwargs=dict(cfg.model_kwargs))
        if cfg.drop_path_rate > 0:
            kwargs["backbone_kwargs"]["drop_path_rate"] = cfg.drop_path_rate
        if cfg.fpn_channels:
            kwargs["fpn_channels"] = cfg.fpn_channels
        if cfg.resolved_head == "retinanet":
            model = retinanet(cfg.model, detections_per_img=cfg.detections_per_img, **kwargs)
        else:
            heads = _roi_heads(cfg.head_width, cfg.fpn_channels or 256, len(classes))
            if heads:
                kwargs["num_classes"] = None  # torchvision: the class count is the predictors'
            model = mask_rcnn(cfg.model, box_detections_per_img=cfg.detections_per_img,
                              box_batch_size_per_image=cfg.rois_per_image, **heads, **kwargs)
        if cfg.layer_decay is not None:
            model.group_matcher = prefixed_group_matcher(model, model.backbone.body.model)
        return model

    def preprocessing(self, model, cfg) -> dict[str, Any]:
        t = model.transform
        return dense_preprocessing(cfg.img_size or DEFAULT_MIN_SIZE, list(t.image_mean), list(t.image_std))

    def loss(self, model, images, targets) -> torch.Tensor:
        losses = model(images, [{k: v for k, v in t.items() if k != "image_id"} for t in targets])
        return sum(v.float() for v in losses.values())

    def evaluate(self, model, loader, device, autocast, gather, cfg, progress: bool = False) -> dict[str, Any]:
        ds = unwrap_dataset(loader.dataset)
        results: list[dict[str, Any]] = []
        ids: list[int] = []
        for images, targets in loader:
            with autocast():
                outs = model([im.to(device) for im in images])
            batch_ids = [int(t["image_id"]) for t in targets]
            ids += batch_ids
            results += detections_to_coco(outs, batch_ids, ds.cat_ids)
        merged_results, merged_ids = [], []
        for r, i in gather((results, ids)):
            merged_results += r
            merged_ids += i
        scores = coco_evaluate(ds.coco, merged_results, self.iou_types, image_ids=merged_ids)
        return {f"val_{k}": v for k, v in scores.items()}

    def predict(self, model, images, cfg, score_thresh: float) -> list[dict[str, Any]]:
        outs = model(images)
        preds = []
        for out in outs:
            keep = out["scores"] >= score_thresh
            boxes, scores, labels = out["boxes"][keep].cpu(), out["scores"][keep].cpu(), out["labels"][keep].cpu()
            dets = [{"box_xyxy": [round(v, 2) for v in b.tolist()], "label": int(lab), "score": round(float(s), 4)}
                    for b, s, lab in zip(boxes, scores, labels, strict=True)]
            draw: dict[str, Any] = {"boxes": boxes, "scores": scores, "labels": labels}
            if "masks" in out:
                masks = out["masks"][keep][:, 0].cpu() > 0.5
                draw["masks"] = masks
                for d, m in zip(dets, masks, strict=True):
                    d["mask_area_px"] = int(m.sum())
            preds.append({"detections": dets, "_draw": draw})
        return preds

    def draw(self, image, prediction, classes) -> torch.Tensor:
        img = image
        if "masks" in prediction and len(prediction["masks"]):
            img = draw_segmentation_masks(img, prediction["masks"], alpha=0.45)
        if len(prediction.get("boxes", ())):
            names = [f"{classes[int(lab)]} {float(s):.2f}" for lab, s in zip(prediction["labels"],
                                                                              prediction["scores"], strict=True)]
            img = draw_bounding_boxes(img, prediction["boxes"], labels=names, width=2)
        return img


class InstanceSegmentationTask(DetectionTask):
    """Boxes and masks: Mask R-CNN on COCO-format data with polygons / RLE; bbox and segm AP, ``best/`` by segm
    AP."""

    name = "instance-segmentation"
    heads = ("mask_rcnn",)
    best_key = "segm_AP"
    masks = True
    iou_types = ("bbox", "segm")


for _task in (DetectionTask, InstanceSegmentationTask):
    register_task(_task.name, _task)
