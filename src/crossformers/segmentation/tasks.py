"""Semantic segmentation as a dense task (:class:`crossformers.dense.tasks.DenseTask`): ADE20K-style data, smp
UPerNet / Semantic FPN on a crossformers backbone, mIoU / mAcc / aAcc in whole-image or sliding-window mode.
Registered as ``semantic-segmentation`` when :mod:`crossformers.segmentation` is imported."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import draw_segmentation_masks

from ..dense.data import IGNORE_INDEX, SegmentationFolder, segmentation_transforms
from ..dense.metrics import SegmentationMeter, slide_inference, whole_inference
from ..dense.tasks import DenseTask, backbone_mean_std, dense_preprocessing, prefixed_group_matcher, register_task
from ..dense.train import unwrap_dataset
from .models import fpn, upernet

__all__ = ["NormalizedSegmenter", "SemanticSegmentationTask", "DEFAULT_CROP"]

#: the papers' ADE20K training crop (pixels)
DEFAULT_CROP = 512


class NormalizedSegmenter(nn.Module):
    """A segmentation model that takes images in 0..1 and normalises them itself (as torchvision's detectors do),
    so checkpoints carry their preprocessing: (B, 3, H, W) in 0..1, H and W multiples of 32 -> logits (B, K, H, W).

    Attributes: ``model`` (the :class:`~crossformers.segmentation.EncoderDecoder`), ``mean`` / ``std`` buffers
    (3,) in 0..1 units, not saved in the state dict."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def _logits(model: nn.Module, x: torch.Tensor, num_classes: int, cfg) -> torch.Tensor:
    if cfg.eval_mode == "slide":
        crop = cfg.img_size or DEFAULT_CROP
        return slide_inference(model, x, num_classes, crop, cfg.slide_stride or max(1, crop * 2 // 3))
    return whole_inference(model, x)


class SemanticSegmentationTask(DenseTask):
    """Per-pixel classes: UPerNet or Semantic FPN; cross-entropy with ignore index 255; ``best/`` by mIoU."""

    name = "semantic-segmentation"
    heads = ("upernet", "fpn")
    best_key = "mIoU"

    def min_batch_per_process(self, cfg) -> tuple[int, str]:
        if cfg.resolved_head == "upernet":
            return 2, "UPerNet's pyramid pooling normalises 1x1 pooled maps with BatchNorm, which needs 2 images"
        return 1, ""

    def _dataset(self, cfg, data: str, split: str, train: bool) -> SegmentationFolder:
        tf = segmentation_transforms(train, crop_size=cfg.img_size or DEFAULT_CROP, hflip=cfg.hflip)
        return SegmentationFolder(data, split, reduce_zero_label=cfg.reduce_zero_label, transforms=tf)

    def datasets(self, cfg):
        train = self._dataset(cfg, cfg.data, "train", True)
        return train, self._dataset(cfg, cfg.data, "val", False), train.classes

    def eval_dataset(self, cfg, data: str, split: str) -> SegmentationFolder:
        return self._dataset(cfg, data, split, False)

    def build_model(self, cfg, classes, checkpoint_path) -> nn.Module:
        backbone_kwargs = dict(cfg.model_kwargs)
        if cfg.drop_path_rate > 0:
            backbone_kwargs["drop_path_rate"] = cfg.drop_path_rate
        build = upernet if cfg.resolved_head == "upernet" else fpn
        width = {} if not cfg.fpn_channels else (
            {"decoder_channels": cfg.fpn_channels} if build is upernet else {"pyramid_channels": cfg.fpn_channels})
        seg = build(cfg.model, num_classes=len(classes), checkpoint_path=checkpoint_path,
                    backbone_kwargs=backbone_kwargs, **width)
        mean, std = backbone_mean_std(seg.encoder.body.pretrained_cfg)
        model = NormalizedSegmenter(seg, mean, std)
        if cfg.layer_decay is not None:
            model.group_matcher = prefixed_group_matcher(model, seg.encoder.body.model)
        return model

    def preprocessing(self, model, cfg) -> dict[str, Any]:
        return dense_preprocessing(cfg.img_size or DEFAULT_CROP, model.mean.flatten().tolist(),
                                   model.std.flatten().tolist())

    def loss(self, model, images, targets) -> torch.Tensor:
        x = torch.stack(list(images))
        y = torch.stack([t.as_subclass(torch.Tensor) for t in targets]).long()
        logits = model(x).float()
        if not (y != IGNORE_INDEX).any():  # a crop without a labelled pixel: no signal, keep the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)

    def evaluate(self, model, loader, device, autocast, gather, cfg, progress: bool = False) -> dict[str, Any]:
        classes = self._classes(loader)
        meter = SegmentationMeter(len(classes), IGNORE_INDEX)
        for images, masks in loader:
            for img, mask in zip(images, masks, strict=True):
                with autocast():
                    logits = _logits(model, img[None].to(device), len(classes), cfg)
                meter.update(logits.argmax(1)[0].cpu(), mask.as_subclass(torch.Tensor))
        total = sum(gather(meter.confusion))
        meter.confusion = total
        scores = meter.compute()
        out = {f"val_{k}": scores[k] for k in ("mIoU", "mAcc", "aAcc")}
        out["val_IoU_per_class"] = dict(zip(classes, scores["IoU"], strict=True))
        return out

    @staticmethod
    def _classes(loader) -> list[str]:
        return unwrap_dataset(loader.dataset).classes

    def predict(self, model, images, cfg, score_thresh: float) -> list[dict[str, Any]]:
        preds = []
        num_classes = model.model.segmentation_head[0].out_channels
        for img in images:
            labels = _logits(model, img[None], num_classes, cfg).argmax(1)[0].cpu()
            counts = torch.bincount(labels.flatten(), minlength=num_classes)
            present = {int(c): round(float(counts[c]) / labels.numel(), 4) for c in torch.nonzero(counts).flatten()}
            preds.append({"pixel_fraction_by_label": present, "_draw": {"label_map": labels}})
        return preds

    def draw(self, image, prediction, classes) -> torch.Tensor:
        labels = prediction["label_map"]
        masks = torch.stack([labels == c for c in range(len(classes))])
        return draw_segmentation_masks(image, masks, alpha=0.6)


register_task(SemanticSegmentationTask.name, SemanticSegmentationTask)
