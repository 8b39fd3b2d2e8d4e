"""The blocks of a model, in execution order, as its family describes them.

:func:`model_blocks` asks the model (the family protocol, :mod:`crossformers.models.protocol`: ``block_infos()``);
a model that does not implement it gets its ``blocks.N`` modules (enough for activation amplitudes).
:func:`select_blocks` resolves user selections (names, glob patterns, indices).
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from timm.utils import unwrap_model
from torch import nn

from ..models.protocol import BlockInfo
from .errors import NoAttentionError, UnsupportedModelError

__all__ = ["BlockInfo", "model_family", "model_blocks", "select_blocks"]


def model_family(model: nn.Module) -> str:
    """The family name the model declares (its ``family`` attribute: ``crossformer``, ``fcaformer``, ``crossvit``
    ...), or ``generic``."""
    return str(getattr(unwrap_model(model), "family", "generic"))


def model_blocks(model: nn.Module) -> list[BlockInfo]:
    """Every block of ``model`` in execution order (DDP / compiled wrappers are unwrapped).

    Raises:
        UnsupportedModelError: a model that neither implements ``block_infos()`` nor has ``blocks.N`` modules.
    """
    model = unwrap_model(model)
    infos = getattr(model, "block_infos", None)
    if callable(infos):
        return list(infos())
    pattern = re.compile(r"(?:^|\.)blocks\.(\d+)$")
    out = [BlockInfo(name=name, index=i, module=mod, family="generic", kind="block")
           for i, (name, mod) in enumerate((n, m) for n, m in model.named_modules() if pattern.search(n))]
    if not out:
        raise UnsupportedModelError(
            f"{type(model).__name__} does not describe its blocks (no block_infos(), see crossformers.models.protocol) "
            "and has no 'blocks.N' modules: crossformers.analysis cannot find its blocks")
    return out


def select_blocks(blocks: Sequence[BlockInfo], spec: Sequence[str | int] | str | int | None = None,
                  attention_only: bool = False) -> list[BlockInfo]:
    """Resolve a block selection.

    Args:
        blocks: from :func:`model_blocks`.
        spec: None (all), or names (``stages.2.blocks.1``), shell patterns (``stages.2.*``) and indices (int or
            digit strings; negative counts from the end) into ``blocks``. Several entries are combined, in model order.
        attention_only: keep only blocks with attention. Blocks named or indexed explicitly must then have
            attention; patterns silently skip the others.

    Returns:
        The selected blocks in execution order.

    Raises:
        NoAttentionError: an explicitly chosen block has no attention, or nothing with attention is selected.
        UnsupportedModelError: a name, pattern or index that matches no block (the message lists valid names).
    """
    blocks = list(blocks)
    att_names = [b.name for b in blocks if b.has_attention]
    if spec is None:
        chosen = [b for b in blocks if b.has_attention] if attention_only else blocks
        if not chosen:
            raise NoAttentionError("this model has no attention blocks crossformers can read (a model family "
                                   "declares them in block_infos(), see crossformers.models.protocol)")
        return chosen
    entries = [spec] if isinstance(spec, (str, int)) else list(spec)
    picked: dict[int, BlockInfo] = {}
    for entry in entries:
        text = str(entry).strip()
        if re.fullmatch(r"-?\d+", text):
            i = int(text)
            if not -len(blocks) <= i < len(blocks):
                raise UnsupportedModelError(f"block index {i} is out of range: the model has {len(blocks)} blocks "
                                            f"(0..{len(blocks) - 1})")
            matches, explicit = [blocks[i]], True
        elif any(c in text for c in "*?["):
            matches, explicit = [b for b in blocks if fnmatch.fnmatchcase(b.name, text)], False
        else:
            matches, explicit = [b for b in blocks if b.name == text], True
        if not matches:
            raise UnsupportedModelError(f"no block matches {text!r}: blocks are named like {blocks[0].name!r}; "
                                        f"attention blocks: {_short_list(att_names)}")
        for b in matches:
            if attention_only and not b.has_attention:
                if explicit:
                    raise NoAttentionError(
                        f"block {b.name} ({b.kind}) has no attention: choose one of {_short_list(att_names)}")
                continue
            picked[b.index] = b
    if not picked:
        raise NoAttentionError(f"no attention block matches {entries}: choose among {_short_list(att_names)}")
    return [picked[i] for i in sorted(picked)]


def _short_list(names: list[str], n: int = 8) -> str:
    if not names:
        return "(none)"
    return ", ".join(names) if len(names) <= n else ", ".join(names[:n]) + f", ... ({len(names)} in all)"
