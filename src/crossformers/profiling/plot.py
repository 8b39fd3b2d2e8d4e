"""Accuracy/cost plot in the style of the papers' model-comparison figures (e.g. CrossFormer++ Fig. 6).

Two panels: published ImageNet-1k top-1 against MACs (per image, our count at the profiled size) and against the
measured batch-1 latency; one line per family, variants connected in order of cost and labelled.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..fileio import save_figure
from .errors import ProfilingError
from .profile import ProfileResult
from .published import FAMILIES

__all__ = ["plot_accuracy"]

_STYLE = {"CrossFormer": ("tab:blue", "o"), "CrossFormer++": ("tab:purple", "D"), "FcaFormer": ("tab:red", "*"),
          "FcaFormer (plain)": ("tab:pink", "P"), "CrossViT": ("tab:green", "s"), "CrossViT-dagger": ("tab:olive", "^")}


def _short(name: str) -> str:
    """Label of a variant on the plot: the part after the family prefix (``crossformer_pp_small`` -> ``small``)."""
    for prefix in ("crossformer_pp_", "crossformer_", "fcaformer_", "crossvit_"):
        if name.startswith(prefix):
            return name[len(prefix):].replace("_240", "")
    return name


def plot_accuracy(results: Sequence[ProfileResult], path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot published top-1 (%) against GMACs and against median batch-1 latency (ms) and save it to ``path``.

    Results without a published accuracy are skipped; the latency panel uses only results with a latency.

    Returns:
        The written path (format from the suffix, e.g. .png, .pdf, .svg).

    Raises:
        ProfilingError: no result has a published accuracy.
    """
    import matplotlib  # imported on use: pyplot must come after choosing the non-interactive Agg backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.published_top1 is not None]
    if not rows:
        raise ProfilingError("nothing to plot: none of the profiled models has a published ImageNet accuracy")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = [(axes[0], "gmacs", "MACs per image (G)"), (axes[1], "latency_ms", "latency, batch 1 (ms)")]
    families = [f for f in FAMILIES if any(r.family == f for r in rows)]
    families += sorted({r.family for r in rows} - set(families))
    for ax, attr, xlabel in panels:
        for fam in families:
            pts = sorted((getattr(r, attr), r.published_top1, r.model) for r in rows
                         if r.family == fam and getattr(r, attr) is not None)
            if not pts:
                continue
            color, marker = _STYLE.get(fam, ("tab:gray", "x"))
            xs, ys, names = zip(*pts, strict=True)
            ax.plot(xs, ys, marker=marker, color=color, label=fam, linewidth=1.5, markersize=7)
            for x, y, n in pts:
                ax.annotate(_short(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color=color)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ImageNet-1k top-1 (%, published)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    r0 = rows[0]
    setting = f"{r0.device}, {r0.threads} thread(s), {r0.dtype}" + (", compiled" if r0.compiled else "")
    fig.suptitle(title or f"Published accuracy vs. MACs and measured latency ({setting})")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)
    return Path(path)
