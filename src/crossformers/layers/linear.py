"""Linear layers through oneDNN on the CPU: a switchable fast path for every ``nn.Linear`` / timm ``Mlp``.

PyTorch runs fp32 ``nn.Linear`` on the CPU through MKL's sgemm. On AMD CPUs MKL dispatches to its AVX2 code, while
oneDNN (bundled with PyTorch as MKL-DNN) uses its own AVX-512 kernels: on the 2-core AMD EPYC (Zen 5) of
``docs/reference.md`` oneDNN runs the matrix products of these models 1.5-2.4x faster (forward and both
backward products; measured in ``docs/profiling.md``). On Intel CPUs both libraries use AVX-512 and the gain is small.

Models made by :func:`crossformers.create_model` use this path by default where it was measured faster on the
machine (``crossformers profile --calibrate-linear``, :mod:`crossformers.layers.linear_calibration`), else on
AVX-512 CPUs (:func:`onednn_by_default`; ``create_model(..., onednn_linear=False)`` or
``CROSSFORMERS_ONEDNN_LINEAR=0`` to opt out). :func:`set_onednn_linear` switches a model's ``nn.Linear`` modules (and timm ``Mlp`` blocks, whose first layer
then also fuses the exact GELU) to :class:`OneDNNLinear` / :class:`OneDNNMlp` by changing their class: parameters, state
dict and results (within float rounding, ~1e-6 relative) stay the same, and the switch is reversible. The oneDNN
call is used only where it pays: fp32 CPU tensors, no autocast, and products of at least :data:`MIN_MACS`
multiply-adds (oneDNN's fixed cost per call is ~20 us). It steps aside while ``torch.compile``, ``torch.export`` or
``torch.jit.trace`` trace and under a Python dispatch mode such as ``torch.utils.flop_counter.FlopCounterMode``, so
compilers and FLOP counters see the ordinary ``aten.linear``; everything else goes through ``F.linear``. Training
works: a custom autograd function computes both backward products with oneDNN as well.

Packed weights (inference only, opt-in: :func:`set_packed_weights`, part of
:func:`crossformers.profiling.optimize_for_inference`): oneDNN reorders a plain weight matrix into its blocked
layout on every call. With packing on, each :class:`OneDNNLinear` keeps that blocked copy while no gradient is
recorded and reuses it until the weight changes (its storage or in-place version counter), which makes the products
of batch-1 inference ~25 % faster (measured in ``docs/profiling.md``). The price is a second copy of every packed
weight in memory (4 bytes per parameter); ``model.train()`` and :func:`set_packed_weights` ``(model, False)`` free it,
and it is never saved, pickled or deep-copied.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, register_notrace_function, register_notrace_module
from torch import nn

from .tracing import tool_is_running

__all__ = ["MIN_MACS", "LINEAR_KERNELS", "onednn_available", "calibration_model_of", "onednn_by_default",
           "onednn_default_reason",
           "onednn_for_inference", "onednn_for_training", "onednn_for_compile", "fast_linear", "OneDNNLinear",
           "OneDNNMlp", "set_onednn_linear", "set_packed_weights", "uses_onednn_linear", "linear_kernel",
           "LinearKernelMixin"]

MIN_MACS = 1 << 20  # below ~1 M multiply-adds oneDNN's per-call overhead outweighs its faster kernel
#: values of :func:`linear_kernel` / ``model.linear_kernel``
LINEAR_KERNELS = ("onednn", "native")
PACK_ROWS_HINT = 256  # least row count oneDNN is told to expect when it chooses a packed weight's blocked layout


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN (MKL-DNN) and its pointwise linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _env_setting() -> str | None:
    """``CROSSFORMERS_ONEDNN_LINEAR`` when it is ``0`` or ``1``, else None."""
    env = os.environ.get("CROSSFORMERS_ONEDNN_LINEAR", "").strip()
    return env if env in ("0", "1") else None


def _forced_by_env() -> bool | None:
    """``CROSSFORMERS_ONEDNN_LINEAR``: True (``1``, where oneDNN exists), False (``0``), None (unset)."""
    env = _env_setting()
    return None if env is None else (env == "1" and onednn_available())


def calibration_model_of(model: nn.Module | type | str | None) -> str | None:
    """The calibration model that stands for ``model``'s family: a name is returned as it is; a model class gives its
    ``linear_calibration_model`` attribute (the family protocol, :mod:`crossformers.models.protocol`); a module gives
    that of the first of its modules whose class declares one (wrappers such as feature extractors find their
    backbone's); else None."""
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, type):
        name = getattr(model, "linear_calibration_model", None)
        return name if isinstance(name, str) else None
    for m in model.modules():
        name = getattr(type(m), "linear_calibration_model", None)
        if isinstance(name, str):
            return name
    return None


def _size(model: nn.Module | type | str | None) -> int | None:
    """The parameter count of a model instance, which picks its family's small or large calibrated ratio; None for
    a class, a name or nothing (they have no size)."""
    return sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None


def _variant(model: nn.Module | type | str | None) -> str | None:
    """The registered architecture name of a model instance (its ``pretrained_cfg``), which finds a variant timed on
    its own in the calibration; None for anything else."""
    cfg = getattr(model, "pretrained_cfg", None) if isinstance(model, nn.Module) else None
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return arch if isinstance(arch, str) else None


def _decide(calibrated: str, fallback: Callable[[], bool], model: nn.Module | type | str | None = None,
            **details: Any) -> bool:
    """One decision of the linear path: ``CROSSFORMERS_ONEDNN_LINEAR`` if set; else the record that the function
    ``calibrated`` of :mod:`crossformers.layers.linear_calibration` reads for this machine (``model``'s family's own
    measurement where there is one; ``details`` are passed on), if any; else ``fallback()``. Always no without
    oneDNN."""
    forced = _forced_by_env()
    if forced is not None or not onednn_available():
        return bool(forced)
    from . import linear_calibration  # read only when a decision is asked for

    measured = getattr(linear_calibration, calibrated)(model=calibration_model_of(model), **details)
    return fallback() if measured is None else measured


def _avx512() -> bool:
    """The rule without a calibration: oneDNN where the CPU has AVX-512. Measured: oneDNN (packed or not) beat MKL on
    the AVX-512 AMD EPYCs (Zen 4 / Zen 5) and lost 1.06-1.20x on the AVX2-only Zen 3 (``docs/profiling.md``)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def onednn_by_default(model: nn.Module | type | str | None = None, variant: str | None = None) -> bool:
    """Whether :func:`crossformers.create_model` switches new models to the oneDNN linear path.

    In order: the environment variable ``CROSSFORMERS_ONEDNN_LINEAR`` (``0`` = MKL, ``1`` = oneDNN on any CPU); the
    measured choice for this machine and thread count, if ``crossformers profile --calibrate-linear`` recorded one
    (:mod:`crossformers.layers.linear_calibration`; for ``model``'s family where its own calibration model was
    timed: a model, a model class's ``linear_calibration_model`` name, or None for the combined choice; for a model
    instance nearer in parameter count to its family's timed large variant, that variant's as-created ratio, and for
    a variant timed on its own (``crossformers profile --calibrate-linear MODEL``), its own ratio, see
    :func:`~crossformers.layers.linear_calibration.calibrated_choice`); else yes on
    CPUs with AVX-512 (where the gain was first
    measured, on an AMD EPYC). Always no without oneDNN. ``variant``: the registered architecture name, for a model
    whose ``pretrained_cfg`` is not set yet (:func:`crossformers.create_model` decides while building it). Per model:
    ``create_model(..., onednn_linear=False)`` or
    :func:`set_onednn_linear`. The switch never changes parameters or the state dict and
    only acts on fp32 CPU tensors, so CUDA, bf16/autocast, ``torch.compile`` and export are unaffected.
    """
    return _decide("calibrated_choice", _avx512, model, params=_size(model), variant=variant or _variant(model))


def onednn_for_inference(model: nn.Module | type | str | None = None) -> bool:
    """Whether :func:`crossformers.inference.optimize_for_inference` switches to oneDNN with packed weights:
    ``CROSSFORMERS_ONEDNN_LINEAR`` if set, else this machine's calibration (packed oneDNN against MKL; ``model``'s
    family's as in :func:`onednn_by_default`; for a model instance, its family's large variant's where the model is
    nearer to that one in parameter count, or a variant's own ratio where it was timed on its own, see
    :func:`~crossformers.layers.linear_calibration.calibrated_inference_choice`) if recorded, else yes on CPUs with
    AVX-512 (as :func:`onednn_by_default`: packed oneDNN took 1.06-1.20x MKL's time on an AVX2-only AMD EPYC Zen 3).
    Always no without oneDNN."""
    return _decide("calibrated_inference_choice", _avx512, model, params=_size(model), variant=_variant(model))


def onednn_for_training(model: nn.Module | type | str | None = None) -> bool:
    """Whether :func:`crossformers.inference.optimize_for_training` and ``crossformers train`` use oneDNN linear
    layers: ``CROSSFORMERS_ONEDNN_LINEAR`` if set, else this machine's calibrated training step (oneDNN against MKL,
    forward and backward; ``model``'s family's as in :func:`onednn_by_default`) if recorded, else
    :func:`onednn_by_default`. Always no without oneDNN.

    The training choice is separate because it can differ from inference's: on the 2-core Intel Xeon with AMX,
    oneDNN made the batch-32 training steps of CrossViT-9 and CrossFormer-T about 1.17x and 1.07x slower than MKL
    (``docs/profiling.md``)."""
    return _decide("calibrated_training_choice", lambda: onednn_by_default(model), model)


def onednn_for_compile(model: nn.Module | type | str | None = None) -> bool:
    """Whether :func:`crossformers.inference.compile_for_inference` makes inductor pack the frozen linear weights for
    oneDNN rather than MKL: ``CROSSFORMERS_ONEDNN_LINEAR`` if set, else this machine's calibrated compiled models
    (``crossformers profile --calibrate-linear --compile``; ``model``'s family's as in :func:`onednn_by_default`) if
    recorded, else :func:`onednn_by_default`. Always no without oneDNN.

    The compiled choice is separate because inductor's packed products are not the eager kernels: on the 2-core AMD
    EPYC Zen 4 of ``docs/profiling.md`` eager FcaFormer-L1 and CrossViT-9 were as fast on MKL as on oneDNN, but
    compiled with oneDNN packing they took 0.76x and 0.91x the time of MKL packing; on the Intel Xeon with AMX, MKL
    packing was the faster (CrossFormer-T 31-33 against 36 ms)."""
    return _decide("calibrated_compile_choice", lambda: onednn_by_default(model), model)


def onednn_default_reason(model: nn.Module | type | str | None = None) -> str:
    """Why :func:`onednn_by_default` decides as it does here (for ``model``'s family, as there), in words (for
    benchmark tables and logs)."""
    env = _env_setting()
    if env is not None:
        return f"CROSSFORMERS_ONEDNN_LINEAR={env}"
    if not onednn_available():
        return "no oneDNN in this build"
    from .linear_calibration import calibrated_choice, calibrated_models, calibrated_variants, calibration_path

    if calibrated_choice() is not None:
        family, variant = calibration_model_of(model), _variant(model)
        timed = f", as {family} measured" if family in calibrated_models() else ""
        if variant is not None and variant in calibrated_variants():
            timed = f", as {variant} measured on its own"
        return f"calibrated for {torch.get_num_threads()} thread(s) in {calibration_path()}{timed}"
    return "AVX-512 rule (not calibrated on this machine)"


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, attr: str = "none",
            algorithm: str = "") -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


class _OneDNNLinearFn(torch.autograd.Function):
    """y = x W^T + b with oneDNN for the forward product and both backward products."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _onednn(g, weight.t(), None).reshape(x.shape)  # (M, N) @ (N, K)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            if x2.shape[1] <= g.shape[1]:
                # oneDNN is fastest with the larger of N, K as its output channels (measured: 25-40 % less time
                # for qkv / fc1-shaped products): compute gw^T = x^T g, (K, M) @ (M, N), and return its (N, K) view
                gw = _onednn(x2.t().contiguous(), g.t(), None).t()
            else:
                gw = _onednn(g.t(), x2.t(), None)  # (N, M) @ (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if tool_is_running():
        return False  # compilers, exporters and dispatch modes (FlopCounterMode, ...) see the ordinary aten.linear
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if x.dim() < 2 or torch.is_autocast_enabled("cpu"):
        return False
    return x.numel() * weight.shape[0] >= MIN_MACS and onednn_available()


@register_notrace_function  # branches on dtype/device/autograd state: an FX leaf
def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN when that is faster (see the module docs).

    Args:
        x: (..., in_features).
        weight: (out_features, in_features).
        bias: (out_features,) or None.

    Returns:
        (..., out_features).
    """
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _OneDNNLinearFn.apply(x, weight, bias)
    return _onednn(x, weight, bias)


@register_notrace_module  # an FX leaf like nn.Linear, so traced models keep the oneDNN path
class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`fast_linear` (same parameters and state dict); with ``pack_weights``
    (see :func:`set_packed_weights`) inference reuses a cached oneDNN-blocked copy of the weight."""

    pack_weights: bool = False  # class default; set_packed_weights sets it per module

    def extra_repr(self) -> str:
        """``nn.Linear``'s fields plus the kernel, e.g. ``in_features=64, out_features=192, bias=True,
        kernel=onednn`` (and ``packed_weights=True`` when :func:`set_packed_weights` is on)."""
        return super().extra_repr() + ", kernel=onednn" + (", packed_weights=True" if self.pack_weights else "")

    def inference_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed weight for a product with ``x`` (cached; re-packed when the weight changed), or None when
        packing is off or does not apply: gradients recorded, a weight created under ``torch.inference_mode`` (no
        version counter to notice updates) or a product that :func:`fast_linear` would not send to oneDNN."""
        w = self.weight
        # _use_onednn first: it steps aside while torch.compile traces, which cannot trace is_inference()
        if not self.pack_weights or torch.is_grad_enabled() or not _use_onednn(x, w) or w.is_inference():
            return None
        key = (w.data_ptr(), w._version, w.shape)
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            rows = max(x.numel() // x.shape[-1], PACK_ROWS_HINT)
            cached = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows))
            self.__dict__["_packed"] = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.inference_weight(x)
        if packed is not None:
            return _onednn(x, packed, self.bias)
        return fast_linear(x, self.weight, self.bias)

    def train(self, mode: bool = True) -> OneDNNLinear:
        if mode:
            self.__dict__.pop("_packed", None)  # free the copy: training changes the weight every step
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_packed", None)  # an opaque oneDNN tensor: never pickled or deep-copied, re-packed on demand
        return state


@register_notrace_module
class OneDNNMlp(Mlp):
    """timm ``Mlp`` whose layers use :func:`fast_linear`; in inference the exact GELU is fused into the first product
    (oneDNN ``gelu_erf`` post-op) when the block is fc1 -> GELU -> fc2 with nothing in between that acts."""

    def _fusable(self, x: torch.Tensor) -> bool:
        act = self.act
        return (isinstance(act, nn.GELU) and act.approximate == "none" and isinstance(self.norm, nn.Identity)
                and (not self.training or self.drop1.p == 0) and not torch.is_grad_enabled()
                and isinstance(self.fc1, nn.Linear) and _use_onednn(x, self.fc1.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fusable(x):
            packed = self.fc1.inference_weight(x) if isinstance(self.fc1, OneDNNLinear) else None
            x = _onednn(x, self.fc1.weight if packed is None else packed, self.fc1.bias, "gelu", "none")
        else:
            x = self.act(self.fc1(x))
            x = self.drop1(x)
            x = self.norm(x)
        x = self.fc2(x)
        return self.drop2(x)


def set_onednn_linear(model: nn.Module, enable: bool = True) -> nn.Module:
    """Switch every plain ``nn.Linear`` and timm ``Mlp`` of ``model`` to the oneDNN fast path (or back).

    Only modules of exactly these classes change (subclasses keep their own forward). Returns ``model``.
    """
    swaps = {nn.Linear: OneDNNLinear, Mlp: OneDNNMlp} if enable else {OneDNNLinear: nn.Linear, OneDNNMlp: Mlp}
    for m in model.modules():
        new = swaps.get(type(m))
        if new is not None:
            if not enable:
                m.__dict__.pop("_packed", None)
                m.__dict__.pop("pack_weights", None)
            m.__class__ = new
    return model


def set_packed_weights(model: nn.Module, enable: bool = True) -> nn.Module:
    """Let every :class:`OneDNNLinear` of ``model`` keep a oneDNN-packed copy of its weight for inference (or stop,
    freeing the copies).

    Packing applies only while no gradient is recorded (``torch.no_grad()`` / ``torch.inference_mode()``) to fp32 CPU
    products that go to oneDNN; the copy is rebuilt when the weight is replaced, loaded or updated in place. Memory:
    one extra fp32 copy of each packed weight (``4 * params`` bytes). Modules not switched by
    :func:`set_onednn_linear` are left alone. Returns ``model``.
    """
    for m in model.modules():
        if isinstance(m, OneDNNLinear):
            m.pack_weights = enable
            if not enable:
                m.__dict__.pop("_packed", None)
    return model


def uses_onednn_linear(module: nn.Module) -> bool:
    """Whether ``module`` is switched to the oneDNN path (for layers that call ``F.linear`` on a module's weights)."""
    return isinstance(module, OneDNNLinear)


def linear_rows(layer: nn.Linear, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Output features ``start:stop`` of ``layer`` for inputs ``x`` (..., in_features) -> (..., stop - start),
    computed with the layer's own kernel (oneDNN when the layer is switched to it, else ``F.linear``): e.g. only the
    key/value rows of a fused qkv projection."""
    weight = layer.weight[start:stop]
    bias = None if layer.bias is None else layer.bias[start:stop]
    return fast_linear(x, weight, bias) if uses_onednn_linear(layer) else F.linear(x, weight, bias)


def linear_kernel(model: nn.Module) -> str:
    """Which kernel the linear layers of ``model`` use: ``"onednn"`` when they are switched to the oneDNN path
    (:func:`set_onednn_linear`; any :class:`OneDNNLinear` / :class:`OneDNNMlp` in the model), else ``"native"``
    (PyTorch's ``F.linear``: MKL / cuBLAS)."""
    return "onednn" if any(isinstance(m, (OneDNNLinear, OneDNNMlp)) for m in model.modules()) else "native"


class LinearKernelMixin:
    """Gives a model the documented attribute ``linear_kernel``: ``"onednn"`` or ``"native"`` (see
    :func:`linear_kernel`); assigning it switches the model (``model.linear_kernel = "native"`` turns the oneDNN path
    off, like :func:`set_onednn_linear` ``(model, False)``)."""

    @property
    def linear_kernel(self) -> str:
        """``"onednn"`` or ``"native"``: the kernel of this model's linear layers (settable)."""
        return linear_kernel(self)  # type: ignore[arg-type]

    @linear_kernel.setter
    def linear_kernel(self, kernel: str) -> None:
        if kernel not in LINEAR_KERNELS:
            raise ValueError(f"linear_kernel must be one of {', '.join(LINEAR_KERNELS)}, got {kernel!r}")
        set_onednn_linear(self, kernel == "onednn")  # type: ignore[arg-type]
