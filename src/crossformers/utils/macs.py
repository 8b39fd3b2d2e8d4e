"""Counting multiply-accumulates (MACs) with ``torch.utils.flop_counter``.

One MAC is one multiply and one add, i.e. 2 FLOPs: every figure here is the flop counter's FLOPs / 2 (the papers
write "FLOPs" for MACs). Only matrix products and convolutions are counted (norms, activations, softmax and
element-wise ops are not), as in the papers and in ``docs/reference.md`` (the official code's baseline).

The fused CPU attention kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``) has no formula in
``torch.utils.flop_counter``, so it would silently count nothing. Two safeguards: attention modules with a
``fused_attn`` flag are switched to the explicit softmax path while counting (and restored), and a formula for the
CPU kernel is registered as well, so that foreign models that call ``F.scaled_dot_product_attention`` are counted
exactly too. The same holds for oneDNN's linear (``mkldnn::_linear_pointwise``, used by
:func:`crossformers.layers.linear.set_onednn_linear`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_call_macs", "explicit_attention_mode", "input_shape_of"]


def _onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``mkldnn::_linear_pointwise`` (the oneDNN linear of :mod:`crossformers.layers.linear`)."""
    rows = 1
    for d in x_shape[:-1]:
        rows *= d
    return 2 * rows * x_shape[-1] * w_shape[0]


def _extra_formulas() -> dict:
    """Flop formulas for kernels the flop counter does not know: the fused CPU attention kernel and oneDNN's
    linear (both would otherwise count nothing)."""
    out = {}
    formula = getattr(flop_counter, "sdpa_flop", None)
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if formula is not None and op is not None:
        out[op] = formula
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        out[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flop
    return out


@contextlib.contextmanager
def explicit_attention_mode(model: nn.Module) -> Iterator[None]:
    """Switch every attention module of ``model`` to the explicit softmax path inside the block, restoring each
    module's own ``fused_attn`` flag after it (works for our models and for timm models with ``fused_attn``)."""
    saved = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield
    finally:
        for m, flag in saved:
            m.fused_attn = flag


def input_shape_of(input_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(B, C, H, W) from ``(C, H, W)`` (batch 1) or ``(B, C, H, W)``.

    Raises:
        ValueError: not 3 or 4 positive integers.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W) with positive sizes, got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of one forward pass of ``model`` on a zero input of ``input_shape``.

    Runs in eval mode under ``torch.no_grad()`` on the model's device and dtype, with attention on the explicit path
    (see the module docs); the model's mode and attention flags are restored afterwards.

    Args:
        model: any ``nn.Module`` taking one image batch (not a ``torch.compile`` wrapper: pass the original module).
        input_shape: ``(C, H, W)`` (one image) or ``(B, C, H, W)``, in pixels.

    Returns:
        ``(total, per_module)``: total MACs (FLOPs / 2, an exact integer) for the whole batch, and the MACs of every
        module that did any, inclusive of its children, keyed by qualified name as in ``model.named_modules()``
        (``""`` is the whole model). Modules called several times are summed.
    """
    shape = input_shape_of(input_shape)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return count_call_macs(model, torch.zeros(shape, device=device, dtype=dtype))


def count_call_macs(model: nn.Module, *inputs: Any) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of ``model(*inputs)`` (e.g. a detector on a list of images), counted as
    :func:`count_macs` does: eval mode, no gradients, explicit attention; mode and flags restored.

    Returns:
        ``(total, per_module)`` as :func:`count_macs`.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    try:
        with explicit_attention_mode(model), torch.no_grad(), counter:
            model(*inputs)
    finally:
        model.train(was_training)
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        if name == root:
            key = ""
        elif name.startswith(root + "."):
            key = name[len(root) + 1:]
        else:  # pragma: no cover - names are always rooted at the model's class
            key = name
        flops = int(sum(ops.values()))
        if flops:
            per_module[key] = per_module.get(key, 0) + flops // 2
    total = int(counter.get_total_flops()) // 2
    if total:
        per_module[""] = total
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    per_module = dict(sorted(per_module.items(), key=lambda kv: order.get(kv[0], len(order))))
    return total, per_module
