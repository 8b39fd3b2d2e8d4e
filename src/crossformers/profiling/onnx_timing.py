"""Running an exported ONNX file in onnxruntime beside the PyTorch model: :func:`onnx_runner`
(``crossformers profile MODEL --onnx FILE``).

The file is any ONNX graph with one image input (B, C, H, W); ``crossformers export MODEL --output FILE`` writes one.
It runs on onnxruntime's CPU execution provider with all graph optimisations and ``threads`` intra-op threads (one
inter-op thread), on the same batch-1 input shape as the PyTorch timing. ``crossformers profile`` times the two calls
alternately (:func:`~crossformers.profiling.measure.time_alternating`), so that drift on a shared machine hits both
alike and their per-round ratio compares them side by side.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..utils.onnx_session import open_session
from .errors import ProfilingError

__all__ = ["onnx_runner"]


def onnx_runner(path: str | os.PathLike, shape: tuple[int, int, int, int], threads: int) -> Callable[[], Any]:
    """A call that runs the ONNX file ``path`` once in onnxruntime (CPU) on a fixed random input of ``shape``.

    Args:
        path: an ONNX file with one input (B, C, H, W).
        shape: the input shape to run (the PyTorch measurement's, e.g. (1, 3, 224, 224)).
        threads: intra-op threads (the PyTorch measurement's).

    Returns:
        The call (no arguments; returns onnxruntime's outputs).

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
    return lambda: sess.run(None, feed)

