"""Folding inference-time affine layers into the layers before them: :func:`fuse`.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, and a
layer scale is a per-channel factor; both fold exactly (up to float rounding) into the convolution or linear layer
that feeds them. FcaFormer has conv-BN pairs in its stem, every downsampling and every TME enhancement, and layer
scales after every attention/FFN (Fca blocks) and ConvNeXt MLP; CrossFormer and CrossViT have neither.
"""
from __future__ import annotations

import copy

import torch
from timm.layers import ConvNormAct, LayerScale
from timm.layers.norm_act import BatchNormAct2d
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from ..models._base import clear_caches
from ..models.fcaformer import FcaBlock

__all__ = ["fuse", "fold_conv_bn", "FoldedNormAct"]


class FoldedNormAct(nn.Module):
    """What remains of timm's ``BatchNormAct2d`` after its BatchNorm is folded into the conv: dropout, activation."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _foldable(bn: nn.Module) -> bool:
    return (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None
            and bn.running_var is not None)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``conv`` then computes ``bn(conv(x))`` (weight rescaled per
    output channel, bias added or updated); computed in float64, stored in the conv's dtype."""
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
def _scale_output(layer: nn.Module, gamma: torch.Tensor) -> None:
    """Multiply the outputs of a Linear / 1x1-conv layer by ``gamma`` per output channel (weight and bias)."""
    g = gamma.double()
    w = layer.weight
    layer.weight.copy_((w.double() * g.reshape(-1, *[1] * (w.ndim - 1))).to(w.dtype))
    if layer.bias is not None:
        layer.bias.copy_((layer.bias.double() * g).to(layer.bias.dtype))


def _fold_layer_scales(model: nn.Module) -> int:
    """Fold layer scales into the layer in front of them (FcaBlock ls1/ls2, ConvNeXt gamma); returns the count."""
    n = 0
    for m in list(model.modules()):
        if isinstance(m, FcaBlock):
            for ls_name, layer in (("ls1", m.proj), ("ls2", getattr(m.mlp, "fc2", None))):
                ls = getattr(m, ls_name)
                if isinstance(ls, LayerScale) and isinstance(layer, (nn.Linear, nn.Conv2d)):
                    _scale_output(layer, ls.gamma)
                    setattr(m, ls_name, nn.Identity())
                    n += 1
        elif isinstance(m, ConvNeXtBlock) and getattr(m, "gamma", None) is not None:
            fc2 = getattr(m.mlp, "fc2", None)
            if isinstance(fc2, (nn.Linear, nn.Conv2d)):
                _scale_output(fc2, m.gamma)
                m.gamma = None
                n += 1
    return n


def _fold_conv_bns(model: nn.Module) -> int:
    n = 0
    for m in list(model.modules()):
        if isinstance(m, ConvNormAct) and isinstance(m.conv, nn.Conv2d) and _foldable(m.bn):
            fold_conv_bn(m.conv, m.bn)
            m.bn = FoldedNormAct(m.bn.drop, m.bn.act) if isinstance(m.bn, BatchNormAct2d) else nn.Identity()
            n += 1
        elif isinstance(m, nn.Sequential):  # plain Conv2d -> BatchNorm2d pairs (e.g. the official Conv2d_BN)
            names = list(m._modules)
            for a, b in zip(names, names[1:], strict=False):
                conv, bn = m._modules[a], m._modules[b]
                if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and _foldable(bn):
                    fold_conv_bn(conv, bn)
                    m._modules[b] = nn.Identity()
                    n += 1
    return n


def fuse(model: nn.Module, layer_scale: bool = True, inplace: bool = True) -> nn.Module:
    """Fold BatchNorms (and layer scales) into the preceding layers for faster inference.

    * every timm ``ConvNormAct`` (FcaFormer stem, downsampling, TME enhancement): the BatchNorm is folded into the
      convolution, which gains a bias; the activation stays;
    * every ``nn.Conv2d`` directly followed by an ``nn.BatchNorm2d`` in an ``nn.Sequential``;
    * with ``layer_scale``: the layer scales of Fca blocks and ConvNeXt blocks, folded into the projection / second
      MLP layer in front of them.

    The result computes the same function as the original in eval mode (within float rounding; the tests check
    1e-4 on the parity fixtures). It is meant for inference: the folded BatchNorms no longer exist, so training it
    would be training a different parametrisation, and its state dict has other keys.

    Args:
        model: any module.
        layer_scale: also fold layer scales.
        inplace: modify ``model`` (default) or a deep copy.

    Returns:
        The fused model, in eval mode, with cached position biases cleared.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    _fold_conv_bns(model)
    if layer_scale:
        _fold_layer_scales(model)
    clear_caches(model)
    return model
