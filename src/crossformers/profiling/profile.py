"""Profiling one model: :func:`profile_model` -> :class:`ProfileResult`.

Measures, for a model built by name (or given as a module):

* parameters, and MACs per image (:func:`~crossformers.utils.macs.count_macs`, FLOPs / 2, explicit attention);
* latency at batch 1 (median and 90th percentile after warm-up, ms);
* throughput at batch N (img/s, from the median time of a batch);
* peak memory (MiB): on the CPU the peak RSS of batch-1 inference in a fresh subprocess minus its RSS after the
  imports (weights + activations + workspace; comparable to the baseline in ``docs/reference.md``); on CUDA
  ``torch.cuda.max_memory_allocated``;
* achieved GFLOP/s at batch 1 (2 x MACs / median latency) and its fraction of the machine's measured matmul peak
  (``torch.mm`` of 2048 x 2048 matrices, same threads, device and dtype).

Inference runs in eval mode under ``torch.inference_mode()``, with the models' default fast paths on (fused attention,
cached position biases); ``fuse=True`` folds BatchNorms and layer scales, ``onednn_linear=True`` runs linear layers
through oneDNN, ``channels_last=True`` runs convolutions channels-last, ``optimize=True`` all of these plus packed
oneDNN weights (channels-last only where it helps), ``compile=True`` compiles with inductor through
:func:`crossformers.inference.compile_for_inference` (frozen weights; needs a C++ compiler on CPU).
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine.loading import load_model, model_in_chans
from ..inference.allocator import freed_memory_retained
from ..inference.compile import CompiledForInference, compile_for_inference
from ..inference.folding import fuse as fuse_model
from ..inference.optimize import prefers_channels_last
from ..inference.precision import check_precision, to_precision
from ..layers.linear import onednn_for_inference, set_onednn_linear, set_packed_weights, uses_onednn_linear
from ..models._base import set_channels_last
from ..utils.macs import count_macs
from .errors import ProfilingError
from .measure import (
    cuda_peak_mib,
    machine_label,
    num_threads,
    paired_ratio,
    rss_increase_inprocess,
    rss_peak_subprocess,
    summarize_ms,
    time_alternating,
    time_calls,
)
from .measure import matmul_peak as measure_matmul_peak
from .onnx_timing import onnx_runner
from .published import family_of, published

__all__ = ["ProfileResult", "profile_model", "build_model_for_profile", "prepare_model", "resolve_dtype",
           "default_input_size", "DTYPES", "ONNX_BLOCK", "ONNX_PAUSE_S"]

#: ``--onnx``: timed calls of each runtime per round, and the pause (s) before each block. The two runtimes' thread
#: pools spin-wait after a call; called right after each other they slow each other down (time_alternating)
ONNX_BLOCK = 5
ONNX_PAUSE_S = 0.1

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16"}


@dataclass
class ProfileResult:
    """Measurements of one model (units in the field names: ms, img/s, MiB, GFLOP/s; MACs are counts).

    ``None`` marks a measurement that was skipped or is unavailable. ``macs`` is per image (batch 1);
    ``breakdown`` (when requested) maps module names (``""`` = whole model) to their MACs per image.
    """

    model: str
    family: str
    img_size: tuple[int, int]
    in_chans: int
    batch_size: int
    threads: int
    device: str
    dtype: str
    compiled: bool
    fused: bool
    channels_last: bool
    params: int
    macs: int
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_min_ms: float | None = None
    throughput_img_s: float | None = None
    peak_mem_mib: float | None = None
    peak_mem_batch_mib: float | None = None
    mem_method: str = ""
    achieved_gflops: float | None = None
    matmul_peak_gflops: float | None = None
    matmul_peak_kernel: str | None = None
    peak_fraction: float | None = None
    published_top1: float | None = None
    compile_s: float | None = None
    onednn_linear: bool = False
    packed_weights: bool = False
    breakdown: dict[str, int] | None = None
    onnx_file: str | None = None
    onnx_latency_ms: float | None = None
    onnx_latency_p90_ms: float | None = None
    onnx_ratio_paired: float | None = None
    machine: str = ""  # measure.machine_label(): CPU model, signature and flags (or the CUDA device)
    freed_memory_retained: bool = False  # inference.retain_freed_memory() in effect while timing (glibc)
    latency_samples_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def params_m(self) -> float:
        """Parameters in millions."""
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        """MACs per image in units of 10^9."""
        return self.macs / 1e9

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``params_m`` and ``gmacs`` (latency samples only if ``samples``)."""
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        d["params_m"] = self.params_m
        d["gmacs"] = self.gmacs
        if not samples:
            d.pop("latency_samples_ms")
        return d

    def to_row(self) -> dict[str, Any]:
        """Flat dict for CSV: every scalar field (no breakdown, no samples)."""
        d = self.to_dict()
        d.pop("breakdown", None)
        d["img_size"] = f"{self.img_size[0]}x{self.img_size[1]}"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProfileResult:
        """Inverse of :meth:`to_dict` (extra keys ignored)."""
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        kw["img_size"] = tuple(kw["img_size"]) if not isinstance(kw["img_size"], str) else tuple(
            int(s) for s in kw["img_size"].split("x"))
        return cls(**kw)


def resolve_dtype(dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    """(label, torch dtype) for 'fp32' / 'bf16' (or the torch dtypes / their long names).

    Raises:
        ProfilingError: another dtype.
    """
    if isinstance(dtype, torch.dtype):
        for label, dt in DTYPES.items():
            if dt == dtype:
                return label, dt
        raise ProfilingError(f"unsupported dtype {dtype}: use fp32 or bf16")
    label = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if label not in DTYPES:
        raise ProfilingError(f"unsupported dtype {dtype!r}: use fp32 or bf16")
    return label, DTYPES[label]


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ProfilingError(f"unknown device {device!r}: use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProfilingError("device cuda requested but CUDA is not available here: use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ProfilingError(f"unsupported device {device!r}: use cpu or cuda")
    return dev


def _size2(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise ProfilingError(f"img_size must be one or two positive integers (H W), got {img_size!r}")
    return size  # type: ignore[return-value]


def default_input_size(model: nn.Module) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) the model is evaluated at by default: its ``pretrained_cfg['input_size']``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size") or (3, 224, 224))
    return model_in_chans(model), (int(size[1]), int(size[2]))


def build_model_for_profile(name: str, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The model ``name`` names (a crossformers name or ``timm:<name>``, random weights; or one of our run
    directories), in eval mode on the CPU, through the package's one loader
    (:func:`crossformers.engine.loading.load_model`)."""
    return load_model(name, model_kwargs=model_kwargs).model


def _check_compiler() -> None:
    cxx = os.environ.get("CXX")
    if not any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
        raise ProfilingError("--compile needs a C++ compiler for torch.compile's inductor backend on CPU (none found: "
                             "install g++ or set CXX), or run without --compile")


def prepare_model(model: nn.Module, device: torch.device, dtype: torch.dtype, fuse: bool = False,
                  channels_last: bool = False, compile: bool | str = False, onednn_linear: bool | None = None,
                  pack_weights: bool = False) -> nn.Module:
    """Eval mode, optional BatchNorm/layer-scale folding, oneDNN linear layers on/off (None: as created), packed
    oneDNN weights switched on (``pack_weights``; False leaves the model's setting alone), channels-last,
    device/dtype, optional ``torch.compile`` (inductor: :func:`~crossformers.inference.compile_for_inference`,
    frozen weights packed for oneDNN or MKL as :func:`~crossformers.layers.linear.onednn_for_compile` chooses on this
    machine; another backend name: plain ``torch.compile``).

    Modifies ``model`` in place (the compiled wrapper, if any, is returned).
    """
    model.eval()
    if fuse:
        fuse_model(model)
    if onednn_linear is not None:
        set_onednn_linear(model, onednn_linear)
    if pack_weights:
        set_packed_weights(model, True)
    model.to(device=device, dtype=dtype)
    if channels_last:
        set_channels_last(model, True)
    if compile:
        backend = "inductor" if compile is True else str(compile)
        if backend == "inductor" and device.type == "cpu":
            _check_compiler()
        if backend == "inductor":
            return compile_for_inference(model, dynamic=False, fullgraph=False)  # frozen, packed as calibrated
        model = torch.compile(model, backend=backend, dynamic=False)
    return model


def _make_input(batch: int, chans: int, size: tuple[int, int], device: torch.device, dtype: torch.dtype,
                channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, chans, *size, device=device).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def profile_model(
    name_or_model: str | nn.Module,
    img_size: int | tuple[int, int] | None = None,
    batch_size: int | None = 32,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    compile: bool | str = False,
    dtype: str | torch.dtype = "fp32",
    *,
    fuse: bool = False,
    channels_last: bool = False,
    onednn_linear: bool | None = None,
    optimize: bool = False,
    warmup: int = 5,
    repeats: int = 20,
    min_time_s: float = 0.0,
    throughput_repeats: int = 3,
    latency: bool = True,
    memory: bool = True,
    breakdown: bool = False,
    matmul_peak: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    precision: str = "fp32",
    onnx: str | os.PathLike | None = None,
) -> ProfileResult:
    """Profile one model: params, MACs, latency, throughput, peak memory, achieved FLOP rate.

    Args:
        name_or_model: a crossformers model name, ``timm:<name>``, or a module (profiled as given: not copied unless
            ``fuse``/``channels_last``/``dtype``/``device`` require changes, and then a deep copy is changed).
        img_size: input (H, W) or side in pixels; default the model's ``pretrained_cfg`` input size. The model is
            built with its default construction arguments (``model_kwargs`` to override) and runs at this size.
        batch_size: batch N for the throughput measurement (None or 0 skips it).
        threads: intra-op CPU threads for every measurement (default: torch's current setting).
        device: 'cpu' or 'cuda'.
        compile: ``torch.compile`` the model (True = inductor; a backend name such as 'aot_eager' also works).
        dtype: 'fp32' or 'bf16' (weights and inputs converted; MACs are counted in the model's own dtype).
        fuse: fold BatchNorms and layer scales (:func:`crossformers.profiling.fuse.fuse`) first.
        channels_last: run convolutions channels-last.
        onednn_linear: force linear layers through oneDNN (True) or MKL (False); None keeps the model as created
            (:func:`crossformers.layers.linear.onednn_by_default`: this machine's calibrated choice, else on for
            AVX-512 CPUs). The result records the state
            measured.
        optimize: every fast path (:func:`crossformers.profiling.optimize.optimize_for_inference`): ``fuse``,
            ``onednn_linear`` with packed weights, and ``channels_last`` where it helps.
        warmup, repeats, min_time_s: latency measurement: untimed calls, timed calls, and minimum timed seconds.
        throughput_repeats: timed batches for the throughput (after one warm-up batch).
        latency: measure latency/throughput (False: params and MACs only).
        memory: measure peak memory (a subprocess on CPU for models given by name).
        breakdown: keep the per-module MAC breakdown in the result.
        matmul_peak: measure the matmul peak (:func:`~crossformers.profiling.measure.matmul_peak`: for fp32 on the
            CPU the better of MKL's and oneDNN's 2048x2048 product; cached per process) for ``peak_fraction``.
        model_kwargs: constructor arguments for models given by name.
        precision: ``'fp32'``, or ``'bf16'`` / ``'int8'`` through :func:`crossformers.inference.to_precision`
            (applied after the other options; ``dtype`` must stay fp32; int8 always compiles, bf16 with ``compile``;
            the memory measurement is skipped; the result's ``dtype`` is the precision).
        onnx: an ONNX export of the model (``crossformers export``): also timed at batch 1 in onnxruntime with the
            same threads (:func:`~crossformers.profiling.onnx_timing.onnx_runner`; CPU only), alternately with ours
            (:func:`~crossformers.profiling.measure.time_alternating`: ``warmup`` untimed calls of each, then rounds
            of :data:`ONNX_BLOCK` calls of each in a shuffled order, each block after a :data:`ONNX_PAUSE_S` pause
            and one untimed call, ``repeats`` timed calls in all, rounded up to whole blocks; ``min_time_s`` does not
            apply), into ``onnx_latency_ms`` / ``onnx_latency_p90_ms`` and ``onnx_ratio_paired`` (the median over
            rounds of ours / onnxruntime: the side-by-side ratio, robust to a shared machine's drift).

    Returns:
        A :class:`ProfileResult`.

    Raises:
        UnknownModelError: unknown model name.
        ProfilingError: unavailable device/compiler, bad dtype or size; ``onnx`` on a GPU, or a file onnxruntime
            cannot run at this size.
    """
    label, torch_dtype = resolve_dtype(dtype)
    dev = _resolve_device(device)
    if onnx is not None and dev.type != "cpu":
        raise ProfilingError("--onnx times onnxruntime's CPU provider: profile with --device cpu")
    if precision != "fp32":
        if label != "fp32":
            raise ProfilingError(f"--dtype {label} and --precision {precision} both set the precision: drop --dtype")
        check_precision(precision, dev)
        label, memory = precision, False
    if isinstance(name_or_model, str):
        name = name_or_model
        model = build_model_for_profile(name, model_kwargs)
    elif isinstance(name_or_model, nn.Module):
        model = name_or_model
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") or type(model).__name__
        needs_copy = fuse or channels_last or onednn_linear is not None or optimize or any(
            p.dtype != torch_dtype or p.device != dev for p in model.parameters())
        if needs_copy:
            model = copy.deepcopy(model)
    else:
        raise ProfilingError(f"expected a model name or an nn.Module, got {type(name_or_model).__name__}")
    if threads is not None and threads < 1:
        raise ProfilingError(f"threads must be >= 1, got {threads}")
    if batch_size is not None and batch_size < 0:
        raise ProfilingError(f"batch_size must be >= 0, got {batch_size}")
    if optimize:  # the linear path optimize_for_inference would take here (calibrated, else packed oneDNN)
        fuse, onednn_linear = True, onednn_for_inference(model) if onednn_linear is None else onednn_linear
        channels_last = channels_last or prefers_channels_last(model)
    chans, default_size = default_input_size(model)
    size = _size2(img_size) if img_size is not None else default_size
    was_training = model.training
    model.eval()

    with num_threads(threads) as used_threads:
        params = sum(p.numel() for p in model.parameters())
        macs, per_module = count_macs(model, (1, chans, *size))
        pub = published(name)
        result = ProfileResult(
            model=name, family=family_of(name), img_size=size, in_chans=chans, batch_size=int(batch_size or 0),
            threads=used_threads, device=str(dev), dtype=label, compiled=bool(compile), fused=fuse,
            channels_last=channels_last, onednn_linear=bool(onednn_linear), params=params, macs=macs,
            published_top1=pub.top1 if pub else None, breakdown=per_module if breakdown else None,
            machine=machine_label(dev), freed_memory_retained=freed_memory_retained())

        sizes = [1] + ([int(batch_size)] if batch_size and batch_size > 1 else [])
        if memory and dev.type == "cpu" and isinstance(name_or_model, str):
            spec = dict(model=name, model_kwargs=model_kwargs or {}, img_size=list(size), in_chans=chans,
                        batch_sizes=sizes, threads=used_threads, dtype=label, fuse=fuse, channels_last=channels_last,
                        onednn_linear=onednn_linear, pack_weights=optimize)
            mem = rss_peak_subprocess(spec)
            result.peak_mem_mib = mem["increase_mib"].get(1)
            result.peak_mem_batch_mib = mem["increase_mib"].get(sizes[-1]) if len(sizes) > 1 else None
            result.mem_method = "subprocess peak RSS - RSS after imports (eager)"

        reduced = precision != "fp32"
        run = prepare_model(model, dev, torch_dtype, fuse=fuse, channels_last=channels_last,
                            compile=False if reduced else compile, onednn_linear=onednn_linear, pack_weights=optimize)
        if reduced:
            run = to_precision(run, precision, compile=bool(compile) or precision == "int8")
            compile = result.compiled = bool(compile) or precision == "int8"
            result.mem_method = f"not measured for precision {precision}"
        result.onednn_linear = any(uses_onednn_linear(m) for m in model.modules())
        result.packed_weights = not compile and any(
            getattr(m, "pack_weights", False) for m in model.modules() if uses_onednn_linear(m))
        if isinstance(run, CompiledForInference):  # inductor's products, packed for oneDNN or MKL (onednn_for_compile)
            result.onednn_linear = bool(run.onednn) and dev.type == "cpu"
        if reduced:  # bf16 / int8 products go through their own kernels (see to_precision), not OneDNNLinear
            result.onednn_linear = result.packed_weights = False
        x1 = _make_input(1, chans, size, dev, torch_dtype, channels_last)
        # opened before anything is timed, so that a file of another size or a missing onnxruntime fails at once
        ort_run = onnx_runner(onnx, (1, chans, *size), used_threads) if latency and onnx is not None else None
        try:
            with torch.inference_mode():
                if compile:
                    t0 = time.perf_counter()
                    run(x1)
                    result.compile_s = time.perf_counter() - t0
                if memory and dev.type == "cuda":
                    result.peak_mem_mib = cuda_peak_mib(lambda: run(x1), dev)
                    result.mem_method = "torch.cuda.max_memory_allocated (weights included)"
                elif memory and not isinstance(name_or_model, str):
                    result.peak_mem_mib = rss_increase_inprocess(lambda: run(x1))
                    result.mem_method = "in-process RSS high-water increase (activations; weights excluded)"
                if latency and ort_run is not None:  # side by side: drift on the machine hits both alike
                    both = time_alternating({"ours": lambda: run(x1), "onnx": ort_run},
                                            rounds=-(-max(1, repeats) // ONNX_BLOCK), warmup=warmup,
                                            block=ONNX_BLOCK, pause_s=ONNX_PAUSE_S)
                    times = both["ours"]
                    ort = summarize_ms(both["onnx"])
                    result.onnx_file, result.onnx_latency_ms, result.onnx_latency_p90_ms = (
                        str(onnx), ort["median"], ort["p90"])
                    result.onnx_ratio_paired = paired_ratio(times, both["onnx"], ONNX_BLOCK)
                elif latency:
                    times = time_calls(lambda: run(x1), dev, warmup=warmup, repeats=repeats, min_time_s=min_time_s)
                if latency:
                    stats = summarize_ms(times)
                    result.latency_ms, result.latency_p90_ms, result.latency_min_ms = (
                        stats["median"], stats["p90"], stats["min"])
                    result.latency_samples_ms = times
                if latency and batch_size:
                    xn = _make_input(int(batch_size), chans, size, dev, torch_dtype, channels_last)
                    if memory and dev.type == "cuda" and batch_size > 1:
                        result.peak_mem_batch_mib = cuda_peak_mib(lambda: run(xn), dev)
                    times = time_calls(lambda: run(xn), dev, warmup=1, repeats=throughput_repeats)
                    result.throughput_img_s = batch_size / (summarize_ms(times)["median"] / 1e3)
        finally:
            if not isinstance(name_or_model, str) and model is name_or_model:
                model.train(was_training)
        if latency and matmul_peak and label in DTYPES:  # the fp32 / bf16 product peak (no int8 reference)
            result.matmul_peak_gflops, result.matmul_peak_kernel = measure_matmul_peak(used_threads, dev,
                                                                                       DTYPES[label])
        if result.latency_ms:
            result.achieved_gflops = 2.0 * macs / (result.latency_ms / 1e3) / 1e9
            if result.matmul_peak_gflops:
                result.peak_fraction = result.achieved_gflops / result.matmul_peak_gflops
    return result
