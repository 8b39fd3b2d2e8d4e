"""Accuracy helpers and the per-epoch metric files of a run (``metrics.csv``, ``metrics.jsonl``, ``curves.png``)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..fileio import atomic_write_text, save_figure

__all__ = ["topk_correct", "MetricHistory", "plot_curves", "plot_confusion_matrix"]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k (k is clipped to the class count).

    Args:
        logits: (B, num_classes).
        target: (B,) integer labels.

    Returns:
        One count per k (ints).
    """
    maxk = min(max(ks), logits.shape[-1])
    pred = logits.topk(maxk, dim=-1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class MetricHistory:
    """Per-epoch metric rows of a run, persisted as ``metrics.jsonl`` (one JSON object per line) and ``metrics.csv``.

    Both files are rewritten atomically after every epoch. On resume, rows of epochs at or after the resumed epoch are
    dropped (they were written after the checkpoint the run continues from).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []

    @property
    def jsonl_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def load(self, keep_before_epoch: int | None = None) -> MetricHistory:
        """Read existing rows, keeping those with ``epoch < keep_before_epoch`` (1-based epochs) if given."""
        self.rows = []
        if self.jsonl_path.is_file():
            for line in self.jsonl_path.read_text().splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if keep_before_epoch is None or int(row.get("epoch", 0)) < keep_before_epoch:
                        self.rows.append(row)
        return self

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one epoch's row and rewrite the files."""
        self.rows.append(dict(row))
        self.save()

    def save(self, directory: str | os.PathLike | None = None) -> None:
        """Write ``metrics.jsonl`` and ``metrics.csv`` atomically into ``directory`` (default: the run directory;
        training writes them into the staging directory of its epoch commit)."""
        where = Path(directory) if directory is not None else self.run_dir
        atomic_write_text(where / self.jsonl_path.name,
                          "".join(json.dumps(r, default=_plain) + "\n" for r in self.rows))
        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, restval="")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
        atomic_write_text(where / self.csv_path.name, buf.getvalue())


def _plain(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return str(obj)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(float(r["epoch"]))
            ys.append(float(v))
    return xs, ys


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "",
                loss_label: str = "loss (cross-entropy)") -> None:
    """Loss and accuracy curves per epoch (PNG, matplotlib Agg, written atomically).

    Left: train and val loss (``loss_label`` on the axis: cross-entropy in nats for classifiers; a dense trainer
    names its task's summed losses). Right: val top-1 / top-5 and train top-1 (%), and EMA top-1 if
    present; for rows without accuracies (dense tasks) every other ``val_*`` score (AP, mIoU, ...).
    """
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("val_loss_ema", "val (EMA)")):
        xs, ys = _series(rows, key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel(loss_label)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5"),
                       ("val_top1_ema", "val top-1 (EMA)")):
        xs, ys = _series(rows, key)
        if xs:
            ax_acc.plot(xs, ys, marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    if not ax_acc.lines:  # other tasks (detection AP, mIoU): every validation score, fractions
        for key in sorted({k for r in rows for k in r if k.startswith("val_") and "loss" not in k}):
            xs, ys = _series(rows, key)
            if xs:
                ax_acc.plot(xs, ys, marker="o", label=key[4:])
        ax_acc.set_ylabel("validation score")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Row-normalised confusion matrix (rows = true class, columns = predicted) as a PNG.

    Class names and counts are drawn for up to 30 classes; larger matrices are drawn as an image only.
    """
    n = len(classes)
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = min(max(4.0, 0.5 * n + 2.0), 20.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 30:
        ax.set_xticks(range(n), labels=list(classes), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels=list(classes), fontsize=8)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
