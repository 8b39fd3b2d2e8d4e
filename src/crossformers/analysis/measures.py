"""The four measurements of the seed papers, for any model and data.

* :func:`attention_maps` — per-block attention of chosen query positions, drawn on the image: CrossFormer SDA/LDA
  groups (CrossFormer Sec. 3.2, Fig. 2), FcaFormer's split into regular and cross tokens (FcaFormer Sec. 3.1,
  Fig. 2), CrossViT's CLS -> patch cross-attention (CrossViT Sec. 3.3, Fig. 3d).
* :func:`mean_attention_distance` — how far tokens attend, in input pixels (CrossFormer++ Sec. 3, the attention-region
  study behind progressive group size, Sec. 4.1).
* :func:`activation_amplitude` — max / mean |output| of every block (CrossFormer++ Sec. 3, the amplitude study behind
  the amplitude cooling layer, Sec. 4.2).
* :func:`cross_token_share` — attention mass on the cross tokens of each earlier block (FcaFormer Sec. 4, Fig. 5).

All take a model (``nn.Module``, one of our checkpoint directories, or a model name) and images (a preprocessed
(B, C, H, W) tensor, or image files / PIL images preprocessed like the model's validation data).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .blocks import BlockInfo, model_blocks, select_blocks
from .capture import AttentionRecord, capture_attention
from .errors import QueryError, UnsupportedModelError
from .inputs import ImageBatch, LoadedModel, load_model, prepare_images

__all__ = ["AttentionMap", "attention_maps", "mean_attention_distance", "activation_amplitude", "cross_token_share",
           "parse_query", "record_distance_sums"]

Blocks = Sequence[str | int] | str | int | None
#: what the measures accept as the model: a module, a name / run folder / converted folder, or a loaded model
ModelSpec = nn.Module | str | os.PathLike | LoadedModel
#: what the measures accept as images: a preprocessed batch (B, C, H, W), paths / PIL images, or an ImageBatch
Images = torch.Tensor | Sequence[Any] | ImageBatch
Query = tuple[float, float]


def _resolve(model: ModelSpec) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def _batch(loaded: LoadedModel, images, preprocessing: Mapping[str, Any] | None) -> ImageBatch:
    if isinstance(images, ImageBatch):
        return images
    return prepare_images(images, preprocessing or loaded.preprocessing, loaded.model)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def parse_query(text: str) -> Query:
    """``'y,x'`` (pixels, numbers) -> ``(y, x)``.

    Raises:
        QueryError: not two comma-separated numbers.
    """
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise QueryError(f"query {text!r} is not 'y,x' in pixels (e.g. 28,28)") from None


def _check_queries(queries: Sequence[Query] | None, size: tuple[int, int]) -> list[Query]:
    H, W = size
    if queries is None:
        return [(H / 2, W / 2)]
    out = []
    for q in queries:
        y, x = (parse_query(q) if isinstance(q, str) else (float(q[0]), float(q[1])))
        if not (0 <= y < H and 0 <= x < W):
            raise QueryError(f"query ({y:g}, {x:g}) is outside the {H}x{W} px model input: use 0 <= y < {H} and "
                             f"0 <= x < {W} (pixels of the preprocessed image)")
        out.append((y, x))
    if not out:
        raise QueryError("no query positions given")
    return out


# ---------------------------------------------------------------------------------------------------- maps
@dataclass
class AttentionMap:
    """The attention of one query token in one block for one image, painted on the input image.

    Attributes:
        image: index of the image in the batch.
        query: the requested position ``(y, x)`` in pixels.
        query_centre: centre ``(y, x)`` in pixels of the query token actually used (the token nearest to ``query``);
            None when the query is a class token (CrossViT cross-attention: the CLS token of ``meta['branch']``).
        block: the block.
        panels: (H, W) float maps in input pixels, each key token's probability (averaged over heads, or of one
            head) spread over its cell: ``tokens`` (own tokens / SDA-LDA group / branch patches), ``cross`` (all cross
            tokens, FcaFormer) and ``cross:<block>`` per earlier block.
        mass: attention mass per key kind: ``tokens``, ``cross``, ``cross:<block>``, ``cls`` (sums to 1).
        peak: per panel, the largest probability of a single key token.
        uniform: the probability every key would get under uniform attention (1 / number of real keys, padding
            excluded): ``peak / uniform`` says how focused the attention is (1 = uniform).
        meta: the record's geometry (grid, stride_px, group_size, interval, lda, padded, ...).
    """

    image: int
    query: Query
    query_centre: Query | None
    block: BlockInfo
    panels: dict[str, np.ndarray]
    mass: dict[str, float]
    peak: dict[str, float] = field(default_factory=dict)
    uniform: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def _row_maps(rec: AttentionRecord, row: np.ndarray, g: int) -> tuple[dict, dict, dict, float]:
    """Painted panels, mass and peak per key kind, and the uniform probability, of one attention row."""
    panels: dict[str, np.ndarray] = {}
    mass: dict[str, float] = {}
    peak: dict[str, float] = {}
    real = 0
    for seg in rec.key_segments:
        part = row[seg.start:seg.stop]
        key = "cross:" + seg.source if seg.label == "cross" else ("cls" if seg.label == "cls" else "tokens")
        mass[key] = mass.get(key, 0.0) + float(part.sum())
        if seg.lattice is None:
            real += seg.stop - seg.start
            continue
        cells = rec.key_cells[g, seg.start:seg.stop]
        ok = cells >= 0
        real += int(ok.sum())
        if ok.any():
            peak[key] = max(peak.get(key, 0.0), float(part[ok].max()))
        vals = np.zeros(seg.lattice.size)
        np.add.at(vals, cells[ok], part[ok])
        painted = seg.lattice.paint(vals, rec.image_size)
        panels[key] = panels[key] + painted if key in panels else painted
    cross = [k for k in panels if k.startswith("cross:")]
    if cross:
        panels["cross"] = sum(panels[k] for k in cross)
        mass["cross"] = sum(mass[k] for k in cross)
        peak["cross"] = max(peak.get(k, 0.0) for k in cross)
    return panels, mass, peak, 1.0 / max(real, 1)


def attention_maps(
    model: ModelSpec,
    images: Images,
    queries: Sequence[Query | str] | None = None,
    blocks: Blocks = None,
    head: int | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> list[AttentionMap]:
    """Attention maps of query positions in every chosen block, in input-image coordinates.

    CrossFormer (CrossFormer Sec. 3.2, Fig. 2): the query's SDA window or LDA group is mapped back to the image (LDA
    members sit I tokens apart). FcaFormer (FcaFormer Sec. 3.1, Fig. 2): attention is split into the block's own tokens
    and the cross tokens of each earlier block, each cross token drawn over the 4 x 4 tokens it merges. CrossViT
    (CrossViT Sec. 3.3): branch blocks as ordinary self-attention; fusion blocks show the CLS token of one branch
    attending to the other branch's patches (independent of the query position).

    Args:
        model: ``nn.Module``, our checkpoint directory, model name, or :class:`LoadedModel`.
        images: preprocessed (B, C, H, W) tensor, or image files / PIL images.
        queries: ``(y, x)`` positions (or ``'y,x'`` strings) in pixels of the model input; default: the centre.
        blocks: block selection (names, patterns, indices; default all attention blocks).
        head: one head's map (index) instead of the mean over heads.
        preprocessing: override the model's preprocessing for image files.

    Returns:
        One :class:`AttentionMap` per image, query and block, ordered by image, then query, then block.

    Raises:
        NoAttentionError: a chosen block has no attention. QueryError: a query outside the image.
        EmptyInputError: no images.
    """
    loaded = _resolve(model)
    batch = _batch(loaded, images, preprocessing)
    x = batch.tensor
    qs = _check_queries(queries, (x.shape[-2], x.shape[-1]))
    net = loaded.model
    with torch.no_grad(), capture_attention(net, blocks) as cap:
        net(x.to(_device(net)))
    records = cap.records
    out = []
    for b in range(x.shape[0]):
        for q in qs:
            for rec in records:
                found = rec.find_query(*q)
                g, n = found if found is not None else (0, 0)
                probs = rec.probs[b, g, :, n]
                if head is not None:
                    if not -probs.shape[0] <= head < probs.shape[0]:
                        raise QueryError(f"head {head} does not exist in {rec.name} ({probs.shape[0]} heads)")
                    row = probs[head]
                else:
                    row = probs.mean(0)
                panels, mass, peak, uniform = _row_maps(rec, row.double().numpy(), g)
                centre = None
                if found is not None:
                    centre = tuple(float(v) for v in rec.query_positions()[g, n])
                out.append(AttentionMap(b, q, centre, rec.block, panels, mass, peak, uniform, dict(rec.meta)))
    return out


# ---------------------------------------------------------------------------------------------------- distance
def record_distance_sums(rec: AttentionRecord, query_mask: np.ndarray | None = None,
                         key_labels: Sequence[str] | None = None) -> tuple[np.ndarray, int]:
    """Attention-weighted query-key distance of one record, summed over images and queries.

    For each query q with a position: ``d_q = sum_k p_qk * |pos_q - pos_k| / sum_k p_qk`` over keys with a position
    (class tokens and padding excluded, the rest renormalised), in input pixels.

    Args:
        rec: a captured record.
        query_mask: (nG, Nq) bool: which queries to include (default: all queries with a position).
        key_labels: only keys of these segment labels (e.g. ``['tokens']``); default all keys with a position.

    Returns:
        ``(sums per head (heads,), number of (image, query) pairs summed)``.
    """
    qmask = rec.spatial_queries() if query_mask is None else (query_mask & rec.spatial_queries())
    kpos = rec.key_positions()
    kvalid = ~np.isnan(kpos[..., 0])
    if key_labels is not None:
        keep = np.zeros(kvalid.shape[1], dtype=bool)
        for seg in rec.key_segments:
            if seg.label in key_labels:
                keep[seg.start:seg.stop] = True
        kvalid &= keep[None]
    dist = np.nan_to_num(rec.distances(), nan=0.0) * kvalid[:, None, :]
    p = rec.probs.double()
    num = torch.einsum("bghqk,gqk->bghq", p, torch.from_numpy(dist))
    den = torch.einsum("bghqk,gk->bghq", p, torch.from_numpy(kvalid.astype(np.float64)))
    per = num / den.clamp_min(1e-30)
    m = torch.from_numpy(qmask)
    sums = (per * m[None, :, None, :]).sum(dim=(0, 1, 3))
    return sums.numpy(), int(m.sum().item()) * int(p.shape[0])


def _json_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    def conv(v):
        if isinstance(v, (tuple, list)):
            return [conv(u) for u in v]
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (np.floating, float)):
            return float(v)
        return v

    return {k: conv(v) for k, v in meta.items()}


def _block_entry(info: BlockInfo) -> dict[str, Any]:
    return dict(name=info.name, index=info.index, kind=info.kind, stage=info.stage, label=info.describe())


def _query_mask(rec: AttentionRecord, queries: Sequence[Query] | None) -> np.ndarray | None:
    if queries is None:
        return None
    mask = np.zeros(rec.query_cells.shape, dtype=bool)
    for q in queries:
        found = rec.find_query(*q)
        if found is not None:
            mask[found] = True
    return mask


def _batches(x: torch.Tensor, batch_size: int):
    for i in range(0, x.shape[0], max(1, batch_size)):
        yield x[i:i + batch_size]


@contextlib.contextmanager
def _captured_batches(net: nn.Module, blocks: Blocks, x: torch.Tensor, batch_size: int):
    """Run ``net`` on ``x`` in chunks of ``batch_size`` while capturing the chosen blocks' attention.

    Yields ``(order, records)``: the captured block names in model order, and an iterator over every
    :class:`AttentionRecord` of every chunk (each chunk's records are dropped before the next chunk runs).
    """
    with torch.no_grad(), capture_attention(net, blocks) as cap:
        def records():
            for xb in _batches(x, batch_size):
                cap.clear()
                net(xb.to(_device(net)))
                yield from cap.records

        yield [b.name for b in cap.blocks], records()


def mean_attention_distance(
    model: ModelSpec,
    images: Images,
    blocks: Blocks = None,
    queries: Sequence[Query | str] | None = None,
    batch_size: int = 16,
    preprocessing: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Mean attention distance of every chosen block, in input pixels (CrossFormer++ Sec. 3, attention regions).

    For each query token: the attention-weighted mean distance from its centre to the key tokens' centres (token
    offsets times the stride, in input pixels; FcaFormer cross tokens at the centre of the 4 x 4 tokens they merge;
    class tokens and padding excluded and the rest renormalised). Averaged over queries, images and heads.

    Args:
        model, images, preprocessing: as :func:`attention_maps`.
        blocks: block selection (default all attention blocks).
        queries: only these positions ``(y, x)`` in pixels (default every query token with a position).
        batch_size: images per forward pass.

    Returns:
        One dict per block: ``name``, ``index``, ``kind``, ``stage``, ``label``, ``mean_distance_px`` (None for blocks
        whose queries have no position: CrossViT CLS cross-attention), ``per_head_px``, ``num_queries`` (per image),
        ``meta`` (grid, stride_px, group_size, interval, lda, padded, ...); FcaFormer adds
        ``tokens_mean_distance_px`` (own tokens only) and ``cross_share`` (attention mass on cross tokens).
    """
    loaded = _resolve(model)
    batch = _batch(loaded, images, preprocessing)
    qs = None if queries is None else _check_queries(queries, tuple(batch.tensor.shape[-2:]))
    net = loaded.model
    reads_cross = _reads_cross(net)
    acc: dict[str, dict[str, Any]] = {}
    with _captured_batches(net, blocks, batch.tensor, batch_size) as (order, records):
        for rec in records:
            a = acc.setdefault(rec.name, dict(info=rec.block, meta=rec.meta, sums=0.0, count=0, tok=0.0,
                                              tok_count=0, cross=0.0, cross_count=0, nq=0))
            qmask = _query_mask(rec, qs)
            sums, count = record_distance_sums(rec, qmask)
            a["sums"] = a["sums"] + sums
            a["count"] += count
            a["nq"] = count // rec.probs.shape[0]
            if reads_cross:
                s2, c2 = record_distance_sums(rec, qmask, key_labels=["tokens"])
                a["tok"] = a["tok"] + s2
                a["tok_count"] += c2
                share, n = _cross_mass(rec, qmask)
                a["cross"] += share
                a["cross_count"] += n
    out = []
    for name in order:
        a = acc[name]
        entry = _block_entry(a["info"])
        if a["count"]:
            per_head = np.asarray(a["sums"]) / a["count"]
            entry.update(mean_distance_px=float(per_head.mean()), per_head_px=[float(v) for v in per_head])
        else:
            entry.update(mean_distance_px=None, per_head_px=None)
        entry["num_queries"] = a["nq"]
        if reads_cross:
            entry["tokens_mean_distance_px"] = (float((np.asarray(a["tok"]) / a["tok_count"]).mean())
                                                if a["tok_count"] else None)
            entry["cross_share"] = a["cross"] / a["cross_count"] if a["cross_count"] else None
        entry["meta"] = _json_meta(a["meta"])
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------- cross tokens
def _reads_cross(model: nn.Module) -> bool:
    """Whether any block of ``model`` attends to tokens made by earlier blocks (FcaFormer's cross tokens)."""
    return any(b.sources for b in model_blocks(model))


def _cross_mass(rec: AttentionRecord, query_mask: np.ndarray | None = None,
                source: str | None = None) -> tuple[float, int]:
    """Sum over images, heads-mean and chosen queries of the attention mass on cross tokens (of ``source`` only if
    given); returns (sum, number of (image, query) pairs)."""
    qmask = rec.spatial_queries() if query_mask is None else (query_mask & rec.spatial_queries())
    keep = np.zeros(rec.probs.shape[-1], dtype=bool)
    for seg in rec.key_segments:
        if seg.label == "cross" and (source is None or seg.source == source):
            keep[seg.start:seg.stop] = True
    mass = rec.probs[..., torch.from_numpy(keep)].sum(-1).mean(2)  # (B, nG, Nq)
    m = torch.from_numpy(qmask)
    return float((mass.double() * m[None]).sum()), int(m.sum()) * int(rec.probs.shape[0])


def cross_token_share(
    model: ModelSpec, images: Images, blocks: Blocks = None, batch_size: int = 16,
    preprocessing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """How much FcaFormer's regular tokens attend to the cross tokens of each earlier block (FcaFormer Sec. 4, Fig. 5).

    For every Fca block: the attention mass its regular tokens (queries with a position) put on the cross tokens of
    each earlier block of the stage, averaged over heads, queries and images. With learnable scale factors (LSF,
    Sec. 3.1) a model can weigh blocks differently; compare checkpoints trained with and without (``lsf=False``).

    Args:
        model, images, batch_size, preprocessing: as :func:`mean_attention_distance`.
        blocks: block selection (default all Fca blocks).

    Returns:
        ``blocks``: one dict per block (``name``, ``index``, ``stage``, ``label``, ``cross_share``, ``per_source``
        {source block: share}, ``tokens_share``, ``cls_share``, ``num_cross_tokens``, ``num_tokens``,
        ``per_token_ratio`` = mean probability of one cross token / mean probability of one regular token);
        ``sources``: every block whose cross tokens are read; ``matrix``: [block][source] shares (None where the
        block does not read that source), the numbers of the paper's Fig. 5.

    Raises:
        UnsupportedModelError: the model is not an FcaFormer.
    """
    loaded = _resolve(model)
    if not _reads_cross(loaded.model):
        raise UnsupportedModelError(f"{loaded.name} reads no cross tokens: it is not an FcaFormer with forward cross "
                                    "attention (cross-token shares exist only where blocks attend to tokens made by "
                                    "earlier blocks)")
    batch = _batch(loaded, images, preprocessing)
    net = loaded.model
    acc: dict[str, dict[str, Any]] = {}
    with _captured_batches(net, blocks, batch.tensor, batch_size) as (order, records):
        for rec in records:
            a = acc.setdefault(rec.name, dict(info=rec.block, rec=rec, total=0.0, count=0, per={}, tokens=0.0,
                                              cls=0.0))
            a["rec"] = rec
            qmask = rec.spatial_queries()
            m = torch.from_numpy(qmask)
            mean_heads = rec.probs.mean(2).double()  # (B, nG, Nq, Nk)
            for seg in rec.key_segments:
                mass = float((mean_heads[..., seg.start:seg.stop].sum(-1) * m[None]).sum())
                if seg.label == "cross":
                    a["per"][seg.source] = a["per"].get(seg.source, 0.0) + mass
                    a["total"] += mass
                elif seg.label == "cls":
                    a["cls"] += mass
                else:
                    a["tokens"] += mass
            a["count"] += int(m.sum()) * int(rec.probs.shape[0])
    entries, sources = [], []
    for name in order:
        a = acc[name]
        rec = a["rec"]
        n = max(a["count"], 1)
        n_cross = sum(s.stop - s.start for s in rec.key_segments if s.label == "cross")
        n_tok = sum(s.stop - s.start for s in rec.key_segments if s.label == "tokens")
        e = _block_entry(a["info"])
        share = a["total"] / n
        tokens = a["tokens"] / n
        e.update(cross_share=share, per_source={k: v / n for k, v in a["per"].items()}, tokens_share=tokens,
                 cls_share=a["cls"] / n, num_cross_tokens=n_cross, num_tokens=n_tok,
                 per_token_ratio=(share / n_cross) / (tokens / n_tok) if n_cross and tokens > 0 else None,
                 meta=_json_meta(rec.meta))
        for s in a["per"]:
            if s not in sources:
                sources.append(s)
        entries.append(e)
    index = {b.name: b.index for b in model_blocks(net)}
    sources.sort(key=lambda s: index.get(s, 0))
    matrix = [[e["per_source"].get(s) for s in sources] for e in entries]
    return dict(blocks=entries, sources=sources, matrix=matrix)


# ---------------------------------------------------------------------------------------------------- amplitude
def activation_amplitude(
    model: ModelSpec, images: Images, blocks: Blocks = None, batch_size: int = 16,
    preprocessing: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Maximum and mean absolute value of every block's output over a batch (CrossFormer++ Sec. 3, Fig. 3; the
    growth the amplitude cooling layer of Sec. 4.2 suppresses).

    The output is what the block hands to the next one (CrossFormer++: after its ACL, if it has one; FcaFormer Fca
    blocks: the tokens, not the cross tokens; CrossViT fusion: the fused CLS token), over all tokens and channels.

    Args:
        model, images, batch_size, preprocessing: as :func:`mean_attention_distance`.
        blocks: block selection (default every block, convolutional ones included; any model with ``blocks.N``
            modules works).

    Returns:
        One dict per block: ``name``, ``index``, ``kind``, ``stage``, ``label``, ``acl`` (ends with an amplitude
        cooling layer), ``max_abs`` and ``mean_abs`` (in activation units), ``num_values`` (elements averaged).
    """
    loaded = _resolve(model)
    batch = _batch(loaded, images, preprocessing)
    net = loaded.model
    chosen = select_blocks(model_blocks(net), blocks)
    stats = {b.name: dict(max=0.0, sum=0.0, n=0) for b in chosen}
    handles = []

    def make(name: str):
        def hook(module, args, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            a = t.detach().abs().double()
            s = stats[name]
            s["max"] = max(s["max"], float(a.max()))
            s["sum"] += float(a.sum())
            s["n"] += a.numel()
        return hook

    try:
        for b in chosen:
            handles.append(b.module.register_forward_hook(make(b.name)))
        with torch.no_grad():
            for xb in _batches(batch.tensor, batch_size):
                net(xb.to(_device(net)))
    finally:
        for h in handles:
            h.remove()
    out = []
    for b in chosen:
        s = stats[b.name]
        e = _block_entry(b)
        e.update(acl=b.acl, max_abs=s["max"], mean_abs=s["sum"] / s["n"] if s["n"] else None, num_values=s["n"])
        out.append(e)
    return out
