"""Class activation maps through the maintained ``grad-cam`` package (pytorch-grad-cam, PyPI ``grad-cam``).

grad-cam expects (B, C, h, w) activations; :func:`reshape_transform` turns our token layouts into that: maps of a
model whose stages are channels-last (``map_fmt == 'NHWC'``, CrossFormer) are permuted, token sequences
(B, P + h*w, C) lose their class tokens and are laid out on their grid (from the layouts the model gives for its
attention blocks during the forward pass, the family protocol), tuples (FcaFormer blocks return ``(tokens, cross
tokens)``) give their first element.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from timm.utils import unwrap_model
from torch import nn

from ..models.protocol import AttentionLayout, BlockInfo
from .blocks import model_blocks
from .capture import observe_layouts
from .errors import CamUnavailableError
from .inputs import ImageBatch, LoadedModel, load_model, prepare_images

__all__ = ["CAM_METHODS", "default_cam_layers", "class_activation_maps"]

#: our method names -> pytorch_grad_cam class names
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
               "hirescam": "HiResCAM", "eigencam": "EigenCAM"}


def _grad_cam():
    try:
        import pytorch_grad_cam  # optional dependency (the analysis extra), needed only for CAMs
    except ImportError:
        raise CamUnavailableError("class activation maps need the grad-cam package: pip install grad-cam") from None
    return pytorch_grad_cam


def default_cam_layers(model: nn.Module) -> list[str]:
    """Default target layers: the family's (protocol ``cam_target_layers``: the last stage of CrossFormer and the
    hybrid FcaFormer, ``norm1`` of the last block of the plain FcaFormer and of each CrossViT branch), else the last
    ``blocks.N``/``stages.N`` module.

    Raises:
        CamUnavailableError: no default layer can be found (pass ``layers``).
    """
    model = unwrap_model(model)
    own = getattr(model, "cam_target_layers", None)
    if callable(own):
        return list(own())
    names = [n for n, _ in model.named_modules() if re.search(r"(?:^|\.)(?:blocks|stages)\.\d+$", n)]
    if not names:
        raise CamUnavailableError(f"no default CAM layer for {type(model).__name__}: pass --layer NAME")
    return [names[-1]]


class _GridTracker:
    """Token count -> (prefix tokens, grid) of the token sequences the attention blocks see in the forward pass,
    from the layouts the model gives for them (an axis of class tokens followed by one whole map)."""

    def __init__(self) -> None:
        self.grids: dict[int, tuple[int, tuple[int, int]]] = {}

    def __call__(self, info: BlockInfo, layout: AttentionLayout, image_size) -> None:
        for segs, cells in ((layout.query_segments, layout.query_cells), (layout.key_segments, layout.key_cells)):
            spatial = [g for g in segs if g.lattice is not None]
            if not spatial or segs[0].start != 0:
                continue
            first = spatial[0]
            lat = first.lattice
            whole = (first.stop - first.start == lat.size and cells.shape[0] == 1
                     and np.array_equal(cells[0, first.start:first.stop], np.arange(lat.size)))
            if whole and all(g.lattice is None for g in segs if g.stop <= first.start):
                self.grids[first.stop] = (first.start, (lat.height, lat.width))


def reshape_transform(model: nn.Module, tracker: _GridTracker) -> Callable[[Any], torch.Tensor]:
    """The grad-cam ``reshape_transform`` for ``model``: activations -> (B, C, h, w)."""
    channels_last = getattr(unwrap_model(model), "map_fmt", "NCHW") == "NHWC"

    def fn(t: Any) -> torch.Tensor:
        if isinstance(t, (tuple, list)):
            t = t[0]
        if t.ndim == 4:
            return t.permute(0, 3, 1, 2) if channels_last else t
        if t.ndim == 3:
            found = tracker.grids.get(int(t.shape[1]))
            if found is None:
                raise CamUnavailableError(f"cannot lay out {t.shape[1]} tokens on a grid: choose a layer with a map "
                                          "output (e.g. a stage) with --layer")
            P, (h, w) = found
            return t[:, P:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
        raise CamUnavailableError(f"cannot use a layer output of shape {tuple(t.shape)} for a CAM: choose another "
                                  "--layer")
    return fn


def class_activation_maps(
    model: nn.Module | str | os.PathLike | LoadedModel,
    images: torch.Tensor | Sequence[Any] | ImageBatch,
    method: str = "gradcam",
    layers: Sequence[str] | None = None,
    target_classes: Sequence[int] | int | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Class activation maps (Grad-CAM, Selvaraju et al. 2017, and relatives) with ``grad-cam``.

    Args:
        model, images, preprocessing: as :func:`crossformers.analysis.attention_maps`.
        method: a key of :data:`CAM_METHODS`.
        layers: target module names (default :func:`default_cam_layers`); several are averaged (grad-cam's rule).
        target_classes: class per image (or one for all); default the predicted class.

    Returns:
        ``cams`` (B, H, W) float in [0, 1] at input resolution (pixels), ``predicted`` (B,) class indices,
        ``probability`` (B,) softmax probability of the predicted class, ``targets`` (B,), ``layers``, ``method``.

    Raises:
        CamUnavailableError: grad-cam is not installed, or an unusable method/layer.
    """
    gc = _grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # optional dependency (see _grad_cam)

    if method not in CAM_METHODS:
        raise CamUnavailableError(f"unknown CAM method {method!r}: choose one of {', '.join(CAM_METHODS)}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    net = loaded.model.eval()
    batch = images if isinstance(images, ImageBatch) else prepare_images(images, preprocessing or loaded.preprocessing,
                                                                         net)
    x = batch.tensor
    names = list(layers) if layers else default_cam_layers(net)
    try:
        modules = [net.get_submodule(n) for n in names]
    except AttributeError:
        raise CamUnavailableError(f"no layer named {names} in {loaded.name}: use module names like "
                                  f"{default_cam_layers(net)[0]!r}") from None
    device = next(net.parameters()).device
    with torch.no_grad():
        logits = net(x.to(device))
    probs = logits.float().softmax(-1)
    predicted = probs.argmax(-1)
    if target_classes is None:
        targets = predicted.tolist()
    elif isinstance(target_classes, int):
        targets = [int(target_classes)] * x.shape[0]
    else:
        targets = [int(t) for t in target_classes]
    n_cls = logits.shape[-1]
    if len(targets) != x.shape[0] or any(not 0 <= t < n_cls for t in targets):
        raise CamUnavailableError(f"target classes must be one per image in 0..{n_cls - 1}, got {targets}")
    tracker = _GridTracker()
    layouts = (observe_layouts(net, [b for b in model_blocks(net) if b.has_attention], tracker)
               if callable(getattr(unwrap_model(net), "attention_layout", None)) else contextlib.nullcontext())
    cam_cls = getattr(gc, CAM_METHODS[method])
    with layouts, torch.enable_grad(), cam_cls(model=net, target_layers=modules,
                                               reshape_transform=reshape_transform(net, tracker)) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    return dict(cams=np.asarray(maps, dtype=np.float32), predicted=predicted.tolist(),
                probability=probs.gather(1, predicted[:, None])[:, 0].tolist(), targets=targets, layers=names,
                method=method)
