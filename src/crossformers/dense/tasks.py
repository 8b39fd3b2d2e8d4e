"""Dense tasks: what the shared training loop (:mod:`crossformers.dense.train`) needs from each kind of model.

:class:`DenseTask` is the interface; the packages that own the heads implement and register it:
``crossformers.detection`` registers ``detection`` (RetinaNet) and ``instance-segmentation`` (Mask R-CNN),
``crossformers.segmentation`` registers ``semantic-segmentation`` (UPerNet, Semantic FPN). The training loop sits
below them (it imports no head), so the import layers stay one-way: detection/segmentation -> dense -> engine.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..engine.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .train import DenseTrainConfig

__all__ = ["DenseTask", "register_task", "get_task", "list_tasks", "prefixed_group_matcher", "backbone_mean_std",
           "dense_preprocessing"]

_TASKS: dict[str, Callable[[], DenseTask]] = {}


class DenseTask:
    """One dense task. Subclasses implement every method; ``name``, ``heads`` (first = default) and ``best_key``
    (the validation metric that selects ``best/``, higher is better) are class attributes."""

    name = ""
    heads: tuple[str, ...] = ()
    best_key = ""

    def datasets(self, cfg: DenseTrainConfig) -> tuple[Any, Any, list[str]]:
        """Training and validation datasets of ``cfg.data`` and the class names (index = label)."""
        raise NotImplementedError

    def min_batch_per_process(self, cfg: DenseTrainConfig) -> tuple[int, str]:
        """The smallest training batch one process can run with ``cfg``'s head, and why (1 = any)."""
        return 1, ""

    def eval_dataset(self, cfg: DenseTrainConfig, data: str, split: str) -> Any:
        """The evaluation dataset of split ``split`` of ``data``, with the evaluation transforms of ``cfg``."""
        raise NotImplementedError

    def build_model(self, cfg: DenseTrainConfig, classes: list[str], checkpoint_path: str | Path | None) -> nn.Module:
        """The model (backbone weights from ``checkpoint_path`` if given); ``group_matcher`` for layer decay."""
        raise NotImplementedError

    def preprocessing(self, model: nn.Module, cfg: DenseTrainConfig) -> dict[str, Any]:
        """``input_size`` [C, H, W] (the training size), ``mean`` / ``std`` the model normalises with."""
        raise NotImplementedError

    def loss(self, model: nn.Module, images: list[torch.Tensor], targets: list[Any]) -> torch.Tensor:
        """Training loss of one micro-batch (float32 scalar with its graph); ``model`` in train mode."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, autocast: Callable[[], Any],
                 gather: Callable[[Any], list[Any]], cfg: DenseTrainConfig, progress: bool = False) -> dict[str, Any]:
        """Validation metrics (fractions; keys prefixed ``val_``); ``gather`` collects a Python object from every
        process (identity list without distribution)."""
        raise NotImplementedError

    def predict(self, model: nn.Module, images: list[torch.Tensor], cfg: DenseTrainConfig,
                score_thresh: float) -> list[dict[str, Any]]:
        """Per image (3, H, W) float in 0..1: a JSON-ready dict, with tensors under ``"_draw"`` for drawing."""
        raise NotImplementedError

    def draw(self, image: torch.Tensor, prediction: dict[str, Any], classes: list[str]) -> torch.Tensor:
        """(3, H, W) uint8 image with the prediction drawn (torchvision.utils draw functions)."""
        raise NotImplementedError


def register_task(name: str, factory: Callable[[], DenseTask]) -> None:
    """Make ``name`` available to :func:`get_task` (``crossformers dense train --task NAME``)."""
    _TASKS[name] = factory


def list_tasks() -> list[str]:
    """Registered task names (after importing ``crossformers.detection`` / ``crossformers.segmentation``)."""
    return sorted(_TASKS)


def get_task(name: str) -> DenseTask:
    """The task registered as ``name``.

    Raises:
        ConfigError: unknown name (the registered ones are listed; none are until ``crossformers.detection`` and
            ``crossformers.segmentation`` are imported).
    """
    if name not in _TASKS:
        known = ", ".join(list_tasks()) or "none (import crossformers.detection / crossformers.segmentation)"
        raise ConfigError(f"unknown dense task {name!r}: registered tasks are {known}")
    return _TASKS[name]()


def prefixed_group_matcher(model: nn.Module, backbone: nn.Module) -> Callable[[bool], dict[str, Any]]:
    """A ``group_matcher(coarse)`` for the whole dense model: the backbone's own groups (``backbone`` must have
    ``group_matcher``, e.g. the classifier inside a PyramidBackbone) under its name inside ``model``; every other
    parameter (neck, heads) is unmatched, which timm puts in the last, undecayed group. This lets timm's
    ``param_groups_layer_decay`` scale the backbone's learning rates by depth, as the papers' fine-tuning does.

    Raises:
        ConfigError: ``backbone`` is not inside ``model`` or has no ``group_matcher``.
    """
    prefix = next((n for n, m in model.named_modules() if m is backbone), None)
    if prefix is None or not callable(getattr(backbone, "group_matcher", None)):
        raise ConfigError("--layer-decay needs a backbone with timm's group_matcher(); this one has none")
    head = re.escape(prefix + ".")

    def fix(regex: str) -> str:
        return "^" + head + (regex[1:] if regex.startswith("^") else regex)

    def matcher(coarse: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, spec in backbone.group_matcher(coarse=coarse).items():
            if spec is None or isinstance(spec, str):
                out[key] = spec if spec is None else fix(spec)
            else:
                out[key] = [(fix(r), s) for r, s in spec]
        return out

    return matcher


def backbone_mean_std(pretrained_cfg: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    """RGB ``mean`` / ``std`` (0..1 units) of a backbone's ``pretrained_cfg`` (ImageNet's when it has none; a
    single grey value is repeated for the three channels the dense data sets give)."""
    cfg = pretrained_cfg or {}
    mean = [float(v) for v in (cfg.get("mean") or (0.485, 0.456, 0.406))]
    std = [float(v) for v in (cfg.get("std") or (0.229, 0.224, 0.225))]
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return mean, std


def dense_preprocessing(size: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    """The ``preprocessing`` entry of a dense checkpoint's meta.json: training ``input_size`` [3, size, size] and the
    normalisation the model applies."""
    return {"input_size": [3, int(size), int(size)], "mean": list(mean), "std": list(std),
            "interpolation": "bilinear", "crop_pct": 1.0}
