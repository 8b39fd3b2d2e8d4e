"""Training checkpoints: atomic save, safe load, and rebuilding a trained model from its checkpoint.

A checkpoint is a directory::

    model.safetensors      weights (safetensors)
    model_ema.safetensors  EMA weights, when trained with an EMA
    meta.json              model name + constructor kwargs, class names, preprocessing (input_size, mean, std,
                           interpolation, crop_pct), epoch, step, metrics, the training config
    train_state.pt         (``last/`` only) optimizer, scheduler, RNG states and data position; plain tensors /
                           dicts / lists / numbers / strings only, so it loads with ``torch.load(weights_only=True)``

A run directory keeps ``last/`` (every epoch, and where ``max_steps`` stops) and ``best/`` (highest val top-1).

Writes are atomic: everything is written into a temporary sibling directory, flushed to disk, and then swapped in
with ``os.replace``. If the process dies at any point, the previous checkpoint (or, in the tiny window between the
two renames of the swap, its backup ``.<name>.old``, which every reader and the next save recover) stays intact.
"""
from __future__ import annotations

import json
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
        The checkpoint directory (an interrupted atomic swap is recovered from its backup).

    Raises:
        CheckpointError: nothing checkpoint-like at ``path``.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.name == META_FILE:
        p = p.parent
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
    return meta


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
