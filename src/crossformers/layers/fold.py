"""Folding inference-time affine maps into the layer in front of them (exact up to float rounding).

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, and a
layer scale is a per-channel factor; both fold into the convolution or linear layer that feeds them. Computed in
float64, stored in the layer's dtype. Used by :func:`crossformers.inference.fuse` and by the families' own
``fuse()`` methods.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_conv_bn", "scale_output_channels"]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``conv`` then computes ``bn(conv(x))`` (weight rescaled per
    output channel, bias added or updated)."""
    w = conv.weight
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    conv.weight.copy_((w.double() * scale.reshape(-1, 1, 1, 1)).to(w.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad)
    else:
        conv.bias.copy_(shift.to(conv.bias.dtype))


@torch.no_grad()
def scale_output_channels(layer: nn.Module, gamma: torch.Tensor) -> None:
    """Multiply the outputs of a Linear / 1x1-conv ``layer`` by ``gamma`` (out_features,) per output channel, in place
    (weight and bias): ``layer(x) * gamma`` becomes ``layer(x)``."""
    g = gamma.double()
    w = layer.weight
    layer.weight.copy_((w.double() * g.reshape(-1, *[1] * (w.ndim - 1))).to(w.dtype))
    if layer.bias is not None:
        layer.bias.copy_((layer.bias.double() * g).to(layer.bias.dtype))
