"""Writing timm / Hugging Face Hub-style model folders: ``crossformers convert`` (an official checkpoint or one of
our runs -> ``model.safetensors`` + timm's ``config.json``). Reading them is :mod:`crossformers.hub` (below the
models, so that ``create_model("local-dir:DIR")`` and ``pretrained=True`` can use it); writing lives here because it
reads our run folders (:func:`crossformers.engine.load_trained`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from timm.models._hub import save_config_for_hf
from torch import nn

from ..errors import CheckpointError
from ..hub import CONFIG_FILE, WEIGHTS_FILE
from .checkpoint_io import _atomic_write_dir, _tensor_state, load_trained
from .modeling import build_model

__all__ = ["save_local_dir", "convert"]

# constructor arguments that describe how a model was trained or loaded, not the architecture of the weights
_NOT_MODEL_ARGS = ("checkpoint_file", "new_head", "pretrained", "features_only", "onednn_linear", "drop_rate",
                   "drop_path_rate", "drop_block_rate", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                   "pretrained_model_args", "device", "dtype")


def save_local_dir(
    model: nn.Module,
    output: str | os.PathLike,
    model_args: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    label_descriptions: Mapping[str, str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a timm / Hub-style folder: ``model.safetensors`` + ``config.json``.

    Args:
        model: a model built by ``timm.create_model`` / :func:`crossformers.create_model` (its ``pretrained_cfg``
            names the architecture).
        output: the folder to create. Written atomically (temporary sibling folder, then renamed).
        model_args: the constructor arguments the weights need (e.g. ``num_classes``, ``in_chans``, ``img_size``,
            ``embed_dim``); must be JSON-serialisable. Training-only arguments (drop path, ...) are removed.
        label_names: one name per output class, in classifier order.
        label_descriptions: optional ``{label name: description}``.
        data_config: preprocessing to record (``input_size`` (C, H, W) in pixels, ``mean``/``std``,
            ``crop_pct``, ``interpolation``); defaults to the model's ``pretrained_cfg`` (``input_size`` at
            ``model_args['img_size']`` when given).
        overwrite: replace an existing non-empty ``output`` (default: refuse, so nothing is lost).

    Returns:
        The folder.

    Raises:
        CheckpointError: ``output`` exists and is not empty (without ``overwrite``), is a file, the label count
            differs from the class count, or a model argument is not JSON-serialisable.
    """
    target = _check_output(output, overwrite)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if label_names is not None and len(label_names) != num_classes:
        raise CheckpointError(f"{len(label_names)} label names for a model with {num_classes} classes: give one "
                              "name per class, in classifier order")
    args = {k: v for k, v in {**getattr(model, "_model_args", {}), **dict(model_args or {})}.items()
            if k not in _NOT_MODEL_ARGS and not k.endswith("_drop_rate")}
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
    try:
        json.dumps(args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model arguments are not JSON-serialisable ({e}): pass plain numbers, strings and "
                              "lists") from None
    model_config: dict[str, Any] = {}
    if label_names is not None:
        model_config["label_names"] = [str(n) for n in label_names]
    if label_descriptions:
        model_config["label_descriptions"] = dict(label_descriptions)
    data = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (data_config or {}).items()
            if k in ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode") and v is not None}
    if "input_size" not in data and args.get("img_size") is not None:  # the weights' resolution, not the default
        size = args["img_size"]
        hw = (size, size) if isinstance(size, int) else tuple(size)
        chans = int(args.get("in_chans") or (model.pretrained_cfg.get("input_size") or (3,))[0])
        data["input_size"] = (chans, *hw)

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(_tensor_state(model.state_dict()), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        before = getattr(model, "_model_args", None)
        model._model_args = args  # what timm's exporter reads: the architecture of the weights
        try:
            save_config_for_hf(model, str(tmp / CONFIG_FILE), model_config=model_config, model_args={},
                               data_config=data or None)
        finally:
            if before is None:
                del model._model_args
            else:
                model._model_args = before

    _atomic_write_dir(target, write)
    return target


def _check_output(output: str | os.PathLike, overwrite: bool) -> Path:
    target = Path(output).expanduser()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"--output {target} is a file: pass a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise CheckpointError(f"--output {target} exists and is not empty: choose a new folder, or pass "
                              "--overwrite (overwrite=True) to replace it")
    return target


def _imagenet_labels(num_classes: int) -> tuple[list[str] | None, dict[str, str] | None]:
    """ImageNet-1k synsets and their descriptions (timm's offline tables) for a 1000-class model, else Nones."""
    if num_classes != 1000:
        return None, None
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return list(info.label_names()), dict(info.label_descriptions(as_dict=True))


def convert(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    use_ema: bool = False,
    label_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an official checkpoint or one of our runs into a timm / Hub-style folder.

    Args:
        source: an official checkpoint file (``.pth``/``.pt``/``.bin`` read with ``weights_only=True``, or
            ``.safetensors``; needs ``model``), or one of our run folders (``RUN``, ``RUN/best``, ``RUN/last``;
            ``RUN`` means ``RUN/best``).
        output: the folder to write (see :func:`save_local_dir`).
        model: the model name of an official checkpoint (crossformers name, or ``timm:<name>``).
        model_kwargs: constructor arguments for ``model`` (e.g. ``num_classes``, ``img_size``).
        use_ema: export the EMA weights of a run.
        label_names: class names (default: the run's classes; ImageNet-1k synsets for 1000-class checkpoints).
        overwrite: replace a non-empty ``output``.

    Returns:
        The written folder.

    Raises:
        CheckpointError: unreadable source, a checkpoint that does not fit ``model``, ``model`` missing for a file,
            given for a run, or a non-empty ``output``.
        UnknownModelError: unknown model name.
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise CheckpointError(f"convert source not found: {src} (pass an official checkpoint file with --model, or "
                              "a run folder RUN, RUN/best or RUN/last)")
    _check_output(output, overwrite)  # before any work
    if src.is_dir():
        if model is not None or model_kwargs:
            raise CheckpointError(f"{src} is a run folder that records its model: drop --model/--model-kwargs")
        net, meta = load_trained(src, use_ema=use_ema)
        kwargs = dict(meta.get("model_kwargs") or {})
        labels = list(label_names) if label_names is not None else list(meta.get("classes") or []) or None
        descriptions = None
        data = meta.get("preprocessing") or {}
    else:
        if model is None:
            raise CheckpointError(f"{src} is a weight file: name its model with --model NAME (e.g. --model "
                                  "crossformer_small); `crossformers models` lists them")
        if use_ema:
            raise CheckpointError("--ema applies to run folders only; an official file holds one set of weights")
        kwargs = dict(model_kwargs or {})
        try:
            net = build_model(model, checkpoint_path=src, **kwargs)
        except RuntimeError as e:  # a converter that cannot reshape a tensor of another architecture
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"checkpoint {src} does not fit model {model} ({first}): name the model the checkpoint was trained "
                "as, with its constructor arguments in --model-kwargs (e.g. img_size, num_classes)") from None
        labels, descriptions = (list(label_names), None) if label_names is not None else _imagenet_labels(
            int(getattr(net, "num_classes", 0) or 0))
        data = None
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    cfg.pop("tag", None)
    cfg["notes"] = f"converted by `crossformers convert` from {src.name}"
    net.pretrained_cfg = cfg
    net.eval()
    return save_local_dir(net, output, model_args=kwargs, label_names=labels, label_descriptions=descriptions,
                          data_config=data, overwrite=overwrite)
