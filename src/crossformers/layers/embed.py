"""Cross-scale embedding layer (CEL; CrossFormer, ICLR 2022, Sec. 3.1, Fig. 2).

Several convolutions with the same stride and different kernel sizes sample patches of several scales around the same
centre; their outputs are concatenated along channels. Larger kernels get fewer channels (the i-th of n kernels gets
out_dim / 2^(i+1) channels, the last one out_dim / 2^(n-1)), so the cost stays close to a single conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

from .bias_cache import InferenceCache
from .tracing import tool_is_running

__all__ = ["CrossScaleEmbedding", "cel_channels", "conv_output_size", "pad_to_multiple", "WideKernelConv2d",
           "TokenMapConv2d",
           "WIDE_KERNEL_FACTOR", "images_channels_last",
           "STEM_CHANNELS_LAST", "PACK_MERGE_WEIGHTS"]

#: CEL kernels at least this many strides wide are :class:`WideKernelConv2d` (weight gradient through space-to-depth)
WIDE_KERNEL_FACTOR = 4
#: the CEL stem convolves images channels-last on the CPU (:func:`images_channels_last`); False: as given
STEM_CHANNELS_LAST = True
#: :class:`TokenMapConv2d` keeps fp32 inference weights packed in oneDNN's layout; False: a channels-last copy
PACK_MERGE_WEIGHTS = True


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


@register_notrace_function  # branches on the device: an FX leaf
def images_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in channels-last memory on the CPU (the CEL stem's faster convolution, see
    :class:`CrossScaleEmbedding`); ``x`` itself on other devices and while a tool runs the model."""
    if not STEM_CHANNELS_LAST or x.device.type != "cpu" or tool_is_running():
        return x
    return x.contiguous(memory_format=torch.channels_last)


def _space_to_depth(x: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """(B, C, H, W) zero-padded by ``padding`` on every side, cropped to multiples of ``stride`` and unshuffled:
    (B, C * stride^2, (H + 2p) // stride, (W + 2p) // stride), channel ``c * stride^2 + ry * stride + rx`` holding
    the pixels at row offset ``ry`` and column offset ``rx`` of each stride x stride cell."""
    x = F.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    return F.pixel_unshuffle(x[..., : h - h % stride, : w - w % stride], stride)


class _WideKernelConv(torch.autograd.Function):
    """Conv2d (stride s, padding p, kernel k a multiple of s) whose weight gradient is computed as a stride-1
    convolution of kernel k / s over the space-to-depth input (:func:`_space_to_depth`). The two are the same sums
    in another order: output pixel i covers input rows s*i - p + ky, and with ky = s*qy + ry that is row i + qy of
    unshuffled channel ry. The forward pass is the plain convolution."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        o, c, k, _ = weight.shape
        q = k // s
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(grad, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                                     [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            w2 = weight.reshape(o, c, q, s, q, s).permute(0, 1, 3, 5, 2, 4).reshape(o, c * s * s, q, q)
            gw2 = torch.ops.aten.convolution_backward(grad, _space_to_depth(x, s, p), w2, None, [1, 1], [0, 0], [1, 1],
                                                      False, [0, 0], 1, [False, True, False])[1]
            gw = gw2.reshape(o, c, s, s, q, q).permute(0, 1, 4, 2, 5, 3).reshape(o, c, k, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None


@register_notrace_module  # branches on the input's device and dtype: an FX leaf
class WideKernelConv2d(nn.Conv2d):
    """``nn.Conv2d`` for CEL kernels at least :data:`WIDE_KERNEL_FACTOR` strides wide (the stem's 16x16 and 32x32
    kernels at stride 4) whose weight gradient, in CPU fp32 training, goes through space-to-depth.

    PyTorch's CPU weight gradient of such wide, strided kernels is slow: for the 32x32 stride-4 stem kernel at batch
    8 (2-core Intel Xeon, torch 2.14.1) forward + backward took 69 ms, against 17 ms with this gradient (16x16: 15 ->
    6 ms; narrower kernels gain nothing, ``docs/profiling.md``). The forward pass is the plain convolution; the
    weight gradient equals the plain one within float rounding (its sums run in another order). Without gradients,
    under autocast, on CUDA, while a tool runs the model (:func:`~crossformers.layers.tracing.tool_is_running`:
    compilers, exporters, tracers, dispatch modes), and for other dtypes it is the plain ``nn.Conv2d``. Parameters and state dict are those of ``nn.Conv2d``.

    Input (B, C, H, W); output (B, O, H', W').

    Raises:
        ValueError: at construction, for a kernel that is not square, not a multiple of the stride, or a
            convolution with groups, dilation or non-zero padding modes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k, st, pad = self.kernel_size, self.stride, self.padding
        if (k[0] != k[1] or st[0] != st[1] or k[0] % st[0] or not isinstance(pad, tuple) or pad[0] != pad[1]
                or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros"):
            raise ValueError(f"WideKernelConv2d needs a square kernel that is a multiple of an equal stride, equal "
                             f"padding, no groups or dilation (got kernel {k}, stride {st}, padding {pad}, groups "
                             f"{self.groups}, dilation {self.dilation}): use nn.Conv2d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or not torch.is_grad_enabled()
                or not self.weight.requires_grad or torch.is_autocast_enabled("cpu") or tool_is_running()):
            return super().forward(x)
        return _WideKernelConv.apply(x, self.weight, self.bias, self.stride[0], self.padding[0])


@register_notrace_module  # keeps a cache and branches on grad mode: an FX leaf
class TokenMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` for a channels-last token map (a (B, H, W, C) tensor seen as (B, C, H, W) through
    ``permute(0, 3, 1, 2)``): CrossFormer's patch merging.

    On such input PyTorch's CPU convolution converts its weight on every call: to channels-last (a full copy of the
    weight: 1 ms per call for CrossFormer-T's last 256 -> 256 4x4 merge on a 2-core Intel Xeon), and then oneDNN
    reorders it into its own blocked layout. In inference (eval mode, no gradient recorded, CPU tensors) this layer
    keeps the converted weight in its :class:`~crossformers.layers.bias_cache.InferenceCache` and reuses it until
    the weight changes (its storage or version counter). In fp32 that is the weight in oneDNN's blocked layout,
    packed once per input size and run by ``torch.ops.mkldnn._convolution_pointwise`` (on a 2-core AVX2 AMD EPYC
    Zen 3 the 256 -> 256 4x4 merge took 0.79 ms against 2.1 ms with a channels-last copy); in other dtypes, without
    oneDNN, or with ``crossformers.layers.embed.PACK_MERGE_WEIGHTS = False`` it is the channels-last copy
    (CrossFormer-T / S batch 1 3-4 % faster on the Intel Xeon). Outputs are bit-identical to the plain
    convolution's (``docs/profiling.md``). The kept weight costs its size again in memory; ``train()``,
    ``load_state_dict`` and ``set_bias_cache`` drop it and it is never saved or pickled. Parameters and state dict
    are those of ``nn.Conv2d``; training, CUDA, contiguous inputs, and tools running the model (compilers,
    exporters, tracers) take the plain convolution.

    Input (B, C, H, W) (any strides); output (B, O, H', W').
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_cache = InferenceCache()  # the project's inference cache: no state-dict keys, never pickled

    def _packed_weight(self, shape: torch.Size) -> torch.Tensor:
        """The weight in oneDNN's blocked layout for inputs of ``shape`` (oneDNN picks the layout by the input
        size: packed for another size, CrossFormer-T's first 64 -> 64 4x4 merge took 3.0 ms against 0.57 ms). Only
        the latest input size is kept, so varying sizes (detection) cost one packed copy, not one per size."""
        self.weight_cache.discard(lambda key: isinstance(key, tuple) and key[0] == "onednn")
        return torch._C._nn.mkldnn_reorder_conv2d_weight(self.weight.detach().to_mkldnn(), list(self.padding),
                                                         list(self.stride), list(self.dilation), self.groups,
                                                         list(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type != "cpu" or x.dim() != 4 or x.is_contiguous() or not self.weight_cache.usable()
                or not x.is_contiguous(memory_format=torch.channels_last) or tool_is_running()):
            return super().forward(x)  # training / gradients: the plain convolution (the copy must not be detached)
        if (PACK_MERGE_WEIGHTS and x.dtype == w.dtype == torch.float32 and torch.backends.mkldnn.is_available()
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            packed = self.weight_cache.get(("onednn", tuple(x.shape)), [w], lambda: self._packed_weight(x.shape))
            return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, list(self.padding), list(self.stride),
                                                           list(self.dilation), self.groups, "none", [], "")
        weight = self.weight_cache.get("channels_last", [w],
                                       lambda: w.detach().contiguous(memory_format=torch.channels_last))
        return self._conv_forward(x, weight, self.bias)


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

    On the CPU, images (``input_fmt='NCHW'``, the stem) are convolved in channels-last memory. PyTorch's CPU
    convolution of a contiguous 3-channel image with the stem's wide strided kernels is slow: on a 2-core AVX2 AMD
    EPYC (Zen 3) the 32x32 / 16x16 / 8x8 stride-4 kernels took 5.9 / 1.5 / 0.7 ms at batch 1 on contiguous input
    against 1.3 / 0.4 / 0.2 ms channels-last, and CrossFormer-T ran 0.91x as long at batch 1, 0.85x at batch 8,
    0.96x in training steps of 8 (``docs/profiling.md``). The outputs are also channels-last, so the tokens
    (B, H', W', C) come out without a copy. The results equal the contiguous convolution within float rounding.
    While a tool runs the model (compilers, exporters, tracers) the input is left as it is;
    ``crossformers.layers.embed.STEM_CHANNELS_LAST = False`` leaves it as it is everywhere.

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
            self._conv_class(k, stride, input_fmt)(in_chs, dim, kernel_size=k, stride=stride,
                                                   padding=(k - stride) // 2)
            for k, dim in zip(kernel_sizes, cel_channels(out_dim, len(kernel_sizes)), strict=True)
        ])
        self.norm = norm_layer(in_chs if norm_first else out_dim) if norm_layer is not None else nn.Identity()

    @staticmethod
    def _conv_class(kernel: int, stride: int, input_fmt: str) -> type[nn.Conv2d]:
        """The convolution of one scale: :class:`TokenMapConv2d` on token maps (NHWC input),
        :class:`WideKernelConv2d` for kernels of at least :data:`WIDE_KERNEL_FACTOR` strides, else ``nn.Conv2d``."""
        if input_fmt == "NHWC":
            return TokenMapConv2d
        return WideKernelConv2d if kernel % stride == 0 and kernel >= WIDE_KERNEL_FACTOR * stride else nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = self.norm(x) if self.input_fmt == "NHWC" else self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        else:
            x = images_channels_last(x)
        if self.pad_to_stride:
            x = pad_to_multiple(x, self.stride)
        x = torch.cat([proj(x) for proj in self.projs], dim=1).permute(0, 2, 3, 1)
        return x if self.norm_first else self.norm(x)
