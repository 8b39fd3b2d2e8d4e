"""Keep freed heap memory in the process (glibc): :func:`retain_freed_memory`.

PyTorch's CPU allocator hands every tensor straight to ``malloc``/``free``. With glibc's defaults, blocks above the
mmap threshold are unmapped when freed, and the top of the heap is given back to the kernel once more than the trim
threshold is free; the next tensor of that size then pays a page fault per 4 KiB page while it is first written.
oneDNN's per-call scratch buffers make this churn frequent, so the ops that follow a oneDNN product run slower:
measured here, LayerNorm + add on the (6304, 384) output of a oneDNN product took 2.3-2.5 ms against 0.9-1.1 ms after
MKL's (which keeps its own memory pool), and 0.9-1.3 ms after oneDNN with freed memory retained; a CrossViT-9
training step at batch 32 went from 0.80x to 0.69-0.74x timm's (both sides in the same process;
``docs/profiling.md``).

This is a process-wide setting (like choosing jemalloc or tcmalloc with ``LD_PRELOAD``): freed memory is reused
instead of returned to the kernel, so the resident size stays at its high-water mark. It is off unless you call
:func:`retain_freed_memory` (or set ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:glibc.malloc.mmap_threshold=...``
before starting Python).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import warnings

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int; ~2 GiB of free heap top before anything is trimmed
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024}


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def retain_freed_memory(enable: bool = True) -> bool:
    """Make glibc keep freed memory for reuse (or restore its default thresholds of 128 KiB).

    Sets ``M_MMAP_THRESHOLD`` to 32 MiB (tensors up to that size come from the heap instead of fresh mappings) and
    ``M_TRIM_THRESHOLD`` to ~2 GiB (freed heap memory is not given back to the kernel). Affects the whole process
    from the call on. Note that glibc's dynamic adjustment of the mmap threshold stays off after this call, also
    after ``enable=False``.

    Returns:
        True when both thresholds were set; False (with a ``RuntimeWarning``) where the C library has no ``mallopt``
        (not glibc: macOS, Windows, musl), in which case nothing changes.
    """
    libc = _libc()
    if libc is None:
        warnings.warn("retain_freed_memory: this C library has no mallopt (not glibc); allocator unchanged. "
                      "Consider LD_PRELOAD of jemalloc or tcmalloc instead", RuntimeWarning, stacklevel=2)
        return False
    values = ({_M_MMAP_THRESHOLD: _MMAP_THRESHOLD_MAX, _M_TRIM_THRESHOLD: _TRIM_NEVER} if enable else _DEFAULTS)
    return all(libc.mallopt(param, value) == 1 for param, value in values.items())
