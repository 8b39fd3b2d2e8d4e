"""Reduced-precision inference: :func:`to_precision` turns a model into its ``fp32``, ``bf16`` or ``int8`` form.

* ``bf16``: BatchNorms and layer scales folded (:func:`crossformers.inference.fuse`), then every weight and buffer
  cast to bfloat16; inputs are cast on the way in and logits returned as float32. On CPUs with AVX512-BF16 / AMX the
  products run in oneDNN's bf16 kernels (AMX tiles where present). Casting the weights measured faster than
  ``torch.autocast`` at batch 1 (autocast re-casts every weight in every call; docs/benchmarks/precision.md).
  ``compile=True`` compiles the bf16 model with :func:`crossformers.inference.compile_for_inference`.
* ``int8``: PyTorch's PT2E quantization flow as kept in ``torchao`` (``torchao.quantization.pt2e``): the model is
  captured with ``torch.export``, annotated by the x86 Inductor quantizer (``X86InductorQuantizer``: int8 weights per
  output channel, int8 activations), and compiled by inductor with frozen weights (ahead of time, through
  :func:`crossformers.inference.compile_for_inference`), which lowers the quantize/dequantize pairs onto oneDNN's
  int8 kernels (VNNI / AMX-INT8). Activations are quantized *dynamically*
  (scale per batch at run time) unless ``calibration`` batches are given: then *statically*, with scales observed on
  those images (the user's data; a few dozen images suffice for these models).

Tolerances (relative to the largest fp32 logit, on the parity fixtures; tests/inference/test_precision.py):
:data:`TOLERANCE`. Top-1 agreement with fp32 is what matters in practice (docs/benchmarks/precision.md).

>>> from crossformers.inference import to_precision
>>> fast = to_precision(crossformers.create_model("crossformer_tiny"), "bf16")
>>> logits = fast(torch.randn(1, 3, 224, 224))          # float32 in, float32 out
"""
from __future__ import annotations

import copy
import os
import platform
import shutil
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import PrecisionError
from ..layers.bias_cache import fill_caches, frozen_caches
from ..layers.linear import set_onednn_linear
from ..utils.cpu import cpu_bf16_problem, cpu_has_vnni
from .compile import compile_for_inference
from .folding import fuse

__all__ = ["PRECISIONS", "TOLERANCE", "to_precision", "precision_support", "check_precision", "ReducedPrecision"]

#: the precisions :func:`to_precision` accepts
PRECISIONS = ("fp32", "bf16", "int8")
#: max |logit - fp32 logit| / max |fp32 logit| each precision stays within on the parity fixtures (tested)
TOLERANCE = {"fp32": 1e-5, "bf16": 5e-2, "int8": 2e-1}


def _has_cxx() -> bool:
    cxx = os.environ.get("CXX")
    return any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"])


def precision_support(precision: str, device: str | torch.device = "cpu") -> str | None:
    """Why ``precision`` cannot run on ``device`` here, as one sentence naming the fix; None when it can.

    bf16 on the CPU needs oneDNN's bf16 support (AVX-512 or newer: :func:`crossformers.utils.cpu.cpu_bf16_problem`;
    native bf16 instructions where the CPU has AVX512-BF16 / AMX-BF16, emulated on plain AVX-512). int8 needs an x86
    CPU with oneDNN, the ``torchao`` package and a C++ compiler (inductor generates the int8 code).
    """
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}"
    dev = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        if dev.type == "cuda":
            return None if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else (
                "this GPU has no bf16 support: use --precision fp32")
        if dev.type != "cpu":
            return f"bf16 is supported on cpu and cuda, not {dev.type}: use --precision fp32"
        problem = cpu_bf16_problem()
        return None if problem is None else f"{problem}: use --precision fp32"
    if dev.type != "cpu":
        return f"int8 runs on the CPU (x86 oneDNN kernels), not {dev.type}: use --device cpu, or --precision bf16"
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86") or not torch.backends.mkldnn.is_available():
        return f"int8 needs an x86 CPU with oneDNN (this is {platform.machine()}): use --precision fp32"
    try:
        import torchao.quantization.pt2e  # noqa: F401 - optional dependency (the int8 extra): is it installed?
    except ImportError:
        return "int8 needs the torchao package: pip install 'crossformers[int8]' (or torchao), or use --precision bf16"
    if not _has_cxx():
        return "int8 compiles with inductor, which needs a C++ compiler (none found): install g++ or set CXX"
    return None


def check_precision(precision: str, device: str | torch.device = "cpu") -> None:
    """Raise :class:`~crossformers.errors.PrecisionError` if :func:`precision_support` reports a problem."""
    problem = precision_support(precision, device)
    if problem is not None:
        raise PrecisionError(problem)


class ReducedPrecision(nn.Module):
    """A model in reduced precision behind an fp32 interface: ``forward`` casts the images to the model's input dtype
    and returns float32 outputs. ``source`` is the fp32 model it came from (not owned: for ``pretrained_cfg``, MAC
    counts and so on).

    bf16: ``module`` is the cast model (``compiled``: its :func:`compile_for_inference` wrapper, or None). int8: the
    model is captured and quantized for each image size (C, H, W) it is called with (``batch`` stays free) and the
    quantized graph is compiled on its first call (inductor, frozen weights; tens of seconds on 2 cores);
    ``modules`` maps each size to its quantized graph module.
    """

    def __init__(self, precision: str, source: nn.Module, input_dtype: torch.dtype, module: nn.Module | None = None,
                 compiled: nn.Module | None = None, build=None):
        super().__init__()
        self.precision = precision
        self.input_dtype = input_dtype
        self.module = module
        self._source = [source]  # a list: not registered as a submodule
        self._compiled = compiled
        self._build = build  # int8: (C, H, W) -> (graph module, compiled or None)
        self._per_size: dict[tuple[int, ...], tuple[nn.Module, nn.Module | None]] = {}
        self.pretrained_cfg = getattr(source, "pretrained_cfg", None)
        self.num_classes = getattr(source, "num_classes", None)

    @property
    def source(self) -> nn.Module:
        """The fp32 model this was made from."""
        return self._source[0]

    @property
    def modules_per_size(self) -> dict[tuple[int, ...], nn.Module]:
        """int8: image size (C, H, W) -> quantized graph module, for the sizes seen so far."""
        return {k: v[0] for k, v in self._per_size.items()}

    def prepare(self, x: torch.Tensor) -> None:
        """int8: capture and quantize for the image size of ``x`` (B, C, H, W) now rather than at the first call."""
        key = tuple(x.shape[1:])
        if self._build is not None and key not in self._per_size:
            self._per_size[key] = self._build(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) images (any float dtype) -> the model's outputs in float32, e.g. (B, num_classes)."""
        x = x.to(self.input_dtype)
        module, compiled = self.module, self._compiled
        if self._build is not None:
            self.prepare(x)
            module, compiled = self._per_size[tuple(x.shape[1:])]
        if compiled is None:
            return module(x).float()
        from torch._inductor import config  # private, heavy: loaded only when running a compiled graph

        with config.patch(freezing=True, fx_graph_cache=False), torch.no_grad():
            return compiled(x).float()

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _to_bf16(model: nn.Module, compile: bool) -> ReducedPrecision:
    plain = fuse(copy.deepcopy(model).eval())
    set_onednn_linear(plain, False)  # the oneDNN fp32 path does not apply to bf16 tensors
    plain.to(torch.bfloat16)
    compiled = compile_for_inference(plain) if compile else None
    return ReducedPrecision("bf16", model, torch.bfloat16, module=plain, compiled=compiled)


def _images(batch) -> torch.Tensor:
    return (batch[0] if isinstance(batch, (tuple, list)) else batch).float()  # (images, labels) of a DataLoader


def _quantize_int8(model: nn.Module, x: torch.Tensor, calibration: list | None, compile: bool):
    """(quantized graph module, its torch.compile wrapper or None) for inputs shaped like ``x`` (batch free)."""
    # optional dependency (the int8 extra), needed only for int8
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    plain = copy.deepcopy(model).eval()
    set_onednn_linear(plain, False)  # torch.export must see aten.linear for the quantizer to annotate it
    x = x.float()
    x = x.expand(2, *x.shape[1:]).contiguous() if x.shape[0] < 2 else x  # batch 1 would be specialised
    # the attention biases do not depend on the batch: filled once and traced inside frozen_caches, they are
    # constants of the graph, not rebuilt from the tables in every call
    fill_caches(plain, x)
    try:
        with torch.no_grad(), frozen_caches(plain):
            graph = torch.export.export(plain, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},),
                                        strict=False).module()
    except Exception as e:  # torch.export reports untraceable code in many exception types
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise PrecisionError(f"int8 needs a model torch.export can capture, and {type(model).__name__} failed "
                             f"({type(e).__name__}: {first}): use precision bf16") from None
    quantizer = xiq.X86InductorQuantizer()
    # without VNNI, activations use 0-127 (torchao's advice for such CPUs: their u8 x s8 pair sums saturate)
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=calibration is None,
                                                                           reduce_range=not cpu_has_vnni()))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for images in calibration or [x]:
            prepared(images)
    quantized = convert_pt2e(prepared)
    if not compile:
        return quantized, None
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(quantized)  # compile_for_inference puts it in eval mode
    # ahead of time (AOTInductor packages, see CompiledForInference): 0.86x the dynamo-compiled int8 FcaFormer-L1's
    # time
    return quantized, compile_for_inference(quantized, onednn=True)


def _to_int8(model: nn.Module, calibration: Iterable | None, compile: bool) -> ReducedPrecision:
    batches = None
    if calibration is not None:
        batches = [_images(b) for b in calibration]
        if not batches:
            raise PrecisionError("int8 calibration got no batches: pass an iterable of image batches (B, C, H, W), "
                                 "or calibration=None for dynamic quantization")
        if len({tuple(b.shape[1:]) for b in batches}) != 1:
            raise PrecisionError("int8 calibration batches differ in image size: calibrate at the size you infer at")
    wrapper = ReducedPrecision("int8", model, torch.float32, build=None)

    def build(x: torch.Tensor):
        if batches is not None and tuple(x.shape[1:]) != tuple(batches[0].shape[1:]):
            raise PrecisionError(f"this int8 model was calibrated on {tuple(batches[0].shape[1:])} images, got "
                                 f"{tuple(x.shape[1:])}: calibrate again at this size")
        return _quantize_int8(model, x, batches, compile)

    wrapper._build = build
    if batches is not None:
        wrapper.prepare(batches[0])
    return wrapper


def to_precision(model: nn.Module, precision: str = "fp32", *, calibration: Iterable[torch.Tensor] | None = None,
                 compile: bool | None = None) -> nn.Module:
    """``model`` for inference in ``precision``: ``'fp32'`` (the model itself, eval mode), ``'bf16'`` or ``'int8'``.

    The input model is not changed (bf16/int8 work on a copy). The result takes float32 images (B, C, H, W) and
    returns float32 logits (B, num_classes), so it drops into any fp32 pipeline.

    Args:
        model: a crossformers model (or any image model torch.export can capture, for int8), on its target device.
        precision: ``'fp32'``, ``'bf16'`` or ``'int8'`` (see the module docs for what each does).
        calibration: int8 only: an iterable of image batches (B, C, H, W) (or (images, labels) pairs, e.g. a
            DataLoader) to observe activation ranges on: static quantization, at the calibration images' size. None:
            dynamic quantization, captured for each image size at its first call.
        compile: bf16: also compile with inductor (default False: eager bf16). int8: compile (default True; False
            keeps the quantize/dequantize graph in eager mode, which computes the same numbers slowly: for tests).

    Returns:
        ``model`` (fp32) or a :class:`ReducedPrecision` wrapper.

    Raises:
        PrecisionError: unknown precision; a precision this CPU / device cannot run or a model int8 cannot capture
            (the message names the fix); calibration with a precision other than int8.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if calibration is not None and precision != "int8":
        raise PrecisionError(f"calibration applies to int8 only, not {precision}: drop it or use precision='int8'")
    check_precision(precision, _model_device(model))
    if precision == "fp32":
        return model.eval()
    if precision == "bf16":
        return _to_bf16(model, bool(compile))
    return _to_int8(model, calibration, True if compile is None else compile)
