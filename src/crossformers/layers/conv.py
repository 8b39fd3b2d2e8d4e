"""Depthwise convolutions that stay in fp32 while a model trains under CPU bf16 autocast.

Under ``torch.autocast("cpu", torch.bfloat16)`` PyTorch runs every convolution in bf16. For depthwise convolutions
(``groups == in_channels``) the CPU kernels' bf16 *backward* is far slower than their fp32 one: on a 2-core Intel Xeon
with AMX (torch 2.14.1), forward + backward of FcaFormer's depthwise convolutions at batch 128 took 1.4-10x the fp32
time (the 3x3 stride-2 stem convolution 23 ms against 2.5 ms), which made a whole ``--amp`` training step of
``fcaformer_nano`` 1.47x *slower* than fp32 (``docs/benchmarks/amp_training_amx.md``). Their forward pass alone is
about as fast in bf16 as in fp32.

:class:`AutocastDepthwiseConv2d` is an ``nn.Conv2d`` that, only while CPU autocast is on and gradients are recorded,
runs itself in fp32 (its input cast up, autocast off for the call); its output is then fp32, which the next
autocast op casts as it needs. Everywhere else (fp32 training, inference, a model cast to bf16, CUDA) it is the
plain convolution. Parameters, state dict and class name in checkpoints are unchanged: :func:`fp32_depthwise_autocast`
switches a model's depthwise ``nn.Conv2d`` modules to it by changing their class, as
:func:`~crossformers.layers.linear.set_onednn_linear` does.
"""
from __future__ import annotations

import torch
from timm.layers import register_notrace_module
from torch import nn

__all__ = ["AutocastDepthwiseConv2d", "fp32_depthwise_autocast", "is_depthwise"]


def is_depthwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a depthwise 2-D convolution: ``groups == in_channels > 1`` (any channel multiplier)."""
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


@register_notrace_module  # branches on autocast and grad mode: an FX leaf
class AutocastDepthwiseConv2d(nn.Conv2d):
    """Depthwise ``nn.Conv2d`` computed in fp32 during CPU bf16-autocast training (see the module docs).

    Input (B, C, H, W) of any float dtype; output (B, C_out, H', W'), fp32 when the fp32 path is taken.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def fp32_depthwise_autocast(model: nn.Module, enable: bool = True) -> int:
    """Switch every depthwise ``nn.Conv2d`` of ``model`` (exactly that class) to :class:`AutocastDepthwiseConv2d`,
    or back with ``enable=False``. Returns the number of modules switched. Parameters and state dict are unchanged."""
    old, new = (nn.Conv2d, AutocastDepthwiseConv2d) if enable else (AutocastDepthwiseConv2d, nn.Conv2d)
    n = 0
    for m in model.modules():
        if type(m) is old and is_depthwise(m):
            m.__class__ = new
            n += 1
    return n
