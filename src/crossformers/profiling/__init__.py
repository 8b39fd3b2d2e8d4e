"""Profiling: params, MACs, latency, throughput, memory, FLOP rate, plots. It only measures; the inference
transforms it measures (``fuse``, ``optimize_for_inference``, ``compile_for_inference``, ``retain_freed_memory``, the
fast-path switches) live in :mod:`crossformers.inference` and are re-exported here for compatibility.

>>> from crossformers.profiling import profile_model, count_macs, fuse
>>> r = profile_model("fcaformer_l1", batch_size=8, threads=2)
>>> r.latency_ms, r.throughput_img_s, r.gmacs
>>> total, per_module = count_macs(model, (3, 224, 224))

Command line: ``crossformers profile MODEL... [--json PATH] [--csv PATH] [--plot PATH]`` (see ``--help``).
"""
from ..inference import (
    compile_for_inference,
    fuse,
    optimize_for_inference,
    optimize_for_training,
    retain_freed_memory,
    set_bias_cache,
    set_channels_last,
    set_fused_attn,
    set_onednn_linear,
    set_packed_weights,
)
from ..utils.macs import count_macs
from .calibrate import calibrate_linear, calibrate_variants
from .errors import ProfilingError
from .measure import machine_info, matmul_peak_gflops
from .plot import plot_accuracy
from .profile import ProfileResult, profile_model
from .published import PUBLISHED, Published
from .report import format_breakdown, format_markdown, format_table, read_json, write_csv, write_json

__all__ = [
    "profile_model", "ProfileResult", "count_macs", "fuse", "optimize_for_inference", "optimize_for_training",
    "compile_for_inference", "set_onednn_linear", "set_packed_weights", "set_fused_attn", "set_bias_cache",
    "set_channels_last", "retain_freed_memory", "matmul_peak_gflops", "machine_info", "plot_accuracy", "format_table",
    "format_markdown", "format_breakdown", "write_json", "write_csv", "read_json", "PUBLISHED", "Published",
    "ProfilingError", "calibrate_linear", "calibrate_variants",
]
