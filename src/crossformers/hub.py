"""Sharing weights: converted folders in the timm / Hugging Face Hub layout, and loading them back.

A converted folder holds two files, written by :func:`crossformers.engine.convert.save_local_dir` (or
``crossformers convert``)::

    model.safetensors   the weights in crossformers' own layout (no conversion needed on load)
    config.json         timm's hub config: ``architecture`` (the timm registry name), ``num_classes``,
                        ``num_features``, ``label_names``, ``model_args`` (constructor arguments) and
                        ``pretrained_cfg`` (input_size, mean, std, crop_pct, interpolation, ...)

The config is written by timm's own ``timm.models._hub.save_config_for_hf``, so the folder is exactly what timm
reads with its ``local-dir:`` model source and what ``push_to_hf_hub`` uploads::

    crossformers.create_model("local-dir:DIR")                 # weights loaded by default
    timm.create_model("local-dir:DIR", pretrained=True)        # after `import crossformers` (timm's semantics)

``pretrained=True`` for a model name also looks in ``$CROSSFORMERS_WEIGHTS/<name>/`` (folders of this format)
before the download / hub-cache lookup, see :func:`weights_folder_file`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError, CrossformersError

__all__ = [
    "CONFIG_FILE", "WEIGHTS_FILE", "WEIGHTS_ENV", "LOCAL_DIR_PREFIX", "is_local_dir", "read_local_dir_config",
    "read_local_dir_weights", "load_local_dir", "create_from_source",
    "read_local_dir_weights_header", "weights_folder_file",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_ENV = "CROSSFORMERS_WEIGHTS"
LOCAL_DIR_PREFIX = "local-dir:"
_HUB_PREFIX = "hf-hub:"
_CONVERT_HINT = "convert it again with `crossformers convert SOURCE --output DIR` (docs/sharing.md)"

# ---------------------------------------------------------------------------------------------------- reading
def is_local_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` (optionally prefixed ``local-dir:``) is a folder with a ``config.json`` that is not one of
    our checkpoint directories (``meta.json``) or run directories (``best/``, ``last/``; their ``config.json`` holds
    the training options)."""
    p = _folder(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and not any(
        (p / name).exists() for name in ("meta.json", "best", "last"))


def read_local_dir_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config.json`` of a converted folder.

    Args:
        path: the folder (a ``local-dir:`` prefix is allowed).

    Returns:
        The parsed config; its ``architecture`` is registered in timm (``import crossformers`` registers ours).

    Raises:
        CheckpointError: the folder or its ``config.json`` is missing, the file is not a JSON object, it has no
            ``architecture``, or the architecture is not a registered model. Each message names the file and the fix.
    """
    folder = _folder(path)
    cfg_file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder} does not exist (expected a folder with "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE}, as written by `crossformers convert`)")
    if any((folder / name).exists() for name in ("meta.json", "best", "last")):
        raise CheckpointError(f"{folder} is one of our run/checkpoint folders, not a converted one: use it as is "
                              f"(crossformers eval/predict), or convert it with `crossformers convert {folder} "
                              "--output DIR` and load DIR")
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file} is missing: {folder} is not a converted model folder; {_CONVERT_HINT}")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_file}: {e}; {_CONVERT_HINT}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str) or not cfg["architecture"]:
        raise CheckpointError(f"{cfg_file} names no 'architecture' (timm's hub config format): {_CONVERT_HINT}")
    arch = cfg["architecture"]
    if not timm.is_model(arch):
        from .checkpoint import suggest

        close = suggest(arch, timm.list_models())
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CheckpointError(
            f"{cfg_file}: architecture '{arch}' is not a registered model{hint}: `import crossformers` before "
            "timm.create_model, install the library that defines it, or fix 'architecture' in the file")
    if not isinstance(cfg.get("pretrained_cfg", {}), dict) or not isinstance(cfg.get("model_args", {}), dict):
        raise CheckpointError(f"{cfg_file}: 'pretrained_cfg' and 'model_args' must be JSON objects; {_CONVERT_HINT}")
    return cfg


def read_local_dir_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``model.safetensors`` of a converted folder (read with safetensors, never unpickled).

    Raises:
        CheckpointError: the file is missing, truncated or not a safetensors file (the message names the file).
    """
    f = _folder(path) / WEIGHTS_FILE
    if not f.is_file():
        raise CheckpointError(f"{f} is missing: the folder has a config but no weights; copy the whole folder, or "
                              f"{_CONVERT_HINT}")
    try:
        return load_file(str(f), device="cpu")
    except Exception as e:  # noqa: BLE001 - every reader error becomes one message
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read {f}: {first}. The file is damaged or incomplete (interrupted copy or "
                              f"download?): copy it again, or {_CONVERT_HINT}") from None


def _folder(path: str | os.PathLike) -> Path:
    text = str(path)
    if text.startswith(LOCAL_DIR_PREFIX):
        text = text[len(LOCAL_DIR_PREFIX):]
    return Path(text).expanduser()


# ---------------------------------------------------------------------------------------------------- loading
def create_from_source(name: str, pretrained: bool | None = None, **kwargs: Any) -> nn.Module:
    """Create a model from ``local-dir:DIR`` (or ``hf-hub:ID``), validating a local folder first.

    Args:
        name: ``local-dir:DIR`` or ``hf-hub:ID`` (timm's syntax).
        pretrained: load the folder's weights (default True; False builds the architecture only).
        **kwargs: model arguments overriding the folder's ``model_args`` (``num_classes=N`` different from the
            folder's drops its classifier, for fine-tuning).

    Returns:
        The model in train mode; ``pretrained_cfg`` holds the folder's preprocessing and ``label_names``.

    Raises:
        CheckpointError: see :func:`read_local_dir_config` / :func:`read_local_dir_weights`, or weights that do
            not fit the architecture in ``config.json``.
    """
    pretrained = True if pretrained is None else bool(pretrained)
    if kwargs.get("checkpoint_path") is not None or kwargs.get("checkpoint_file") is not None:
        raise CheckpointError(f"{name} already holds weights: drop checkpoint_path")
    if not name.startswith(LOCAL_DIR_PREFIX):
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    folder = _folder(name)
    cfg = read_local_dir_config(folder)
    if pretrained:
        read_local_dir_weights_header(folder / WEIGHTS_FILE)
    try:
        return timm.create_model(f"{LOCAL_DIR_PREFIX}{folder}", pretrained=pretrained, **kwargs)
    except CheckpointError as e:
        raise CheckpointError(f"{e} The folder's {CONFIG_FILE} (architecture {cfg['architecture']}, model_args) does "
                              f"not describe its {WEIGHTS_FILE}: {_CONVERT_HINT}") from None
    except (RuntimeError, KeyError, ValueError) as e:
        if isinstance(e, CrossformersError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{folder / WEIGHTS_FILE} does not fit the model its {CONFIG_FILE} describes "
                              f"({cfg['architecture']}): {first[:300]}; {_CONVERT_HINT}") from None


def read_local_dir_weights_header(f: Path) -> list[str]:
    """Tensor names in the safetensors file ``f``, checking it is complete (cheap: reads only the header).

    Raises:
        CheckpointError: missing, truncated or not a safetensors file.
    """
    if not f.is_file():
        raise CheckpointError(f"{f} is missing: the folder has a config but no weights; copy the whole folder, or "
                              f"{_CONVERT_HINT}")
    try:
        with safe_open(str(f), framework="pt") as fh:
            return list(fh.keys())
    except Exception as e:  # noqa: BLE001 - every reader error becomes one message
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read {f}: {first}. The file is damaged or incomplete (interrupted copy or "
                              f"download?): copy it again, or {_CONVERT_HINT}") from None


def load_local_dir(path: str | os.PathLike, device: str | torch.device = "cpu",
                   **kwargs: Any) -> tuple[nn.Module, dict[str, Any], list[str] | None]:
    """Load a converted folder for inference: the one entry point for ``eval`` / ``predict`` style callers.

    Args:
        path: the folder (``local-dir:`` prefix optional).
        device: where to put the model.
        **kwargs: model arguments overriding the folder's (rarely needed).

    Returns:
        ``(model in eval mode, pretrained_cfg dict, label names or None)``; ``pretrained_cfg`` has ``input_size``
        (C, H, W) in pixels, ``mean``/``std``, ``crop_pct``, ``interpolation`` and ``num_classes``.

    Raises:
        CheckpointError: as :func:`create_from_source`.
    """
    model = create_from_source(f"{LOCAL_DIR_PREFIX}{_folder(path)}", pretrained=True, **kwargs)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    labels = cfg.get("label_names")
    if isinstance(labels, Mapping):  # {index: name} with gaps: order by index
        labels = [str(labels[k]) for k in sorted(labels, key=int)]
    return model.to(device).eval(), cfg, (list(labels) if labels else None)


def weights_folder_file(variant: str) -> Path | None:
    """``$CROSSFORMERS_WEIGHTS/<name>/model.safetensors`` for the model ``variant``, if the user set that folder.

    ``<name>`` is tried as the full variant (``name.tag``), the crossformers name and the timm registry name
    (``cf_`` prefix). The folder's ``config.json`` must name the same architecture.

    Returns:
        The weights file, or None when the variable is unset or holds no folder for this model.

    Raises:
        CheckpointError: the folder exists but is incomplete, damaged or for another architecture.
    """
    root = os.environ.get(WEIGHTS_ENV)
    if not root:
        return None
    base = variant.split(".")[0]
    for name in dict.fromkeys((variant, base.removeprefix("cf_"), base)):
        folder = Path(root).expanduser() / name
        if not folder.is_dir():
            continue
        cfg = read_local_dir_config(folder)
        if cfg["architecture"].split(".")[0] != base:
            raise CheckpointError(f"{folder / CONFIG_FILE} is for architecture '{cfg['architecture']}', not {base}: "
                                  f"move it to ${WEIGHTS_ENV}/{cfg['architecture'].removeprefix('cf_')}/")
        read_local_dir_weights_header(folder / WEIGHTS_FILE)
        return folder / WEIGHTS_FILE
    return None
