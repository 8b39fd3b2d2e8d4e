"""The authors' dense (detection / segmentation) backbones, and loading their mmdet/mmseg checkpoints.

The CrossFormer, CrossFormer++ and FcaFormer papers report detection and segmentation with backbones that differ
from their classifiers (see docs/backbones.md, "The authors' dense backbones"). They are members of their model
families (:class:`crossformers.models.crossformer.DenseCrossFormer`,
:class:`crossformers.models.fcaformer.FcaFormerDense`) registered as ``crossformer_small_dense``,
``crossformer_base_dense``, ``crossformer_large_dense``, ``crossformer_pp_small_dense`` and ``fcaformer_sh_l2``.

* :func:`backbone` — ``backbone(NAME, checkpoint_path=FILE, **cfg)``: for ``crossformer_small|base|large``,
  ``crossformer_pp_small`` and ``fcaformer_sh_l2`` the authors' dense backbone, returning their four NCHW maps;
  every other name is the classifier as a feature extractor (:func:`crossformers.dense.backbones.backbone`).
* :func:`load_dense_weights` — FILE may be the authors' mmdet/mmseg checkpoint (``{'state_dict': {'backbone.…',
  'neck.…', …}}``: backbone keys loaded strictly, the others reported once) or an ImageNet classification checkpoint
  (ours or the authors': the classifier is dropped, dense-only layers keep their initialisation; both reported).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..factory import create_model
from ..models.dense_checkpoint import DenseCheckpointWarning, DenseLoadReport, load_dense_weights
from .backbones import backbone as _classifier_backbone
from .backbones import dense_name

__all__ = ["backbone", "load_dense_weights", "DenseLoadReport", "DenseCheckpointWarning", "dense_name"]

def backbone(
    name: str | os.PathLike | nn.Module,
    checkpoint_path: str | os.PathLike | None = None,
    out_indices: Sequence[int] | int | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A dense backbone by name: the authors' dense backbone where they published one, else the classifier's features.

    Args:
        name: ``crossformer_small``, ``crossformer_base``, ``crossformer_large``, ``crossformer_pp_small`` (the
            authors' ``CrossFormer_S/B/L/S2``), ``fcaformer_sh_l2`` (their ``FcaFormer_SH_512``) or one of the
            registered dense names (``crossformer_small_dense``, ...). Any other model name or run directory gives
            the classifier as a feature extractor (:func:`crossformers.dense.backbones.backbone`).
        checkpoint_path: for a dense backbone, the authors' mmdet/mmseg checkpoint or a classification checkpoint
            (see :func:`load_dense_weights`; the report is ``model.load_report``).
        out_indices: which of the four maps to return (default all).
        pretrained: not available for dense backbones (their weights are not direct downloads).
        **kwargs: constructor arguments, e.g. ``group_size``, ``interval``, ``adaptive_interval``, ``acl``,
            ``drop_path_rate`` (CrossFormer; defaults = the authors' detection configs), ``window_sizes``
            (FcaFormer).

    Returns:
        ``model(images (B, C, H, W))`` -> list of NCHW maps; ``model.feature_info.channels()`` /
        ``.reduction()`` describe them.

    Raises:
        UnknownModelError, CheckpointError, PretrainedUnavailableError, BackboneError.
    """
    dense = None if isinstance(name, nn.Module) else dense_name(str(name))
    if dense is None:
        return _classifier_backbone(name, checkpoint_path, out_indices, pretrained, **kwargs)
    if out_indices is not None:
        kwargs["out_indices"] = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
    return create_model(dense, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)
