"""Folding inference-time affine layers into the layers before them: :func:`fuse`.

In eval mode a BatchNorm is an affine map per channel and a layer scale is a per-channel factor; both fold exactly
(up to float rounding) into the convolution or linear layer that feeds them (:mod:`crossformers.layers.fold`). The
generic part (conv-BN pairs: timm's ``ConvNormAct``, ``Conv2d`` then ``BatchNorm2d`` in a ``Sequential``) is done
here; what only a family knows (where its layer scales sit) is each module's own ``fuse()`` method, called on every
module that has one, as timm's ``reparameterize_model`` does. FcaFormer has conv-BN pairs in its stem, every
downsampling and every TME enhancement, and layer scales after every attention/FFN (Fca blocks) and ConvNeXt MLP;
CrossFormer and CrossViT have neither.
"""
from __future__ import annotations

import copy

import torch
from timm.layers import ConvNormAct
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

from ..layers.bias_cache import clear_caches
from ..layers.fold import fold_conv_bn

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


def _fuse_modules(model: nn.Module) -> int:
    """Call ``fuse()`` on every submodule that defines one (the families' layer-scale folding); returns the count."""
    n = 0
    for m in list(model.modules()):
        own = getattr(type(m), "fuse", None)
        if m is not model and callable(own):
            m.fuse()
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
    * with ``layer_scale``: every submodule's own ``fuse()`` (FcaFormer: the layer scales of Fca and ConvNeXt blocks,
      folded into the projection / second MLP layer in front of them).

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
        _fuse_modules(model)
    clear_caches(model)
    return model
