"""Recording attention probabilities without touching the normal forward path.

:func:`capture_attention` is a context manager. While it is open, the chosen blocks run the explicit-softmax path of
:func:`crossformers.layers.attention.attention` (their ``fused_attn`` switch is turned off) and every probability
tensor they compute is recorded, with the geometry needed to put it on the image (:class:`AttentionRecord`). Other
blocks keep the fused kernel; on exit every switch and hook is restored. Outside the context nothing changes: the
models carry no analysis code at all.

How: forward pre-hooks on the chosen blocks note each block's geometry (token map size, group size, cross-token
sources...) on a thread-local stack, and :func:`crossformers.layers.attention.explicit_attention` is wrapped (for the
duration of the context, reference-counted) so that a call made inside a marked block also hands its probabilities
to the record. Calls outside marked blocks pass straight through.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from timm.utils import unwrap_model
from torch import nn

from ..layers import attention as attention_module
from .blocks import BlockInfo, crossvit_branch_lattice, model_blocks, model_family, select_blocks, token_lattice
from .errors import AnalysisError
from .geometry import Lattice, cross_token_lattice, group_coordinates, pairwise_distance

__all__ = ["TokenSegment", "AttentionRecord", "AttentionCapture", "capture_attention"]


@dataclass
class TokenSegment:
    """A run of tokens along the query or key axis.

    Attributes:
        label: ``cls`` (a token without position), ``tokens`` (the block's own tokens / CrossFormer group members),
            ``cross`` (FcaFormer cross tokens of an earlier block) or ``patches`` (CrossViT patch tokens of a branch).
        start, stop: the slice of the axis.
        lattice: where the segment's tokens sit in the image (None for ``cls``).
        source: for ``cross``: the block that made the cross tokens; for ``patches``/``cls`` of CrossViT: ``branchN``.
    """

    label: str
    start: int
    stop: int
    lattice: Lattice | None = None
    source: str | None = None


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
        meta: geometry of the block: ``grid`` (H, W tokens), ``stride_px`` (sy, sx), and per family ``group_size``,
            ``interval``, ``lda``, ``padded`` (Hp, Wp), ``group_span_px`` (CrossFormer); ``cross_grid``,
            ``sources``, ``prefix_tokens`` (FcaFormer); ``branch``, ``key_branch`` (CrossViT).
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
        self.family = model_family(model)
        self._input_size: tuple[int, int] | None = None
        self._grids: list[tuple[int, int]] | None = None

    def clear(self) -> None:
        """Drop the records (e.g. between batches)."""
        self.records.clear()

    def by_block(self) -> dict[str, list[AttentionRecord]]:
        """Records grouped by block name, in block order."""
        out: dict[str, list[AttentionRecord]] = {b.name: [] for b in self.blocks}
        for r in self.records:
            out[r.name].append(r)
        return out

    # ---- geometry of one call, computed in the block's pre-hook
    def _geometry(self, info: BlockInfo, args: tuple, kwargs: dict) -> dict[str, Any]:
        if self.family == "crossformer":
            return self._crossformer(info, args[0] if args else kwargs["x"])
        if self.family == "fcaformer":
            grid = args[1] if len(args) > 1 else kwargs["grid"]
            return self._fcaformer(info, tuple(int(g) for g in grid))
        return self._crossvit(info)

    def _crossformer(self, info: BlockInfo, x: torch.Tensor) -> dict[str, Any]:
        blk = info.module
        H, W = int(x.shape[1]), int(x.shape[2])
        G, lda = blk.grouping(H, W)
        lattice = token_lattice(self.model, info.stage, H, W)
        coords, valid = group_coordinates(H, W, G, blk.interval, lda)
        cells = np.where(valid, coords[..., 0] * W + coords[..., 1], -1)
        extent = G * blk.interval if lda else G
        Hp, Wp = -(-H // extent) * extent, -(-W // extent) * extent
        seg = [TokenSegment("tokens", 0, G * G, lattice)]
        span = ((G - 1) * (blk.interval if lda else 1) + 1)
        meta = dict(grid=(H, W), stride_px=lattice.stride, group_size=G, interval=blk.interval, lda=lda,
                    padded=(Hp, Wp), num_groups=int(cells.shape[0]), padding_tokens=int(Hp * Wp - H * W),
                    group_span_px=(span * lattice.stride[0], span * lattice.stride[1]))
        return dict(query_segments=seg, key_segments=list(seg), query_cells=cells, key_cells=cells.copy(), meta=meta)

    def _fcaformer(self, info: BlockInfo, grid: tuple[int, int]) -> dict[str, Any]:
        blk = info.module
        H, W = grid
        P = blk.num_prefix_tokens
        lattice = token_lattice(self.model, info.stage, H, W)
        q_segs = ([TokenSegment("cls", 0, P)] if P else []) + [TokenSegment("tokens", P, P + H * W, lattice)]
        q_cells = np.concatenate([np.full(P, -1), np.arange(H * W)])[None]
        k_segs = list(q_segs)
        k_cells = [q_cells[0]]
        n = P + H * W
        stage_blocks = self._stage_modules(info)
        sources = [info.siblings[j] for j in range(info.position - blk.num_sources, info.position)]
        cross_lat = None
        for j, src_name in zip(range(info.position - blk.num_sources, info.position), sources, strict=True):
            cross_lat = cross_token_lattice(lattice, merge_conv=stage_blocks[j].merge is not None)
            k_segs.append(TokenSegment("cross", n, n + cross_lat.size, cross_lat, source=src_name))
            k_cells.append(np.arange(cross_lat.size))
            n += cross_lat.size
        meta = dict(grid=(H, W), stride_px=lattice.stride, prefix_tokens=P, sources=sources,
                    cross_grid=None if cross_lat is None else (cross_lat.height, cross_lat.width),
                    cross_stride_px=None if cross_lat is None else cross_lat.stride)
        return dict(query_segments=q_segs, key_segments=k_segs, query_cells=q_cells,
                    key_cells=np.concatenate(k_cells)[None], meta=meta)

    def _stage_modules(self, info: BlockInfo) -> list[nn.Module]:
        parent = info.name.rsplit(".", 1)[0]
        return list(self.model.get_submodule(parent))

    def _crossvit(self, info: BlockInfo) -> dict[str, Any]:
        if self._input_size is None or self._grids is None:
            raise AnalysisError("CrossViT attention was captured outside a full forward pass of the model: call the "
                                "model itself inside capture_attention")
        grids = self._grids
        n_br = len(grids)

        def branch_segments(b: int, start: int) -> tuple[list[TokenSegment], np.ndarray]:
            lat = crossvit_branch_lattice(self.model, b, grids[b], self._input_size)
            segs = [TokenSegment("cls", start, start + 1, source=f"branch{b}"),
                    TokenSegment("patches", start + 1, start + 1 + lat.size, lat, source=f"branch{b}")]
            return segs, np.concatenate([[-1], np.arange(lat.size)])

        if info.kind == "self":
            segs, cells = branch_segments(info.branch, 0)
            meta = dict(grid=grids[info.branch], stride_px=segs[1].lattice.stride, branch=info.branch)
            return dict(query_segments=segs, key_segments=list(segs), query_cells=cells[None],
                        key_cells=cells[None].copy(), meta=meta)
        if info.kind == "cross":
            j = (info.branch + 1) % n_br
            segs, cells = branch_segments(j, 0)
            segs[0] = TokenSegment("cls", 0, 1, source=f"branch{info.branch}")
            meta = dict(grid=grids[j], stride_px=segs[1].lattice.stride, branch=info.branch, key_branch=j)
            return dict(query_segments=[TokenSegment("cls", 0, 1, source=f"branch{info.branch}")],
                        key_segments=segs, query_cells=np.full((1, 1), -1), key_cells=cells[None], meta=meta)
        # all-attention fusion: the branches' tokens concatenated
        segs, cells, start = [], [], 0
        for b in range(n_br):
            s, c = branch_segments(b, start)
            segs += s
            cells.append(c)
            start += len(c)
        cells = np.concatenate(cells)[None]
        meta = dict(grid=grids[0], stride_px=segs[1].lattice.stride, grids=list(grids))
        return dict(query_segments=segs, key_segments=list(segs), query_cells=cells, key_cells=cells.copy(), meta=meta)


# ---------------------------------------------------------------------------------------------------- the wrapper
_LOCAL = threading.local()
_PATCH_LOCK = threading.Lock()
_PATCH_COUNT = 0
_ORIGINAL = None


def _stack() -> list[dict[str, Any]]:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


def _recording_explicit_attention(q, k, v, bias=None, dropout_p=0.0, training=False):
    out, probs = _ORIGINAL(q, k, v, bias, dropout_p, training)
    stack = _stack()
    if stack:
        frame = stack[-1]
        if frame["probs"] is not None:
            raise AnalysisError(f"block {frame['info'].name} computed attention twice in one forward pass: "
                                "crossformers.analysis expects one attention per block")
        frame["probs"] = probs.detach()
    return out, probs


def _install() -> None:
    global _PATCH_COUNT, _ORIGINAL
    att_mod = attention_module

    with _PATCH_LOCK:
        if _PATCH_COUNT == 0:
            _ORIGINAL = att_mod.explicit_attention
            att_mod.explicit_attention = _recording_explicit_attention
        _PATCH_COUNT += 1


def _uninstall() -> None:
    global _PATCH_COUNT
    att_mod = attention_module

    with _PATCH_LOCK:
        _PATCH_COUNT -= 1
        if _PATCH_COUNT == 0:
            att_mod.explicit_attention = _ORIGINAL


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
        model: a CrossFormer / CrossFormer++, FcaFormer (hybrid or plain) or CrossViT (DDP / compiled wrappers are
            unwrapped; call the model as usual inside the context).
        blocks: which blocks (see :func:`~crossformers.analysis.blocks.select_blocks`): None = every block with
            attention; names, shell patterns or indices into :func:`~crossformers.analysis.blocks.model_blocks`.
        to_cpu: move probabilities to the CPU as float32 (default) instead of keeping them on the model's device.

    Yields:
        An :class:`AttentionCapture`; ``records`` grows by one :class:`AttentionRecord` per chosen block and forward
        pass: probabilities (B, nG, heads, Nq, Nk) plus the metadata to map them to input pixels.

    Raises:
        NoAttentionError: a chosen block has no attention, or the model has none crossformers can read.
    """
    net = unwrap_model(model)
    chosen = select_blocks(model_blocks(net), blocks, attention_only=True)
    cap = AttentionCapture(net, chosen, to_cpu=to_cpu)
    handles = []
    saved = [(b.attention, b.attention.fused_attn) for b in chosen]

    def make_pre(info: BlockInfo):
        def pre(module, args, kwargs):
            _stack().append(dict(info=info, probs=None, geometry=cap._geometry(info, args, kwargs)))
        return pre

    def make_post(info: BlockInfo):
        def post(module, args, kwargs, output):
            stack = _stack()
            frame = stack.pop() if stack and stack[-1]["info"] is info else None
            if frame is None or frame["probs"] is None:
                return
            p = frame["probs"]
            p = p.unsqueeze(1) if p.ndim == 4 else p
            if cap.to_cpu:
                p = p.float().cpu()
            geo = frame["geometry"]
            cap.records.append(AttentionRecord(block=info, probs=p, image_size=cap._input_size or (0, 0), **geo))
        return post

    def model_pre(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        cap._input_size = (int(x.shape[-2]), int(x.shape[-1]))

    def encoder_pre(module, args, kwargs):
        grids = args[1] if len(args) > 1 else kwargs["grids"]
        cap._grids = [tuple(int(v) for v in g) for g in grids]

    _install()
    try:
        handles.append(net.register_forward_pre_hook(model_pre, with_kwargs=True))
        first = getattr(net, "stem", None) if cap.family == "fcaformer" else None
        first = first if isinstance(first, nn.Module) else getattr(net, "patch_embed", None)
        if cap.family in ("crossformer", "fcaformer") and isinstance(first, nn.Module):
            # the image also reaches the stem when forward_features() is called directly
            handles.append(first.register_forward_pre_hook(model_pre, with_kwargs=True))
        if cap.family == "crossvit":
            for enc in net.encoders:
                handles.append(enc.register_forward_pre_hook(encoder_pre, with_kwargs=True))
        for info in chosen:
            info.attention.fused_attn = False
            handles.append(info.module.register_forward_pre_hook(make_pre(info), with_kwargs=True))
            handles.append(info.module.register_forward_hook(make_post(info), with_kwargs=True))
        yield cap
    finally:
        for h in handles:
            h.remove()
        for att, flag in saved:
            att.fused_attn = flag
        _uninstall()
        stack = _stack()
        stack[:] = [f for f in stack if f["info"] not in chosen]
