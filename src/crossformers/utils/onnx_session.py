"""Opening an ONNX file in onnxruntime with one set of checks and messages: :func:`open_session`.

Used by the export package (verifying a written file, :class:`crossformers.export.OnnxClassifier`) and by profiling
(timing an export beside the PyTorch model). onnxruntime is an optional dependency (the ``export`` extra), imported
only here and only when a session is opened.
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["open_session"]


def open_session(path: str | os.PathLike, error: type[Exception], need: str, threads: int | None = None,
                 providers: list[str] | None = None, quiet: bool = False, hint: str = "",
                 profile_prefix: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path``.

    Args:
        path: the ``.onnx`` file.
        error: the exception class raised for every failure below (the caller's package error).
        need: what the session is for, in words, for the missing-onnxruntime message (e.g. "timing an ONNX file").
        threads: intra-op threads, with one inter-op thread and all graph optimisations (None: onnxruntime's
            defaults, all cores).
        providers: execution providers (default ``["CPUExecutionProvider"]``).
        quiet: silence onnxruntime's console log (for sessions fed inputs that are meant to be refused).
        hint: appended to the missing-onnxruntime message (e.g. how to do without it).
        profile_prefix: switch on onnxruntime's node profiler, its JSON written under this path prefix by
            ``session.end_profiling()`` (which returns the file name).

    Returns:
        The session.

    Raises:
        error: the file is missing, onnxruntime is not installed, or onnxruntime cannot load the file (its first
            message line quoted).
    """
    if not os.path.isfile(path):
        raise error(f"ONNX file not found: {path} (write one with `crossformers export MODEL --output {path}`)")
    try:
        import onnxruntime as ort
    except ImportError:
        raise error(f"{need} needs onnxruntime: pip install onnxruntime{hint}") from None
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if quiet:
        opts.log_severity_level = 4
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any loader error becomes one message
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise error(f"onnxruntime cannot load {path}: {first}") from None
