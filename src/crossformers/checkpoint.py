"""Reading checkpoints safely and loading them into models.

Checkpoints are never unpickled with code execution: ``.safetensors`` files are read with safetensors and every other
file with ``torch.load(..., weights_only=True)``. Official layouts (``{'model': state_dict}``, ``{'state_dict': ...}``,
a bare state dict) are unwrapped here; the key conversion of each family lives in its model file
(``checkpoint_filter_fn``) and runs automatically inside ``model.load_state_dict`` (see
:func:`crossformers.models._helpers.convert_on_load`).
"""
from __future__ import annotations

import difflib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError

__all__ = ["read_state_dict", "load_checkpoint", "head_keys", "guess_family", "register_checkpoint_markers",
           "check_family"]

_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")


def read_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without executing pickled code.

    Args:
        path: a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file holding a state dict or a dict that wraps
            one under ``'model'``, ``'state_dict'``, ``'model_state'`` or ``'module'``. A ``module.`` prefix left by
            DistributedDataParallel is removed.
        map_location: device the tensors are placed on.

    Returns:
        Mapping of parameter/buffer names to tensors.

    Raises:
        CheckpointError: the file is missing, unreadable, needs unpickling of code, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}: check the path (a .pth or .safetensors file)")
    try:
        if path.suffix == ".safetensors":
            obj: object = load_file(str(path), device=str(map_location))
        else:
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(e)}. {_PLAIN}") from None
        # torch's own text goes on to advise weights_only=False, i.e. running the file's code: not passed on
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (such as {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} is not a plain tensor checkpoint: it stores pickled Python objects{what}, and "
            "crossformers does not unpickle objects because that can run arbitrary code. Convert it to tensors "
            "only: in the project that wrote it, save just the weights (torch.save(model.state_dict(), "
            "'weights.pth') or safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')), or ask "
            "its author for such a file, and pass that file instead."
        ) from None
    except Exception as e:  # noqa: BLE001 - every reader error becomes one clear message
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(e)}. {_PLAIN}") from None
    state = _unwrap(obj)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint {path} holds no state dict of tensors (top-level keys: {list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__}); "
            "save it with torch.save(model.state_dict(), path) or as safetensors"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


_PLAIN = ("It must be a .safetensors file or a torch.save'd state dict of tensors (files that pickle Python objects "
          "are refused); re-save it as a plain state dict.")


def _first_line(e: Exception) -> str:
    """First line of an exception's message, without terminal escape codes (torch bolds parts of its text)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unwrap(obj: object) -> dict:
    if not isinstance(obj, Mapping):
        return {}
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if all(
        isinstance(v, torch.Tensor) for v in obj.values()) else {}


def head_keys(model: nn.Module) -> list[str]:
    """Names of the classifier parameters of ``model`` (from ``pretrained_cfg['classifier']``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier", "head")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    own = model.state_dict()
    return [k for k in own if any(k == n + ".weight" or k == n + ".bias" for n in names)]


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike | Mapping[str, torch.Tensor],
    drop_head: bool = False,
    strict: bool = True,
    source: str | None = None,
    converted: bool = False,
) -> nn.Module:
    """Load a checkpoint (ours or an official layout) into ``model``.

    Official layouts are converted once, by the model's own ``convert_state_dict`` (its family's checkpoint filter),
    unless ``converted`` says the caller already did. With ``drop_head=True`` the classifier of the
    checkpoint is removed before loading (the model keeps its freshly initialised head), the fine-tuning case of a
    different class count; every other key must still match.

    Args:
        model: a crossformers model.
        path: checkpoint file, or an already-read state dict.
        drop_head: drop the checkpoint's classifier weights (explicit, never silent).
        strict: require every key to match (default).
        source: how to name the checkpoint in messages (default: the path, or "state dict").
        converted: the state dict is already in the model's layout (skip the conversion).

    Returns:
        ``model``, with the weights loaded in place.

    Raises:
        CheckpointError: the checkpoint belongs to another architecture, or its class count differs and
            ``drop_head`` is False. The message lists example missing/unexpected keys and the fix.
    """
    state = dict(path) if isinstance(path, Mapping) else read_state_dict(path)
    source = source or ("state dict" if isinstance(path, Mapping) else str(path))
    if not converted:
        state = _convert(model, state)
    head = head_keys(model)
    own = model.state_dict()
    if drop_head:
        state = {k: v for k, v in state.items() if k not in head}
    else:
        body_fits = all(k in state and state[k].shape == own[k].shape for k in own if k not in head) and all(
            k in own for k in state)
        for k in head:
            # the class-count message only when the head's row count is the sole difference: a head of another width
            # (or any other mismatch) means another architecture/variant, reported below with the shapes that differ
            if (k in state and k in own and state[k].shape != own[k].shape and body_fits
                    and state[k].shape[1:] == own[k].shape[1:]):
                raise CheckpointError(
                    f"checkpoint {source} has a classifier of {state[k].shape[0]} classes but the model has "
                    f"{own[k].shape[0]}: create the model with num_classes={state[k].shape[0]} to use the checkpoint's "
                    "head, or drop it for fine-tuning (create_model(..., num_classes=N, checkpoint_path=...) or "
                    "load_checkpoint(model, path, drop_head=True))"
                )
    missing = [k for k in own if k not in state and not (drop_head and k in head)]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        raise CheckpointError(_mismatch_message(model, source, state, missing, unexpected, mismatched))
    incompatible = model.load_state_dict(state, strict=False)  # also drops cached biases (InferenceCache)
    if strict and [k for k in incompatible.missing_keys if not (drop_head and k in head)]:
        raise CheckpointError(_mismatch_message(model, source, state, incompatible.missing_keys, [], []))
    return model


def _convert(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    convert = getattr(model, "convert_state_dict", None)
    return convert(state) if callable(convert) else state


def key_mismatch_parts(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], missing: list[str],
                       unexpected: list[str], mismatched: list[str]) -> list[str]:
    """The phrases of a 'checkpoint does not fit' message: how many keys are missing / unexpected / of another shape,
    each with up to three examples (shapes as checkpoint vs model)."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        ex = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:3])
        parts.append(f"{len(mismatched)} shape mismatches (e.g. {ex})")
    return parts


def _mismatch_message(model, source, state, missing, unexpected, mismatched) -> str:
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    guess = guess_family(state)
    parts = [f"checkpoint {source} does not fit model {name}:",
             *key_mismatch_parts(state, model.state_dict(), missing, unexpected, mismatched)]
    hint = f" It looks like a {guess} checkpoint." if guess else ""
    width = _feature_widths(model, state)
    if width is not None:
        hint += (f" Its features are {width[0]} wide where {name}'s are {width[1]}: it belongs to another "
                 "architecture or variant.")
    elif mismatched:
        hint += " The tensors have other shapes: it belongs to another architecture or variant."
    return " ".join(parts) + "." + hint + (
        " Create the model that matches the checkpoint (same name and kwargs as when it was trained), "
        "or pass strict=False to load what matches."
    )


def _feature_widths(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """(checkpoint, model) input width of the classifier when both have a 2-D classifier weight and they differ."""
    own = model.state_dict()
    for k in head_keys(model):
        if k.endswith(".weight") and k in state and own[k].ndim == 2 and state[k].ndim == 2:
            if state[k].shape[1] != own[k].shape[1]:
                return int(state[k].shape[1]), int(own[k].shape[1])
    return None


# (family, substrings any of which identifies it), in registration order (the first match wins). Each family's
# model file registers its own markers (register_checkpoint_markers), so this module names no family.
_FAMILY_MARKERS: list[tuple[str, tuple[str, ...]]] = []


def register_checkpoint_markers(family: str, markers: tuple[str, ...]) -> None:
    """Recognise state dicts holding a key that contains any of ``markers`` as checkpoints of ``family`` (a label
    for messages, e.g. ``"CrossViT (timm layout)"``). Called by each family's model file at import."""
    if not markers or not all(isinstance(m, str) and m for m in markers):
        raise ValueError(f"markers of {family!r} must be non-empty strings, got {markers!r}")
    _FAMILY_MARKERS.append((family, tuple(markers)))


def guess_family(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the model family a state dict most likely belongs to (by the registered key markers), or None."""
    for family, markers in _FAMILY_MARKERS:
        if any(m in k for k in state for m in markers):
            return family
    return None


def check_family(state: Mapping[str, torch.Tensor], family: str, article: str = "a") -> None:
    """Refuse a state dict that the registered markers recognise as another family's (a family's checkpoint filter
    calls this first).

    Args:
        state: the state dict.
        family: the family's label prefix, e.g. ``"CrossViT"`` (its markers' labels start with it).
        article: "a" or "an", for the message.

    Raises:
        CheckpointError: the state dict looks like another family's; the message names it.
    """
    found = guess_family(state)
    if found is not None and not found.startswith(family):
        raise CheckpointError(f"this is a {found} checkpoint, not {article} {family} one: create the matching model "
                              "(see crossformers.list_models())")


def suggest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Close matches of ``name`` among ``choices`` (for 'did you mean' messages)."""
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
