"""Loading the authors' mmdet/mmseg checkpoints (and classification checkpoints) into the dense backbones.

Generic over the dense backbones of every family: a backbone provides ``convert_state_dict(state)`` (the authors'
names to ours, its family's checkpoint filter) and optionally ``dense_only_keys()`` (layers a classification
checkpoint cannot provide). Used by the family files' constructors and by :mod:`crossformers.dense`.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checkpoint import key_mismatch_parts, read_state_dict
from ..errors import CheckpointError

__all__ = ["load_dense_weights", "DenseLoadReport", "DenseCheckpointWarning"]

_PREFIX = "backbone."


class DenseCheckpointWarning(UserWarning):
    """Parts of a checkpoint that were not loaded into a dense backbone (neck/head keys, a classifier), or dense-only
    layers that kept their initialisation."""


@dataclass
class DenseLoadReport:
    """What :func:`load_dense_weights` did with a checkpoint.

    Attributes:
        source: the checkpoint (path or "state dict").
        layout: ``'mmdet'`` (keys under ``backbone.``, as mmdet/mmseg save them) or ``'classification'``.
        loaded: number of backbone tensors loaded.
        not_loaded: keys of the checkpoint outside the backbone (neck, heads), not loaded (mmdet layout); a detector
            that maps the authors' neck and heads onto its own (:mod:`crossformers.detection.mmdet_heads`) leaves
            here only the keys it could not map.
        mapped: neck/head keys of the checkpoint loaded into the detector around the backbone (set by it).
        dropped: classification-only keys of the checkpoint (classifier, final norm), not loaded.
        initialised: keys of the dense backbone absent from a classification checkpoint (e.g. FcaFormer's output
            projections and norms), left at their initialisation.
    """

    source: str
    layout: str
    loaded: int = 0
    not_loaded: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def message(self) -> str:
        """One line naming what was not loaded / initialised, or '' when everything was used."""
        parts = []
        if self.mapped:
            parts.append(f"{len(self.mapped)} neck/head tensors mapped onto the detector's FPN and heads")
        if self.not_loaded and self.mapped:
            parts.append(f"{len(self.not_loaded)} neck/head keys could not be mapped ({', '.join(self.not_loaded[:6])}"
                         f"{', ...' if len(self.not_loaded) > 6 else ''}: no such layer here, or another shape)")
        elif self.not_loaded:
            groups = sorted({k.split(".", 1)[0] for k in self.not_loaded})
            parts.append(f"{len(self.not_loaded)} neck/head keys not loaded ({', '.join(groups)}: the detector/"
                         "segmenter around the backbone is not part of it)")
        if self.dropped:
            parts.append(f"{len(self.dropped)} classification keys dropped ({', '.join(self.dropped[:4])}"
                         f"{', ...' if len(self.dropped) > 4 else ''})")
        if self.initialised:
            parts.append(f"{len(self.initialised)} dense-only keys initialised, not in the checkpoint "
                         f"({', '.join(self.initialised[:4])}{', ...' if len(self.initialised) > 4 else ''})")
        if not parts:
            return ""
        return f"{self.source}: loaded {self.loaded} backbone tensors; " + "; ".join(parts)


def _is_classification_only(key: str) -> bool:
    return key.startswith("head.") or key in ("norm.weight", "norm.bias")


def load_dense_weights(
    model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], warn: bool = True,
) -> DenseLoadReport:
    """Load an authors' dense checkpoint or a classification checkpoint into a dense backbone.

    Args:
        model: a dense backbone (``crossformer_*_dense``, ``fcaformer_sh_l2``).
        source: checkpoint file (``.pth`` read with ``weights_only=True``, or ``.safetensors``) or a state dict.
            mmdet/mmseg layout: ``{'state_dict': {'backbone.<key>': …, 'neck.…': …}}``; the ``backbone.`` keys must
            fit the model exactly (names converted from the authors' layout), everything else is reported. Otherwise
            a classification checkpoint (ours or the authors', ``{'model': …}`` or bare): the classifier (``head.*``,
            and CrossFormer's final ``norm``) is dropped, dense-only layers keep their initialisation, every other
            key must fit.
        warn: emit one :class:`DenseCheckpointWarning` naming what was not loaded / initialised.

    Returns:
        A :class:`DenseLoadReport` (also stored as ``model.load_report``).

    Raises:
        CheckpointError: unreadable file, a checkpoint of another architecture, or backbone keys that do not fit
            (the message counts and names missing / unexpected / mis-shaped keys).
    """
    name = str(source) if not isinstance(source, Mapping) else "state dict"
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source)
    mmdet = any(k.startswith(_PREFIX) for k in state)
    report = DenseLoadReport(name, "mmdet" if mmdet else "classification")
    if mmdet:
        report.not_loaded = [k for k in state if not k.startswith(_PREFIX)]
        state = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    convert = getattr(model, "convert_state_dict", None)
    state = convert(state) if callable(convert) else state
    own = model.state_dict()
    if not mmdet:
        report.dropped = [k for k in state if k not in own and _is_classification_only(k)]
        state = {k: v for k, v in state.items() if k not in report.dropped}
        dense_only = set(getattr(model, "dense_only_keys", lambda: [])())
        report.initialised = [k for k in own if k not in state and k in dense_only]
    missing = [k for k in own if k not in state and k not in report.initialised]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        parts = [f"checkpoint {name} does not fit the dense backbone {arch}:",
                 *key_mismatch_parts(state, own, missing, unexpected, mismatched)]
        raise CheckpointError(" ".join(parts) + ". Build the backbone the checkpoint was trained with (same name "
                              "and arguments), e.g. crossformers.detection.backbone('crossformer_small', ...).")
    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    model.load_report = report
    msg = report.message()
    if warn and msg:
        warnings.warn(msg, DenseCheckpointWarning, stacklevel=2)
    return report
