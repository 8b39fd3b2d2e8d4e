"""The one loader of the package: "spec -> model + preprocessing", :func:`load_model`.

A *spec* is what a user names a model by, in any command or API:

* a registered model name (crossformers or ``timm:<name>``), random init unless ``checkpoint`` (an official or
  state-dict weight file, converted on load) or ``pretrained`` (the authors' released weights) is given;
* one of our run / checkpoint directories (model, weights, class names and preprocessing from its ``meta.json``,
  read by :func:`crossformers.engine.load_trained`);
* a converted timm / Hub folder (``DIR`` or ``local-dir:DIR``, written by ``crossformers convert``: model, weights,
  label names and preprocessing from its ``config.json``, read by :func:`crossformers.hub.load_local_dir`);
* an ``nn.Module``, used as is.

Evaluation, prediction, the analyses, the dense backbones, profiling and export all come through here, so they accept
the same specs and fail with the same messages (:class:`~crossformers.engine.errors.ModelSpecError` for a spec that
contradicts its arguments, :class:`~crossformers.errors.CheckpointError` / ``UnknownModelError`` from the readers).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..hub import is_local_dir, load_local_dir
from .checkpoint_io import load_trained, resolve_checkpoint_dir
from .errors import ModelSpecError
from .modeling import build_model, model_preprocessing

__all__ = ["LoadedModel", "load_model", "is_trained_checkpoint", "model_in_chans", "WEIGHT_SUFFIXES"]

log = logging.getLogger("crossformers.engine")

#: file suffixes of weight files (a spec ending in one of these is a weight file, not a model)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass
class LoadedModel:
    """A model ready for inference, and what is known about it.

    Attributes:
        model: in eval mode, on the CPU (or where the given module was).
        name: registered model name (or the module's ``pretrained_cfg['architecture']`` / class name).
        source: checkpoint directory, weight file, ``pretrained``, ``random init`` or ``module``.
        classes: class names (our checkpoints) or None.
        preprocessing: eval preprocessing (``input_size`` (C, H, W) in pixels, ``mean``, ``std`` (0..1 units),
            ``interpolation``, ``crop_pct``), see :func:`crossformers.engine.modeling.model_preprocessing`.
        label: short label for plots and reports (the name, plus `` (random init)`` for an untrained model).
        meta: the checkpoint's ``meta.json`` (our checkpoints), else None.
    """

    model: nn.Module
    name: str
    source: str
    classes: list[str] | None
    preprocessing: dict[str, Any]
    label: str
    meta: dict[str, Any] | None = field(default=None, repr=False)


def model_in_chans(model: nn.Module) -> int:
    """Input channels of ``model``: its ``in_chans`` attribute, else its first conv layer, else ``pretrained_cfg``."""
    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int):
        return chans
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, str):
        try:
            layer = model.get_submodule(first)
            if isinstance(getattr(layer, "in_channels", None), int):
                return int(layer.in_channels)
        except AttributeError:
            pass
    return int((cfg.get("input_size") or (3,))[0])


def is_trained_checkpoint(spec: str | os.PathLike) -> bool:
    """True when ``spec`` is one of our checkpoint or run directories (or a ``meta.json`` in one), i.e. when
    :func:`crossformers.engine.resolve_checkpoint_dir` finds a checkpoint there."""
    path = Path(spec).expanduser()
    if not path.exists() and not (path.parent / f".{path.name}.old").exists():
        return False
    try:
        resolve_checkpoint_dir(path)
    except CheckpointError:
        return False
    return True


def _module_name(model: nn.Module) -> str:
    return str((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__)


def _given(checkpoint: str | os.PathLike | None, pretrained: bool, model_kwargs: Mapping[str, Any] | None) -> list[str]:
    """The arguments that only apply to model names, as the user gave them (for the 'drop ...' messages)."""
    return ([f"the checkpoint {checkpoint} (--checkpoint)"] if checkpoint is not None else []) + (
        ["pretrained (--pretrained)"] if pretrained else []) + (
        [f"the model arguments {sorted(model_kwargs)} (--model-kwargs)"] if model_kwargs is not None else [])


def load_model(
    spec: str | os.PathLike | nn.Module,
    checkpoint: str | os.PathLike | None = None,
    *,
    pretrained: bool = False,
    use_ema: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
    img_size: int | None = None,
    label: str | None = None,
) -> LoadedModel:
    """Load the model ``spec`` names, with its weights and its eval preprocessing.

    Args:
        spec: a model name (crossformers or ``timm:<name>``), one of our run / checkpoint directories, or an
            ``nn.Module`` (see the module docstring).
        checkpoint: with a model name: an official or state-dict weight file (converted on load; with
            ``model_kwargs['num_classes']`` of another class count the classifier is dropped).
        pretrained: with a model name: the authors' released weights.
        use_ema: with our checkpoint: its EMA weights.
        model_kwargs: with a model name: constructor arguments (``num_classes``, ``img_size``, ``depths``, ...).
        img_size: square input side in pixels: for a model name also passed to the constructor (unless
            ``model_kwargs`` sets it); for a checkpoint or a module only the preprocessing changes.
        label: label for plots (default: the name, plus `` (random init)`` for an untrained model).

    Returns:
        A :class:`LoadedModel` (model in eval mode).

    Raises:
        ModelSpecError: arguments that contradict the spec (``checkpoint`` / ``pretrained`` / ``model_kwargs`` with a
            run directory, which fixes model and weights; a weight file given as the model; ``use_ema`` with a model
            name).
        CheckpointError: a checkpoint that cannot be read or does not fit the model.
        UnknownModelError: unknown model name (close names suggested). ConfigError: the model does not accept one
            of ``model_kwargs``. PretrainedUnavailableError: released weights that cannot be fetched.
    """
    if isinstance(spec, nn.Module):
        name = _module_name(spec)
        pre = model_preprocessing(spec, in_chans=model_in_chans(spec), img_size=img_size)
        return LoadedModel(spec.eval(), name, "module", None, pre, label or name)
    if is_local_dir(spec):  # a converted timm / Hub folder (`crossformers convert`): model, weights and labels
        given = _given(checkpoint, pretrained, model_kwargs) + (["the EMA weights (--ema)"] if use_ema else [])
        if given:
            raise ModelSpecError(f"{spec} is a converted model folder, which fixes the model and its weights: drop "
                                 f"{' and '.join(given)}")
        model, cfg, labels = load_local_dir(spec)
        names = dict(cfg.get("label_descriptions") or {})  # human-readable names where the folder has them
        classes = [names.get(n, n) for n in labels] if labels else [str(i) for i in range(int(model.num_classes))]
        name = str(cfg.get("architecture", spec))
        pre = model_preprocessing(model, in_chans=model_in_chans(model), img_size=img_size)
        return LoadedModel(model, name, str(spec), classes, pre, label or name)
    path = Path(spec).expanduser()
    if is_trained_checkpoint(path):
        given = _given(checkpoint, pretrained, model_kwargs)
        if given:
            raise ModelSpecError(f"{path} is a crossformers run directory (or checkpoint), which fixes the model and "
                                 f"its weights: drop {' and '.join(given)} (they apply to model names only)")
        model, meta = load_trained(path, use_ema=use_ema)
        pre = model_preprocessing(model, in_chans=model_in_chans(model), img_size=img_size)
        if img_size:
            log.info("%s: at %dx%d px instead of the training size %s", path, img_size, img_size,
                     "x".join(str(s) for s in (meta.get("preprocessing") or {}).get("input_size", [])[1:]))
        return LoadedModel(model.eval(), str(meta["model"]), str(meta["checkpoint_dir"]), list(meta["classes"]), pre,
                           label or str(meta["model"]), meta)
    if path.suffix in WEIGHT_SUFFIXES or (path.exists() and path.is_file()):
        raise ModelSpecError(f"{spec} is a weight file, not a model: pass the model name and the file as the "
                             f"checkpoint (CLI: MODEL --checkpoint {spec}; Python: checkpoint_path=)")
    if use_ema:
        raise ModelSpecError("--ema (use_ema) needs one of our checkpoints (trained with --ema-decay), not a model "
                             "name")
    kwargs = dict(model_kwargs or {})
    if img_size and "img_size" not in kwargs:
        kwargs["img_size"] = img_size
    with torch.device("cpu"):
        model = build_model(str(spec), checkpoint_path=checkpoint, pretrained=pretrained, **kwargs)
    model.eval()
    size = img_size or kwargs.get("img_size")
    pre = model_preprocessing(model, in_chans=model_in_chans(model), img_size=size if isinstance(size, int) else None)
    trained = checkpoint is not None or pretrained
    source = str(checkpoint) if checkpoint is not None else ("pretrained" if pretrained else "random init")
    return LoadedModel(model, str(spec), source, None, pre, label or (str(spec) if trained else f"{spec} (random init)"))
