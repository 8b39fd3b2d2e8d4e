"""torchvision detectors (RetinaNet, Mask R-CNN) on crossformers backbones.

The heads, losses, anchor generation, box coding, RoI pooling, post-processing and the input transform (resize to
``min_size``/``max_size``, normalise, batch with padding) are torchvision's own; crossformers only supplies the
backbone (:func:`~crossformers.detection.backbones.pyramid_backbone`) and the feature pyramid network is
``torchvision.ops.FeaturePyramidNetwork``, wired as torchvision's ``BackboneWithFPN`` does for ResNets:

* :func:`retinanet` — FPN on the stride-8/16/32 maps (C3-C5) plus P6/P7 from C5 (``LastLevelP6P7``; mmdetection's
  ``start_level=1, add_extra_convs='on_input'``, the RetinaNet setting of the CrossFormer papers), torchvision's
  RetinaNet head and its default anchors (3 scales x 3 ratios per level, sizes 32-512).
* :func:`mask_rcnn` — FPN on all four maps (C2-C5) plus a max-pooled P6 (``LastLevelMaxPool``), torchvision's
  Mask R-CNN (RPN, box and mask heads, RoIAlign on P2-P5).

Training/inference follow torchvision's API: ``model(images, targets)`` returns a dict of losses in train mode,
``model(images)`` a list of ``{'boxes', 'labels', 'scores'[, 'masks']}`` in eval mode; images are float (C, H, W) in
0..1, boxes are (x1, y1, x2, y2) in pixels.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..checkpoint import read_state_dict
from ..dense import BackboneError, DenseCheckpointWarning, PyramidBackbone, pyramid_backbone
from .mmdet_heads import MMDET_PREFIXES, convert_mmdet_heads

__all__ = ["BackboneWithFPN", "retinanet", "mask_rcnn", "retinanet_anchor_generator"]


class BackboneWithFPN(nn.Module):
    """A :class:`PyramidBackbone` followed by ``torchvision.ops.FeaturePyramidNetwork`` (torchvision's
    ``BackboneWithFPN`` for our backbones).

    Args:
        body: the pyramid backbone; every map it returns (finest first) feeds the FPN.
        out_channels: FPN channels.
        extra_blocks: torchvision extra block (``LastLevelMaxPool()``, ``LastLevelP6P7(...)``) or None.

    Input (B, C, H, W) -> ``OrderedDict`` of FPN maps, keys ``'0'``, ``'1'``, ... (finest first) then the extra
    block's names (``'pool'``, or ``'p6'``, ``'p7'``), each (B, out_channels, h, w). Attribute ``out_channels`` as
    torchvision's detectors expect.
    """

    def __init__(self, body: PyramidBackbone, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def retinanet_anchor_generator() -> AnchorGenerator:
    """torchvision's RetinaNet anchors: per level (P3-P7) sizes x * 2^(0, 1/3, 2/3) for x = 32..512, ratios
    0.5, 1, 2."""
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _normalisation(body: PyramidBackbone) -> tuple[list[float], list[float]]:
    cfg = body.pretrained_cfg
    mean = [float(v) for v in (cfg.get("mean") or (0.485, 0.456, 0.406))]
    std = [float(v) for v in (cfg.get("std") or (0.229, 0.224, 0.225))]
    c = body.in_chans
    if len(mean) != c:
        mean, std = ([sum(mean) / len(mean)] * c, [sum(std) / len(std)] * c) if c != 3 else (mean * 3, std * 3)
    return mean, std


def _body(backbone_name: str | os.PathLike | PyramidBackbone, checkpoint_path, pretrained, levels, neck_dim,
          backbone_kwargs) -> PyramidBackbone:
    if isinstance(backbone_name, PyramidBackbone):
        if checkpoint_path is not None or pretrained or backbone_kwargs:
            raise BackboneError("a ready PyramidBackbone was given: load its weights when building it")
        if backbone_name.levels != tuple(levels):
            raise BackboneError(f"this detector needs pyramid levels {tuple(levels)} (strides "
                                f"{[4 * 2 ** lv for lv in levels]}), the backbone has {backbone_name.levels}")
        return backbone_name
    return pyramid_backbone(backbone_name, checkpoint_path, pretrained, levels, neck_dim, **backbone_kwargs)


def _body_and_heads(build_body, checkpoint_path, build_detector) -> nn.Module:
    """Build the body (its dense-checkpoint warning held back), then the detector; an mmdet checkpoint's neck and
    heads are mapped onto the detector (:mod:`~crossformers.detection.mmdet_heads`) and ONE warning says what was
    loaded and what could not be mapped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        body = build_body()
    held = [w for w in caught if issubclass(w.category, DenseCheckpointWarning)]
    for w in caught:
        if w not in held:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    detector = build_detector(body)
    report = getattr(body.model, "load_report", None)
    if checkpoint_path is not None and report is not None and report.layout == "mmdet" and any(
            k.startswith(MMDET_PREFIXES) for k in report.not_loaded):
        mapped, not_mapped = convert_mmdet_heads(read_state_dict(checkpoint_path), detector)
        detector.load_state_dict(mapped, strict=False)
        report.mapped, report.not_loaded = sorted(mapped), not_mapped
        msg = report.message()
        if msg:
            warnings.warn(msg, DenseCheckpointWarning, stacklevel=3)
    else:
        for w in held:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return detector


def retinanet(
    backbone_name: str | os.PathLike | PyramidBackbone,
    num_classes: int,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool = False,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    neck_dim: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> RetinaNet:
    """torchvision RetinaNet (Lin et al. 2017) with an FPN on a crossformers backbone.

    Args:
        backbone_name: model name, one of our run directories, or a ready :class:`PyramidBackbone` (levels
            (1, 2, 3) for RetinaNet, (0, 1, 2, 3) for Mask R-CNN).
        num_classes: classes of the classification head (torchvision convention: labels in 0..num_classes-1; its
            COCO models use 91 with 0 unused).
        checkpoint_path: classification weights for the backbone (head dropped explicitly, rest strict), or the
            authors' mmdet checkpoint of a dense backbone: its backbone keys load strictly, its FPN and heads are
            mapped onto this detector (:mod:`crossformers.detection.mmdet_heads`), and one
            ``DenseCheckpointWarning`` names the keys that could not be mapped.
        pretrained: the authors' released backbone weights.
        fpn_channels: FPN and head channels (256 in the papers).
        min_size, max_size: torchvision's resize of the input (shorter side to ``min_size`` pixels unless the longer
            exceeds ``max_size``); 800/1333 as the papers' COCO setting. An 800x1280 image is not resized.
        neck_dim: channels of the simple feature pyramid of plain backbones (CrossViT, FcaFormer L0).
        backbone_kwargs: model arguments for the backbone (``img_size``, ``drop_path_rate``, ...).
        **detector_kwargs: passed to ``torchvision.models.detection.RetinaNet`` (``score_thresh``,
            ``detections_per_img``, ``topk_candidates``, ...).

    Returns:
        ``torchvision.models.detection.RetinaNet``; ``model.backbone.body`` is the :class:`PyramidBackbone`.
        Normalisation mean/std are the backbone's (``pretrained_cfg``).

    Raises:
        UnknownModelError, CheckpointError, BackboneError: as :func:`~crossformers.detection.backbone`.
    """
    detector_kwargs.setdefault("anchor_generator", retinanet_anchor_generator())

    def build(body: PyramidBackbone) -> RetinaNet:
        net = BackboneWithFPN(body, out_channels=fpn_channels, extra_blocks=LastLevelP6P7(body.out_channels[-1],
                                                                                          fpn_channels))
        mean, std = _normalisation(body)
        return RetinaNet(net, num_classes, min_size=min_size, max_size=max_size, image_mean=mean, image_std=std,
                         **detector_kwargs)

    return _body_and_heads(lambda: _body(backbone_name, checkpoint_path, pretrained, (1, 2, 3), neck_dim,
                                         dict(backbone_kwargs or {})), checkpoint_path, build)


def mask_rcnn(
    backbone_name: str | os.PathLike | PyramidBackbone,
    num_classes: int,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool = False,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    neck_dim: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> MaskRCNN:
    """torchvision Mask R-CNN (He et al. 2017) with an FPN on a crossformers backbone.

    Args:
        backbone_name: model name, one of our run directories, or a ready :class:`PyramidBackbone`.
        num_classes: classes including the background (torchvision convention: label 0 is background).
        checkpoint_path, pretrained, fpn_channels, min_size, max_size, neck_dim, backbone_kwargs: as
            :func:`retinanet`.
        **detector_kwargs: passed to ``torchvision.models.detection.MaskRCNN`` (``rpn_post_nms_top_n_test``,
            ``box_score_thresh``, ``box_detections_per_img``, ...).

    Returns:
        ``torchvision.models.detection.MaskRCNN`` with FPN levels P2-P5 and a max-pooled P6 (torchvision's default
        anchors and RoIAlign settings); ``model.backbone.body`` is the :class:`PyramidBackbone`.

    Raises:
        UnknownModelError, CheckpointError, BackboneError: as :func:`~crossformers.detection.backbone`.
    """
    def build(body: PyramidBackbone) -> MaskRCNN:
        net = BackboneWithFPN(body, out_channels=fpn_channels, extra_blocks=LastLevelMaxPool())
        mean, std = _normalisation(body)
        return MaskRCNN(net, num_classes, min_size=min_size, max_size=max_size, image_mean=mean, image_std=std,
                        **detector_kwargs)

    return _body_and_heads(lambda: _body(backbone_name, checkpoint_path, pretrained, (0, 1, 2, 3), neck_dim,
                                         dict(backbone_kwargs or {})), checkpoint_path, build)
