"""Recording attention probabilities without touching the normal forward path.

:func:`capture_attention` is a context manager. While it is open, the chosen blocks run the explicit-softmax path
(the ``fused_attn`` switch of their :class:`~crossformers.layers.attention.ScaledDotProduct` is turned off) and
every probability tensor they compute is recorded, with the geometry needed to put it on the image
(:class:`AttentionRecord`). Other blocks keep the fused kernel; on exit every switch and hook is restored. Outside
the context nothing changes.

How (like timm's ``AttentionExtract``, with hooks on modules): a forward pre-hook on each chosen block asks the
model for the layout of that call (the family protocol's ``attention_layout``, :mod:`crossformers.models.protocol`),
and a forward hook on the block's observation point (``ScaledDotProduct.probs``, an identity module the
probabilities pass through) records them. Nothing is patched.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from timm.utils import unwrap_model
from torch import nn

from ..models.protocol import AttentionLayout, TokenSegment
from .blocks import BlockInfo, model_blocks, select_blocks
from .errors import AnalysisError, UnsupportedModelError
from .geometry import pairwise_distance

__all__ = ["TokenSegment", "AttentionRecord", "AttentionCapture", "capture_attention", "observe_layouts"]


@dataclass
class AttentionRecord:
    """Attention probabilities of one block for one batch, and how to map them to the image.

    Attributes:
        block: the block (name, index, kind, stage...).
        probs: float32 (B, nG, heads, Nq, Nk) on the CPU: ``nG`` groups (CrossFormer SDA/LDA groups; 1 otherwise),
            rows sum to 1 over the Nk keys.
        query_segments, key_segments: what the query / key axes hold.
        query_cells, key_cells: int64 (nG, Nq) / (nG, Nk): flat index of each token in its segment's lattice, -1 for
            tokens without a position (class tokens, CrossFormer padding).
        image_size: (H, W) of the model input in pixels.
        meta: geometry of the block: ``grid`` (H, W tokens), ``stride_px`` (sy, sx), and the family's own keys
            (:class:`~crossformers.models.protocol.AttentionLayout`): ``group_size``, ``interval``, ``lda``,
            ``padded`` (Hp, Wp), ``group_span_px`` (CrossFormer); ``cross_grid``, ``sources``, ``prefix_tokens``
            (FcaFormer); ``branch``, ``key_branch`` (CrossViT).
        The family's one-line description of the call (plot titles) is ``meta['caption']``.
    """

    block: BlockInfo
    probs: torch.Tensor
    query_segments: list[TokenSegment]
    key_segments: list[TokenSegment]
    query_cells: np.ndarray
    key_cells: np.ndarray
    image_size: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The block's module path."""
        return self.block.name

    @staticmethod
    def _positions(segments: list[TokenSegment], cells: np.ndarray) -> np.ndarray:
        out = np.full((*cells.shape, 2), np.nan)
        for seg in segments:
            if seg.lattice is None:
                continue
            centres = seg.lattice.centres()
            part = cells[:, seg.start:seg.stop]
            ok = part >= 0
            pos = centres[np.clip(part, 0, None)]
            pos[~ok] = np.nan
            out[:, seg.start:seg.stop] = pos
        return out

    def query_positions(self) -> np.ndarray:
        """(nG, Nq, 2) pixel centres ``(y, x)`` of the queries; NaN for queries without a position."""
        return self._positions(self.query_segments, self.query_cells)

    def key_positions(self) -> np.ndarray:
        """(nG, Nk, 2) pixel centres ``(y, x)`` of the keys; NaN for keys without a position (class tokens,
        padding)."""
        return self._positions(self.key_segments, self.key_cells)

    def distances(self) -> np.ndarray:
        """(nG, Nq, Nk) query-key distances in input pixels; NaN where either token has no position."""
        return pairwise_distance(self.query_positions(), self.key_positions())

    def find_query(self, y: float, x: float) -> tuple[int, int] | None:
        """``(group, query index)`` of the query token nearest to pixel ``(y, x)``, in the first query segment with a
        position; None when the queries have no position (CrossViT cross-attention: the CLS token)."""
        for seg in self.query_segments:
            if seg.lattice is None:
                continue
            i, j = seg.lattice.token_at(y, x)
            flat = i * seg.lattice.width + j
            hits = np.argwhere(self.query_cells[:, seg.start:seg.stop] == flat)
            if len(hits):
                g, n = hits[0]
                return int(g), int(seg.start + n)
        return None

    def spatial_queries(self) -> np.ndarray:
        """(nG, Nq) bool: queries with a position (the ones averaged over by distances and shares)."""
        mask = np.zeros(self.query_cells.shape, dtype=bool)
        for seg in self.query_segments:
            if seg.lattice is not None:
                mask[:, seg.start:seg.stop] = self.query_cells[:, seg.start:seg.stop] >= 0
        return mask


class AttentionCapture:
    """What :func:`capture_attention` yields: the chosen blocks and the records of every forward pass so far.

    Attributes:
        blocks: the blocks being recorded.
        records: one :class:`AttentionRecord` per block and forward pass, in execution order.
    """

    def __init__(self, model: nn.Module, blocks: list[BlockInfo], to_cpu: bool = True):
        self.model = model
        self.blocks = blocks
        self.records: list[AttentionRecord] = []
        self.to_cpu = to_cpu
        self._pending = threading.local()

    def clear(self) -> None:
        """Drop the records (e.g. between batches)."""
        self.records.clear()

    def by_block(self) -> dict[str, list[AttentionRecord]]:
        """Records grouped by block name, in block order."""
        out: dict[str, list[AttentionRecord]] = {b.name: [] for b in self.blocks}
        for r in self.records:
            out[r.name].append(r)
        return out

    def _frames(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self._pending, "frames"):
            self._pending.frames = {}
        return self._pending.frames

    # ---- hooks
    def _on_layout(self, info: BlockInfo, layout: AttentionLayout, image_size: tuple[int, int] | None) -> None:
        self._frames()[info.name] = dict(layout=layout, probs=None, image_size=image_size)

    def _probs(self, info: BlockInfo, probs: torch.Tensor) -> None:
        frame = self._frames().get(info.name)
        if frame is None:
            return
        if frame["probs"] is not None:
            raise AnalysisError(f"block {info.name} computed attention twice in one forward pass: "
                                "crossformers.analysis expects one attention per block")
        frame["probs"] = probs.detach()

    def _block_post(self, info: BlockInfo) -> None:
        frame = self._frames().pop(info.name, None)
        if frame is None or frame["probs"] is None:
            return
        p = frame["probs"]
        p = p.unsqueeze(1) if p.ndim == 4 else p
        if self.to_cpu:
            p = p.float().cpu()
        lay: AttentionLayout = frame["layout"]
        self.records.append(AttentionRecord(
            block=info, probs=p, query_segments=lay.query_segments, key_segments=lay.key_segments,
            query_cells=lay.query_cells, key_cells=lay.key_cells, image_size=frame["image_size"] or (0, 0),
            meta=dict(lay.meta, caption=lay.caption) if lay.caption else dict(lay.meta)))


@contextmanager
def observe_layouts(model: nn.Module, blocks: Sequence[BlockInfo],
                    callback: Callable[[BlockInfo, AttentionLayout, tuple[int, int] | None], None]) -> Iterator[None]:
    """While open, call ``callback(block, layout, image_size)`` before every call of each of ``blocks``, with the
    layout the model gives for that call (protocol ``attention_layout``) and the (H, W) of the image the model last
    received (protocol ``input_modules``; None before any).

    Raises:
        UnsupportedModelError: the model has no ``attention_layout``.
        AnalysisError: the model cannot lay out a call (e.g. CrossViT blocks run outside a full forward pass).
    """
    net = unwrap_model(model)
    if not callable(getattr(net, "attention_layout", None)):
        raise UnsupportedModelError(f"{type(net).__name__} has no attention_layout(): its attention cannot be placed "
                                    "on the image (see crossformers.models.protocol)")
    state: dict[str, tuple[int, int] | None] = dict(image_size=None)

    def image_pre(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        state["image_size"] = (int(x.shape[-2]), int(x.shape[-1]))

    def block_pre(info: BlockInfo):
        def pre(module, args, kwargs):
            try:
                layout = net.attention_layout(info, args, kwargs, state["image_size"])
            except ValueError as e:
                raise AnalysisError(str(e)) from None
            callback(info, layout, state["image_size"])
        return pre

    handles = []
    try:
        entry = getattr(net, "input_modules", None)
        for m in (entry() if callable(entry) else [net]):
            handles.append(m.register_forward_pre_hook(image_pre, with_kwargs=True))
        for info in blocks:
            handles.append(info.module.register_forward_pre_hook(block_pre(info), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_attention(model: nn.Module, blocks: Sequence[str | int] | str | int | None = None, *,
                      to_cpu: bool = True) -> Iterator[AttentionCapture]:
    """Record the attention probabilities of chosen blocks while the context is open.

    Example::

        with capture_attention(model, blocks=["stages.2.*"]) as cap:
            model(images)
        for rec in cap.records:
            print(rec.name, rec.probs.shape, rec.meta["grid"])

    Args:
        model: a model implementing the family protocol (CrossFormer / CrossFormer++, FcaFormer, CrossViT, or a new
            family; DDP / compiled wrappers are unwrapped; call the model as usual inside the context).
        blocks: which blocks (see :func:`~crossformers.analysis.blocks.select_blocks`): None = every block with
            attention; names, shell patterns or indices into :func:`~crossformers.analysis.blocks.model_blocks`.
        to_cpu: move probabilities to the CPU as float32 (default) instead of keeping them on the model's device.

    Yields:
        An :class:`AttentionCapture`; ``records`` grows by one :class:`AttentionRecord` per chosen block and forward
        pass: probabilities (B, nG, heads, Nq, Nk) plus the metadata to map them to input pixels.

    Raises:
        NoAttentionError: a chosen block has no attention, or the model has none crossformers can read.
        UnsupportedModelError: the model lists attention blocks but cannot lay them out (no ``attention_layout``).
    """
    net = unwrap_model(model)
    chosen = select_blocks(model_blocks(net), blocks, attention_only=True)
    cap = AttentionCapture(net, chosen, to_cpu=to_cpu)
    handles = []
    saved = [(b.attention, b.attention.fused_attn) for b in chosen]

    def hooks(info: BlockInfo):
        def probs(module, args, output):
            cap._probs(info, output)

        def post(module, args, output):
            cap._block_post(info)
        return probs, post

    try:
        with observe_layouts(net, chosen, cap._on_layout):
            for info in chosen:
                probs, post = hooks(info)
                info.attention.fused_attn = False
                handles.append(info.attention.probs.register_forward_hook(probs))
                handles.append(info.module.register_forward_hook(post))
            yield cap
    finally:
        for h in handles:
            h.remove()
        for att, flag in saved:
            att.fused_attn = flag
        cap._frames().clear()
