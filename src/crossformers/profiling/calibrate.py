"""Measuring which linear path is faster on this machine: :func:`calibrate_linear`
(``crossformers profile --calibrate-linear``).

One model per family (``CALIBRATION_MODELS``: CrossViT-9, CrossFormer-T, FcaFormer-L1 at their default sizes,
random weights) is timed in six forms, calls alternating in a shuffled order, median per form. At batch 1, eval,
``torch.inference_mode``:

* as created with MKL linear layers, and with oneDNN linear layers (the choice for new models);
* ``optimize_for_inference`` with MKL, and with oneDNN and packed weights (the choice for ``optimize_for_inference``);

these four forms also for one large variant per family (the family's ``linear_calibration_large_model``, a class
attribute of the family protocol; record key ``large_models``), whose ratios models nearer its size follow, when
created and when optimized: on the AMD EPYC Zen 4 of ``docs/profiling.md`` packed oneDNN took 0.96-0.97x MKL's time
on CrossViT-9 and FcaFormer-L1 but 0.85-0.89x on their 9-21 GMAC variants;

and in training:

* a training step (train mode, batch :data:`TRAIN_BATCH`, forward and backward of a cross-entropy loss, after
  ``optimize_for_training``'s other paths) with MKL and with oneDNN linear layers (the choice for
  ``optimize_for_training`` and ``crossformers train``);

and, when asked (``compile_rounds``, ``crossformers profile --calibrate-linear --compile``: a few minutes, as each
model is compiled twice):

* ``compile_for_inference`` with the frozen weights packed for MKL, and for oneDNN (the choice for
  ``compile_for_inference``). Inductor's packed products are other kernels than the eager ones, and their winner is
  not the eager winner on every CPU (``docs/profiling.md``).

Each family's time ratios (oneDNN / MKL; paired: the median over rounds of the two forms' ratio in that round, so
that drift on a shared machine, which slows whole rounds, cancels) are kept, and each pair's ratios are also combined
by their geometric mean; oneDNN is chosen only where it is at least 3 % faster (one rule,
:func:`~crossformers.layers.linear_calibration.onednn_wins` with :data:`MARGIN`; a tie keeps PyTorch's own MKL path).
A model whose family was timed follows its family's ratio, any other module the combined one
(:mod:`crossformers.layers.linear_calibration`). The record
(:func:`crossformers.layers.linear_calibration.record_calibration`) is per CPU model, PyTorch version and thread
count. Whole models are timed, not single products: the products alone favoured packed oneDNN on the Intel Xeon
where the model with it was slower (``docs/profiling.md``).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any

import torch

from ..inference.allocator import freed_memory_retained
from ..inference.compile import compile_for_inference
from ..inference.optimize import optimize_for_inference, optimize_for_training
from ..layers.linear import onednn_available, set_onednn_linear
from ..layers.linear_calibration import (
    MARGIN,
    calibration_path,
    calibration_record,
    machine_key,
    onednn_wins,
    record_calibration,
    record_variants,
)
from .errors import ProfilingError
from .measure import num_threads, paired_ratio, time_alternating

__all__ = ["calibrate_linear", "calibrate_variants", "CALIBRATION_MODELS", "MARGIN", "TRAIN_BATCH"]

#: one model per family, the ones whose products docs/profiling.md measured
CALIBRATION_MODELS = ("crossvit_9_240", "crossformer_tiny", "fcaformer_l1")
#: alternating rounds of each large variant (each call takes 0.1-0.3 s on 2 cores)
LARGE_ROUNDS = 7
#: alternating rounds of each variant timed on its own (``calibrate_variants``)
VARIANT_ROUNDS = 9
#: images per timed training step (small enough for a quick calibration, large enough that products dominate)
TRAIN_BATCH = 8


def _forms(name: str, model_kwargs: dict[str, Any] | None) -> tuple[dict[str, torch.nn.Module], torch.Tensor, int,
                                                                     str | None, str]:
    """The four timed forms of one model, its input, its
    parameter count, when it is its family's calibration model (``linear_calibration_model``), the family's
    large variant (``linear_calibration_large_model``; else None), and its registered architecture name."""
    import crossformers

    base = crossformers.create_model(name, onednn_linear=False, **(model_kwargs or {})).eval()
    params = sum(p.numel() for p in base.parameters())
    x = torch.randn(1, *base.pretrained_cfg["input_size"])
    forms = {"opt_mkl": optimize_for_inference(copy.deepcopy(base), onednn_linear=False),
             "opt_onednn_packed": optimize_for_inference(copy.deepcopy(base), onednn_linear=True, pack_weights=True),
             "mkl": base, "onednn": set_onednn_linear(copy.deepcopy(base), True)}
    family = type(base)
    is_calibration_model = getattr(family, "linear_calibration_model", None) == name
    large = getattr(family, "linear_calibration_large_model", None) if is_calibration_model else None
    return forms, x, params, large, str(base.pretrained_cfg.get("architecture") or name)


def _time_forms(name: str, model_kwargs: dict[str, Any] | None,
                rounds: int) -> tuple[dict[str, list[float]], int, str | None, str]:
    """:func:`_forms` of one model timed alternately for ``rounds`` rounds (batch 1, inference mode): the per-call
    times (ms) of each form, the parameter count, the family's large variant and the architecture name (as
    :func:`_forms`)."""
    with torch.inference_mode():
        forms, x, params, family_large, arch = _forms(name, model_kwargs)
        times = time_alternating({k: (lambda m=m, x=x: m(x)) for k, m in forms.items()}, rounds)
    return times, params, family_large, arch


def _eager_entry(times: dict[str, list[float]], params: int) -> dict[str, Any]:
    """A record entry of the four eager forms: their medians (ms), the parameter count and the paired oneDNN / MKL
    ratios as created (``ratio``) and optimized (``packed_ratio``)."""
    return {**_medians(times), "params": params, "ratio": paired_ratio(times["onednn"], times["mkl"]),
            "packed_ratio": paired_ratio(times["opt_onednn_packed"], times["opt_mkl"])}


def calibrate_variants(names: tuple[str, ...] | list[str], threads: int | None = None,
                       rounds: int = VARIANT_ROUNDS, model_kwargs: dict[str, dict[str, Any]] | None = None,
                       write: bool = True) -> dict[str, Any]:
    """Time single variants on both linear paths, as created and optimized, and record each one's own ratios: models
    of a timed variant then follow them (:func:`~crossformers.layers.linear_calibration.calibrated_choice`),
    whatever its family's calibration model or large variant measured. For the variant you deploy, where nearness in
    size does not predict the faster path (docs/profiling.md: CrossViT-15-dagger-408 and -18-dagger-408 on one CPU
    favour different libraries).

    Args:
        names: registered model names (each timed at its default input size, batch 1, random weights).
        threads: intra-op threads (default: torch's current count); the record is per thread count.
        rounds: alternating rounds of the four forms per variant (after 2 untimed calls of each).
        model_kwargs: per name, e.g. small test models.
        write: add the result to this machine's record (False: measure only).

    Returns:
        ``{"threads", "path", "variants": {architecture name: {"model" (the name given), "mkl_ms", "onednn_ms",
        "opt_mkl_ms", "opt_onednn_packed_ms", "ratio", "packed_ratio", "params"}}}`` (medians in ms; ratios
        oneDNN / MKL, paired).

    Raises:
        ProfilingError: no oneDNN linear op in this PyTorch build, or (with ``write``) no family calibration recorded
            for this machine and thread count yet (``crossformers profile --calibrate-linear`` first).
    """
    if not onednn_available():
        raise ProfilingError("this PyTorch build has no oneDNN linear op: MKL is the only path, nothing to calibrate")
    variants: dict[str, dict[str, Any]] = {}
    with num_threads(threads) as used:
        if write and calibration_record(used) is None:
            raise ProfilingError(f"no linear-path calibration for this machine and {used} thread(s) yet: run "
                                 f"`crossformers profile --calibrate-linear --threads {used}` first (timing single "
                                 "variants refines it)")
        for name in names:
            times, params, _, arch = _time_forms(name, (model_kwargs or {}).get(name), rounds)
            variants[arch] = {"model": name, **_eager_entry(times, params)}
        if write:
            record_variants(used, variants)
    return {"threads": used, "path": str(calibration_path()), "variants": variants}


def _train_steps(name: str, model_kwargs: dict[str, Any] | None, batch: int) -> dict[str, Any]:
    """One training step (forward, cross-entropy, backward; no optimizer, whose update is the same on both paths)
    per linear path, as zero-argument callables."""
    import crossformers

    base = crossformers.create_model(name, onednn_linear=False, **(model_kwargs or {})).train()
    x = torch.randn(batch, *base.pretrained_cfg["input_size"])
    y = torch.randint(0, base.num_classes, (batch,))

    def step(model: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    models = {k: optimize_for_training(copy.deepcopy(base), onednn_linear=k == "train_onednn")
              for k in ("train_mkl", "train_onednn")}
    return {k: (lambda m=m: step(m)) for k, m in models.items()}


def _compiled_forms(name: str, model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``compile_for_inference`` of one model with its weights packed for MKL and for oneDNN, each already compiled
    for a batch-1 input (the first call compiles), as zero-argument callables on that input."""
    import crossformers

    base = crossformers.create_model(name, onednn_linear=False, **(model_kwargs or {})).eval()
    x = torch.randn(1, *base.pretrained_cfg["input_size"])
    forms = {k: compile_for_inference(copy.deepcopy(base), onednn=k == "compile_onednn_packed")
             for k in ("compile_mkl", "compile_onednn_packed")}
    for model in forms.values():
        model(x)
    return {k: (lambda m=m: m(x)) for k, m in forms.items()}


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    """``{"<form>_ms": median}`` of each timed form."""
    return {f"{k}_ms": statistics.median(v) for k, v in times.items()}


def _geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def calibrate_linear(threads: int | None = None, rounds: int = 15, models: tuple[str, ...] = CALIBRATION_MODELS,
                     model_kwargs: dict[str, dict[str, Any]] | None = None, write: bool = True,
                     train_rounds: int = 5, train_batch: int = TRAIN_BATCH, compile_rounds: int = 0,
                     large_models: dict[str, str] | None = None, large_rounds: int = LARGE_ROUNDS) -> dict[str, Any]:
    """Time the linear paths on whole models (see the module docs) and record the faster ones for this machine.

    Args:
        threads: intra-op threads (default: torch's current count); the record is per thread count.
        rounds: alternating rounds per model (after 2 untimed calls of each form).
        models: model names (default :data:`CALIBRATION_MODELS`); ``model_kwargs`` per name (e.g. small test models).
        write: record the result (False: measure only).
        train_rounds: alternating rounds of training steps per model (after 1 untimed step of each path); 0 skips
            the training measurement (no ``train_choice`` is recorded: training then follows ``choice``).
        train_batch: images per training step.
        compile_rounds: alternating rounds of the two compiled forms per model (after compiling each, and 2
            untimed calls); 0 (default) skips them (no ``compile_choice`` is recorded: ``compile_for_inference`` then
            follows the eager ``choice``).
        large_models: calibration model -> its family's large variant, timed in the same four forms (default: the
            family protocol's ``linear_calibration_large_model`` for each of ``models`` that is its family's
            ``linear_calibration_model``); ``model_kwargs`` apply to them by their names too.
        large_rounds: alternating rounds per large variant; 0 skips them (no ``large_models`` recorded).

    Returns:
        ``{"choice": "onednn" | "mkl", "ratio", "inference_choice": "onednn_packed" | "mkl", "packed_ratio",
        "train_choice": "onednn" | "mkl", "train_ratio", "compile_choice": "onednn_packed" | "mkl",
        "compile_ratio", "threads", "models": {name: {"mkl_ms", "onednn_ms", "opt_mkl_ms", "opt_onednn_packed_ms",
        "ratio", "packed_ratio", "train_mkl_ms", "train_onednn_ms", "train_ratio", "compile_mkl_ms",
        "compile_onednn_packed_ms", "compile_ratio", "params"}}, "large_models": {calibration model: {"model",
        "mkl_ms", "onednn_ms", "opt_mkl_ms", "opt_onednn_packed_ms", "ratio", "packed_ratio", "params"}}, "machine",
        "path", "measured", "freed_memory_retained"}`` (the last: whether
        :func:`~crossformers.inference.retain_freed_memory` was in effect while timing, as ``crossformers profile
        --calibrate-linear`` does unless ``--no-retain-freed-memory``; times:
        medians in ms, batch 1 for inference and ``train_batch`` per training step; ratios oneDNN / MKL, paired
        (:func:`~crossformers.profiling.measure.paired_ratio`); the training and compiled keys only when measured).

    Raises:
        ProfilingError: this PyTorch build has no oneDNN linear op (nothing to choose).
    """
    if not onednn_available():
        raise ProfilingError("this PyTorch build has no oneDNN linear op: MKL is the only path, nothing to calibrate")
    per_model: dict[str, dict[str, Any]] = {}
    per_large: dict[str, dict[str, Any]] = {}
    with num_threads(threads) as used:
        for name in models:
            times, params, family_large, _ = _time_forms(name, (model_kwargs or {}).get(name), rounds)
            per_model[name] = _eager_entry(times, params)
            if train_rounds > 0:
                steps = _train_steps(name, (model_kwargs or {}).get(name), train_batch)
                times = time_alternating(steps, train_rounds, warmup=1)
                per_model[name].update(_medians(times),
                                       train_ratio=paired_ratio(times["train_onednn"], times["train_mkl"]))
            if compile_rounds > 0:
                times = time_alternating(_compiled_forms(name, (model_kwargs or {}).get(name)), compile_rounds)
                per_model[name].update(_medians(times), compile_ratio=paired_ratio(times["compile_onednn_packed"],
                                                                                   times["compile_mkl"]))
            large = family_large if large_models is None else large_models.get(name)
            if large and large_rounds > 0:
                times, params, _, _ = _time_forms(large, (model_kwargs or {}).get(large), large_rounds)
                per_large[name] = {"model": large, **_eager_entry(times, params)}
    ratio = _geomean([m["ratio"] for m in per_model.values()])
    packed = _geomean([m["packed_ratio"] for m in per_model.values()])
    record = {"choice": "onednn" if onednn_wins(ratio) else "mkl", "ratio": ratio,
              "inference_choice": "onednn_packed" if onednn_wins(packed) else "mkl", "packed_ratio": packed,
              "models": per_model, "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "freed_memory_retained": freed_memory_retained()}
    if per_large:
        record["large_models"] = per_large
    if train_rounds > 0:
        trained = _geomean([m["train_ratio"] for m in per_model.values()])
        record.update(train_choice="onednn" if onednn_wins(trained) else "mkl", train_ratio=trained)
    if compile_rounds > 0:
        compiled = _geomean([m["compile_ratio"] for m in per_model.values()])
        record.update(compile_choice="onednn_packed" if onednn_wins(compiled) else "mkl", compile_ratio=compiled)
    if write:
        record_calibration(used, record)
    return {**record, "threads": used, "machine": machine_key(), "path": str(calibration_path())}
