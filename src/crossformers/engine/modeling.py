"""Building models by name for the engine (crossformers names and ``timm:<name>``), preprocessing settings,
input checks, and parameter / MAC counts."""
from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from ..checkpoint import head_keys, load_checkpoint, read_state_dict
from ..data.transforms import adapt_stats
from ..errors import CrossformersError, InputSizeError, PretrainedUnavailableError, UnknownModelError
from ..factory import create_model
from ..utils.macs import count_macs as _count_macs
from .config import TIMM_PREFIX
from .errors import ConfigError

__all__ = ["build_model", "model_preprocessing", "check_model_input", "count_params", "count_macs"]


def build_model(name: str, checkpoint_path: str | os.PathLike | None = None, pretrained: bool = False,
                **kwargs: Any) -> nn.Module:
    """Create a model by crossformers name, or any timm model as ``timm:<name>``.

    Args:
        name: a name from ``crossformers.list_models()`` or ``timm:<timm model name>``.
        pretrained: load the authors' released weights (crossformers names) or timm's (``timm:`` names).
        checkpoint_path: weights to load (our ``model.safetensors`` or an official / state-dict file). When
            ``num_classes`` is given and differs from the checkpoint's classifier, the classifier is dropped
            (new head for fine-tuning).
        **kwargs: constructor arguments (``num_classes``, ``in_chans``, ``img_size``, ``drop_path_rate``, ...).
            ``img_size`` is dropped for models whose constructor does not take it (CNNs).

    Returns:
        The model in train mode on the CPU.

    Raises:
        UnknownModelError: unknown name (close names suggested).
        ConfigError: the model does not accept one of ``kwargs``.
        CheckpointError: the checkpoint does not fit the model.
    """
    def make(**kw: Any) -> nn.Module:
        if not name.startswith(TIMM_PREFIX):
            return create_model(name, pretrained=pretrained, checkpoint_path=checkpoint_path, **kw)
        return _build_timm(name[len(TIMM_PREFIX):], checkpoint_path, pretrained, **kw)

    try:
        try:
            return make(**kwargs)
        except TypeError as e:
            # convolutional models take any input size and have no img_size argument: the size still sets the
            # transforms, so build the model without it
            if "img_size" not in kwargs or "img_size" not in str(e):
                raise
            return make(**{k: v for k, v in kwargs.items() if k != "img_size"})
    except TypeError as e:
        raise ConfigError(f"model {name} does not accept these arguments {sorted(kwargs)}: {e}") from None


def _build_timm(arch: str, checkpoint_path: str | os.PathLike | None, pretrained: bool, **kwargs: Any) -> nn.Module:
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown timm model '{arch}'.{hint} See timm.list_models().")
    try:
        model = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError):
        raise
    except Exception as e:  # noqa: BLE001 - download / hub failures
        if not pretrained:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PretrainedUnavailableError(
            f"cannot get timm's pretrained weights for {arch} ({first}): download them on a networked machine and "
            "pass the file with --checkpoint / checkpoint_path=") from None
    if checkpoint_path is not None:
        state = read_state_dict(checkpoint_path)
        own = model.state_dict()
        drop = "num_classes" in kwargs and any(
            k in state and state[k].shape != own[k].shape for k in head_keys(model))
        load_checkpoint(model, state, drop_head=drop)
    return model


def model_preprocessing(model: nn.Module, in_chans: int | None = None, img_size: int | None = None,
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Eval preprocessing of ``model``: ``input_size`` (C, H, W) in pixels, ``mean``/``std`` (0..1 units),
    ``interpolation`` and ``crop_pct``.

    Starts from timm's ``resolve_model_data_config(model)`` (``model.pretrained_cfg`` over timm's defaults);
    ``in_chans`` and ``img_size`` (pixels, square) replace the channel count and size; ``overrides`` (e.g. a
    dataset's own mean/std) replace any key. Mean/std are adapted to the channel count (3 values averaged for 1
    channel, 1 value repeated for 3), which timm's resolver does not do.
    """
    cfg = resolve_model_data_config(model)  # the model's pretrained_cfg over timm's defaults
    size = tuple(cfg["input_size"])
    chans = int(in_chans or getattr(model, "in_chans", None) or size[0])
    hw = (int(img_size), int(img_size)) if img_size else (int(size[1]), int(size[2]))
    out: dict[str, Any] = {
        "input_size": [chans, *hw],
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": float(cfg["crop_pct"]),
    }
    for k, v in (overrides or {}).items():
        if v is not None:
            out[k] = list(v) if isinstance(v, tuple) else v
    for k in ("mean", "std"):
        out[k] = list(adapt_stats(k, out[k], chans))
    return out


def check_model_input(model: nn.Module, input_size: tuple[int, int, int] | list[int], name: str) -> None:
    """Run one zero image of ``input_size`` (C, H, W) through ``model`` in eval mode to fail early and clearly.

    Raises:
        InputSizeError: the model cannot process that input (too small, wrong channel count); the message says
            which size to use.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, *[int(s) for s in input_size], device=device))
    except CrossformersError:
        raise
    except (RuntimeError, ValueError, AssertionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        c, h, w = (int(s) for s in input_size)
        raise InputSizeError(
            f"model {name} cannot process {c}-channel {h}x{w} input ({first}): the input is too small or has the "
            "wrong channel count for this model; use a larger --img-size (e.g. 32 or 224) or the --in-chans the model "
            "was built for") from None
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    """Number of parameters (elements)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int] | list[int]) -> float:
    """Multiply-accumulate operations for one image of ``input_size`` (C, H, W), as total FLOPs / 2.

    Delegates to :func:`crossformers.utils.macs.count_macs` (explicit attention path, eval mode, the model's mode and
    attention flags restored), the one MAC counter of the project.
    """
    return float(_count_macs(model, tuple(int(s) for s in input_size))[0])
