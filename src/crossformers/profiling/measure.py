"""Timing, memory and machine-peak measurements used by :func:`crossformers.profiling.profile_model`.

Timings are wall-clock (``time.perf_counter``), with a CUDA synchronisation around every call on GPUs. On a shared
machine they drift by tens of percent between runs: compare models only side by side in one process (see
``benchmarks/``).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import timm
import torch

from ..utils.cpu import cpu_model_name, cpu_signature, cpuinfo_field
from .errors import ProfilingError

__all__ = [
    "num_threads", "time_calls", "summarize_ms", "matmul_peak", "matmul_peak_gflops", "PEAK_KERNELS", "rss_peak_subprocess", "rss_increase_inprocess",
    "cuda_peak_mib", "machine_info", "machine_label", "cpu_name", "cpu_flags", "CPU_FLAGS", "time_alternating", "paired_ratio",
    "compare_alternating",
]

_MIB = 1024.0 * 1024.0


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: leave as is); yields the thread count in use."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ProfilingError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int = 5, repeats: int = 20,
               min_time_s: float = 0.0) -> list[float]:
    """Wall-clock times of ``fn()`` after ``warmup`` untimed calls.

    Args:
        fn: the call to time (e.g. a forward pass under ``torch.inference_mode``).
        device: synchronised around every call when it is a CUDA device.
        warmup: untimed calls first (allocator, oneDNN primitive caches, compilation).
        repeats: timed calls (at least one).
        min_time_s: keep timing beyond ``repeats`` until this many seconds are spent (at most 10 * repeats calls).

    Returns:
        Per-call times in ms.
    """
    for _ in range(max(0, warmup)):
        fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    limit = max(1, repeats) * 10
    while len(times) < max(1, repeats) or (spent < min_time_s and len(times) < limit):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt * 1e3)
        spent += dt
    return times


def time_alternating(calls: dict[str, Callable[[], Any]], rounds: int, seed: int = 0, warmup: int = 2,
                     block: int = 1, pause_s: float = 0.0) -> dict[str, list[float]]:
    """Per-call times (ms) of several calls measured side by side: ``warmup`` untimed calls of each, then ``rounds``
    rounds in which every call runs in turn, in an order shuffled per round (so drift on a shared machine hits all
    alike).

    Args:
        calls: name -> the call to time.
        rounds: rounds (at least one).
        seed: seed of the shuffled orders.
        warmup: untimed calls of each before the first round.
        block: timed calls of each per round, back to back. With ``block > 1`` each block starts with one untimed
            call, which pays for what the call before it left behind (caches filled with another model's weights).
        pause_s: seconds to sleep before each block, so that the thread pools of the call before it have gone idle.
            Runtimes that spin-wait after a call (onnxruntime's workers, OpenMP's threads) otherwise take the cores
            from the next call: on a 2-core AMD EPYC, CrossFormer-T ran 92 ms right after an onnxruntime call and
            47 ms with a 0.1 s pause and a settling call (``docs/profiling.md``).

    Returns:
        name -> ``rounds * block`` times, round by round (:func:`paired_ratio` compares two of them).
    """
    import random

    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    for _ in range(max(1, rounds)):
        order = list(calls)
        rng.shuffle(order)
        for name in order:
            if pause_s > 0:
                time.sleep(pause_s)
            if block > 1:
                calls[name]()
            for _ in range(max(1, block)):
                t0 = time.perf_counter()
                calls[name]()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def paired_ratio(a: list[float], b: list[float], block: int = 1) -> float:
    """The median over rounds of a / b, each round's time the median of its ``block`` calls: the side-by-side ratio
    of two series from :func:`time_alternating` (robust to drift that slows whole rounds).

    Raises:
        ValueError: series of different lengths, or not whole rounds of ``block``.
    """
    block = max(1, block)
    if len(a) != len(b) or not a or len(a) % block:
        raise ValueError(f"paired_ratio needs two series of whole rounds of {block} call(s), got {len(a)} and {len(b)}")
    rounds = [(a[i:i + block], b[i:i + block]) for i in range(0, len(a), block)]
    return statistics.median(statistics.median(x) / statistics.median(y) for x, y in rounds)


def compare_alternating(calls: dict[str, Callable[[], torch.Tensor]], reference: str, rounds: int,
                        what: str, atol: float = 1e-4, warmup: int = 3) -> dict[str, float]:
    """Several ways of computing the same output, checked against each other and timed side by side, in
    ``torch.inference_mode``: each call once, its output compared with ``calls[reference]``'s, then
    :func:`time_alternating` over ``rounds`` rounds.

    Returns:
        ``{name}_ms`` (median ms of each call), ``paired_{name}_vs_{reference}`` (:func:`paired_ratio` of every other
        call to the reference) and ``max_abs_diff`` (largest absolute output difference from the reference).

    Raises:
        AssertionError: an output differs from the reference's by more than ``atol`` (``what`` names the calls in
            the message, e.g. "the attention forms").
    """
    with torch.inference_mode():
        outs = {k: c() for k, c in calls.items()}
        diff = max((o - outs[reference]).abs().max().item() for o in outs.values())
        assert diff <= atol, f"{what} disagree by {diff}"
        t = time_alternating(calls, rounds=rounds, warmup=warmup)
    out: dict[str, float] = {f"{k}_ms": statistics.median(v) for k, v in t.items()}
    out.update({f"paired_{k}_vs_{reference}": paired_ratio(t[k], t[reference]) for k in calls if k != reference})
    out["max_abs_diff"] = diff
    return out


def summarize_ms(times: list[float]) -> dict[str, float]:
    """Median, 90th percentile (linear interpolation), min and mean of per-call times in ms."""
    ordered = sorted(times)
    pos = 0.9 * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    p90 = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return {"median": statistics.median(ordered), "p90": p90, "min": ordered[0], "mean": statistics.fmean(ordered)}


_PEAK_CACHE: dict[tuple, tuple[float, str]] = {}
#: the product kernels :func:`matmul_peak` can time
PEAK_KERNELS = ("best", "native", "onednn")


def matmul_peak(threads: int | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                n: int = 2048, repeats: int = 5, kernel: str = "best") -> tuple[float, str]:
    """The machine's measured matrix-multiply peak: the best of ``repeats`` products of two ``n x n`` matrices.

    ``kernel``: ``'native'`` times ``torch.mm`` (MKL's sgemm for fp32 on the CPU, cuBLAS on CUDA); ``'onednn'``
    times oneDNN's product (``mkldnn::_linear_pointwise``, the op of our oneDNN linear layers; fp32 CPU only);
    ``'best'`` (default) takes the faster of the two where both apply, so a model's share of the peak is measured
    against the better library of the machine (issue 15: MKL wins on some CPUs, oneDNN on others).
    Cached per (threads, device, dtype, n, kernel) for the life of the process.

    Returns:
        (GFLOP/s, kernel): 2 n^3 FLOPs per product over the best time, and ``'native'`` or ``'onednn'``.

    Raises:
        ProfilingError: an unknown ``kernel``, or ``'onednn'`` where it does not apply (not fp32 on the CPU, or no
            oneDNN in this build).
    """
    from ..layers.linear import onednn_available

    if kernel not in PEAK_KERNELS:
        raise ProfilingError(f"unknown matmul peak kernel {kernel!r}: use one of {', '.join(PEAK_KERNELS)}")
    device = torch.device(device)
    onednn_ok = device.type == "cpu" and dtype == torch.float32 and onednn_available()
    if kernel == "onednn" and not onednn_ok:
        raise ProfilingError(f"the oneDNN product peak needs fp32 on a CPU build with oneDNN (got {dtype} on "
                             f"{device.type}): use kernel='native'")
    kernels = ["native", "onednn"] if kernel == "best" and onednn_ok else [kernel if kernel != "best" else "native"]
    with num_threads(threads) as used:
        key = (used, str(device), dtype, n, kernel)
        if key in _PEAK_CACHE:
            return _PEAK_CACHE[key]
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        calls = {"native": lambda: torch.mm(a, b, out=out),
                 "onednn": lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")}
        rates = {}
        with torch.inference_mode():
            for k in kernels:
                best = min(time_calls(calls[k], device, warmup=1, repeats=repeats))
                rates[k] = 2.0 * n ** 3 / (best / 1e3) / 1e9
    winner = max(rates, key=rates.get)
    _PEAK_CACHE[key] = (rates[winner], winner)
    return _PEAK_CACHE[key]


def matmul_peak_gflops(threads: int | None = None, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5,
                       kernel: str = "best") -> float:
    """The GFLOP/s of :func:`matmul_peak` (same arguments; by default the better of MKL and oneDNN for fp32 on the
    CPU, ``torch.mm`` elsewhere)."""
    return matmul_peak(threads, device, dtype, n, repeats, kernel)[0]


# ------------------------------------------------------------------------------------------------ memory

def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kib() -> int:
    import resource  # Unix only: imported where it is used

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def rss_peak_subprocess(spec: dict[str, Any], timeout_s: float = 1800.0) -> dict[str, Any]:
    """Peak resident memory of inference in a fresh Python process (robust: nothing else lives there).

    The child (``python -m crossformers.profiling._memory``) imports torch and crossformers, records its RSS, builds
    the model of ``spec`` (name, kwargs, dtype, folding, channels-last, threads), runs batch-1 inference and then
    batch-N inference under ``torch.inference_mode``, and reports its peak RSS after each.

    Args:
        spec: ``{"model", "model_kwargs", "img_size": [H, W], "in_chans", "batch_sizes": [1, N], "threads",
            "dtype", "fuse", "channels_last"}``.

    Returns:
        ``{"baseline_mib": RSS after imports, "peak_mib": {batch: peak RSS}, "increase_mib": {batch: peak - baseline}}``
        in MiB.

    Raises:
        ProfilingError: the child failed (its last error line is quoted).
    """
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "crossformers.profiling._memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ProfilingError(f"memory measurement of {spec.get('model')} failed: "
                             f"{lines[-1] if lines else 'exit code ' + str(proc.returncode)}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_mib"] = {int(k): v for k, v in out["peak_mib"].items()}
    out["increase_mib"] = {int(k): v for k, v in out["increase_mib"].items()}
    return out


def rss_increase_inprocess(fn: Callable[[], Any]) -> float | None:
    """Peak RSS increase (MiB) while running ``fn()`` in this process, for models that cannot be rebuilt by name.

    Resets the kernel's RSS high-water mark (``/proc/self/clear_refs``, Linux) first, so this counts activations and
    workspace but not the weights (already resident) and may undercount memory the allocator reuses. None where the
    high-water mark cannot be reset.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _proc_status_kib("VmRSS")
    fn()
    peak = _proc_status_kib("VmHWM")
    if base is None or peak is None:
        return None
    return max(0.0, (peak - base) / 1024.0)


def cuda_peak_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` (MiB, weights included) while running ``fn()`` on ``device``."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / _MIB


# ------------------------------------------------------------------------------------------------ machine

def cpu_name() -> str:
    """CPU model name (``lscpu``'s "Model name", else /proc/cpuinfo, else ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return cpu_model_name()


#: the CPU flags that decide which kernels run: fp32 AVX2 / AVX-512, int8 VNNI, bf16 AVX512-BF16, AMX
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU has, in that order (from /proc/cpuinfo; [] where it cannot be read)."""
    have = set((cpuinfo_field("flags") or "").split())
    return [flag for flag in CPU_FLAGS if flag in have]


def machine_label(device: str | torch.device = "cpu") -> str:
    """The line a timing names its machine by: for the CPU, the model name, its signature and :func:`cpu_flags`,
    e.g. ``"AMD EPYC [AuthenticAMD family 25 model 17] (avx2, avx512f, avx512_vnni, avx512_bf16)"``; for CUDA,
    the device name."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    signature = cpu_signature()
    flags = cpu_flags()
    return (f"{cpu_name()}{f' [{signature}]' if signature else ''} "
            f"({', '.join(flags) if flags else 'no AVX2 / AVX-512 / AMX flags'})")


def machine_info() -> dict[str, Any]:
    """Machine and software versions for reports: CPU model, signature (vendor, family, model numbers) and
    kernel-relevant flags, logical CPUs, torch/timm/python versions, CUDA device."""
    info: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_signature": cpu_signature(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info
