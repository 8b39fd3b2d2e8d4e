"""Export a classifier to ONNX or ``torch.export`` (``.pt2``) and verify the result against PyTorch.

:func:`export_model` traces the model with ``torch.export`` (explicit softmax attention, the same math as the fused
kernel: the ONNX translation of fused attention with a bias or 5-D inputs is not reliable), converts it with the
``torch.onnx`` dynamo exporter, and runs the saved file (onnxruntime, or ``torch.export.load``) against the eager
model:

* static (default): one batch size and image size; verified at that shape, and a second image size is checked to be
  rejected by the runtime.
* ``dynamic=True``: dynamic batch, and dynamic height/width over the sizes on which the model takes one code path
  (:func:`crossformers.export.shapes.dynamic_size_rule`: any size for CrossViT, multiples of 224 from 448 for
  CrossFormer, ...). The ONNX graph carries a check that makes onnxruntime reject other sizes (a Reshape by the period
  and a Gather at the minimum fail) instead of computing wrong outputs; the exporter verifies parity at two sizes of
  the set and that sizes outside it are rejected. If ``torch.export`` cannot trace the model over that set, the
  export falls back to a fixed image size (dynamic batch only) and the report says why.

Verification compares logits relative to their scale (``atol * max(1, max|logits|)``) and the top-1 class of every
sample whose two best logits differ by more than 0.1 % of the logit scale (which catches a changed prediction
even under a loose ``atol``). Logits of an untrained model can be tiny (FcaFormer's layer scales of
1e-6 give ~1e-19), which makes any difference look small: when the model's largest logit is below
:data:`MIN_LOGIT_SCALE`, a copy with re-initialised weights (order-1 logits, same graph) is exported the same way and
the checks are repeated on it; the report says so.

The file's ``metadata_props`` hold the sizes it serves (``crossformers.size_rule``, JSON);
:class:`crossformers.export.OnnxClassifier` reads them and refuses other sizes up front with a message naming the
served sizes, instead of onnxruntime's raw Reshape/Gather error.

A verification failure deletes the written file and raises :class:`ExportError`: no unverified graph is left behind.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.loading import load_model, model_in_chans
from ..errors import CrossformersError
from ..layers.bias_cache import InferenceCache
from ..utils.onnx_session import open_session
from .shapes import SizeRule, dynamic_size_rule

__all__ = ["ExportError", "ExportReport", "Check", "SizeGuard", "export_model", "FORMATS", "PRECISIONS",
           "MIN_LOGIT_SCALE"]

FORMATS = ("onnx", "torch.export")
PRECISIONS = ("fp32", "int8")
INT8_ATOL = 0.1  # int8 ONNX: allowed |diff| per unit of logit scale (dynamic quantisation of every MatMul / Gemm)
_SUFFIX = {"onnx": ".onnx", "torch.export": ".pt2"}
_MAX_SIDE = 16384
_MAX_BATCH = 4096
MIN_LOGIT_SCALE = 0.1  # largest |logit| below this: too small for a meaningful comparison (checked on a copy)
TOP1_MARGIN = 1e-3  # top-1 compared where the two best logits differ by more than this x max(1, max|logit|)


class ExportError(CrossformersError, RuntimeError):
    """An export that cannot be done or did not verify (the message says which check failed and what to do)."""


@dataclass
class Check:
    """One run of the exported file.

    Attributes:
        shape: input (B, C, H, W).
        expected: 'match' (outputs must equal PyTorch within ``atol``) or 'reject' (the runtime must refuse it).
        passed: whether the expectation held.
        max_abs_diff: largest |exported - PyTorch| over the logits (None if the runtime refused the input).
        message: the runtime's error for a refused input (first line), or why a check failed / did not count.
        logit_scale: largest |PyTorch logit| of the run (the scale the difference is judged against).
        top1_agree: whether the exported file predicts the same top-1 class as PyTorch on every sample whose two
            best PyTorch logits differ by more than ``TOP1_MARGIN * max(1, max|logit|)`` (None if not compared).
        probe: the run used a copy of the model with re-initialised weights, exported the same way (the model's
            own logits were below :data:`MIN_LOGIT_SCALE`).
    """

    shape: tuple[int, int, int, int]
    expected: str
    passed: bool
    max_abs_diff: float | None = None
    message: str | None = None
    logit_scale: float | None = None
    top1_agree: bool | None = None
    probe: bool = False

    def describe(self) -> str:
        b, c, h, w = self.shape
        size = f"batch {b}, {c}x{h}x{w}" + (" [re-initialised copy]" if self.probe else "")
        if self.expected == "match":
            status = "OK" if self.passed else "FAILED"
            diff = "not run" if self.max_abs_diff is None else f"max |diff| {self.max_abs_diff:.2e}"
            if self.logit_scale is not None:
                diff += f" at max |logit| {self.logit_scale:.2e}"
            if self.top1_agree is not None:
                diff += ", top-1 " + ("equal" if self.top1_agree else "DIFFERS")
            extra = f" ({self.message})" if self.message else ""
            return f"{status}  {size}: {diff}{extra}"
        if self.max_abs_diff is None:
            return f"OK  {size}: rejected as expected ({self.message})"
        status = "OK" if self.passed else "FAILED"
        return f"{status}  {size}: accepted, max |diff| {self.max_abs_diff:.2e} (expected a rejection)"


@dataclass
class ExportReport:
    """What was exported and what was verified.

    Attributes:
        model: model name (or class name).
        format: 'onnx' or 'torch.export'.
        output: the written file.
        input_shape: the traced input (B, C, H, W) (dynamic CrossViT exports trace off the branches' native
            sizes, and verify at them).
        dynamic_batch: the batch dimension is dynamic.
        dynamic_hw: height/width are dynamic (over ``valid_sizes``).
        valid_sizes: the input sizes the file serves, in words.
        notes: what differs from the request (height/width fixed although dynamic was asked for, and why; a traced
            size other than the model's default).
        size_rule: period and minimum (pixels) of the dynamic sizes, or None.
        checks: verification runs (see :class:`Check`).
        verified: True if verification ran and every check passed.
        tolerance: the ``atol`` used (per unit of logit scale: allowed |diff| = atol * max(1, max|logits|)).
        attention: the attention path that was exported ('explicit').
        opset: ONNX opset (None for torch.export).
        seconds: export time (s), verification excluded.
        file_mb: size of the written file (MB).
        precision: ``'fp32'`` or ``'int8'`` (dynamically quantised ONNX).
    """

    model: str
    format: str
    output: str
    input_shape: tuple[int, int, int, int]
    dynamic_batch: bool
    dynamic_hw: bool
    valid_sizes: str
    notes: list[str] = field(default_factory=list)
    size_rule: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)
    verified: bool = False
    tolerance: float = 1e-4
    attention: str = "explicit"
    opset: int | None = None
    seconds: float = 0.0
    file_mb: float = 0.0
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines: file, shapes, what is dynamic, each check."""
        b, c, h, w = self.input_shape
        lines = [f"exported {self.model} to {self.output} ({self.format}"
                 + (f", {self.precision}" if self.precision != "fp32" else "")
                 + f", {self.file_mb:.1f} MB, {self.seconds:.0f} s"
                 + (f", opset {self.opset}" if self.opset else "") + ")",
                 f"  input 'images' (B, {c}, H, W), normalised images; output 'logits' (B, classes); traced at "
                 f"batch {b}, {h}x{w}",
                 f"  batch: {'dynamic' if self.dynamic_batch else f'fixed {b}'}; height/width: "
                 + ("dynamic, " + self.valid_sizes if self.dynamic_hw else f"fixed {h}x{w}")]
        lines += [f"  NOTE: {n}" for n in self.notes]
        if not self.checks:
            lines.append("  not verified (verification was switched off)")
        else:
            runtime = "onnxruntime" if self.format == "onnx" else "torch.export.load"
            lines.append(f"  verified with {runtime} against PyTorch (atol {self.tolerance:g} x max(1, max|logit|), "
                         "and top-1):")
            lines += [f"    {chk.describe()}" for chk in self.checks]
        return "\n".join(lines)


@contextlib.contextmanager
def _export_mode(model: nn.Module) -> Iterator[None]:
    """Explicit attention, no position-bias caches, eval mode; everything restored afterwards."""
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    caches = {m: m.enabled for m in model.modules() if isinstance(m, InferenceCache)}
    training = model.training
    for m in fused:
        m.fused_attn = False
    for c in caches:  # tensors traced by torch.export must not outlive the trace
        c.clear()
        c.enabled = False
    model.eval()
    try:
        yield
    finally:
        for m, v in fused.items():
            m.fused_attn = v
        for c, enabled in caches.items():
            c.clear()
            c.enabled = enabled
        model.train(training)


class SizeGuard(nn.Module):
    """``model`` plus a check, inside the exported graph, that the input size belongs to ``rule``.

    ``arange(H).reshape(H // ph, ph)`` fails unless ph divides H, and a Gather at index ``min_h // ph - 1`` fails
    unless H >= min_h (same for W); the checked value enters the output as an exact ``+ 0`` so that the graph keeps
    it. The outputs are those of ``model``, bit for bit.
    """

    def __init__(self, model: nn.Module, rule: SizeRule):
        super().__init__()
        self.model = model
        self.period = rule.period
        self.blocks = (rule.minimum[0] // rule.period[0], rule.minimum[1] // rule.period[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        zero = None
        for dim, p, k in ((2, self.period[0], self.blocks[0]), (3, self.period[1], self.blocks[1])):
            n = x.shape[dim]
            rows = torch.arange(n, device=x.device).reshape(n // p, p)
            picked = rows.index_select(0, torch.full((1,), k - 1, dtype=torch.long, device=x.device))
            term = picked.sum() * 0
            zero = term if zero is None else zero + term
        return out + zero.to(out.dtype)


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).strip().split())
    for marker in ("Exception summary", "<class"):
        if marker in text:
            text = text[text.index(marker):]
    return (text or type(e).__name__)[:300]


def _repeat_interleave(x: torch.Tensor, repeats: int, dim: int | None = None,
                       output_size: int | None = None) -> torch.Tensor:
    """``x.repeat_interleave(repeats, dim)`` (an int count) as unsqueeze + expand + flatten: the ONNX translation of
    ``aten.repeat_interleave.self_int`` with a symbolic count builds an invalid Expand (e.g. in a model of the user's)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    dim = dim % x.dim()
    y = x.unsqueeze(dim + 1)
    sizes = list(y.shape)
    sizes[dim + 1] = repeats
    return y.expand(sizes).flatten(dim, dim + 1)


def _resolve_model(model: str | os.PathLike | nn.Module, checkpoint_path, pretrained: bool,
                   model_kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    loaded = load_model(model, checkpoint_path, pretrained=pretrained, model_kwargs=model_kwargs or None)
    return loaded.model, loaded.name


def _default_size(model: nn.Module) -> tuple[int, int]:
    size = getattr(model, "img_size", None)  # the size the model was built for (tables, position embeddings)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    return int(size[1]), int(size[2])


def _trace(model: nn.Module, x: torch.Tensor, dynamic_shapes, defer: bool = False) -> torch.export.ExportedProgram:
    return torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes,
                               prefer_deferred_runtime_asserts_over_guards=defer)


def _write(ep: torch.export.ExportedProgram, x: torch.Tensor, fmt: str, path: Path, opset: int | None,
           metadata: dict[str, str], precision: str = "fp32") -> int | None:
    if fmt == "torch.export":
        torch.export.save(ep, str(path))
        return None
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install onnx onnxscript onnxruntime")
    if any(n.target is torch.ops.aten.repeat_interleave.self_int for n in ep.graph.nodes):
        # a whole re-trace (seconds to a minute with symbolic sizes), so only where the graph needs it: our models build
        # their grids without repeat_interleave (layers.position_bias.grid_coords)
        ep = ep.run_decompositions({torch.ops.aten.repeat_interleave.self_int: _repeat_interleave})
    kwargs: dict[str, Any] = dict(dynamo=True, input_names=["images"], output_names=["logits"], verbose=False)
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in quiet]
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(ep, (x,), **kwargs)
        finally:
            for lg, lv in zip(quiet, levels, strict=True):
                lg.setLevel(lv)
    for k, v in metadata.items():
        program.model.metadata_props[k] = v
    program.save(str(path))
    if precision == "int8":
        _quantize_int8(path)
    return int(program.model.opset_imports.get("", 0)) or opset


def _quantize_int8(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` with onnxruntime's dynamic int8 quantisation (int8 weights of every MatMul
    / Gemm, activation scales computed per call), keeping its metadata and recording ``crossformers.precision``."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ExportError("an int8 ONNX export needs onnxruntime (its quantization tools): pip install "
                          "onnxruntime") from None
    fp32 = path.with_name(path.stem + ".fp32-tmp.onnx")
    source = onnx.load(str(path))
    props = {p.key: p.value for p in source.metadata_props}
    del source.graph.value_info[:]  # the exporter's intermediate shapes: the quantizer re-infers them (and trips on them)
    onnx.save(source, str(fp32))
    path.unlink()
    quiet = logging.getLogger()
    level = quiet.level
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            quiet.setLevel(logging.ERROR)  # its advice to pre-process is logged on the root logger
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        model = onnx.load(str(path))
        have = {p.key for p in model.metadata_props}
        for k, v in {**props, "crossformers.precision": "int8"}.items():
            if k not in have:
                entry = model.metadata_props.add()
                entry.key, entry.value = k, v
        onnx.save(model, str(path))
    finally:
        quiet.setLevel(level)
        fp32.unlink(missing_ok=True)


class _Runner:
    """Runs the written file: onnxruntime for ONNX, the loaded ExportedProgram for torch.export."""

    def __init__(self, fmt: str, path: Path):
        self.fmt = fmt
        if fmt == "onnx":
            # refused inputs are expected in the checks: no console noise
            self.session = open_session(path, ExportError, "verifying an ONNX export", quiet=True,
                                        hint=" (or pass verify=False / --no-verify)")
            self.name = self.session.get_inputs()[0].name
        else:
            self.module = torch.export.load(str(path)).module()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt == "onnx":
            return torch.from_numpy(self.session.run(None, {self.name: x.numpy()})[0])
        with torch.no_grad():
            out = self.module(x)
        return out if isinstance(out, torch.Tensor) else out[0]


def _top1_margin(precision: str, atol: float) -> float:
    """Where the top-1 is compared: beyond rounding (``TOP1_MARGIN``) for fp32, beyond the tolerance for int8."""
    return atol if precision == "int8" else TOP1_MARGIN


def _verify(model: nn.Module, runner, shape: tuple[int, ...], expected: str, atol: float, seed: int,
            probe: bool = False, top1_margin: float = TOP1_MARGIN) -> Check:
    """Run the exported file (``runner``) and ``model`` on one random input of ``shape`` and compare.

    A 'match' passes when max |diff| <= atol * max(1, max|logits|) and the top-1 classes agree wherever PyTorch's
    two best logits differ by more than ``top1_margin * max(1, max|logits|)`` (near-ties may flip by rounding;
    int8 files use their ``atol`` as the margin). Logits below :data:`MIN_LOGIT_SCALE` make a comparison
    meaningless: such a check passes with a message saying so, and the caller repeats it on a re-initialised copy.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    shape = tuple(int(s) for s in shape)
    try:
        got = runner(x)
    except Exception as e:  # noqa: BLE001 - the runtime's refusal is the expected outcome of a 'reject' check
        if expected == "reject":
            return Check(shape, expected, True, None, _first_line(e))
        return Check(shape, expected, False, None, f"the runtime refused it: {_first_line(e)}")
    try:
        with torch.no_grad():
            ref = model(x)
    except Exception as e:  # noqa: BLE001 - PyTorch refuses a size the exported file accepted
        return Check(shape, expected, False, None, f"accepted although PyTorch refuses it ({_first_line(e)})")
    if tuple(got.shape) != tuple(ref.shape):
        return Check(shape, expected, False, None, f"output shape {tuple(got.shape)} != {tuple(ref.shape)}")
    got, ref = got.float(), ref.float()
    diff = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    allowed = atol * max(1.0, scale)
    agree = None
    if ref.ndim == 2 and ref.shape[-1] > 1:
        best = ref.topk(2, dim=-1).values
        clear = (best[:, 0] - best[:, 1]) > top1_margin * max(1.0, scale)  # near-ties may flip by rounding
        agree = bool((got.argmax(-1) == ref.argmax(-1))[clear].all())
    if expected == "match" and scale < MIN_LOGIT_SCALE and not probe:
        return Check(shape, expected, True, diff, f"logits too small to compare (max |logit| {scale:.1e}): "
                     "checked on a re-initialised copy", scale, agree, probe)
    ok = diff <= allowed and agree is not False
    why = None
    if not ok:
        why = f"exceeds atol {atol:g} x max(1, max|logit|) = {allowed:.2e}" if diff > allowed else \
            "the top-1 class differs"
    # a 'reject' size that runs and still matches is harmless; one that runs and differs is a wrong graph
    return Check(shape, expected, ok, diff, why, scale, agree, probe)


def _reinitialised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose floating-point parameters get random perturbations (std 0.05 plus their own values),
    so that no layer scale or zero-initialised head keeps the logits near zero; same modules, same graph."""
    import copy

    probe = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in probe.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return probe.eval()


def export_model(
    model: str | os.PathLike | nn.Module,
    format: str = "onnx",  # noqa: A002 - the CLI's --format
    output: str | os.PathLike | None = None,
    img_size: int | tuple[int, int] | None = None,
    dynamic: bool = False,
    batch_size: int = 1,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool = False,
    opset: int | None = None,
    verify: bool = True,
    atol: float | None = None,
    overwrite: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> ExportReport:
    """Export a classifier to ONNX or ``torch.export`` and verify it (see the module docs).

    Args:
        model: a model name, one of our run/checkpoint directories, or an ``nn.Module`` (a classifier taking
            (B, C, H, W) normalised images and returning logits).
        format: ``'onnx'`` (``.onnx``, opset of the torch.onnx dynamo exporter) or ``'torch.export'`` (``.pt2``,
            ``torch.export.save``).
        output: file to write (default ``<model name>.onnx`` / ``.pt2`` in the current directory).
        img_size: traced image size in pixels, int or (H, W) (default: the model's ``pretrained_cfg`` input size;
            with ``dynamic`` the smallest valid size at least that large).
        dynamic: dynamic batch, and dynamic H/W where the model allows (see module docs).
        batch_size: batch of a static export (dynamic exports trace with batch 2).
        checkpoint_path: weights for a model name (ours or official; converted, strict).
        pretrained: the authors' released weights for a model name.
        opset: ONNX opset (default: the exporter's).
        verify: run the file against PyTorch (needs onnxruntime for ONNX).
        atol: largest allowed |exported - PyTorch| on the logits, per unit of logit scale (default 1e-4; int8:
            :data:`INT8_ATOL`, and the top-1 is compared where the two best logits differ by more than that).
        overwrite: replace an existing ``output``; if False an existing file is an error.
        model_kwargs: model arguments for a model name (e.g. ``{"num_classes": 10, "img_size": 448}``; the model's
            own ``img_size`` sizes its tables, the export size is ``img_size`` above).
        precision: ``'fp32'``, or ``'int8'`` for ONNX: the fp32 graph rewritten by onnxruntime's dynamic
            quantisation (``onnxruntime.quantization.quantize_dynamic``: int8 weights of every MatMul / Gemm,
            activations quantised per call) and verified against the fp32 PyTorch model within ``atol``.

    Returns:
        :class:`ExportReport` (``summary()`` for text, ``to_dict()`` for JSON).

    Raises:
        ExportError: unknown format or precision (bf16, int8 for torch.export: what the format cannot hold), an
            ``img_size`` outside the dynamic sizes of the model, an existing output with ``overwrite=False``, missing
            onnxruntime, a failed trace, or a failed verification (the file is deleted).
        UnknownModelError, CheckpointError, PretrainedUnavailableError: from loading the model.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if precision == "bf16":
        raise ExportError("precision bf16 is not exported: onnxruntime's CPU provider runs no bfloat16 matrix "
                          "products, and a torch.export file holds the model you export. Use precision int8 (ONNX) "
                          "or fp32, or crossformers.inference.to_precision(model, 'bf16') in Python")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and format != "onnx":
        raise ExportError("precision int8 is exported to ONNX only (onnxruntime's quantization): use format onnx, "
                          "or crossformers.inference.to_precision(model, 'int8') in Python for PyTorch")
    if atol is None:
        atol = INT8_ATOL if precision == "int8" else 1e-4
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    net, name = _resolve_model(model, checkpoint_path, pretrained, dict(model_kwargs or {}))
    chans = model_in_chans(net)
    requested = img_size
    if img_size is None:
        img_size = _default_size(net)
    h, w = (int(img_size), int(img_size)) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    if h < 1 or w < 1:
        raise ExportError(f"img_size must be positive, got {h}x{w}")
    path = Path(output) if output is not None else Path(f"{Path(name).name}{_SUFFIX[format]}")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists: choose another --output or pass --force to replace it")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)

    rule: SizeRule | None = dynamic_size_rule(net) if dynamic else None
    notes = []
    if rule is not None and not rule.contains(h, w):
        if requested is not None:
            nh, nw = rule.nearest(h, w)
            raise ExportError(
                f"{name} exports dynamic height/width only for {rule.describe()} ({rule.why}); {h}x{w} is not one "
                f"of them: pass e.g. img_size {nh} {nw} (pad or resize inputs to such sizes), or export without "
                f"dynamic for a fixed {h}x{w} graph")
        nh, nw = rule.nearest(h, w)
        notes.append(f"traced at {nh}x{nw}: the model's default {h}x{w} is not among its dynamic sizes "
                     f"({rule.describe()})")
        h, w = nh, nw

    start = time.perf_counter()
    with _export_mode(net):
        x, dynamic_hw, used_opset = _export_file(net, name, rule, format, path, opset, chans, h, w, batch_size, notes, {
            "crossformers.model": name,
            "crossformers.mean": json.dumps(list((getattr(net, "pretrained_cfg", None) or {}).get("mean") or [])),
            "crossformers.std": json.dumps(list((getattr(net, "pretrained_cfg", None) or {}).get("std") or [])),
        }, precision=precision)
        seconds = time.perf_counter() - start

        if not dynamic_hw:
            h, w = int(x.shape[2]), int(x.shape[3])
        report = ExportReport(
            model=name, format=format, output=str(path), input_shape=tuple(int(s) for s in x.shape),
            dynamic_batch=rule is not None, dynamic_hw=dynamic_hw,
            valid_sizes=rule.describe() if dynamic_hw else f"{h}x{w} only", notes=notes,
            size_rule=dict(period=list(rule.period), minimum=list(rule.minimum)) if dynamic_hw else None,
            tolerance=atol, opset=used_opset, seconds=seconds, file_mb=path.stat().st_size / 2 ** 20,
            precision=precision)
        if verify:
            plan = _plan((x.shape[0], chans, h, w), rule if dynamic_hw else None, rule is not None)
            runner = _Runner(format, path)
            for i, (shape, expected) in enumerate(plan):
                report.checks.append(_verify(net, runner, shape, expected, atol, seed=i,
                                             top1_margin=_top1_margin(precision, atol)))
            tiny = [c for c in report.checks if c.expected == "match" and c.passed and c.logit_scale is not None
                    and c.logit_scale < MIN_LOGIT_SCALE]
            if tiny:
                report.checks += _verify_probe(net, name, rule, dynamic_hw, format, path, opset, chans, x,
                                               batch_size, plan, atol, precision)
                report.notes.append(
                    f"the model's logits are tiny (max |logit| {max(c.logit_scale for c in tiny):.1e}, e.g. untrained "
                    "weights), too small for a meaningful comparison: a copy with re-initialised weights was "
                    "exported the same way and verified instead")
            report.verified = all(c.passed for c in report.checks)
            if not report.verified:
                path.unlink(missing_ok=True)
                raise ExportError(f"the exported {name} did not verify, {path} was deleted: "
                                  + "; ".join(c.describe() for c in report.checks if not c.passed)
                                  + ". Export without dynamic shapes, or report the model and sizes")
    return report


def _export_file(net: nn.Module, name: str, rule: SizeRule | None, format: str, path: Path,  # noqa: A002
                 opset: int | None, chans: int, h: int, w: int, batch_size: int, notes: list[str],
                 metadata: dict[str, str], try_dynamic_hw: bool = True, precision: str = "fp32",
                 ) -> tuple[torch.Tensor, bool, int | None]:
    """Trace ``net`` (dynamic over ``rule`` if given, with a fixed-size fallback noted in ``notes``; dynamic batch
    only if ``try_dynamic_hw`` is False) and write it.

    Returns:
        (the traced example input, whether height/width are dynamic, the ONNX opset or None). The file's metadata
        gets ``metadata`` plus ``crossformers.valid_sizes`` (words) and ``crossformers.size_rule`` (JSON: channels, batch or null for
        dynamic, and either period/minimum or the fixed height/width).

    Raises:
        ExportError: the converter failed (the partial file is deleted).
    """
    dynamic_hw = False
    if rule is not None:
        th, tw = h, w  # traced size: off the branch sizes (a trace there would take the other branch)
        while any(th == bh or tw == bw for bh, bw in rule.exact_branch_sizes):
            th, tw = th + 16, tw + 16
        x = torch.randn(2, chans, th, tw)
        batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
        dims = []
        for label, p, lo in (("height", rule.period[0], rule.minimum[0]), ("width", rule.period[1],
                                                                              rule.minimum[1])):
            if p == 1:
                dims.append(torch.export.Dim(label, min=lo, max=_MAX_SIDE))
            else:
                dims.append(p * torch.export.Dim(f"{label}_blocks", min=lo // p, max=_MAX_SIDE // p))
        guarded = SizeGuard(net, rule) if format == "onnx" else net
        try:
            if not try_dynamic_hw:
                raise _FixedSize
            ep = _trace(guarded, x, ({0: batch, 2: dims[0], 3: dims[1]},), defer=bool(rule.exact_branch_sizes))
            dynamic_hw = True
        except Exception as e:  # noqa: BLE001 - any tracer failure: fall back to a fixed size, say why
            if not isinstance(e, _FixedSize):
                notes.append(f"{name} cannot be exported with dynamic height/width: its code depends on the input "
                             f"size in a way torch.export cannot trace over {rule.describe()} ({_first_line(e)}). "
                             f"Exported at a fixed {h}x{w} with a dynamic batch instead; other sizes are refused "
                             "(checked below)")
            x = torch.randn(2, chans, h, w)
            ep = _trace(net, x, ({0: batch},))
    else:
        x = torch.randn(batch_size, chans, h, w)
        ep = _trace(net, x, None)
    size_rule: dict[str, Any] = {"channels": chans, "batch": None if rule is not None else int(x.shape[0])}
    if dynamic_hw:
        size_rule.update(period=list(rule.period), minimum=list(rule.minimum), describe=rule.describe())
    else:
        size_rule.update(height=int(x.shape[2]), width=int(x.shape[3]))
    metadata = {**metadata, "crossformers.size_rule": json.dumps(size_rule),
                "crossformers.valid_sizes": rule.describe() if dynamic_hw else f"{h}x{w}"}
    try:
        used_opset = _write(ep, x, format, path, opset, metadata, precision)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - converter failures become one message
        path.unlink(missing_ok=True)
        raise ExportError(f"converting {name} to {format} failed: {_first_line(e)}") from None
    return x, dynamic_hw, used_opset


class _FixedSize(Exception):
    """Internal: skip the dynamic height/width trace (a probe copy of a model that already fell back)."""


def _verify_probe(net: nn.Module, name: str, rule: SizeRule | None, dynamic_hw: bool, format: str,  # noqa: A002
                  path: Path, opset: int | None, chans: int, x: torch.Tensor, batch_size: int, plan: list, atol: float,
                  precision: str = "fp32") -> list[Check]:
    """Export a re-initialised copy of ``net`` exactly as ``path`` was (same size rule, traced shape) to a temporary
    file and run ``plan`` on it: the checks of a model whose own logits are too small to compare."""
    import tempfile

    probe = _reinitialised(net)
    with tempfile.TemporaryDirectory(prefix="crossformers-verify-") as tmp:
        probe_path = Path(tmp) / f"probe{path.suffix}"
        _export_file(probe, name, rule, format, probe_path, opset, chans, int(x.shape[2]), int(x.shape[3]),
                     batch_size, [], {}, try_dynamic_hw=dynamic_hw, precision=precision)
        runner = _Runner(format, probe_path)
        checks = [_verify(probe, runner, shape, expected, atol, seed=i, probe=True,
                          top1_margin=_top1_margin(precision, atol))
                  for i, (shape, expected) in enumerate(plan) if expected == "match"]  # refusals: checked above
        del runner
    for c in checks:
        if c.expected == "match" and c.passed and (c.logit_scale or 0.0) < MIN_LOGIT_SCALE:
            c.passed, c.message = False, f"even re-initialised weights give tiny logits (max {c.logit_scale:.1e})"
    return checks


def _plan(shape: tuple[int, ...], rule: SizeRule | None, dynamic_batch: bool) -> list[tuple[tuple[int, ...], str]]:
    """Verification runs: two accepted shapes (when anything is dynamic) and the shapes that must be refused."""
    b, c, h, w = (int(s) for s in shape)
    if rule is None:
        other = (h + 32, w)
        plan = [((b, c, h, w), "match")]
        if dynamic_batch:
            plan.append(((1 if b != 1 else 2, c, h, w), "match"))
        plan.append(((b, c, *other), "reject"))
        return plan
    (ph, _), (mh, _) = rule.period, rule.minimum
    plan = [((b, c, h, w), "match"), ((1, c, h + (ph if ph > 1 else 32), w), "match")]
    plan += [((1, c, bh, bw), "match") for bh, bw in rule.exact_branch_sizes if (bh, bw) != (h, w)]
    if ph > 1:
        plan.append(((1, c, h + (32 if 32 % ph else ph // 2), w), "reject"))
    if mh > ph or ph == 1:
        below = mh - ph
        if below >= 1:
            plan.append(((1, c, below, w), "reject"))
    return plan
