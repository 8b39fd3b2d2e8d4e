"""The timm model API shared by our hierarchical models (FcaFormer hybrid, CrossFormer).

A subclass provides ``stem(x)`` (image -> first map), ``stages`` (an ``nn.Sequential`` of stages, each with a
``grad_checkpointing`` flag), ``norm`` (applied to the last stage's output, may be ``nn.Identity``), ``head`` (a timm
classifier head with ``fc`` and ``reset``), ``feature_info``, ``in_chans``, ``min_input_size`` and ``map_fmt`` (the
layout of its stage outputs, ``'NCHW'`` or ``'NHWC'``).
"""
from __future__ import annotations

import torch
from timm.models._features import feature_take_indices
from torch import nn

from ..checkpoint import guess_family
from ..errors import CheckpointError
from ..layers.bias_cache import clear_caches, set_bias_cache, tensor_versions
from ..layers.linear import LinearKernelMixin
from ._helpers import check_input

__all__ = ["HierarchicalModel", "OfficialLayoutHint", "DenseBackboneHead", "set_fused_attn", "clear_caches", "set_bias_cache", "set_channels_last", "prefers_channels_last",
           "tensor_versions"]


def set_fused_attn(model: nn.Module, enable: bool = True) -> None:
    """Switch every attention module of ``model`` (those with a ``fused_attn`` flag) between fused SDPA and the
    explicit softmax path (used for attention maps and for MAC counting)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = enable


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether channels-last memory speeds ``model`` up: any module of it declares ``prefers_channels_last = True``
    (the family protocol; measured, docs/profiling.md: the hybrid FcaFormer with its conv stem, ConvNeXt stages and
    depthwise convolutions on token maps; not CrossFormer, whose maps are channels-last tokens already, nor
    CrossViT, with one patch convolution)."""
    return any(getattr(m, "prefers_channels_last", False) is True for m in model.modules())


def set_channels_last(model: nn.Module, enable: bool = True) -> nn.Module:
    """Run the convolutions of ``model`` channels-last (NHWC memory) or back in the default layout.

    Converts the 4-D parameters/buffers (convolution weights) to the memory format and makes every
    :class:`HierarchicalModel` inside convert its input images, so callers keep passing ordinary NCHW tensors.
    Results are equal within float rounding. Returns ``model``.
    """
    model.to(memory_format=torch.channels_last if enable else torch.contiguous_format)
    for m in model.modules():
        if isinstance(m, HierarchicalModel):
            m.channels_last = enable
    return model


class OfficialLayoutHint:
    """``load_state_dict`` that converts nothing (no hook) but, when a state dict in another layout fails to load,
    says how to load it instead of listing hundreds of keys: ``crossformers.load_checkpoint(model, sd)`` or the
    model's ``convert_state_dict`` (the family's checkpoint filter, run once)."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as e:
            family = guess_family(state_dict)
            if family is None or "crossformers layout" in family:
                raise
            raise CheckpointError(
                f"this state dict is in the {family}, which load_state_dict does not convert: use "
                "crossformers.load_checkpoint(model, state_dict) (or model.convert_state_dict(state_dict) first); "
                "through timm, pass the file as timm.create_model(name, pretrained=True, "
                "pretrained_cfg_overlay=dict(file=PATH))") from e


class DenseBackboneHead:
    """timm's classifier API for a dense backbone, which has none: ``get_classifier`` is the identity head and
    ``reset_classifier`` accepts only ``num_classes=0``; ``classifier_model`` names the model to use instead."""

    classifier_model = "the classification model"

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A dense backbone has no classifier: only ``num_classes=0`` is accepted.

        Raises:
            ValueError: ``num_classes`` > 0.
        """
        if num_classes:
            raise ValueError(f"a dense backbone has no classifier: use {self.classifier_model} for num_classes > 0")


class HierarchicalModel(OfficialLayoutHint, LinearKernelMixin, nn.Module):
    """timm API for a 4-stage pyramid: intermediates at strides 4-32, features, head, checkpointing; and
    ``linear_kernel`` (``"onednn"`` / ``"native"``, settable; see :class:`~crossformers.layers.linear.LinearKernelMixin`)."""

    map_fmt: str = "NCHW"
    channels_last: bool = False  # convert input images to channels-last memory (see set_channels_last)

    @property
    def output_fmt(self) -> str:
        """Layout of the ``forward_features`` output, ``map_fmt`` (timm's attribute: Swin declares ``'NHWC'``)."""
        return self.map_fmt

    def _to_fmt(self, x: torch.Tensor, fmt: str) -> torch.Tensor:
        if fmt == self.map_fmt:
            return x
        return x.permute(0, 3, 1, 2) if fmt == "NCHW" else x.permute(0, 2, 3, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            name = (getattr(self, "pretrained_cfg", None) or {}).get("architecture") or type(self).__name__
            check_input(x, self.in_chans, self.min_input_size, name)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stem(x)

    def set_fused_attn(self, enable: bool = True) -> None:
        """Fused SDPA attention (default) or the explicit softmax path (analysis, MAC counting)."""
        set_fused_attn(self, enable)

    def set_bias_cache(self, enable: bool = True) -> None:
        """Cache position biases in inference (default) or recompute them in every forward."""
        set_bias_cache(self, enable)

    def clear_cache(self) -> None:
        """Drop cached position biases (done automatically by ``train()`` and ``load_state_dict``)."""
        clear_caches(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass to save activation memory."""
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """Replace the classifier by a freshly initialised one for ``num_classes`` (0 = identity); ``reset_other``
        also removes the head's norm / pre-logits layers where it has them (timm's argument)."""
        self.num_classes = num_classes
        ref = next(self.parameters())  # the new classifier follows the model's device and dtype
        self.head.reset(num_classes, global_pool, reset_other=reset_other, in_features=self.num_features,
                        device=ref.device, dtype=ref.dtype)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of chosen stages (timm API).

        Args:
            x: images (B, C, H, W).
            indices: stages to return (int n = the last n; None = all).
            norm: apply the final norm to the last stage's map.
            stop_early: stop after the last requested stage.
            output_fmt: 'NCHW' (default) or 'NHWC'.
            intermediates_only: return only the list.

        Returns:
            Maps at strides 4, 8, 16, 32 (of the chosen stages); unless ``intermediates_only``, a tuple
            (final features as from ``forward_features``, maps).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        x = self._embed(x)
        out = []
        last = len(self.stages) - 1
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                out.append(self._to_fmt(self.norm(x) if norm and i == last else x, output_fmt))
        if intermediates_only:
            return out
        return self.norm(x), out

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last requested one (timm API, as timm's ConvNeXt). When stages go, the final
        norm and the head (sized for the last stage) go too and ``num_features`` becomes the last tap's width; the
        head is pruned to pooling only (its norm and pre-logits removed) unless it is kept at the last index."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "", reset_other=True)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final map at stride 32 (layout ``map_fmt``), after the final norm."""
        return self.norm(self.stages(self._embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final map -> logits (B, num_classes), or pooled features (B, num_features) with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
