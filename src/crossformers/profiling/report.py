"""Rendering profile results: a text or Markdown table, per-module MAC breakdowns, JSON and CSV files."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .measure import machine_info
from .profile import ProfileResult

__all__ = ["format_table", "format_markdown", "format_breakdown", "write_json", "write_csv", "read_json"]

_COLUMNS: list[tuple[str, str, str]] = [  # header, attribute, format
    ("model", "model", "{}"),
    ("input", "img_size", "{0[0]}x{0[1]}"),
    ("params (M)", "params_m", "{:.2f}"),
    ("GMACs", "gmacs", "{:.3f}"),
    ("lat b1 med (ms)", "latency_ms", "{:.1f}"),
    ("p90 (ms)", "latency_p90_ms", "{:.1f}"),
    ("img/s @N", "throughput_img_s", "{:.1f}"),
    ("peak MiB b1", "peak_mem_mib", "{:.0f}"),
    ("GFLOP/s", "achieved_gflops", "{:.1f}"),
    ("% mm peak", "peak_fraction", "{:.1%}"),
    ("top-1", "published_top1", "{:.1f}"),
]
#: shown when a result was also timed in onnxruntime (``--onnx``)
_ONNX_COLUMNS: list[tuple[str, str, str]] = [
    ("ORT b1 med (ms)", "onnx_latency_ms", "{:.1f}"),
    ("ours / ORT (paired)", "ours_over_onnx", "{:.2f}"),
]


def _columns(results: Sequence[ProfileResult]) -> list[tuple[str, str, str]]:
    cols = list(_COLUMNS)
    if any(r.onnx_latency_ms is not None for r in results):
        cols[6:6] = _ONNX_COLUMNS  # after the PyTorch latency
    return cols


def _cell(result: ProfileResult, attr: str, fmt: str) -> str:
    if attr == "ours_over_onnx":  # the paired ratio (calls alternated); a ratio of medians for older results
        value = result.onnx_ratio_paired
        if value is None and result.latency_ms and result.onnx_latency_ms:
            value = result.latency_ms / result.onnx_latency_ms
    else:
        value = getattr(result, attr)
    return "-" if value is None else fmt.format(value)


def _settings(results: Sequence[ProfileResult]) -> str:
    """The settings common to a table's rows: device, threads, dtype, batch N, options, matmul peak, memory method,
    and the machine (CPU model, signature and flags; each where rows measured on other machines differ)."""
    if not results:
        return ""
    r = results[0]
    opts = []
    for label, attr in (("compiled", "compiled"), ("fused", "fused"), ("oneDNN linear", "onednn_linear"),
                        ("packed weights", "packed_weights"), ("channels-last", "channels_last"),
                        ("freed memory retained", "freed_memory_retained")):
        on = [x.model for x in results if getattr(x, attr)]
        if len(on) == len(results):
            opts.append(label)
        elif on:  # differs by row (e.g. each family's calibrated linear path)
            opts.append(f"{label} for {', '.join(on)}")
    via = {"native": "torch.mm", "onednn": "oneDNN"}.get(r.matmul_peak_kernel or "", "")
    peak = (f", matmul peak {r.matmul_peak_gflops:.1f} GFLOP/s{f' ({via})' if via else ''}"
            if r.matmul_peak_gflops else "")
    tput = f"throughput at N={r.batch_size}" if r.batch_size else "no throughput"
    return (f"{r.device}, {r.threads} thread(s), {r.dtype}, {tput}{', ' + ', '.join(opts) if opts else ''}{peak}; "
            f"MACs = FLOPs/2 per image; peak MiB = {r.mem_method or 'not measured'}{_machines(results)}")


def _machines(results: Sequence[ProfileResult]) -> str:
    """"; on <machine>" when every row was measured on one machine, else each machine with its rows (rows loaded
    from files written before results named their machine name none)."""
    machines = list(dict.fromkeys(x.machine for x in results if x.machine))
    if not machines:
        return ""
    if len(machines) == 1 and all(x.machine for x in results):
        return f"; on {machines[0]}"
    return "; on " + "; ".join(f"{m} ({', '.join(x.model for x in results if x.machine == m)})" for m in machines)


def _rows(results: Sequence[ProfileResult]) -> list[list[str]]:
    cols = _columns(results)
    return [[h for h, _, _ in cols]] + [[_cell(r, a, f) for _, a, f in cols] for r in results]


def format_table(results: Sequence[ProfileResult]) -> str:
    """A fixed-width text table, one row per result, plus a line with the common settings (threads, device,
    dtype, batch N, options) and the measured matmul peak."""
    rows = _rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if results:
        lines.append(f"({_settings(results)})")
    return "\n".join(lines)


def format_markdown(results: Sequence[ProfileResult]) -> str:
    """The same table as :func:`format_table` in Markdown (for READMEs and reports), settings line below it."""
    rows = _rows(results)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    if results:
        lines += ["", f"*{_settings(results)}*"]
    return "\n".join(lines) + "\n"


def format_breakdown(result: ProfileResult, depth: int = 2, min_share: float = 0.0) -> str:
    """Per-module MACs of ``result`` (needs ``breakdown=True``) down to ``depth`` name levels, in model order,
    with each module's share of the total; modules below ``min_share`` (fraction) are left out."""
    if not result.breakdown:
        return f"{result.model}: no breakdown recorded (profile with breakdown=True / --breakdown)"
    total = result.breakdown.get("", result.macs) or 1
    lines = [f"{result.model} ({result.img_size[0]}x{result.img_size[1]}): {total / 1e9:.3f} GMACs per image"]
    for name, macs in result.breakdown.items():
        if not name or name.count(".") >= depth or macs / total < min_share:
            continue
        indent = "  " * (name.count(".") + 1)
        lines.append(f"{indent}{name:<{max(1, 48 - len(indent))}} {macs / 1e9:9.4f} G  {macs / total:6.1%}")
    return "\n".join(lines)


def write_json(results: Sequence[ProfileResult], path: str | os.PathLike, extra: dict[str, Any] | None = None,
               samples: bool = False) -> Path:
    """Write ``{"machine": ..., **extra, "results": [result dicts]}`` to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), **(extra or {}), "results": [r.to_dict(samples=samples) for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_json(path: str | os.PathLike) -> list[ProfileResult]:
    """Results from a file written by :func:`write_json` (or a bare list of result dicts)."""
    doc = json.loads(Path(path).read_text())
    items = doc["results"] if isinstance(doc, dict) else doc
    return [ProfileResult.from_dict(d) for d in items]


def write_csv(results: Sequence[ProfileResult], path: str | os.PathLike) -> Path:
    """Write one CSV row per result (every scalar field; column names carry the units)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.to_row() for r in results]
    fields = list(rows[0]) if rows else list(ProfileResult.__dataclass_fields__)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
