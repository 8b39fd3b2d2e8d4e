"""Training checkpoints: atomic save, safe load, and rebuilding a trained model from its checkpoint.

A checkpoint is a directory::

    model.safetensors      weights (safetensors)
    model_ema.safetensors  EMA weights, when trained with an EMA
    meta.json              model name + constructor kwargs, class names, preprocessing (input_size, mean, std,
                           interpolation, crop_pct), epoch, step, metrics, the training config
    train_state.pt         (``last/`` only) optimizer, scheduler, RNG states and data position; plain tensors /
                           dicts / lists / numbers / strings only, so it loads with ``torch.load(weights_only=True)``

A run directory keeps ``last/`` (every epoch, and where ``max_steps`` stops) and ``best/`` (highest val top-1).
Training writes them into the staging area of an epoch commit, which moves them into the run directory together with
the epoch's metric files (:mod:`crossformers.engine.run_dir`).

Writes are atomic: everything is written into a temporary sibling directory, flushed to disk, and then swapped in
with ``os.replace``. If the process dies at any point, the previous checkpoint (or, in the tiny window between the
two renames of the swap, its backup ``.<name>.old``, which every reader and the next save recover) stays intact.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError
from ..fileio import atomic_write_bytes, atomic_write_text  # re-exported (they used to live here)

__all__ = [
    "FORMAT", "MODEL_FILE", "EMA_FILE", "META_FILE", "STATE_FILE",
    "save_checkpoint", "resolve_checkpoint_dir", "read_meta", "load_train_state", "load_trained",
    "capture_rng_state", "restore_rng_state", "atomic_write_bytes", "atomic_write_text", "is_checkpoint_dir",
    "validate_meta",
]

FORMAT = "crossformers-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
EMA_FILE = "model_ema.safetensors"
META_FILE = "meta.json"
STATE_FILE = "train_state.pt"


# ---------------------------------------------------------------------------------------------------- atomic files
def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _backup_of(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _recover(target: Path) -> None:
    """Finish an interrupted swap: restore the backup if the target is missing, else drop the stale backup."""
    old = _backup_of(target)
    if old.exists():
        if not target.exists():
            os.replace(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _atomic_write_dir(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            _fsync_path(f)
        _fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _backup_of(target)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """Snapshot of the torch (CPU and CUDA), numpy and Python ``random`` generators, as tensors / numbers only."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(list(py_internal), dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators from :func:`capture_rng_state` (CUDA states only if the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])


# ---------------------------------------------------------------------------------------------------- save
def _tensor_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies without shared storage (required by safetensors)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(key)
        out[k] = t
    return out


def _save_safetensors(state: Mapping[str, torch.Tensor], path: Path, meta: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(_tensor_state(state), str(path),
              metadata={"format": "pt", "model": str(meta.get("model", "")), "producer": FORMAT})


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    meta: Mapping[str, Any],
    ema_model: nn.Module | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see the module docs for the layout).

    Args:
        directory: the checkpoint directory to create or replace (e.g. ``RUN/last``).
        model: the trained model (unwrapped, not DDP); its ``state_dict`` goes to ``model.safetensors``.
        meta: JSON-serialisable metadata; must contain ``model``, ``model_kwargs``, ``classes``, ``preprocessing``.
        ema_model: EMA copy of the model, saved to ``model_ema.safetensors`` if given.
        train_state: optimizer / scheduler / RNG / position state (tensors, dicts, lists, numbers, strings only),
            saved to ``train_state.pt``.

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: ``meta`` lacks a required key.
    """
    target = Path(directory)
    missing = [k for k in ("model", "model_kwargs", "classes", "preprocessing") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **dict(meta), "has_ema": ema_model is not None,
                 "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta_text = json.dumps(full_meta, indent=2, default=_json_default)

    def write(tmp: Path) -> None:
        _save_safetensors(model.state_dict(), tmp / MODEL_FILE, full_meta)
        if ema_model is not None:
            _save_safetensors(ema_model.state_dict(), tmp / EMA_FILE, full_meta)
        if train_state is not None:
            torch.save(dict(train_state), tmp / STATE_FILE)
        (tmp / META_FILE).write_text(meta_text + "\n")

    _atomic_write_dir(target, write)
    return target


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------------- load
def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a checkpoint directory (holds ``meta.json`` and ``model.safetensors``)."""
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file() and (p / MODEL_FILE).is_file()


def resolve_checkpoint_dir(path: str | os.PathLike, prefer: str = "best") -> Path:
    """Find the checkpoint directory meant by ``path``.

    Args:
        path: a checkpoint directory, its ``meta.json``, or a run directory holding ``best/`` and/or ``last/``.
        prefer: for a run directory, ``'best'`` (fall back to ``last``) or ``'last'`` (fall back to ``best``).

    Returns:
        The checkpoint directory (an interrupted atomic swap is recovered from its backup; a run folder whose
        training was killed during an epoch commit, and that no process is writing now, is repaired first).

    Raises:
        CheckpointError: nothing checkpoint-like at ``path``.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == META_FILE:
        p = p.parent
    _repair_interrupted_run(p)
    if p.is_dir() or _backup_of(p).is_dir():
        if not p.exists() and _backup_of(p).is_dir():
            return _backup_of(p)
        if is_checkpoint_dir(p):
            return p
        order = ("best", "last") if prefer == "best" else ("last", "best")
        for name in order:
            sub = p / name
            if is_checkpoint_dir(sub):
                return sub
            if not sub.exists() and is_checkpoint_dir(_backup_of(sub)):
                return _backup_of(sub)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} does not exist (pass a run directory with last/ or best/, "
                              "or a checkpoint directory with meta.json and model.safetensors)")
    raise CheckpointError(
        f"{p} is not a crossformers checkpoint: expected a run directory with last/ or best/, or a checkpoint "
        f"directory with {META_FILE} and {MODEL_FILE} (for an official .pth/.safetensors file, pass the model name "
        "and the file as checkpoint instead)")


def _repair_interrupted_run(run_dir: Path) -> None:
    """If ``run_dir`` is a run folder whose training was killed in the middle of an epoch commit and no process is
    training in it now, complete or discard that commit (see :mod:`crossformers.engine.run_dir`), so that readers see
    exactly the committed epochs. A folder in use, or one that cannot be written, is left as it is."""
    from .run_dir import COMMIT_DIR, RunFolder, RunLockedError

    if not (run_dir / COMMIT_DIR).is_dir():
        return
    folder = RunFolder(run_dir)
    try:
        folder.lock()
    except (RunLockedError, OSError):
        return
    try:
        action = folder.recover()
        if action:
            logging.getLogger("crossformers.train").warning("%s was interrupted while saving: %s", run_dir, action)
    except OSError:
        pass
    finally:
        folder.unlock()


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of the checkpoint at ``path`` (see :func:`resolve_checkpoint_dir`).

    Raises:
        CheckpointError: missing, invalid JSON, or not a crossformers checkpoint.
    """
    ckpt = resolve_checkpoint_dir(path)
    try:
        meta = json.loads((ckpt / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {ckpt / META_FILE}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{ckpt / META_FILE} is not crossformers checkpoint metadata")
    validate_meta(meta, ckpt / META_FILE)
    return meta


_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def validate_meta(meta: Mapping[str, Any], source: str | os.PathLike = META_FILE) -> None:
    """Check the type and range of every field of a checkpoint's ``meta.json`` that crossformers reads.

    Required: ``model`` (name), ``model_kwargs`` (object; ``num_classes`` / ``in_chans`` ints >= 1, ``img_size`` an
    int or two ints >= 1, ``drop_path_rate`` in [0, 1) when present), ``classes`` (distinct strings, as many as
    ``model_kwargs['num_classes']``), ``preprocessing`` (an object with ``input_size`` [C, H, W], ints >= 1; when
    present, ``mean`` / ``std`` 1, 3 or C finite numbers (std > 0), ``interpolation`` a PIL filter name, ``crop_pct``
    in (0, 1]; a missing one comes from the model's ``pretrained_cfg``). Optional, checked when present:
    ``format_version``, ``num_classes``, ``in_chans``, ``epoch`` / ``step`` / ``batch_in_epoch`` (ints >= 0),
    ``metrics`` / ``config`` (objects), ``has_ema`` (bool), ``dataset`` and version strings.

    Raises:
        CheckpointError: the first invalid field, named with its path inside the file (e.g.
            ``preprocessing.input_size``), the value found and what it must be.
    """
    def fail(field: str, must: str, value: Any = ...) -> None:
        got = "it is missing" if value is ... else f"got {_short_json(value)}"
        raise CheckpointError(f"{source}: \"{field}\" must be {must}, {got} (the file is damaged or was not written "
                              "by crossformers: restore it, or re-save the checkpoint)")

    def is_int(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def get(d: Mapping[str, Any], key: str, prefix: str = "") -> Any:
        if key not in d:
            fail(prefix + key, _REQUIRED[key])
        return d[key]

    version = meta.get("format_version", FORMAT_VERSION)
    if not is_int(version, 1) or version > FORMAT_VERSION:
        fail("format_version", f"an int from 1 to {FORMAT_VERSION} (a newer crossformers wrote this checkpoint if it "
                               "is larger: upgrade crossformers)", version)
    model = get(meta, "model")
    if not isinstance(model, str) or not model.strip():
        fail("model", _REQUIRED["model"], model)
    kwargs = get(meta, "model_kwargs")
    if not isinstance(kwargs, dict):
        fail("model_kwargs", _REQUIRED["model_kwargs"], kwargs)
    for key in ("num_classes", "in_chans"):
        if key in kwargs and not is_int(kwargs[key], 1):
            fail(f"model_kwargs.{key}", "an int >= 1", kwargs[key])
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        if not (is_int(size, 1) or (isinstance(size, list) and len(size) == 2 and all(is_int(v, 1) for v in size))):
            fail("model_kwargs.img_size", "an int >= 1 or two of them (pixels)", size)
    if "drop_path_rate" in kwargs and not (is_num(kwargs["drop_path_rate"]) and 0 <= kwargs["drop_path_rate"] < 1):
        fail("model_kwargs.drop_path_rate", "a number in [0, 1)", kwargs["drop_path_rate"])
    classes = get(meta, "classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        fail("classes", _REQUIRED["classes"], classes)
    if len(set(classes)) != len(classes):
        fail("classes", "distinct class names", classes)
    if "num_classes" in kwargs and len(classes) != kwargs["num_classes"]:
        fail("classes", f"a list of {kwargs['num_classes']} names (model_kwargs.num_classes)", classes)
    if "num_classes" in meta and (not is_int(meta["num_classes"], 1) or meta["num_classes"] != len(classes)):
        fail("num_classes", f"the number of classes ({len(classes)})", meta["num_classes"])
    pre = get(meta, "preprocessing")
    if not isinstance(pre, dict):
        fail("preprocessing", _REQUIRED["preprocessing"], pre)
    size = get(pre, "input_size", "preprocessing.")
    if not (isinstance(size, list) and len(size) == 3 and all(is_int(v, 1) for v in size)):
        fail("preprocessing.input_size", "[channels, height, width]: three ints >= 1", size)
    chans = size[0]
    if "in_chans" in kwargs and kwargs["in_chans"] != chans:
        fail("preprocessing.input_size", f"[{kwargs['in_chans']}, height, width] (model_kwargs.in_chans)", size)
    if "in_chans" in meta and (not is_int(meta["in_chans"], 1) or meta["in_chans"] != chans):
        fail("in_chans", f"the channel count of preprocessing.input_size ({chans})", meta["in_chans"])
    for key in ("mean", "std"):
        if key not in pre:
            continue
        vals = pre[key]
        if not (isinstance(vals, list) and len(vals) in {1, 3, chans} and all(is_num(v) for v in vals)
                and (key == "mean" or all(v > 0 for v in vals))):
            fail(f"preprocessing.{key}", f"a list of 1, 3 or {chans} finite numbers"
                                         f"{' > 0' if key == 'std' else ''}", vals)
    if "interpolation" in pre and pre["interpolation"] not in _INTERPOLATIONS:
        fail("preprocessing.interpolation", f"one of {', '.join(_INTERPOLATIONS)}", pre["interpolation"])
    if "crop_pct" in pre and not (is_num(pre["crop_pct"]) and 0 < pre["crop_pct"] <= 1):
        fail("preprocessing.crop_pct", "a number in (0, 1]", pre["crop_pct"])
    for key in ("epoch", "step", "batch_in_epoch"):
        if key in meta and not is_int(meta[key], 0):
            fail(key, "an int >= 0", meta[key])
    for key in ("metrics", "config"):
        if key in meta and not isinstance(meta[key], dict):
            fail(key, "a JSON object", meta[key])
    if "has_ema" in meta and not isinstance(meta["has_ema"], bool):
        fail("has_ema", "true or false", meta["has_ema"])
    for key in ("dataset", "crossformers_version", "torch_version", "saved_at"):
        if key in meta and not isinstance(meta[key], str):
            fail(key, "a string", meta[key])


_REQUIRED = {
    "model": "a model name (string)",
    "model_kwargs": "a JSON object of model constructor arguments",
    "classes": "a non-empty list of class names (strings)",
    "preprocessing": "a JSON object with input_size (and optionally mean, std, interpolation, crop_pct)",
    "input_size": "[channels, height, width]: three ints >= 1",
}


def _short_json(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def load_train_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``train_state.pt`` of a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the checkpoint has no training state (e.g. ``best/``) or it is unreadable.
    """
    ckpt = Path(path)
    f = ckpt / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt} has no {STATE_FILE} (training state): resume from the run's last/ checkpoint")
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error becomes one message
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read training state {f}: {first}") from None


def load_weights(model: nn.Module, ckpt_dir: str | os.PathLike, use_ema: bool = False) -> nn.Module:
    """Load ``model.safetensors`` (or ``model_ema.safetensors`` if ``use_ema``) of ``ckpt_dir`` into ``model``.

    Raises:
        CheckpointError: missing EMA weights, or weights that do not fit the model.
    """
    ckpt = Path(ckpt_dir)
    f = ckpt / (EMA_FILE if use_ema else MODEL_FILE)
    if not f.is_file():
        what = "EMA weights (the run was trained without --ema-decay)" if use_ema else "weights"
        raise CheckpointError(f"checkpoint {ckpt} has no {what}: {f.name} is missing")
    load_checkpoint(model, f)
    return model


def load_trained(
    path: str | os.PathLike,
    use_ema: bool = False,
    device: str | torch.device = "cpu",
    prefer: str = "best",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from one of our checkpoints.

    The model is created with ``meta['model']`` and ``meta['model_kwargs']`` (crossformers or ``timm:`` names), the
    weights are loaded strictly, and ``model.pretrained_cfg`` is updated with the checkpoint's preprocessing
    (input_size, mean, std, interpolation, crop_pct) so evaluation/prediction reproduce the training pipeline.

    Args:
        path: checkpoint directory or run directory (see :func:`resolve_checkpoint_dir`).
        use_ema: load the EMA weights instead of the raw weights.
        device: where to put the model.
        prefer: for a run directory, ``'best'`` or ``'last'``.

    Returns:
        ``(model in eval mode, meta dict)``; ``meta['checkpoint_dir']`` holds the resolved directory.

    Raises:
        CheckpointError: no checkpoint at ``path``, missing EMA weights, or weights that do not fit.
        UnknownModelError: the checkpoint's model is not registered in this installation.
    """
    from .modeling import build_model

    ckpt = resolve_checkpoint_dir(path, prefer=prefer)
    meta = read_meta(ckpt)
    kwargs = dict(meta.get("model_kwargs") or {})
    kwargs.pop("drop_path_rate", None)  # stochastic depth is a no-op at inference
    model = build_model(meta["model"], **kwargs)
    load_weights(model, ckpt, use_ema=use_ema)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pre = meta.get("preprocessing") or {}
    cfg.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in pre.items()})
    cfg["num_classes"] = kwargs.get("num_classes", cfg.get("num_classes"))
    model.pretrained_cfg = cfg
    meta["checkpoint_dir"] = str(ckpt)
    return model.to(device).eval(), meta
