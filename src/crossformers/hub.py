"""Sharing weights: converted folders in the timm / Hugging Face Hub layout, and loading them back.

A converted folder holds two files, written by :func:`save_local_dir` (or ``crossformers convert``)::

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, CrossformersError

__all__ = [
    "CONFIG_FILE", "WEIGHTS_FILE", "WEIGHTS_ENV", "LOCAL_DIR_PREFIX", "is_local_dir", "read_local_dir_config",
    "read_local_dir_weights", "save_local_dir", "convert", "load_local_dir", "create_from_source",
    "read_local_dir_weights_header", "weights_folder_file",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_ENV = "CROSSFORMERS_WEIGHTS"
LOCAL_DIR_PREFIX = "local-dir:"
_HUB_PREFIX = "hf-hub:"
_CONVERT_HINT = "convert it again with `crossformers convert SOURCE --output DIR` (docs/sharing.md)"
# constructor arguments that describe how a model was trained or loaded, not the architecture of the weights
_NOT_MODEL_ARGS = ("checkpoint_file", "new_head", "pretrained", "features_only", "onednn_linear", "drop_rate",
                   "drop_path_rate", "drop_block_rate", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                   "pretrained_model_args", "device", "dtype")


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
    import timm

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
    from safetensors.torch import load_file

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


# ---------------------------------------------------------------------------------------------------- writing
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
    from timm.models._hub import save_config_for_hf

    from .engine.checkpoint_io import _atomic_write_dir, _tensor_state

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
    from .engine.checkpoint_io import load_trained
    from .engine.modeling import build_model

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
    import timm

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
    from safetensors import safe_open

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
