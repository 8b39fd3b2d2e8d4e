"""One call for the fast inference set-up of a model: :func:`optimize_for_inference`."""
from __future__ import annotations

import copy

from torch import nn

from ..layers.bias_cache import set_bias_cache
from ..layers.linear import onednn_for_inference, onednn_for_training, set_onednn_linear, set_packed_weights
from ..models._base import prefers_channels_last, set_channels_last, set_fused_attn
from .folding import fuse

__all__ = ["optimize_for_inference", "optimize_for_training", "prefers_channels_last"]


def optimize_for_inference(model: nn.Module, fold: bool = True, onednn_linear: bool | None = None,
                           channels_last: bool | None = None, inplace: bool = True,
                           pack_weights: bool = True) -> nn.Module:
    """Eval mode with every fast path on: fused attention, cached position biases, BatchNorm/layer-scale folding,
    oneDNN linear layers with packed weights, and channels-last memory where it helps.

    Each path is proven equal to the plain path within 1e-4 on the parity fixtures
    (tests/profiling/test_fast_paths.py). The model
    stays an ordinary module (same outputs; ``torch.compile`` still applies on top).

    Args:
        model: a crossformers model (other modules work too: the paths they lack are skipped).
        fold: :func:`crossformers.inference.fuse` (changes the state dict: BatchNorms disappear).
        onednn_linear: :func:`crossformers.layers.linear.set_onednn_linear`; None =
            :func:`crossformers.layers.linear.onednn_for_inference` (this machine's calibration, else the
            AVX-512 rule).
        pack_weights: with ``onednn_linear``, :func:`crossformers.layers.linear.set_packed_weights`: inference under
            ``torch.no_grad()``/``inference_mode()`` reuses oneDNN-blocked weight copies (faster products; one extra
            fp32 copy of the linear weights in memory).
        channels_last: True/False, or None for :func:`prefers_channels_last`.
        inplace: change ``model`` (default) or a deep copy.

    Returns:
        The optimized model in eval mode.
    """
    if not inplace:
        model = copy.deepcopy(model)
    if onednn_linear is None:
        onednn_linear = onednn_for_inference(model)
    model.eval()
    set_fused_attn(model, True)
    set_bias_cache(model, True)
    if fold:
        fuse(model)
    optimize_for_training(model, onednn_linear, channels_last)  # the paths shared with training
    if onednn_linear and pack_weights:
        set_packed_weights(model, True)
    return model


def optimize_for_training(model: nn.Module, onednn_linear: bool | None = None,
                          channels_last: bool | None = None) -> nn.Module:
    """The fast paths that also apply in training, set in place: the faster linear path (oneDNN for the forward and
    both backward products, or PyTorch's own MKL) and channels-last memory where it helps. The state dict and the
    training mode are unchanged, so checkpoints stay interchangeable. Returns ``model``.

    Args:
        model: a crossformers model (other modules work too).
        onednn_linear: True/False (:func:`crossformers.layers.linear.set_onednn_linear` on or off), or None for
            :func:`crossformers.layers.linear.onednn_for_training`: this machine's calibrated training step
            (``crossformers profile --calibrate-linear``), else the default for new models.
        channels_last: True/False, or None for :func:`prefers_channels_last`.
    """
    if onednn_linear is None:
        onednn_linear = onednn_for_training(model)
    set_onednn_linear(model, onednn_linear)
    if channels_last is None:
        channels_last = prefers_channels_last(model)
    if channels_last:
        set_channels_last(model, True)
    return model
