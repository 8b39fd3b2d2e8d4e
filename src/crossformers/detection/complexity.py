"""Parameters and multiply-accumulates of full detectors and segmenters, for comparison with the papers' tables.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) on one image in eval mode, with the
backbone on its explicit attention path (``set_fused_attn(False)``: the fused CPU kernel is not counted). Operations
without a FLOP formula in PyTorch (RoIAlign, NMS, interpolation, normalisation, softmax) are not counted, as in the
papers' counters (mmcv / fvcore count only convolutions, linear layers and matrix products).

Detectors run torchvision's eval forward: images of the papers' 1280x800 are not resized (``min_size=800``,
``max_size=1333``); the RPN keeps 1000 proposals and, with ``box_score_thresh=0``, the mask head runs on the
100 best detections — the setting of mmdetection's FLOP count (1000 proposals, 100 masks).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..utils.macs import count_call_macs

__all__ = ["count_macs", "detector_complexity", "segmenter_complexity"]


def count_macs(model: nn.Module, *inputs: Any) -> float:
    """MACs (FLOPs / 2) of ``model(*inputs)`` in eval mode without gradients, explicit attention everywhere
    (:func:`crossformers.utils.macs.count_call_macs`, the project's one MAC counter).

    Args:
        model: any module.
        *inputs: the forward arguments (e.g. a list of (C, H, W) images for a torchvision detector).

    Returns:
        Multiply-accumulates (float).
    """
    return float(count_call_macs(model, *inputs)[0])


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def detector_complexity(model: nn.Module, image_size: tuple[int, int] = (800, 1280)) -> dict[str, float]:
    """Parameters and MACs of a torchvision detector from :mod:`crossformers.detection` on one image.

    Args:
        model: ``retinanet(...)`` or ``mask_rcnn(...)`` (the backbone is ``model.backbone.body``).
        image_size: (H, W) pixels; (800, 1280) is the papers' 1280x800.

    Returns:
        ``params_m`` (millions, whole model), ``backbone_params_m``, ``gmacs`` (10^9 MACs, whole model),
        ``backbone_gmacs`` (backbone incl. the simple pyramid of plain models, at the same input).
    """
    h, w = image_size
    image = torch.rand(3, h, w)
    body = model.backbone.body
    saved = {}
    for k in ("score_thresh",):  # RetinaNet
        if hasattr(model, k):
            saved[k] = getattr(model, k)
            setattr(model, k, 0.0)
    roi = getattr(model, "roi_heads", None)
    if roi is not None:
        saved["roi_score"] = roi.score_thresh
        roi.score_thresh = 0.0
    try:
        total = count_macs(model, [image])
    finally:
        if "score_thresh" in saved:
            model.score_thresh = saved["score_thresh"]
        if roi is not None:
            roi.score_thresh = saved["roi_score"]
    mean = torch.tensor(model.transform.image_mean)[:, None, None]
    std = torch.tensor(model.transform.image_std)[:, None, None]
    backbone_macs = count_macs(body, ((image - mean) / std)[None])
    return dict(params_m=_params(model) / 1e6, backbone_params_m=_params(body) / 1e6, gmacs=total / 1e9,
                backbone_gmacs=backbone_macs / 1e9)


def segmenter_complexity(model: nn.Module, image_size: tuple[int, int] = (512, 512)) -> dict[str, float]:
    """Parameters and MACs of a segmenter from :mod:`crossformers.segmentation` on one image.

    Args:
        model: ``fpn(...)`` or ``upernet(...)``.
        image_size: (H, W) pixels, multiples of 32 (512x512 as the papers' ADE20K crops).

    Returns:
        ``params_m``, ``backbone_params_m``, ``gmacs``, ``backbone_gmacs`` as :func:`detector_complexity`.
    """
    x = torch.randn(1, model.encoder.body.in_chans, *image_size)
    body = model.encoder.body
    return dict(params_m=_params(model) / 1e6, backbone_params_m=_params(body) / 1e6,
                gmacs=count_macs(model, x) / 1e9, backbone_gmacs=count_macs(body, x) / 1e9)
