"""Keep freed heap memory in the process (glibc): :func:`retain_freed_memory`.

PyTorch's CPU allocator hands every tensor straight to ``malloc``/``free``. With glibc's defaults, blocks above the
mmap threshold (at most 32 MiB) get a fresh mapping and are unmapped when freed, and the top of the heap is given back
to the kernel once more than the trim threshold is free; the next tensor of that size then pays a page fault per 4 KiB
page while it is first written.
oneDNN's per-call scratch buffers make this churn frequent, so the ops that follow a oneDNN product run slower:
measured here, LayerNorm + add on the (6304, 384) output of a oneDNN product took 2.3-2.5 ms against 0.9-1.1 ms after
MKL's (which keeps its own memory pool), and 0.9-1.3 ms after oneDNN with freed memory retained; a CrossViT-9
training step at batch 32 went from 0.80x to 0.69-0.74x timm's (both sides in the same process;
``docs/profiling.md``). Training at batch 32 allocates many tensors above 32 MiB (a CrossFormer-T stage-1 MLP
activation is 103 MB), which only stay in the process when no block is mapped afresh (``M_MMAP_MAX`` = 0): on a
2-core AMD EPYC Zen 4 a training step at batch 32 then took 0.80x its time with glibc's defaults for FcaFormer-L1,
0.96x for CrossFormer-T, 0.97x for the demo's fcaformer_nano and 1.01x for CrossViT-9, with the same peak resident
size within 9 % (``benchmarks/bench_freed_memory.py``, ``docs/benchmarks/freed_memory_train_amd_zen4.md``).

This is a process-wide setting (like choosing jemalloc or tcmalloc with ``LD_PRELOAD``): freed memory is reused
instead of returned to the kernel, so the resident size stays at its high-water mark. ``crossformers train`` and
``crossformers dense train`` turn it on, and so do ``crossformers eval``, ``predict`` and ``profile``: batch-1
inference of FcaFormer-L1 as created took 0.79x its time with glibc's defaults (4654 -> 74 page faults per call),
CrossFormer-T 0.92x, after ``optimize_for_inference`` 0.93x and 1.01x, CrossViT-9 and CrossFormer-S unchanged
(``docs/benchmarks/freed_memory_infer_created_amd_zen4.md``); compiled ahead of time, a model reuses its own
buffers and faults nothing either way. ``--no-retain-freed-memory`` keeps glibc's defaults; elsewhere it is off
unless you call :func:`retain_freed_memory` (or set ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:
glibc.malloc.mmap_max=0`` before starting Python).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import warnings

__all__ = ["retain_freed_memory", "freed_memory_retained"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int; ~2 GiB of free heap top before anything is trimmed
_RETAIN = {_M_MMAP_THRESHOLD: _MMAP_THRESHOLD_MAX, _M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: _TRIM_NEVER}
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_state = {"retained": False}  # what the last call of retain_freed_memory set in this process


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` is in effect in this process (its last call enabled it and succeeded);
    ``crossformers profile`` records it with its timings."""
    return _state["retained"]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def retain_freed_memory(enable: bool = True) -> bool:
    """Make glibc keep freed memory for reuse (or restore its default thresholds of 128 KiB).

    Sets ``M_MMAP_MAX`` to 0 (every tensor, of any size, comes from the heap instead of a fresh mapping; the
    ``M_MMAP_THRESHOLD`` of 32 MiB is set too) and ``M_TRIM_THRESHOLD`` to ~2 GiB (freed heap memory is not given
    back to the kernel). Affects the whole process from the call on; blocks mapped before the call are still
    unmapped when freed. Note that glibc's dynamic adjustment of the mmap threshold stays off after this call, also
    after ``enable=False``.

    Returns:
        True when every parameter was set; False (with a ``RuntimeWarning``) where the C library has no ``mallopt``
        (not glibc: macOS, Windows, musl), in which case nothing changes.
    """
    libc = _libc()
    if libc is None:
        warnings.warn("retain_freed_memory: this C library has no mallopt (not glibc); allocator unchanged. "
                      "Consider LD_PRELOAD of jemalloc or tcmalloc instead", RuntimeWarning, stacklevel=2)
        return False
    # a list, not a generator: every parameter is set even if one fails
    done = all([libc.mallopt(param, value) == 1 for param, value in (_RETAIN if enable else _DEFAULTS).items()])
    _state["retained"] = enable and done
    return done
