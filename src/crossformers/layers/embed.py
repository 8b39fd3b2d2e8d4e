"""Cross-scale embedding layer (CEL; CrossFormer, ICLR 2022, Sec. 3.1, Fig. 2).

Several convolutions with the same stride and different kernel sizes sample patches of several scales around the same
centre; their outputs are concatenated along channels. Larger kernels get fewer channels (the i-th of n kernels gets
out_dim / 2^(i+1) channels, the last one out_dim / 2^(n-1)), so the cost stays close to a single conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

__all__ = ["CrossScaleEmbedding", "cel_channels", "conv_output_size", "pad_to_multiple"]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length along one axis of a convolution (or patch embedding) over ``size`` pixels/tokens:
    ``floor((size + 2 * padding - kernel) / stride) + 1``, PyTorch's ``Conv2d`` rule without dilation."""
    return (size + 2 * padding - kernel) // stride + 1


def cel_channels(out_dim: int, num_kernels: int) -> list[int]:
    """Channels of each kernel of a CEL with ``num_kernels`` kernels producing ``out_dim`` channels."""
    dims = [out_dim // 2 ** (i + 1) for i in range(num_kernels - 1)]
    return dims + [out_dim // 2 ** (num_kernels - 1)]


@register_notrace_function  # size-dependent: an FX leaf
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom/right of (B, C, H, W) ``x`` to H, W multiples of ``multiple`` (``x`` itself if they are)."""
    ph, pw = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x


class CrossScaleEmbedding(nn.Module):
    """CEL: parallel convolutions of kernel sizes ``kernel_sizes`` and one stride, concatenated (paper Sec. 3.1).

    Used as the stem (stride 4, kernels 4/8/16/32, LayerNorm after) and as patch merging between stages (stride 2,
    kernels 2/4, LayerNorm before). Each conv pads (k - stride) / 2 so that all scales share their centres.

    Args:
        in_chs: input channels.
        out_dim: output channels (sum over kernels, split by :func:`cel_channels`).
        kernel_sizes: kernel sizes, smallest first.
        stride: common stride.
        norm_layer: LayerNorm class (or None) applied on channels.
        norm_first: apply the norm to the input (patch merging) instead of the output (stem).
        input_fmt: 'NCHW' (images) or 'NHWC' (token maps).
        pad_to_stride: zero-pad the bottom/right of an input whose size is not a multiple of the stride, so the
            output is ceil(H / stride) (the official merging asserts even sizes; this extends it to odd ones).
            Without it the output is floor(H / stride), as the official stem.

    Output (B, H', W', out_dim), channels last.
    """

    def __init__(self, in_chs: int, out_dim: int, kernel_sizes: tuple[int, ...] | list[int], stride: int,
                 norm_layer: type[nn.Module] | None = None, norm_first: bool = False, input_fmt: str = "NCHW",
                 pad_to_stride: bool = False):
        super().__init__()
        self.stride = stride
        self.norm_first = norm_first
        self.input_fmt = input_fmt
        self.pad_to_stride = pad_to_stride
        self.projs = nn.ModuleList([
            nn.Conv2d(in_chs, dim, kernel_size=k, stride=stride, padding=(k - stride) // 2)
            for k, dim in zip(kernel_sizes, cel_channels(out_dim, len(kernel_sizes)), strict=True)
        ])
        self.norm = norm_layer(in_chs if norm_first else out_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = self.norm(x) if self.input_fmt == "NHWC" else self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        if self.pad_to_stride:
            x = pad_to_multiple(x, self.stride)
        x = torch.cat([proj(x) for proj in self.projs], dim=1).permute(0, 2, 3, 1)
        return x if self.norm_first else self.norm(x)
