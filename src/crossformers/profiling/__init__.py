"""Profiling and inference fast paths: params, MACs, latency, throughput, memory, FLOP rate, plots.

>>> from crossformers.profiling import profile_model, count_macs, fuse
>>> r = profile_model("fcaformer_l1", batch_size=8, threads=2)
>>> r.latency_ms, r.throughput_img_s, r.gmacs
>>> total, per_module = count_macs(model, (3, 224, 224))

Command line: ``crossformers profile MODEL... [--json PATH] [--csv PATH] [--plot PATH]`` (see ``--help``).
"""
from ..layers.linear import set_onednn_linear, set_packed_weights
from ..models._base import set_bias_cache, set_channels_last, set_fused_attn
from .allocator import retain_freed_memory
from .compile import compile_for_inference
from .errors import ProfilingError
from .fuse import fuse
from .macs import count_macs
from .measure import machine_info, matmul_peak_gflops
from .optimize import optimize_for_inference, optimize_for_training
from .plot import plot_accuracy
from .profile import ProfileResult, profile_model
from .published import PUBLISHED, Published
from .report import format_breakdown, format_markdown, format_table, read_json, write_csv, write_json

__all__ = [
    "profile_model", "ProfileResult", "count_macs", "fuse", "optimize_for_inference", "optimize_for_training",
    "compile_for_inference", "set_onednn_linear", "set_packed_weights", "set_fused_attn", "set_bias_cache",
    "set_channels_last", "retain_freed_memory", "matmul_peak_gflops", "machine_info", "plot_accuracy", "format_table",
    "format_markdown", "format_breakdown", "write_json", "write_csv", "read_json", "PUBLISHED", "Published",
    "ProfilingError",
]
