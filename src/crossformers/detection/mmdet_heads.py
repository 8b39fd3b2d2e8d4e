"""The authors' mmdetection necks and heads onto torchvision's detectors: :func:`convert_mmdet_heads`.

The papers' COCO checkpoints (``{'state_dict': {'backbone.…', 'neck.…', 'rpn_head.…', 'roi_head.…'}}`` for
Mask R-CNN, ``'bbox_head.…'`` for RetinaNet) hold the same layers as torchvision's Mask R-CNN / RetinaNet built by
:func:`~crossformers.detection.mask_rcnn` / :func:`~crossformers.detection.retinanet`, under other names and with two
conventions that differ:

* the class axis: mmdet puts the background last in the box classifier (``fc_cls``: C + 1 rows) and has none in the
  class-specific box regression (``fc_reg``: 4 C rows), the mask logits (C) and RetinaNet's sigmoid classifier
  (A x C); torchvision's label 0 is the background everywhere (C + 1). Rows are moved / a background row is added
  (zero weights; RetinaNet's gets torchvision's prior bias, so it never fires);
* names: ``neck.lateral_convs.i.conv`` -> ``backbone.fpn.inner_blocks.i.0``, ``neck.fpn_convs.i.conv`` ->
  ``backbone.fpn.layer_blocks.i.0`` (RetinaNet's two extra levels -> ``extra_blocks.p6`` / ``p7``), ``rpn_head.rpn_*``
  -> ``rpn.head.*``, ``roi_head.bbox_head.shared_fcs.0/1`` -> ``roi_heads.box_head.fc6/fc7``, ``roi_head.mask_head``
  -> ``roi_heads.mask_head`` / ``mask_predictor``, ``bbox_head.{cls,reg}_convs`` / ``retina_{cls,reg}`` ->
  ``head.{classification,regression}_head``.

The box coders agree (mmdet's target stds 0.1 / 0.2 are torchvision's weights 10 / 5; RPN and RetinaNet 1), as do
the anchor layouts (ratio-major, centred at ``stride * i``). What still differs numerically: mmdet's RoIAlign is
``aligned=True`` (torchvision's ``MultiScaleRoIAlign`` is not), and mmdet's RetinaNet FPN has no ReLU before P7
(torchvision's ``LastLevelP6P7`` has one): mapped weights are a starting point for fine-tuning, not a bit-exact copy
of the authors' detector. A key that has no place in the torchvision model, or whose shape does not fit (another
class count, another head width), is returned as not mapped, never silently dropped.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["convert_mmdet_heads", "MMDET_PREFIXES"]

#: top-level key groups of an mmdet detector besides ``backbone.``
MMDET_PREFIXES = ("neck.", "rpn_head.", "roi_head.", "bbox_head.")

_RULES: list[tuple[str, str]] = [
    (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"rpn_head\.rpn_conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
    (r"rpn_head\.rpn_cls\.(weight|bias)", r"rpn.head.cls_logits.\1"),
    (r"rpn_head\.rpn_reg\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)", r"roi_heads.box_head.fc6.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)", r"roi_heads.box_head.fc7.\1"),
    (r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", r"roi_heads.box_predictor.cls_score.\1"),
    (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)", r"roi_heads.mask_head.\1.0.\2"),
    (r"roi_head\.mask_head\.upsample\.(weight|bias)", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"roi_head\.mask_head\.conv_logits\.(weight|bias)", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
    (r"bbox_head\.cls_convs\.(\d+)\.conv\.(weight|bias)", r"head.classification_head.conv.\1.0.\2"),
    (r"bbox_head\.reg_convs\.(\d+)\.conv\.(weight|bias)", r"head.regression_head.conv.\1.0.\2"),
    (r"bbox_head\.retina_cls\.(weight|bias)", r"head.classification_head.cls_logits.\1"),
    (r"bbox_head\.retina_reg\.(weight|bias)", r"head.regression_head.bbox_reg.\1"),
]
_FPN_OUT = re.compile(r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)")
_RETINA_PRIOR = -math.log((1 - 0.01) / 0.01)  # torchvision's RetinaNetClassificationHead bias init (prior 0.01)


def _name(key: str, levels: int) -> str | None:
    """The torchvision key of an mmdet key (``levels``: FPN output levels built from backbone maps), or None."""
    m = _FPN_OUT.fullmatch(key)
    if m:
        i, part = int(m.group(1)), m.group(2)
        if i < levels:
            return f"backbone.fpn.layer_blocks.{i}.0.{part}"
        return {levels: f"backbone.fpn.extra_blocks.p6.{part}",
                levels + 1: f"backbone.fpn.extra_blocks.p7.{part}"}.get(i)
    for pattern, repl in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _class_axis(target: str, value: torch.Tensor, want: torch.Size, num_anchors: int) -> torch.Tensor | None:
    """Move mmdet's class axis to torchvision's (background = label 0); None if ``value`` does not fit ``want``."""
    if target.endswith("cls_score.weight") or target.endswith("cls_score.bias"):
        if value.shape[0] != want[0]:
            return None
        return torch.cat([value[-1:], value[:-1]])  # background last -> first
    if target.endswith("box_predictor.bbox_pred.weight") or target.endswith("box_predictor.bbox_pred.bias"):
        classes = want[0] // 4
        if value.shape[0] == 4:  # class-agnostic regression: the same deltas for every class
            return value.repeat(classes, *([1] * (value.ndim - 1)))
        if value.shape[0] != 4 * (classes - 1):
            return None
        return torch.cat([value.new_zeros((4, *value.shape[1:])), value])
    if target.endswith("mask_fcn_logits.weight") or target.endswith("mask_fcn_logits.bias"):
        if value.shape[0] != want[0] - 1:
            return None
        return torch.cat([value.new_zeros((1, *value.shape[1:])), value])
    if target.endswith("classification_head.cls_logits.weight") or target.endswith(
            "classification_head.cls_logits.bias"):
        classes = want[0] // num_anchors
        if value.shape[0] != num_anchors * (classes - 1):
            return None
        per = value.reshape(num_anchors, classes - 1, *value.shape[1:])
        bg = (per.new_full((num_anchors, 1), _RETINA_PRIOR) if value.ndim == 1
              else per.new_zeros((num_anchors, 1, *value.shape[1:])))
        return torch.cat([bg, per], dim=1).reshape(want)
    return value


def convert_mmdet_heads(state: Mapping[str, torch.Tensor], detector: nn.Module
                        ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The neck and head tensors of an mmdet checkpoint, renamed and rearranged for ``detector``.

    Args:
        state: the checkpoint's ``state_dict`` (mmdet names; ``backbone.`` keys are ignored here).
        detector: a torchvision ``MaskRCNN`` / ``RetinaNet`` from :func:`~crossformers.detection.mask_rcnn` /
            :func:`~crossformers.detection.retinanet`.

    Returns:
        ``(tensors keyed by the detector's state-dict names, mmdet keys not mapped)``. A key is not mapped when the
        detector has no such layer (e.g. a Cascade head, a semantic branch) or its shape does not fit after the
        class-axis conversion (another class count or head width).
    """
    own = detector.state_dict()
    levels = sum(1 for k in own if re.fullmatch(r"backbone\.fpn\.layer_blocks\.\d+\.0\.weight", k))
    anchors = getattr(getattr(detector, "anchor_generator", None), "num_anchors_per_location", lambda: [1])()[0]
    mapped: dict[str, torch.Tensor] = {}
    not_mapped: list[str] = []
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        target = _name(key, levels)
        if target is None or target not in own:
            not_mapped.append(key)
            continue
        converted = _class_axis(target, value, own[target].shape, anchors)
        if converted is None or converted.shape != own[target].shape:
            not_mapped.append(key)
            continue
        mapped[target] = converted.to(own[target].dtype)
    return mapped, not_mapped
