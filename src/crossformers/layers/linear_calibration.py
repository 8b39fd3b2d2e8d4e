"""Choosing MKL or oneDNN for the linear layers by measurement on this machine: the recorded choice
(:func:`calibrated_choice`, :func:`calibrated_inference_choice`, :func:`calibrated_training_choice`), written by
:func:`crossformers.profiling.calibrate_linear` (``crossformers profile --calibrate-linear``).

Which library computes ``nn.Linear`` faster depends on the CPU, not on its vendor alone: on the 2-core AMD EPYC of
``docs/reference.md`` oneDNN ran these models' products 1.5-2.4x faster than MKL, on a 2-core Intel Xeon with AMX
unpacked oneDNN took 1.00-1.13x MKL's time (``docs/profiling.md``). The calibration times one model per family on
both paths, for the current thread count, and records the winners in a per-machine file;
:func:`crossformers.layers.linear.onednn_by_default`, :func:`~crossformers.layers.linear.onednn_for_inference` and
:func:`~crossformers.layers.linear.onednn_for_training` then follow it on that machine (same CPU model name,
family and model numbers, PyTorch version and thread count), so new models, ``optimize_for_inference``,
``optimize_for_training`` and ``crossformers train`` take the measured path. Without a calibration the AVX-512 rule stays.

The choice is per family where the record has it: a model names the calibration model that stands for its family
(the class attribute ``linear_calibration_model``, part of the family protocol, e.g. ``"crossformer_tiny"`` for
CrossFormer and CrossFormer++), and that model's own time ratio decides (oneDNN only if it is at least 3 % faster,
:data:`MARGIN`). One CPU can favour oneDNN for one family and MKL for another: on a 2-core AMD EPYC (Zen 4) oneDNN
ran CrossFormer-T 0.91x MKL's time and FcaFormer-L1 1.06x (``docs/profiling.md``). Modules that name no
calibration model, and records without per-model times, take the combined choice (geometric mean over the
families). Measure on a quiet machine: on shared cores the timings follow the
neighbours' load (``docs/profiling.md``), which is why this is an explicit step and not done at start-up.

A variant can also be timed on its own (``crossformers profile --calibrate-linear MODEL ...``, record key
``variants``, by the model's registered architecture name): models of that variant then follow their own ratio as
created and in ``optimize_for_inference``, whatever the family's. Nearness in size does not tell the paths apart
everywhere: on the AMD EPYC Zen 4 of ``docs/profiling.md`` oneDNN took 1.06x MKL's time on CrossViT-15-dagger-408
and 0.93x on CrossViT-18-dagger-408, while both are nearer CrossViT-18 (oneDNN 0.95x) in size.

The file (JSON, written atomically) is ``$CROSSFORMERS_LINEAR_CALIBRATION`` if set, else
``$XDG_CACHE_HOME/crossformers/linear_kernel.json`` (``~/.cache/...``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write_text
from ..utils.cpu import cpu_model_name, cpu_signature

__all__ = ["MARGIN", "onednn_wins", "calibration_path", "machine_key", "calibrated_choice",
           "calibrated_inference_choice", "calibrated_training_choice", "calibrated_compile_choice",
           "calibration_record", "calibrated_models", "calibrated_variants", "record_calibration", "record_variants"]

#: oneDNN is chosen only if its time ratio to MKL (one family's, or the geometric mean) is below this
MARGIN = 0.97
#: the per-model ratio that decides each choice (keys of a record's ``models`` entries)
_MODEL_RATIO = {"choice": "ratio", "inference_choice": "packed_ratio", "train_choice": "train_ratio",
                "compile_choice": "compile_ratio"}


def onednn_wins(ratio: float) -> bool:
    """The one rule of every choice: oneDNN only if its time / MKL's time is below :data:`MARGIN` (a tie keeps
    PyTorch's own MKL path). Used both when a calibration is recorded and when a family's own ratio is read back."""
    return ratio < MARGIN

def calibration_path() -> Path:
    """Where the calibration is kept (see the module docs)."""
    env = os.environ.get("CROSSFORMERS_LINEAR_CALIBRATION", "").strip()
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "crossformers" / "linear_kernel.json"


def machine_key() -> str:
    """``"<CPU model> [<vendor> family <n> model <n>] | torch <version> | <ATen CPU capability>"``: what a calibration
    is valid for. The family and model numbers tell apart CPUs that a VM names alike (a Zen 4 and a Zen 5 EPYC both
    report "AMD EPYC"), whose linear paths need not favour the same library."""
    signature = cpu_signature()
    cpu = f"{cpu_model_name()} [{signature}]" if signature else cpu_model_name()
    return f"{cpu} | torch {torch.__version__} | {torch.backends.cpu.get_cpu_capability()}"


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _record(threads: int | None) -> dict[str, Any] | None:
    entry = _read(calibration_path()).get(machine_key(), {})
    record = entry.get(str(int(threads or torch.get_num_threads()))) if isinstance(entry, dict) else None
    return record if isinstance(record, dict) else None


def calibration_record(threads: int | None = None) -> dict[str, Any] | None:
    """This machine's recorded calibration for ``threads`` (default: torch's current count), or None."""
    return _record(threads)


def calibrated_models(threads: int | None = None) -> set[str]:
    """Names of the models (one per family) whose times this machine's record for ``threads`` holds."""
    models = (_record(threads) or {}).get("models")
    return {k for k, v in models.items() if isinstance(v, dict)} if isinstance(models, dict) else set()


def _recorded(record: dict[str, Any] | None, key: str, values: tuple[str, str], model: str | None) -> bool | None:
    if record is None or record.get(key) not in values:
        return None
    per_model = record.get("models")
    timed = per_model.get(model) if model and isinstance(per_model, dict) else None
    ratio = timed.get(_MODEL_RATIO[key]) if isinstance(timed, dict) else None
    if isinstance(ratio, (int, float)) and ratio > 0:
        return onednn_wins(ratio)  # the family's own measurement
    return record[key] == values[0]


def calibrated_choice(threads: int | None = None, model: str | None = None,
                      params: int | None = None, variant: str | None = None) -> bool | None:
    """The calibrated choice for new models on this machine and ``threads`` (default: torch's current count): True =
    oneDNN, False = MKL, None = not calibrated here (or an unreadable file). ``model``: the calibration model of the
    family asking (its ``linear_calibration_model``); its own ratio decides if it was timed.

    ``params``: the parameter count of the model being created. A model nearer in size to its family's timed large
    variant (log scale) follows that variant's as-created ratio, as :func:`calibrated_inference_choice` does for
    ``optimize_for_inference``: on the AMD EPYC Zen 4 of ``docs/profiling.md`` the calibration chose MKL for
    CrossViT-9 (oneDNN 0.98x its time, inside the 3 % margin), which left CrossViT-B as created at 0.97x the authors'
    time while its products ran faster on oneDNN.

    ``variant``: the registered architecture name of the model being created; a variant timed on its own (record
    key ``variants``) follows its own as-created ratio before anything else."""
    record = _record(threads)  # read once for the three lookups
    ratio = _variant_ratio(record, variant, "ratio")
    if ratio is None:
        ratio = _large_variant_ratio(record, model, params, "ratio")
    if ratio is not None:
        return onednn_wins(ratio)
    return _recorded(record, "choice", ("onednn", "mkl"), model)


def _variant_ratio(record: dict[str, Any] | None, variant: str | None, key: str) -> float | None:
    """The ratio ``key`` (``"ratio"``: as created; ``"packed_ratio"``: optimized) of ``variant`` where ``record``
    (a machine's record for one thread count) has it timed on its own (key ``variants``), else None."""
    variants = record.get("variants") if record is not None and variant else None
    timed = variants.get(variant) if isinstance(variants, dict) else None
    ratio = timed.get(key) if isinstance(timed, dict) else None
    return float(ratio) if isinstance(ratio, (int, float)) and ratio > 0 else None


def calibrated_variants(threads: int | None = None) -> set[str]:
    """Architecture names of the variants timed on their own in this machine's record for ``threads``."""
    variants = (_record(threads) or {}).get("variants")
    return {k for k, v in variants.items() if isinstance(v, dict)} if isinstance(variants, dict) else set()


def _large_variant_ratio(record: dict[str, Any] | None, model: str | None, params: int | None,
                         key: str) -> float | None:
    """The ratio ``key`` (``"packed_ratio"``: optimized; ``"ratio"``: as created) of the large variant timed for
    ``model``'s family (record key ``large_models``) when a model of ``params`` parameters is nearer to it than to
    ``model`` on a log scale; else None (also for an incomplete record, or one from before that ratio was timed)."""
    if record is None or not model or not params or params <= 0:
        return None
    large = record.get("large_models")
    large = large.get(model) if isinstance(large, dict) else None
    small = record.get("models")
    small = small.get(model) if isinstance(small, dict) else None
    if not isinstance(large, dict) or not isinstance(small, dict):
        return None
    sizes, ratio = (small.get("params"), large.get("params")), large.get(key)
    if not all(isinstance(n, int) and n > 0 for n in sizes) or not isinstance(ratio, (int, float)):
        return None
    nearer = abs(math.log(params / sizes[1])) < abs(math.log(params / sizes[0]))
    return ratio if nearer and isinstance(large.get("model"), str) else None


def calibrated_inference_choice(threads: int | None = None, model: str | None = None,
                                params: int | None = None, variant: str | None = None) -> bool | None:
    """The calibrated choice for ``optimize_for_inference`` (packed oneDNN weights against MKL): True = oneDNN
    packed, False = MKL, None = not calibrated here. ``model`` as in :func:`calibrated_choice`.

    ``params``: the parameter count of the model being optimized. Each family is also timed on one large variant
    (record key ``large_models``; the family's ``linear_calibration_large_model``), and a model
    nearer to that variant's size than to the calibration model's (log scale) follows the large variant's ratio:
    the products of a 9-14 GMAC variant favour packed oneDNN more than those of a 1-3 GMAC one (on the AMD EPYC Zen
    4 of ``docs/profiling.md``, 0.85-0.89x MKL's time against 0.96-0.97x). ``variant`` as in
    :func:`calibrated_choice` (its own optimized ratio first)."""
    record = _record(threads)
    ratio = _variant_ratio(record, variant, "packed_ratio")
    if ratio is None:
        ratio = _large_variant_ratio(record, model, params, "packed_ratio")
    if ratio is not None:
        return onednn_wins(ratio)
    return _recorded(record, "inference_choice", ("onednn_packed", "mkl"), model)


def calibrated_training_choice(threads: int | None = None, model: str | None = None) -> bool | None:
    """The calibrated choice for training steps (``optimize_for_training``, ``crossformers train``): True = oneDNN,
    False = MKL, None = not calibrated here (or a record from before training steps were timed). ``model`` as in
    :func:`calibrated_choice` (a record without its training time: the combined choice)."""
    return _recorded(_record(threads), "train_choice", ("onednn", "mkl"), model)


def calibrated_compile_choice(threads: int | None = None, model: str | None = None) -> bool | None:
    """The calibrated weight packing for :func:`crossformers.inference.compile_for_inference` (inductor with
    weights frozen and packed for oneDNN, against inductor's own MKL packing): True = oneDNN, False = MKL, None = not
    measured here (``crossformers profile --calibrate-linear --compile``). ``model`` as in :func:`calibrated_choice`.

    Compiled models get their own record because their products are other kernels than the eager ones: on the
    2-core AMD EPYC Zen 4 of ``docs/profiling.md`` eager FcaFormer-L1 ran as fast on MKL as on oneDNN, while
    compiled it took 0.76x the time with oneDNN packing."""
    return _recorded(_record(threads), "compile_choice", ("onednn_packed", "mkl"), model)


def record_calibration(threads: int, record: dict[str, Any]) -> Path:
    """Store ``record`` (with ``choice`` "onednn" | "mkl", ``inference_choice`` "onednn_packed" | "mkl" and
    optionally ``train_choice`` "onednn" | "mkl" and ``compile_choice`` "onednn_packed" | "mkl") for this
    machine and ``threads`` in :func:`calibration_path` (atomically, other machines' and thread counts' records kept);
    returns the path. The measurement is :func:`crossformers.profiling.calibrate_linear`."""
    record = dict(record)
    old = _record(threads) or {}
    if "variants" not in record and isinstance(old.get("variants"), dict):
        record["variants"] = old["variants"]  # variants timed on their own stay valid on the same machine
    return _write_record(threads, record)


def record_variants(threads: int, variants: dict[str, dict[str, Any]]) -> Path:
    """Add variants timed on their own (architecture name -> at least ``ratio`` and ``packed_ratio``, oneDNN / MKL
    as created and optimized) to this machine's record for ``threads``, replacing earlier times of the same
    variants; returns the path. The measurement is :func:`crossformers.profiling.calibrate_variants`.

    Raises:
        ValueError: no family calibration is recorded for this machine and ``threads`` yet (run
            ``crossformers profile --calibrate-linear`` first: a variant's record refines it, it does not replace it).
    """
    record = _record(threads)
    if record is None:
        raise ValueError(f"no linear-path calibration for this machine and {threads} thread(s) in "
                         f"{calibration_path()}: run `crossformers profile --calibrate-linear --threads {threads}` "
                         "first, then time single variants")
    record = dict(record)
    record["variants"] = {**(record.get("variants") if isinstance(record.get("variants"), dict) else {}),
                          **{k: dict(v) for k, v in variants.items()}}
    return _write_record(threads, record)


def _write_record(threads: int, record: dict[str, Any]) -> Path:
    path = calibration_path()
    doc = _read(path)
    entry = doc.get(machine_key())
    entry = entry if isinstance(entry, dict) else {}
    entry[str(int(threads))] = record
    doc[machine_key()] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path
