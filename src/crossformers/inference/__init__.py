"""Inference transforms: models changed for faster inference, outputs unchanged (each path is tested equal to the
plain path on the parity fixtures).

* :func:`fuse` — fold Conv-BN pairs and layer scales into the layer before them;
* :func:`optimize_for_inference` / :func:`optimize_for_training` — every fast path at once (fused attention, cached
  position biases, folding, oneDNN linear layers with packed weights, channels-last where it helps);
* :func:`compile_for_inference` — ``torch.compile`` with frozen weights packed for oneDNN;
* :func:`to_precision` — bf16 (cast weights) or int8 (PT2E quantization through torchao, compiled) inference;
* :func:`retain_freed_memory` — the process-wide glibc allocator setting that keeps freed memory for reuse;
* the per-path switches :func:`set_onednn_linear`, :func:`set_packed_weights`, :func:`set_fused_attn`,
  :func:`set_bias_cache`, :func:`set_channels_last` (defined next to the modules they switch).

:mod:`crossformers.profiling` only measures; it re-exports these names for compatibility.

>>> from crossformers.inference import optimize_for_inference
>>> model = optimize_for_inference(crossformers.create_model("fcaformer_l1"))
"""
from ..layers.linear import set_onednn_linear, set_packed_weights
from ..models._base import set_bias_cache, set_channels_last, set_fused_attn
from .allocator import retain_freed_memory
from .compile import CompiledForInference, compile_for_inference
from .folding import FoldedNormAct, fold_conv_bn, fuse
from .optimize import optimize_for_inference, optimize_for_training, prefers_channels_last
from .precision import PRECISIONS, ReducedPrecision, check_precision, precision_support, to_precision

__all__ = [
    "fuse", "fold_conv_bn", "FoldedNormAct", "optimize_for_inference", "optimize_for_training",
    "prefers_channels_last", "compile_for_inference", "CompiledForInference", "retain_freed_memory",
    "set_onednn_linear", "set_packed_weights", "set_fused_attn", "set_bias_cache", "set_channels_last",
    "to_precision", "PRECISIONS", "ReducedPrecision", "check_precision", "precision_support",
]
