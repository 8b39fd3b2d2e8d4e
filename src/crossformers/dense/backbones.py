"""Every crossformers model as a dense backbone: NCHW feature maps with ``feature_info``, and a 4-level pyramid.

* :func:`backbone` — the model as a timm feature extractor (``features_only=True``): a list of NCHW maps, with
  ``feature_info`` giving channels and reduction (stride in pixels) of each. Pretrained classification weights (a file,
  one of our run directories, or ``pretrained=True``) are loaded into the classifier *before* it is wrapped, strictly:
  the classifier head is dropped explicitly and every other key must match.
* :func:`pyramid_backbone` — the same, always as four maps at strides 4, 8, 16 and 32, the input of FPN-style necks
  and heads (torchvision's detectors, segmentation-models-pytorch's decoders). Hierarchical models (CrossFormer,
  CrossFormer++, hybrid FcaFormer L1-L4) give these maps themselves. Plain models (CrossViT, plain FcaFormer L0) give
  one map per branch at one stride; :class:`SimpleFeaturePyramid` turns them into four (the "simple feature pyramid"
  of ViTDet, Li et al. 2022, arXiv:2203.16527, Sec. 3: deconvolutions up, max pooling down, from the stride-16 map).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models._features import FeatureGetterNet
from torch import nn

from ..engine.loading import WEIGHT_SUFFIXES, is_trained_checkpoint, load_model
from ..errors import CrossformersError
from ..factory import create_model, list_models, timm_name
from ..hub import is_local_dir

__all__ = ["BackboneError", "backbone", "pyramid_backbone", "PyramidBackbone", "SimpleFeaturePyramid",
           "default_out_indices", "feature_sizes", "PYRAMID_STRIDES"]

#: strides (pixels) of the four maps every pyramid backbone returns
PYRAMID_STRIDES = (4, 8, 16, 32)


class BackboneError(CrossformersError, ValueError):
    """A backbone request that cannot be honoured (bad ``out_indices``, arguments that conflict with a checkpoint)."""


def _load_classifier(source: str | os.PathLike | nn.Module, checkpoint_path: str | os.PathLike | None,
                     pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """The classifier ``source`` names, through the package's one loader (:func:`crossformers.engine.load_model`)."""
    return load_model(source, checkpoint_path, pretrained=pretrained, model_kwargs=kwargs or None).model


def dense_name(name: str) -> str | None:
    """The registered dense backbone for ``name``: ``name`` itself if it is one (``fcaformer_sh_l2``,
    ``crossformer_small_dense``), the classifier's dense counterpart ``<name>_dense`` if its family registers one
    (``crossformer_small`` -> ``crossformer_small_dense``), else None. The family files decide, by what they register
    (``register_name(..., dense=True)``)."""
    dense = list_models(dense=True)
    if name in dense:
        return name
    return f"{name}_dense" if f"{name}_dense" in dense else None


class DenseBody(nn.Module):
    """One of the authors' dense backbones (``crossformer_small_dense``, ``fcaformer_sh_l2``, ...) in the
    feature-extractor interface :class:`PyramidBackbone` reads, as timm's ``FeatureGetterNet`` gives it for a
    classifier: ``model`` (the backbone), ``feature_info`` (its returned maps), ``pretrained_cfg``.

    Input (B, C, H, W) -> the backbone's list of NCHW maps.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.feature_info = model.feature_info
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x)


def _needs_loader(source: str | os.PathLike | nn.Module) -> bool:
    """A module, one of our run directories, a converted folder or a weight file: anything but a plain model name."""
    if isinstance(source, nn.Module) or is_trained_checkpoint(source) or is_local_dir(source):
        return True
    path = Path(source)
    return path.suffix in WEIGHT_SUFFIXES or path.is_file()


def default_out_indices(model: nn.Module) -> tuple[int, ...]:
    """Feature indices a dense backbone uses by default: the model's own choice (protocol ``default_out_indices``:
    CrossViT, the last encoder of every branch), else every stage of a hierarchical model (strides 4-32) and the
    last block of a plain model."""
    own = getattr(model, "default_out_indices", None)
    if callable(own):
        return tuple(own())
    info = model.feature_info
    reductions = [i["reduction"] for i in info]
    if len(set(reductions)) == 1:
        return (len(info) - 1,)
    return tuple(range(len(info)))


def _wrap_features(model: nn.Module, out_indices: Sequence[int] | int | None) -> FeatureGetterNet:
    if hasattr(model, "dynamic_img_size"):
        model.dynamic_img_size = True  # CrossViT: dense features follow the input's geometry
    indices = default_out_indices(model) if out_indices is None else out_indices
    try:
        feats = FeatureGetterNet(model, out_indices=indices, output_fmt="NCHW")
    except (IndexError, AssertionError, ValueError) as e:
        raise BackboneError(f"out_indices {indices} do not fit this model ({len(model.feature_info)} features: "
                            f"indices 0..{len(model.feature_info) - 1}): {e}") from None
    feats.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    _drop_head(feats.model)
    return feats


def _drop_head(model: nn.Module) -> None:
    """Remove what is left of the classifier in a feature extractor (timm's pruning keeps e.g. the hybrid
    FcaFormer's head LayerNorm), so that every parameter of the backbone is used."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        model.head = nn.Identity()


def backbone(
    name: str | os.PathLike,
    checkpoint_path: str | os.PathLike | None = None,
    out_indices: Sequence[int] | int | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A crossformers model as a feature extractor (timm ``features_only``), with classification weights loaded.

    Args:
        name: a model name from ``crossformers.list_models()``, or one of our run/checkpoint directories.
        checkpoint_path: classification weights for a model name (ours, or the authors' layout, converted on load).
            They are loaded into the classifier before it becomes a feature extractor: the head is dropped
            explicitly, every other key must match (a missing or unexpected backbone key is an error).
        out_indices: which features to return (timm indices, see ``model.feature_info``); default
            :func:`default_out_indices` (the four stages of hierarchical models, the last encoder of each CrossViT
            branch, the last block of plain FcaFormer).
        pretrained: the authors' released weights (same strict loading).
        **kwargs: model arguments (``img_size``, ``drop_path_rate``, ``embed_dim``, ...); not allowed with a run
            directory.

    Returns:
        A ``timm.models.FeatureGetterNet``: ``model(images (B, C, H, W))`` -> list of NCHW maps
        ``(B, feature_info.channels()[i], ceil(H / r_i), ceil(W / r_i))`` with ``r_i = feature_info.reduction()[i]``
        pixels (CrossFormer's stem floors, as the official one, when H or W is not a multiple of 4). CrossViT runs
        with ``dynamic_img_size=True`` (its maps follow the input's geometry; the large branch's reduction is
        fractional, 16 * 240 / 224). ``pretrained_cfg`` (mean, std, ...) of the model is kept on it.

    Raises:
        UnknownModelError: unknown name. CheckpointError: weights that do not fit (message lists keys).
        BackboneError: bad ``out_indices``, or arguments together with a run directory.
    """
    if _needs_loader(name):
        model = _load_classifier(name, checkpoint_path, pretrained, kwargs)
        return _wrap_features(model.train(), out_indices)
    if out_indices is None and timm_name(str(name)) == "fcaformer_l0":
        out_indices = 1  # last block, whatever the depth
    extra = {} if out_indices is None else {"out_indices": out_indices}
    try:
        feats = create_model(str(name), pretrained=pretrained, checkpoint_path=checkpoint_path, features_only=True,
                             **extra, **kwargs)
    except (IndexError, AssertionError) as e:
        raise BackboneError(f"out_indices {out_indices} do not fit {name}: {e}") from None
    if not getattr(feats, "pretrained_cfg", None):
        feats.pretrained_cfg = dict(getattr(feats.model, "pretrained_cfg", None) or {})
    _drop_head(feats.model)
    return feats


class SimpleFeaturePyramid(nn.Module):
    """Maps at strides 4, 8, 16, 32 from the single-stride maps of a plain backbone (ViTDet's simple pyramid).

    The input maps (one per branch, strides ``in_strides``) are resampled bilinearly to the stride-16 grid
    (ceil(H / 16), ceil(W / 16)) when their stride differs, concatenated along channels and projected by a 1x1
    convolution + LayerNorm to ``dim`` channels. Then: stride 4 = two 2x2 stride-2 transposed convolutions (LayerNorm
    and GELU between), stride 8 = one, stride 16 = the map itself, stride 32 = 2x2 max pooling. Only the ``levels``
    asked for are built (0 = stride 4 ... 3 = stride 32), so that every parameter is used.

    Args:
        in_channels: channels of each input map.
        in_strides: stride (pixels, may be fractional) of each input map.
        dim: channels of the output maps (default: the sum of ``in_channels``).
        levels: which of the four strides to return.

    Input: list of (B, in_channels[i], h_i, w_i) and the image size (H, W). Output: list of (B, dim, h, w), one per
    level, with h = 4 * ceil(H / 16) / 2^level (ceil for stride 32).
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[float], dim: int | None = None,
                 levels: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        self.in_strides = tuple(float(s) for s in in_strides)
        self.levels = tuple(levels)
        total = int(sum(in_channels))
        dim = int(dim or total)
        self.dim = dim
        self.proj = nn.Sequential(nn.Conv2d(total, dim, 1, bias=False), LayerNorm2d(dim))
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), LayerNorm2d(dim), nn.GELU(),
                                 nn.ConvTranspose2d(dim, dim, 2, stride=2)) if 0 in self.levels else None
        self.up8 = nn.ConvTranspose2d(dim, dim, 2, stride=2) if 1 in self.levels else None
        self.down32 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, maps: list[torch.Tensor], image_size: tuple[int, int]) -> list[torch.Tensor]:
        H, W = image_size
        grid = (-(-H // 16), -(-W // 16))
        aligned = []
        for m, s in zip(maps, self.in_strides, strict=True):
            if s != 16.0:
                m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
            aligned.append(m)
        x = self.proj(torch.cat(aligned, dim=1) if len(aligned) > 1 else aligned[0])
        ops = {0: self.up4, 1: self.up8, 2: None, 3: self.down32}
        return [x if ops[lv] is None else ops[lv](x) for lv in self.levels]


class PyramidBackbone(nn.Module):
    """A crossformers feature extractor as NCHW maps at strides 4, 8, 16, 32 (:data:`PYRAMID_STRIDES`).

    Hierarchical models return their stage maps unchanged; plain models go through a :class:`SimpleFeaturePyramid`
    (new, randomly initialised layers: train them with the task head).

    Args:
        body: a feature extractor from :func:`backbone` (hierarchical: ``out_indices`` = ``levels``; plain: the
            default indices).
        levels: which strides to return (0 = 4 ... 3 = 32).
        neck_dim: channels of the simple feature pyramid (plain models).

    Attributes:
        body: the ``timm`` feature extractor (see :func:`backbone`); ``model`` is the underlying classifier model
            (``model.set_fused_attn(False)`` for MAC counting).
        neck: the :class:`SimpleFeaturePyramid` or None.
        out_channels: channels of the returned maps.
        strides: their strides (pixels).
        pretrained_cfg: the model's preprocessing (``mean``, ``std`` in 0..1 units).
        in_chans: input channels.

    Input (B, in_chans, H, W) -> list of (B, out_channels[i], ~H / s_i, ~W / s_i) (ceil for hierarchical models,
    4 * ceil(H / 16) / 2^level for plain ones). A 1-channel backbone (``fcaformer_nano``, any model with
    ``in_chans=1``) also takes (B, 3, H, W) and reads it as its channel mean: the dense data sets load every image as
    RGB, and a grey image stored as RGB becomes exactly its grey values.

    Raises:
        BackboneError: features that are neither the stages of a hierarchical model nor single-stride maps.
    """

    def __init__(self, body: nn.Module, levels: Sequence[int] = (0, 1, 2, 3), neck_dim: int | None = None):
        super().__init__()
        levels = tuple(int(lv) for lv in levels)
        if not levels or list(levels) != sorted(set(levels)) or any(lv not in range(4) for lv in levels):
            raise BackboneError(f"levels must be increasing indices among 0..3 (strides 4..32), got {levels}")
        self.body = body
        info = body.feature_info
        reductions = [float(r) for r in info.reduction()]
        channels = list(info.channels())
        model = body.model
        self.in_chans = int(getattr(model, "in_chans", 3))
        self.pretrained_cfg = dict(getattr(body, "pretrained_cfg", None) or getattr(model, "pretrained_cfg", {}) or {})
        self.levels = levels
        self.strides = tuple(PYRAMID_STRIDES[lv] for lv in levels)
        if reductions == [float(s) for s in self.strides]:
            self.neck = None
            self.out_channels = channels
        elif _isotropic(model) and all(r >= 8 for r in reductions):
            self.neck = SimpleFeaturePyramid(channels, reductions, neck_dim, levels)
            self.out_channels = [self.neck.dim] * len(levels)
        else:
            raise BackboneError(
                f"features at strides {reductions} are neither the stages {list(self.strides)} of a hierarchical "
                "model nor the single-stride maps of a plain one: use the default out_indices")

    @property
    def model(self) -> nn.Module:
        """The underlying classifier model (``set_fused_attn``, ``set_grad_checkpointing``, ...)."""
        return self.body.model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.in_chans == 1 and x.ndim == 4 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        maps = self.body(x)
        if self.neck is None:
            return list(maps)
        return self.neck(list(maps), (x.shape[-2], x.shape[-1]))


def _isotropic(model: nn.Module) -> bool:
    """True for plain models: every feature of one branch at one stride (CrossViT, plain FcaFormer)."""
    info = model.feature_info
    if getattr(model, "num_branches", None):
        return True
    return len({i["reduction"] for i in info}) == 1


def pyramid_backbone(
    name: str | os.PathLike,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool = False,
    levels: Sequence[int] = (0, 1, 2, 3),
    neck_dim: int | None = None,
    **kwargs: Any,
) -> PyramidBackbone:
    """A crossformers model as NCHW maps at strides 4, 8, 16 and 32, weights loaded as in :func:`backbone`.

    Args:
        name: model name or one of our run/checkpoint directories. A classifier name gives the classifier's features;
            one of the authors' dense backbones, named as registered (``crossformer_small_dense``,
            ``crossformer_pp_small_dense``, ``fcaformer_sh_l2``, ...: ``crossformers.list_models(dense=True)``),
            gives that backbone, whose weights may then also be the authors' mmdet/mmseg checkpoint.
        checkpoint_path: classification weights (head dropped explicitly, everything else strict); for a dense
            backbone as :func:`crossformers.dense.load_dense_weights`.
        pretrained: the authors' released weights.
        levels: which strides to return (0 = 4 ... 3 = 32); a hierarchical model returns exactly those stages (and
            runs no stage after the last), a plain one builds only those pyramid levels.
        neck_dim: channels of the simple feature pyramid of plain models (default: sum of branch channels).
        **kwargs: model arguments.

    Returns:
        :class:`PyramidBackbone` (``out_channels``: channels of the returned maps).

    Raises:
        as :func:`backbone`.
    """
    if not _needs_loader(name) and dense_name(str(name)) == str(name):
        # the authors' dense backbone, named explicitly: its maps are the pyramid (strides 4-32)
        kwargs["out_indices"] = tuple(levels)
        return PyramidBackbone(DenseBody(create_model(str(name), pretrained=pretrained, checkpoint_path=checkpoint_path,
                                                      **kwargs)), levels, neck_dim)
    body = backbone(name, checkpoint_path, None, pretrained, **kwargs)
    if not _isotropic(body.model) and tuple(levels) != tuple(range(len(body.feature_info))):
        cfg = body.pretrained_cfg  # same (already pruned) model, fewer outputs
        body = FeatureGetterNet(body.model, out_indices=tuple(levels), output_fmt="NCHW", prune=False)
        body.pretrained_cfg = cfg
    return PyramidBackbone(body, levels, neck_dim)


def feature_sizes(height: int, width: int, reductions: Sequence[float]) -> list[tuple[int, int]]:
    """Expected (h, w) of maps at ``reductions`` for a (height, width) image: ceil(size / r) (helper for checks)."""
    return [(math.ceil(height / r - 1e-9), math.ceil(width / r - 1e-9)) for r in reductions]
