"""PNG figures of the analyses (matplotlib, Agg backend; files written atomically)."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import save_figure

__all__ = ["plot_attention_maps", "plot_distance", "plot_amplitude", "plot_cross_token_share", "plot_cams"]


def _plt():
    import matplotlib  # imported on use: pyplot must come after choosing the non-interactive Agg backend

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return Path(path)


def _overlay(ax, image: np.ndarray, heat: np.ndarray | None, cmap: str = "inferno") -> None:
    ax.imshow(image, interpolation="nearest", extent=(0, image.shape[1], image.shape[0], 0))
    if heat is not None:
        peak = float(heat.max())
        norm = heat / peak if peak > 0 else heat
        ax.imshow(norm, cmap=cmap, alpha=0.6 * (norm > 0) + 0.1, vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, image.shape[1], image.shape[0], 0))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention_maps(maps: Sequence[Any], images: np.ndarray, path: str | os.PathLike, title: str = "",
                        image_names: Sequence[str] | None = None) -> Path:
    """Grid of attention maps on the images.

    Columns are blocks; rows are (image, query) pairs, and for FcaFormer two rows per pair: own tokens and cross
    tokens (with their attention mass). Each panel is scaled to its own maximum, whose size relative to uniform
    attention is printed (``peak x3.2``: the most attended key gets 3.2 times 1 / number of keys); the query token is
    marked with a cyan cross (no mark: the query is a class token).

    Args:
        maps: from :func:`crossformers.analysis.attention_maps`.
        images: (B, H, W, 3) display images in [0, 1] (:func:`~crossformers.analysis.inputs.display_images`).
        path: PNG file to write.
        title: figure title.
        image_names: a name per image for the row labels.
    """
    plt = _plt()
    blocks: list = []
    for m in maps:
        if m.block.name not in [b.name for b in blocks]:
            blocks.append(m.block)
    rows: list[tuple[int, tuple[float, float]]] = []
    for m in maps:
        if (m.image, m.query) not in rows:
            rows.append((m.image, m.query))
    split = any("cross" in m.panels for m in maps) or any(m.block.sources for m in maps)
    kinds = ["tokens", "cross"] if split else ["tokens"]
    lookup = {(m.image, m.query, m.block.name): m for m in maps}
    nr, nc = len(rows) * len(kinds), len(blocks)
    fig, axes = plt.subplots(nr, nc, figsize=(1.9 * nc + 0.6, 2.05 * nr + 0.5), squeeze=False)
    for r, (img, q) in enumerate(rows):
        for k, kind in enumerate(kinds):
            for c, blk in enumerate(blocks):
                ax = axes[r * len(kinds) + k, c]
                m = lookup.get((img, q, blk.name))
                heat = None if m is None else m.panels.get(kind)
                _overlay(ax, images[img], heat)
                if m is not None and m.query_centre is not None:
                    ax.plot(m.query_centre[1], m.query_centre[0], "+", color="cyan", ms=9, mew=2)
                if m is not None:
                    mass = m.mass.get(kind)
                    head = _block_title(blk, m.meta) if r == 0 and k == 0 else ""
                    sub = f"{kind} {mass:.0%}" if split and mass is not None else ""
                    if split and heat is None:
                        sub = f"{kind}: none"
                    if m.query_centre is None:
                        sub = (sub + " " if sub else "") + f"CLS{m.meta.get('branch', '')}->br{m.meta.get('key_branch', '')}"
                    if heat is not None and m.uniform > 0 and kind in m.peak:
                        sub = (sub + ", " if sub else "") + f"peak x{m.peak[kind] / m.uniform:.1f}"
                    ax.set_title("\n".join(t for t in (head, sub) if t), fontsize=7)
                if c == 0:
                    name = image_names[img] if image_names else f"image {img}"
                    ax.set_ylabel(f"{name}\nq=({q[0]:g},{q[1]:g})" + (f"\n{kind}" if split else ""), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _block_title(block, meta: Mapping[str, Any]) -> str:
    """Short block name (``s2.b1``, ``e0.br1.3``) and the family's caption of the call (``LDA G=7 I=8``)."""
    name = block.name
    for long, short in (("stages.", "s"), (".blocks.", ".b"), ("encoders.", "e"), (".branches.", ".br"),
                        (".fusion.b", ".fuse")):
        name = name.replace(long, short)
    name = re.sub(r"^blocks\.", "b", name)
    caption = meta.get("caption")
    return f"{name}\n{caption}" if caption else name


def _stage_lines(ax, entries: Sequence[Mapping[str, Any]], xs: Sequence[int]) -> None:
    prev = None
    for x, e in zip(xs, entries, strict=True):
        if prev is not None and e.get("stage") != prev:
            ax.axvline(x - 0.5, color="grey", lw=0.6, ls=":")
        prev = e.get("stage")


def plot_distance(results: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: str | os.PathLike,
                  title: str = "Mean attention distance per block") -> Path:
    """Mean attention distance (input pixels) against block, one line per model; CrossFormer SDA/LDA blocks get
    circle/triangle markers and the group span as a thin dashed line; FcaFormer also shows own-token distances."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
    for label, entries in results:
        rows = [e for e in entries if e.get("mean_distance_px") is not None]
        if not rows:
            continue
        xs = [e["index"] for e in rows]
        ys = [e["mean_distance_px"] for e in rows]
        line, = ax.plot(xs, ys, "-", lw=1.2, label=label)
        for x, y, e in zip(xs, ys, rows, strict=True):
            marker = {"lda": "^", "sda": "o"}.get(e["kind"], "s")
            ax.plot(x, y, marker, color=line.get_color(), ms=5)
        spans = [e["meta"].get("group_span_px") for e in rows]
        if all(s is not None for s in spans):
            ax.plot(xs, [s[0] for s in spans], "--", lw=0.7, color=line.get_color(), alpha=0.6,
                    label=f"{label}: group span")
        tok = [e.get("tokens_mean_distance_px") for e in rows]
        if any(t is not None for t in tok):
            ax.plot(xs, tok, ":", marker=".", color=line.get_color(), label=f"{label}: own tokens only")
        _stage_lines(ax, rows, xs)
    ax.set_xlabel("block (index in the model; dotted lines: stage boundaries; o SDA, ^ LDA)")
    ax.set_ylabel("mean attention distance (input px)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    return _save(fig, path)


def plot_amplitude(results: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: str | os.PathLike,
                   title: str = "Block output amplitude") -> Path:
    """Max and mean |output| per block on a log scale, one line per model; blocks ending with an amplitude cooling
    layer are marked with a down triangle; dotted lines separate the stages of the first model."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for key, ax, name in (("max_abs", axes[0], "max |output|"), ("mean_abs", axes[1], "mean |output|")):
        for label, entries in results:
            xs = [e["index"] for e in entries if e.get(key) is not None]
            ys = [max(e[key], 1e-12) for e in entries if e.get(key) is not None]
            line, = ax.plot(xs, ys, "-o", ms=3, lw=1.2, label=label)
            acl = [(e["index"], max(e[key], 1e-12)) for e in entries if e.get("acl") and e.get(key) is not None]
            if acl:
                ax.plot(*zip(*acl, strict=True), "v", color=line.get_color(), ms=8, mfc="none",
                        label=f"{label}: ACL")
        if results:
            first = [e for e in results[0][1] if e.get(key) is not None]
            _stage_lines(ax, first, [e["index"] for e in first])
        ax.set_yscale("log")
        ax.set_xlabel(f"block (index in the model{'; dotted: stages of ' + results[0][0] if results else ''})")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_cross_token_share(results: Sequence[tuple[str, Mapping[str, Any]]], path: str | os.PathLike,
                           title: str = "Attention mass on cross tokens of earlier blocks") -> Path:
    """Heat map per model: rows = Fca blocks (queries), columns = earlier blocks whose cross tokens are read,
    values = share of attention mass (the numbers in each cell); the last column is the total."""
    plt = _plt()
    n = len(results)
    sizes = [(len(r["blocks"]), len(r["sources"]) + 1) for _, r in results]
    fig, axes = plt.subplots(1, n, figsize=(sum(1.1 * c + 2.2 for _, c in sizes), 1 + 0.55 * max(r for r, _ in sizes)),
                             squeeze=False)
    for ax, (label, res) in zip(axes[0], results, strict=True):
        blocks, sources = res["blocks"], res["sources"]
        mat = np.array([[np.nan if v is None else v for v in row] + [b["cross_share"]]
                        for row, b in zip(res["matrix"], blocks, strict=True)], dtype=float)
        if mat.size == 0:
            ax.set_axis_off()
            continue
        finite = mat[np.isfinite(mat)]
        vmax = max(float(finite.max()) if finite.size else 1.0, 1e-6)
        im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if math.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.3f}", ha="center", va="center", fontsize=7,
                            color="white" if mat[i, j] < 0.6 * vmax else "black")
        short = [s.replace("stages.", "s").replace(".blocks.", ".b").replace("blocks.", "b") for s in sources]
        ax.set_xticks(range(len(sources) + 1), short + ["total"], rotation=45, fontsize=7)
        ax.set_yticks(range(len(blocks)), [b["name"].replace("stages.", "s").replace(".blocks.", ".b")
                                           .replace("blocks.", "b") for b in blocks], fontsize=7)
        ax.set_xlabel("cross tokens made by block", fontsize=8)
        ax.set_ylabel("attending block", fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_cams(images: np.ndarray, cams: np.ndarray, path: str | os.PathLike, captions: Sequence[str],
              title: str = "") -> Path:
    """Each image next to its class activation map overlay (jet colour map), in rows of up to 4 pairs."""
    plt = _plt()
    n = len(images)
    per_row = min(n, 4)
    nrows = math.ceil(n / per_row)
    fig, axes = plt.subplots(nrows, 2 * per_row, figsize=(3.6 * per_row, 2.0 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, per_row)
        a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
        a.imshow(images[i])
        a.set_title(captions[i], fontsize=7)
        b.imshow(images[i])
        b.imshow(cams[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        b.set_title("CAM", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
