"""Construction helpers shared by every family: building through timm, loading the authors' weights (converted once,
by the family's checkpoint filter), and checking inputs."""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, get_pretrained_cfg
from torch import nn

from ..checkpoint import head_keys, load_checkpoint, read_state_dict
from ..errors import InputSizeError, PretrainedUnavailableError
from ..hub import WEIGHTS_ENV, WEIGHTS_FILE, read_local_dir_weights, weights_folder_file
from ..layers.conv import fp32_depthwise_autocast
from ..layers.linear import onednn_by_default, set_onednn_linear
from .dense_checkpoint import load_dense_weights

__all__ = ["build_family_model", "check_input", "resolve_pretrained_file", "hub_cached"]

StateDict = dict[str, torch.Tensor]


def _cache_dir() -> Path:
    return Path(os.environ.get("CROSSFORMERS_CACHE", Path.home() / ".cache" / "crossformers"))


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cached(hub_id: str) -> Path | None:
    """The weights file of Hugging Face hub repo ``hub_id`` if it is in the local hub cache (no network access)."""
    from huggingface_hub import hf_hub_download

    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(hub_id, filename, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached under this name
            pass
    return None


def _hub_file(hub_id: str, variant: str, how: str) -> Path:
    cached = hub_cached(hub_id)
    if cached is not None:
        return cached
    if not _reachable("https://huggingface.co"):
        raise PretrainedUnavailableError(
            f"cannot download {variant} weights: huggingface.co is unreachable (no network?). Download "
            f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors on a networked machine and {how}.")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_id, "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - one clear message
        raise PretrainedUnavailableError(f"cannot download {variant} weights from the hub ({hub_id}): {e}. "
                                         f"To use them, download the file yourself and {how}.") from None


def resolve_pretrained_file(variant: str) -> Path:
    """Local path of the released weights of ``variant`` (``name`` or ``name.tag``), downloading them where a direct
    URL or a Hugging Face hub id exists (cached copies are used first).

    Never hangs: the host is probed with a 3 s connection timeout before any download.

    Raises:
        PretrainedUnavailableError: no direct URL or hub id (the message says where the authors publish the file and
            how to pass it with ``checkpoint_path=``), or the host is unreachable.
    """
    cfg = get_pretrained_cfg(variant)
    cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else (cfg or {})
    url = cfg.get("url") or ""
    where = cfg.get("origin_url") or cfg.get("paper_ids") or "the authors' repository"
    name = variant.split(".")[0].removeprefix("cf_")
    own = weights_folder_file(variant)  # the user's weights folder comes first: local, explicit
    if own is not None:
        return own
    how = (f"download it yourself and pass create_model('{name}', checkpoint_path=PATH), or put a converted "
           f"folder at ${WEIGHTS_ENV}/{name}/ (see docs/sharing.md)")
    if not url and cfg.get("hf_hub_id"):
        return _hub_file(cfg["hf_hub_id"], variant, how)
    if not url:
        raise PretrainedUnavailableError(
            f"no direct download for {variant}: the authors publish weights at {where} (not a direct link). "
            f"To use them, {how}.")
    target = _cache_dir() / Path(urlparse(url).path).name
    if target.is_file():
        return target
    if not _reachable(url):
        raise PretrainedUnavailableError(
            f"cannot download {variant} weights: {urlparse(url).hostname} is unreachable (no network?). "
            f"Fetch {url} on a networked machine and {how}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(target), progress=True)  # writes a temp file, then renames
    return target


def _load_weights(model: nn.Module, source: Path | str | Mapping[str, torch.Tensor], cfg: dict[str, Any], filter_fn, new_head: bool,
                  features_only: bool, name: str | None = None) -> None:
    """Load ``source`` into a freshly built ``model``: converted, strict for everything but the classifier.

    The checkpoint's classifier is dropped explicitly when the model has none (``num_classes=0``), when the model is
    built as a feature extractor, or when ``new_head`` allows a different class count (fine-tuning); otherwise a
    class-count mismatch is an error.
    """
    model.pretrained_cfg = cfg
    state = filter_fn(dict(source) if isinstance(source, Mapping) else read_state_dict(source), model)
    if features_only or getattr(model, "num_classes", None) == 0:
        names = cfg.get("classifier") or "head"
        names = [names] if isinstance(names, str) else list(names)
        state = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in names}
    own = model.state_dict()
    drop = features_only or (new_head and any(
        k in state and state[k].shape != own[k].shape for k in head_keys(model)))
    load_checkpoint(model, state, drop_head=drop, source=name or str(source), converted=True)


def build_family_model(
    cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    filter_fn: Callable[[StateDict, nn.Module], StateDict],
    feature_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``cls`` through timm's ``build_model_with_cfg``, then load the authors' weights (``pretrained``) or a
    local checkpoint (``checkpoint_file=PATH`` among ``kwargs``, passed by :func:`crossformers.create_model`).

    Weights are located (or the call fails) before the model is built, converted with ``filter_fn`` and loaded into
    the classifier model *before* any ``features_only`` wrapping, strictly except for the head: it is dropped
    explicitly for ``num_classes=0``, for feature extractors, and for a different class count when ``pretrained``
    or when ``new_head=True`` (the caller gave ``num_classes``).

    ``onednn_linear`` (default :func:`crossformers.layers.linear.onednn_by_default` of the built model: this
    machine's calibrated choice for its family, at its size) switches the linear layers to the oneDNN path;
    parameters and state dict are unchanged. Depthwise convolutions become
    :class:`~crossformers.layers.conv.AutocastDepthwiseConv2d` (fp32 while training under CPU bf16 autocast, where
    their bf16 backward is several times slower; the plain convolution everywhere else).

    ``device`` / ``dtype`` (timm's factory arguments, e.g. ``create_model(name, device="meta")``) place and cast the
    parameters and floating-point buffers: the model is constructed under ``torch.device(device)`` and cast to
    ``dtype`` after construction (before weights are loaded), so ``device="meta"`` allocates nothing.
    """
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    checkpoint_file = kwargs.pop("checkpoint_file", None)
    new_head = bool(kwargs.pop("new_head", False))
    onednn = kwargs.pop("onednn_linear", None)
    given_cfg = kwargs.get("pretrained_cfg")
    tag = given_cfg if isinstance(given_cfg, str) else None  # timm passes the tag of 'name.tag' here
    weights_variant = f"{variant}.{tag}" if tag and "." not in variant else variant
    given_cfg = given_cfg if isinstance(given_cfg, dict) else {}
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    weights_name = None
    if checkpoint_file is None and pretrained and given_cfg.get("source") == "local-dir":
        # timm's `local-dir:DIR` model source: a folder written by `crossformers convert` (crossformers.hub)
        weights = read_local_dir_weights(given_cfg["file"])
        weights_name = str(Path(given_cfg["file"]) / WEIGHTS_FILE)
        # a new head only when the caller asked for another class count than the folder's (fine-tuning); a
        # folder whose weights disagree with its own config is an error, never silently repaired
        saved = kwargs.get("pretrained_model_args") or {}
        new_head = new_head or kwargs.get("num_classes", saved.get("num_classes")) != saved.get("num_classes")
    elif checkpoint_file is None and pretrained and overlay.get("file"):
        # timm's way to give a pretrained model a local file: pretrained_cfg_overlay=dict(file=PATH)
        weights = overlay["file"]
    elif checkpoint_file is None and pretrained and given_cfg.get("source") == "hf-hub":
        weights = _hub_file(given_cfg["hf_hub_id"], variant, "pass it with checkpoint_path=")
    else:
        weights = checkpoint_file if checkpoint_file is not None else (
            resolve_pretrained_file(weights_variant) if pretrained else None)
    if weights_name is None:
        new_head = new_head or (pretrained and checkpoint_file is None)
    features_only = bool(kwargs.get("features_only", False))
    cfg = get_pretrained_cfg(weights_variant)
    cfg = cfg.to_dict() if cfg is not None else {}

    def construct(**kw):
        model = _placed(cls, device, dtype, **kw)
        fp32_depthwise_autocast(model)
        # decided on the built model: its size picks the family's small or large calibrated ratio, its variant name
        # a ratio of its own where that variant was timed
        if onednn_by_default(model, variant=variant) if onednn is None else bool(onednn):
            set_onednn_linear(model, True)
        if weights is not None:
            _load_weights(model, weights, cfg, filter_fn, new_head, features_only, weights_name)
        return model

    return build_model_with_cfg(construct, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)


def _placed(cls: Callable[..., nn.Module], device: Any, dtype: Any, **kwargs: Any) -> nn.Module:
    """``cls(**kwargs)`` constructed under ``torch.device(device)`` (``"meta"`` allocates nothing), cast to ``dtype``."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = cls(**kwargs)
    if dtype is not None:
        model.to(dtype=dtype)
    return model


def build_dense_model(cls: type[nn.Module], variant: str, cfg: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Build one of the authors' dense backbones (no classifier, so not through timm's classifier builder).

    timm's factory arguments a backbone has no use for (``features_only``, ``pretrained_cfg``, ``cache_dir``, ...)
    are dropped; ``device`` / ``dtype`` place the model as in :func:`build_family_model`; ``cfg`` becomes its
    ``pretrained_cfg`` (and timm's alias ``default_cfg``); ``checkpoint_file=PATH`` (from
    :func:`crossformers.create_model`) loads the authors' dense or classification weights with
    :func:`~crossformers.models.dense_checkpoint.load_dense_weights`.
    """
    checkpoint = kwargs.pop("checkpoint_file", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    for unused in ("new_head", "features_only", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(unused, None)
    model = _placed(cls, device, dtype, **kwargs)
    model.pretrained_cfg = model.default_cfg = dict(cfg, architecture=variant)
    if checkpoint is not None:
        load_dense_weights(model, checkpoint)
    return model


@register_notrace_function  # checks concrete sizes: an FX leaf, so traced models still check their inputs
def check_input(x: torch.Tensor, in_chans: int, min_size: int, name: str) -> None:
    """Raise a clear error for inputs the model cannot process.

    Args:
        x: the input batch, expected (B, in_chans, H, W).
        in_chans: the model's channel count.
        min_size: smallest H and W the model accepts (its total stride), in pixels.
        name: model name for the message.

    Raises:
        InputSizeError: wrong rank, wrong channel count, or H/W smaller than ``min_size``.
    """
    if x.ndim != 4:
        raise InputSizeError(f"{name} expects a batch of images (B, C, H, W), got shape {tuple(x.shape)}: "
                             "add a batch dimension with x.unsqueeze(0)")
    if x.shape[1] != in_chans:
        got = x.shape[1]
        if in_chans == 1 and got == 3:
            convert = "convert the images to grey (e.g. x.mean(1, keepdim=True))"
        elif in_chans == 3 and got == 1:
            convert = "convert the grey images to RGB (e.g. x.expand(-1, 3, -1, -1))"
        else:
            convert = f"convert the images to {in_chans} channels"
        raise InputSizeError(
            f"{name} was built for {in_chans}-channel input but got {got} channels: {convert}, or create the model "
            f"with in_chans={got}")
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise InputSizeError(
            f"input {x.shape[-2]}x{x.shape[-1]} is smaller than {name}'s minimum {min_size}x{min_size} "
            f"(its total stride): resize the images to at least {min_size} pixels")
