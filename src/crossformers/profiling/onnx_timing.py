"""Timing an exported ONNX file in onnxruntime beside the PyTorch model: :func:`time_onnx`
(``crossformers profile MODEL --onnx FILE``).

The file is any ONNX graph with one image input (B, C, H, W); ``crossformers export MODEL --output FILE`` writes one.
It runs on onnxruntime's CPU execution provider with all graph optimisations and ``threads`` intra-op threads (one
inter-op thread), on the same batch-1 input shape and with the same warm-up / repeat counts as the PyTorch timing, so
the two medians compare side by side.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..utils.onnx_session import open_session
from .errors import ProfilingError
from .measure import summarize_ms, time_calls

__all__ = ["time_onnx"]


def time_onnx(path: str | os.PathLike, shape: tuple[int, int, int, int], threads: int, warmup: int = 5,
              repeats: int = 20, min_time_s: float = 0.0) -> dict[str, Any]:
    """Batch latency of the ONNX file ``path`` in onnxruntime (CPU).

    Args:
        path: an ONNX file with one input (B, C, H, W).
        shape: the input shape to run (the PyTorch measurement's, e.g. (1, 3, 224, 224)).
        threads: intra-op threads (the PyTorch measurement's).
        warmup, repeats, min_time_s: as :func:`crossformers.profiling.measure.time_calls`.

    Returns:
        ``{"median", "p90", "min", "mean"}`` in ms, plus ``"samples"`` (per-call ms) and ``"providers"``.

    Raises:
        ProfilingError: missing file or onnxruntime, a file onnxruntime cannot load, or an input shape the file does
            not take (its fixed dimensions named).
    """
    sess = open_session(path, ProfilingError, "timing an ONNX file", threads=threads)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ProfilingError(f"{path} has {len(inputs)} inputs; an image classifier export has one (B, C, H, W)")
    declared = list(inputs[0].shape)
    fixed = [d if isinstance(d, int) else None for d in declared]
    if len(fixed) != 4 or any(f is not None and f != s for f, s in zip(fixed, shape, strict=False)):
        raise ProfilingError(f"{path} takes input {declared}, not {list(shape)}: export it at this size (`crossformers "
                             f"export MODEL --img-size {shape[2]} {shape[3]}`) or profile at its size (--img-size)")
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    feed = {inputs[0].name: x}
    import torch

    times = time_calls(lambda: sess.run(None, feed), torch.device("cpu"), warmup=warmup, repeats=repeats,
                       min_time_s=min_time_s)
    return {**summarize_ms(times), "samples": times, "providers": sess.get_providers()}
