"""Creating models by name: :func:`create_model` and :func:`list_models`.

Every crossformers model is a timm model: its entrypoint is registered with ``timm``'s ``@register_model`` (so
``timm.create_model`` works after ``import crossformers``) and also recorded here. A few crossformers names equal
names timm already owns (CrossViT); those are registered in timm under a ``cf_`` prefix and reached here by their
plain name.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Any

import timm
from torch import nn

from .checkpoint import suggest
from .errors import UnknownModelError
from .hub import create_from_source

__all__ = ["create_model", "list_models", "register_name", "timm_name"]

# crossformers name -> timm registry name
_NAMES: dict[str, str] = {}
# the names of dense (detection/segmentation) backbones among them: no classifier, listed apart
_DENSE: set[str] = set()


def register_name(name: str, timm_registered_name: str | None = None, dense: bool = False) -> None:
    """Record ``name`` as a crossformers model reachable as ``timm_registered_name`` in timm (default: same);
    ``dense=True`` for a dense backbone (no classifier; listed by ``list_models(dense=True)``)."""
    _NAMES[name] = timm_registered_name or name
    if dense:
        _DENSE.add(name)


def timm_name(name: str) -> str:
    """The timm registry name of crossformers model ``name``.

    Raises:
        UnknownModelError: ``name`` is not a crossformers model; the message suggests close names.
    """
    if name in _NAMES:
        return _NAMES[name]
    if name in _NAMES.values():
        return name
    close = suggest(name, sorted(_NAMES))
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model '{name}'.{hint} See `crossformers models` or crossformers.list_models() for all names."
    )


def list_models(pattern: str = "*", dense: bool = False) -> list[str]:
    """Sorted names of the registered crossformers models matching the shell-style ``pattern``: the classifiers, or
    with ``dense=True`` the dense (detection/segmentation) backbones, e.g. ``crossformer_small_dense``."""
    return sorted(n for n in _NAMES if fnmatch.fnmatch(n, pattern) and (n in _DENSE) == dense)


def create_model(
    name: str,
    pretrained: bool | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a crossformers model by name.

    Args:
        name: a name from :func:`list_models`, or ``local-dir:DIR`` (timm's syntax) for a folder written by
            ``crossformers convert`` / :func:`crossformers.engine.convert.save_local_dir` (architecture, class count,
            preprocessing and weights from the folder; ``hf-hub:ID`` likewise for a Hub repository).
        pretrained: load the authors' released weights (first from ``$CROSSFORMERS_WEIGHTS/<name>/`` if set, then
            the hub cache, then downloads where a direct URL exists; fails at once with a message saying where to
            get the file otherwise, or when there is no network). Default: False for names, True for
            ``local-dir:`` / ``hf-hub:`` sources (False builds the folder's architecture without its weights).
        checkpoint_path: a local checkpoint, ours or in the official layout (``.pth`` with ``{'model': ...}`` or a
            bare state dict, or ``.safetensors``); converted on load. If ``num_classes`` is given and differs from
            the checkpoint's, the checkpoint's head is dropped (fine-tuning); otherwise a class-count mismatch is an
            error. With ``features_only=True`` the weights are loaded into the classifier model before it is wrapped
            and the head is dropped explicitly; every other key must match.
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``img_size``, ``drop_path_rate``, ...).

    Returns:
        The model (``nn.Module``) in train mode, with ``pretrained_cfg`` set.

    Raises:
        UnknownModelError: unknown name (close names suggested).
        CheckpointError: the checkpoint is unreadable or belongs to another architecture.
        PretrainedUnavailableError: ``pretrained=True`` cannot be honoured here.
    """
    if name.startswith(("local-dir:", "hf-hub:")):
        return create_from_source(name, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)
    pretrained = bool(pretrained)
    registered = timm_name(name)
    if checkpoint_path is not None:
        # loaded inside the entrypoint, into the classifier model before any features_only wrapping
        kwargs["checkpoint_file"] = checkpoint_path
        kwargs["new_head"] = "num_classes" in kwargs
    return timm.create_model(registered, pretrained=pretrained, **kwargs)
