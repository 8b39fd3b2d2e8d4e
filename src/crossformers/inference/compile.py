"""``torch.compile`` for CPU inference that keeps oneDNN's matrix products: :func:`compile_for_inference`.

Plain ``torch.compile`` on the CPU lowers fp32 linear layers to MKL's sgemm, which on AMD CPUs runs MKL's AVX2 code:
on the Zen 5 machine of ``docs/profiling.md`` compiled models were 1.2-1.5x *slower* than our eager models, whose
linear layers call oneDNN's AVX-512 kernels. :func:`compile_for_inference` compiles with inductor's weight freezing
(parameters become constants, so every linear weight is packed once at compile time) and, where oneDNN packing
is the faster on this machine (:func:`crossformers.layers.linear.onednn_for_compile`: measured by ``crossformers
profile --calibrate-linear --compile``, else the model's eager default), makes inductor pack those weights for
oneDNN (``mkldnn::_reorder_linear_weight`` + ``mkldnn::_linear_pointwise``, the lowering inductor itself uses for
bf16 and ahead-of-time compilation) instead of MKL. Everything else (fusion of norms, residual adds and activations,
attention) is inductor's. Measured against ``optimize_for_inference`` eager: 0.62-0.83x the latency
(``docs/profiling.md``).

With oneDNN packing, CPU inputs are compiled ahead of time (``torch.export`` + AOTInductor; a package specialised to
each of the first :data:`SPECIALISED_BATCHES` batch sizes of an image size, then one with a free batch dimension for
every further batch size of it), which packs for oneDNN by itself and runs without dynamo's per-call guards and
Python wrapper code; with MKL packing, dynamo compiles with inductor's C++ wrapper. Together 0.90-0.94x the
latency of the dynamo path with Python wrapper code (``docs/profiling.md``). Both paths take the attention biases
that depend only on the weights and the input size (CrossFormer's dynamic position bias, FcaFormer's
relative-position and cross-token bias) as constants computed by one eager call per input shape
(:func:`crossformers.layers.bias_cache.frozen_caches`) instead of rebuilding them in every call (0.95-0.99x the
latency; not with ``dynamic=True``).

On the dynamo path the oneDNN choice is made by swapping two methods of inductor's private ``CpuMkldnnDeviceOp``
for the duration of each call of the returned module (where compilation happens); if a future PyTorch renames them,
compilation falls back to inductor's own choice with a warning, and results are unaffected either way.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..layers.bias_cache import InferenceCache, bias_caches, clear_caches, fill_caches, frozen_caches
from ..layers.linear import onednn_for_compile
from .package_cache import evict, mark_used, package_key, resolve_cache_dir

__all__ = ["compile_for_inference", "CompiledForInference", "SPECIALISED_BATCHES", "tensor_guards_only"]

#: ahead of time, the number of batch sizes per image size (and dtype) that get a package specialised to them; every
#: further batch size of that image size shares one package whose batch dimension is free. Specialised packages are
#: faster (a free batch took 1.046x / 1.052x the time at batch 1 and 1.018x / 1.010x at batch 8 for FcaFormer-L1 /
#: CrossFormer-T on an AMD EPYC Zen 4, 2 threads; docs/benchmarks/free_batch_amd_zen4.md), and each package takes
#: tens of seconds to compile on 2 cores: an evaluation's full batches and its smaller last batch are both
#: specialised, and a stream of varying batch sizes compiles at most three packages instead of one per size.
SPECIALISED_BATCHES = 2

#: largest batch a package with a free batch dimension accepts (torch.export needs a bound to reason with)
_MAX_BATCH = 1 << 16


def _pack_weight_for_onednn(self, graph, is_lp_weight, transpose_weight_node, batch_size):
    """Graph node packing a linear weight (out, in) into oneDNN's blocked layout for ``batch_size`` rows."""
    from torch.fx.experimental.symbolic_shapes import has_free_symbols, optimization_hint  # only while compiling

    rows = optimization_hint(batch_size) if has_free_symbols(batch_size) else batch_size
    return graph.create_node("call_function", torch.ops.mkldnn._reorder_linear_weight,
                             args=(transpose_weight_node, rows))


def _linear_with_onednn(self, graph, is_lp_weight, batch_size, input, packed_weight_node, bias):
    """Graph node for ``input @ W^T + bias`` through oneDNN with the packed weight (no post-op: inductor's own
    fusion passes may add one afterwards)."""
    return graph.create_node("call_function", torch.ops.mkldnn._linear_pointwise.default,
                             (input, packed_weight_node, bias, "none", [], ""))


@contextlib.contextmanager
def onednn_weight_packing() -> Iterator[bool]:
    """While active, inductor's freezing pass packs fp32 CPU linear weights for oneDNN rather than MKL.

    Yields whether the switch is in place (False, with a warning, when this PyTorch's inductor lacks the hooks).
    """
    try:
        from torch._inductor.fx_passes import mkldnn_fusion  # private, heavy: loaded only when compiling

        device_op = mkldnn_fusion.CpuMkldnnDeviceOp
        saved = device_op.pack_linear_weight, device_op.pack_linear
    except (ImportError, AttributeError):
        warnings.warn("this PyTorch's inductor has no CpuMkldnnDeviceOp.pack_linear_weight/pack_linear: compiled "
                      "linear layers keep inductor's own (MKL) lowering", RuntimeWarning, stacklevel=3)
        yield False
        return
    device_op.pack_linear_weight, device_op.pack_linear = _pack_weight_for_onednn, _linear_with_onednn
    try:
        yield True
    finally:
        device_op.pack_linear_weight, device_op.pack_linear = saved


class CompiledForInference(nn.Module):
    """A frozen, compiled inference model, called without autograd.

    CPU inputs with ``ahead_of_time`` (the default of :func:`compile_for_inference` where oneDNN packing is
    chosen): the first call of each input shape and dtype exports ``module`` (``torch.export``) and compiles it with
    AOTInductor (``freezing``; AOTInductor packs linear weights for oneDNN, as :func:`onednn_weight_packing` makes
    the dynamo path do), and later calls of that shape run the loaded package. Packages are specialised to the
    first :data:`SPECIALISED_BATCHES` batch sizes of each image size (C, H, W); later batch sizes of it share one
    package exported with a free batch dimension (compiled once; a model whose export fixes the batch gets a
    specialised package per batch size instead). With ``cache_dir`` (see :func:`compile_for_inference`) packages are
    kept on disk and loaded instead of compiled when the same program comes again. The attention biases that depend
    only on the weights and the input size are filled by one eager call of that shape and traced as constants
    (:func:`~crossformers.layers.bias_cache.frozen_caches`; 0.95-0.99x the latency). No dynamo guards are evaluated per
    call and the code around the kernels is C++: measured against dynamo's Python-wrapped graph, 0.90-0.94x the
    batch-1 latency of CrossFormer-T, FcaFormer-L1 and CrossViT-9 (``docs/profiling.md``). A module that
    ``torch.export`` cannot trace falls back to the dynamo path with a warning. Inputs are made contiguous first
    (the package assumes the traced layout).

    Otherwise (MKL packing, ``dynamic``, CUDA inputs): the ``torch.compile`` wrapper of ``module`` (dynamo
    recompiles for a new shape), inside :func:`onednn_weight_packing` when ``onednn`` is set; on the CPU with
    inductor's C++ wrapper code (``cpp_wrapper``: 0.965x the Python wrapper's latency on FcaFormer-L1). Unless
    ``dynamic``, the bias caches are filled by one eager call per input shape and served as constants too. Dynamo
    re-checks only the input tensor per call (:func:`tensor_guards_only`), not module attributes or global settings.

    The weights, and the model's settings, are frozen at the first call of each input shape: after changing or
    loading weights, or switching a fast path, compile again.
    ``module`` stays reachable as ``.module`` (for ``state_dict``, ``count_macs`` and so on).
    """

    def __init__(self, module: nn.Module, compiled: nn.Module, onednn: bool, ahead_of_time: bool = False,
                 dynamic: bool = False, cache_dir: str | os.PathLike | None = None):
        super().__init__()
        self.module = module
        self.cache_dir = resolve_cache_dir(cache_dir)
        self._compiled = [compiled]  # a list: not registered as a submodule (its parameters are ``module``'s)
        self.onednn = onednn
        self.ahead_of_time = ahead_of_time
        self.dynamic = dynamic
        self._packages: dict[tuple, Callable[[torch.Tensor], Any] | None] = {}  # (shape, dtype) -> AOTI package
        self._specialised: dict[tuple, int] = {}  # (image shape, dtype) -> batch sizes with packages of their own
        self._any_batch: dict[tuple, Callable[[torch.Tensor], Any] | None] = {}  # (image shape, dtype) -> shared
        self._filled: set[tuple] = set()  # (shape, dtype, device) whose bias caches one eager call has filled
        self._caches: list[InferenceCache] | None = None  # module's bias caches, found once (frozen in every call)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) images -> the wrapped model's output (e.g. (B, num_classes) logits)."""
        if self.ahead_of_time and x.device.type == "cpu":
            key = (tuple(x.shape), x.dtype)
            if key not in self._packages:  # None: export failed for this shape, the dynamo path serves it
                self._packages[key] = self._package_for(x)
            run = self._packages[key]
            if run is not None:
                with torch.no_grad():
                    return run(x.contiguous())
        from torch._inductor import config  # private, heavy: loaded only when compiling

        # freezing is read outside torch.compile's per-call options, hence a config patch around each call; the FX
        # graph cache is off because its key does not see the oneDNN swap
        cpu = x.device.type == "cpu"
        frozen = contextlib.nullcontext() if self.dynamic else self._frozen_biases(x)
        with frozen, self._packing(), config.patch(freezing=True, fx_graph_cache=False, cpp_wrapper=cpu), \
                torch.no_grad():
            return self._compiled[0](x)

    def _frozen_biases(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        """:func:`frozen_caches` of ``module`` after one eager call of ``x``'s shape (once per shape, dtype and
        device) has filled its bias caches: the graph dynamo compiles for that shape takes the biases as constants.
        The cached tensors stay the same objects from call to call, so dynamo's guards on them hold."""
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._filled:
            fill_caches(self.module, torch.randn(x.shape, dtype=x.dtype, device=x.device))
            self._filled.add(key)
            self._caches = bias_caches(self.module)
        return frozen_caches(self.module, self._caches)

    def _packing(self) -> contextlib.AbstractContextManager:
        """:func:`onednn_weight_packing` when ``onednn`` is set, else nothing (inductor's own lowering)."""
        return onednn_weight_packing() if self.onednn else contextlib.nullcontext()

    def _package_for(self, x: torch.Tensor) -> Callable[[torch.Tensor], Any] | None:
        """The package for a new input shape: specialised to its batch size while the image size has fewer than
        :data:`SPECIALISED_BATCHES` of those, else the image size's package with a free batch (compiled on first
        need; where its export fails, a specialised one)."""
        image = (tuple(x.shape[1:]), x.dtype)
        if x.ndim > 0 and self._specialised.get(image, 0) >= SPECIALISED_BATCHES:
            if image not in self._any_batch:
                self._any_batch[image] = self._compile_ahead_of_time(x, any_batch=True)
            if self._any_batch[image] is not None:
                return self._any_batch[image]
        self._specialised[image] = self._specialised.get(image, 0) + 1
        return self._compile_ahead_of_time(x)

    def _compile_ahead_of_time(self, x: torch.Tensor, any_batch: bool = False) -> Callable[[torch.Tensor], Any] | None:
        """Export ``module`` on an input like ``x`` and compile it with AOTInductor; None (and a warning) when the
        module cannot be exported, so that calls of this shape take the dynamo path. ``any_batch``: export with a
        free batch dimension (dim 0; None without a warning when the export cannot keep it free)."""
        # export refuses inference tensors and inference mode: trace on a fresh example under no_grad
        with torch.inference_mode(False), torch.no_grad():
            # a free batch is traced at batch 2: export specialises dimensions of size 0 and 1
            example = torch.randn((2, *x.shape[1:]) if any_batch else x.shape, dtype=x.dtype)
            dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)},) if any_batch else None
            # filled for this size only (no other sizes' biases in the package) and traced inside frozen_caches, the
            # biases enter the graph as constants instead of being rebuilt from the parameters in every call
            clear_caches(self.module)
            fill_caches(self.module, example)
            try:
                with frozen_caches(self.module):
                    program = torch.export.export(self.module, (example,), dynamic_shapes=dynamic_shapes)
            except Exception as e:  # noqa: BLE001 - any tracing failure: the dynamo path still serves the model
                if any_batch:
                    return None
                warnings.warn(f"torch.export could not trace {type(self.module).__name__} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}): compiling it with torch.compile instead",
                              RuntimeWarning, stacklevel=3)
                return None
            return self._package(program)

    def _package(self, program: torch.export.ExportedProgram) -> Callable[[torch.Tensor], Any]:
        """The loaded AOTInductor package of ``program``: from ``cache_dir`` when it is kept there, else compiled
        (and kept there when there is a cache; a cache that cannot be written is skipped with a warning)."""
        from torch._inductor import aoti_compile_and_package, aoti_load_package, config

        options = {"freezing": True}
        key = package_key(program, {**options, "onednn": self.onednn}) if self.cache_dir is not None else None
        kept = None if key is None else self.cache_dir / f"{key}.pt2"
        if kept is not None and kept.is_file():
            try:
                loaded = aoti_load_package(str(kept))
                mark_used(kept)
                return loaded
            except Exception as e:  # noqa: BLE001 - a damaged or foreign file: compile afresh and replace it
                warnings.warn(f"could not load the cached package {kept} ({type(e).__name__}): compiling again",
                              RuntimeWarning, stacklevel=4)
        if kept is not None:
            try:
                kept.parent.mkdir(parents=True, exist_ok=True)
                folder = tempfile.TemporaryDirectory(dir=kept.parent)  # beside its place: the rename is atomic
            except OSError as e:
                warnings.warn(f"cannot write the compile cache {kept.parent} ({e.strerror or e}): compiling without "
                              "it (set CROSSFORMERS_COMPILE_CACHE or cache_dir to a directory you can write)",
                              RuntimeWarning, stacklevel=4)
                kept = None
        if kept is None:
            folder = tempfile.TemporaryDirectory()
        with self._packing(), config.patch(fx_graph_cache=False), folder as where:
            path = aoti_compile_and_package(program, package_path=os.path.join(where, "model.pt2"),
                                            inductor_configs=options)
            if kept is not None:
                os.replace(path, kept)
                path = str(kept)
                evict(kept.parent, keep=kept)
            return aoti_load_package(path)  # loaded into memory: a temporary file may go


def tensor_guards_only() -> dict[str, Any]:
    """``torch.compile`` arguments that keep only dynamo's guards on tensors (the input's shape, dtype, layout and
    device) and give the compiled function a cache of its own; ``{}`` on a PyTorch without both.

    By default dynamo re-checks every module attribute and global setting the graph read, before every call: 0.77 ms
    per call for FcaFormer-L1 (its "TorchDynamo Cache Lookup"; 0.01 ms with tensor guards only). A frozen inference
    graph depends on none of them, and its own cache (``isolate_recompiles``) keeps another model of the same class
    from matching it once its module guards are gone."""
    keep = getattr(torch.compiler, "keep_tensor_guards_unsafe", None)
    if keep is None or "isolate_recompiles" not in inspect.signature(torch.compile).parameters:
        return {}
    return {"options": {"guard_filter_fn": keep}, "isolate_recompiles": True}


def compile_for_inference(model: nn.Module, dynamic: bool = False, fullgraph: bool = True,
                          onednn: bool | None = None, ahead_of_time: bool | None = None,
                          cache_dir: str | os.PathLike | None = None) -> CompiledForInference:
    """Compile ``model`` for inference with inductor, weights frozen (and packed for oneDNN on the CPU).

    Args:
        model: any module taking one image batch; put in eval mode (in place). Apply eager fast paths first if you
            like (e.g. :func:`crossformers.inference.fuse`); oneDNN linear layers step aside while tracing.
        dynamic: passed to ``torch.compile`` (False: one specialised graph per input shape). With ``dynamic`` the
            dynamo path is used (dynamo's dynamic shapes instead of ahead-of-time packages).
        fullgraph: passed to ``torch.compile`` (every family compiles without graph breaks).
        onednn: pack linear weights for oneDNN instead of MKL; None = :func:`onednn_for_compile` for the model's
            family (this machine's calibration of compiled models, else the eager default).
            Has no effect on CUDA, where inductor's own lowering is used.
        ahead_of_time: compile CPU inputs with AOTInductor, a package per input shape for the first batch sizes of
            an image size and one with a free batch for the rest (see :class:`CompiledForInference`); None = yes
            where the weights are packed for oneDNN and not ``dynamic``.
            AOTInductor always packs for oneDNN, so ``ahead_of_time=True`` implies ``onednn`` (an explicit
            ``onednn=False`` with it is an error).
        cache_dir: keep the ahead-of-time packages in this directory and load them from there when a later call (in
            this or another process) exports the same program on the same machine and software
            (:mod:`crossformers.inference.package_cache`: about a second instead of tens of seconds); None = the
            directory named by ``CROSSFORMERS_COMPILE_CACHE``, or no cache when that is unset. Only a directory you
            own: loading a package runs its code. The least recently used packages are deleted beyond
            ``CROSSFORMERS_COMPILE_CACHE_MAX_MB`` MiB (default 5120; 0 keeps all).

    Raises:
        ValueError: ``ahead_of_time=True`` with ``onednn=False``.
        CompileCacheError: a cache is used and ``CROSSFORMERS_COMPILE_CACHE_MAX_MB`` is not a size in MiB.

    Returns:
        A :class:`CompiledForInference`; the first call of each input shape compiles (tens of seconds on a 2-core
        CPU; needs a C++ compiler on CPU) and every call runs without autograd.
    """
    if ahead_of_time and onednn is False:
        raise ValueError("ahead_of_time=True packs the linear weights for oneDNN (AOTInductor has no MKL packing): "
                         "pass onednn=True (or None), or ahead_of_time=False for MKL packing")
    model.eval()
    if onednn is None:
        onednn = True if ahead_of_time else onednn_for_compile(model)
    if ahead_of_time is None:
        ahead_of_time = onednn and not dynamic
    compiled = torch.compile(model, dynamic=dynamic, fullgraph=fullgraph, **tensor_guards_only())
    return CompiledForInference(model, compiled, onednn, ahead_of_time=ahead_of_time, dynamic=dynamic,
                                cache_dir=cache_dir)
