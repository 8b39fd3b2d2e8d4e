#!/usr/bin/env python
"""Issue 15's goals on one machine, read from the JSON reports of the benchmarks, as one Markdown table.

Reads any mix of reports of ``bench_vs_reference.py`` (batch-1 latency as created, with one call, bf16 / int8 and
batch-N throughput; training steps), ``bench_onnxruntime_processes.py`` (ours against onnxruntime) and
``bench_amp_training.py`` (bf16 autocast training against fp32), e.g. the files ``benchmarks/machine_suite.sh``
writes, and lists each goal per variant with every run's paired ratio, the file it comes from and how many runs meet
it. Every number is a ratio the report itself recorded (paired: the median over rounds of one side's time over the
other's); nothing is timed here. The goals that need AMX (bf16 and int8 latency, bf16 throughput) say so when the
reports' CPU flags have no ``amx_tile``. Goal 4 (accuracy) and the share of the machine's peak come from other
tools (``scripts/precision_accuracy.py``, ``crossformers profile``) and are not read here.

    python benchmarks/goal_summary.py docs/benchmarks/intel_xeon_amx_*.json --out docs/benchmarks/intel_xeon_amx_goals.md
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the goals' values where that benchmark defines them (GOALS, PRECISION_GOALS), so the two cannot drift apart
from bench_vs_reference import GOALS, PRECISION_GOALS  # noqa: E402


class Goal(NamedTuple):
    """One measure of issue 15: its goal number, what is measured, the goal value and whether the measured ratio
    meets it at most (``"le"``) or at least (``"ge"``) that value."""

    number: str
    measure: str
    value: float
    direction: str


#: the sides of bench_vs_reference.py's reports that run in bf16 and int8, with their goals
BF16_SIDES = tuple(k for k in PRECISION_GOALS if k.startswith("ours_bf16"))
INT8_SIDES = tuple(k for k in PRECISION_GOALS if k.startswith("ours_int8"))

AS_CREATED = Goal("1", "as created / authors (batch 1; also never above 1)", GOALS["as_created"], "le")
ONE_CALL = Goal("1", "one call (`optimize_for_inference` or `compile_for_inference`) / authors", GOALS["one_call"],
                "le")
FAST_VS_PLAIN = Goal("1", "`optimize_for_inference` / as created (no fast path slower; 3 % noise allowed)", 1.03,
                     "le")
TRAIN = Goal("1", "training step / authors (as created or `optimize_for_training`)", GOALS["train"], "le")
BF16 = Goal("2", "bf16 / authors' fp32 (batch 1)", PRECISION_GOALS[BF16_SIDES[0]][0], "le")
BF16_THROUGHPUT = Goal("2", "bf16 throughput / authors' fp32 (batch N)", PRECISION_GOALS[BF16_SIDES[0]][1], "ge")
INT8 = Goal("3", "int8 / authors' fp32 (batch 1)", PRECISION_GOALS[INT8_SIDES[0]][0], "le")
ONNXRUNTIME = Goal("5", "our best path / onnxruntime (fresh processes)", 1.0, "le")
AMP = Goal("6", "bf16 autocast training step / fp32", 1.0, "le")
ORDER = (AS_CREATED, ONE_CALL, FAST_VS_PLAIN, TRAIN, BF16, BF16_THROUGHPUT, INT8, ONNXRUNTIME, AMP)
NEEDS_AMX = {BF16, BF16_THROUGHPUT, INT8}


def _paired(stats: dict, side: str) -> float | None:
    s = stats.get(side)
    return None if s is None else s["paired_ratio"]


def _best(stats: dict, sides: tuple[str, ...]) -> tuple[float, str] | None:
    """The lowest paired ratio among ``sides`` present in ``stats``, with the side's name."""
    found = [(stats[s]["paired_ratio"], s) for s in sides if s in stats]
    return min(found) if found else None


def measures(doc: dict) -> list[tuple[Goal, str, float, str]]:
    """(goal, variant or model, ratio, how) for every goal measure one report holds (see the module docs).

    Raises:
        ValueError: a JSON document of none of the three kinds.
    """
    out: list[tuple[Goal, str, float, str]] = []
    if "latency" in doc or "train" in doc:
        for r in doc.get("latency", []):
            s, v = r["stats"], r["variant"]
            if (x := _paired(s, "ours")) is not None:
                out.append((AS_CREATED, v, x, "as created"))
                if (f := _paired(s, "ours_fast")) is not None:
                    out.append((FAST_VS_PLAIN, v, f / x, "optimized / as created"))
            if best := _best(s, ("ours_fast", "ours_compiled")):
                out.append((ONE_CALL, v, best[0], best[1].removeprefix("ours_")))
            if best := _best(s, BF16_SIDES):
                out.append((BF16, v, best[0], best[1].removeprefix("ours_")))
            if best := _best(s, INT8_SIDES):
                out.append((INT8, v, best[0], best[1].removeprefix("ours_")))
            tp = r.get("throughput")
            if tp:
                ref = tp["stats"]["reference"]["median_s"]
                speedups = [(ref / tp["stats"][k]["median_s"], k) for k in BF16_SIDES if k in tp["stats"]]
                if speedups:
                    x, k = max(speedups)
                    out.append((BF16_THROUGHPUT, v, x, f"{k.removeprefix('ours_')}, batch {tp['batch']}"))
        for r in doc.get("train", []):
            if best := _best(r["stats"], ("ours", "ours_fast")):
                how = "as created" if best[1] == "ours" else "optimize_for_training"
                out.append((TRAIN, r["variant"], best[0], f"{how}, batch {r.get('batch', '?')}"))
        return out
    rows = doc.get("rows")
    if isinstance(rows, list) and rows and "ratio_paired" in rows[0]:
        for r in rows:
            if r["ratio_paired"]:
                path, x = min(r["ratio_paired"].items(), key=lambda kv: kv[1])
                out.append((ONNXRUNTIME, r["model"], x, path))
        return out
    if isinstance(rows, list) and rows and "amp_ms" in rows[0]:
        for r in rows:
            out.append((AMP, f"{r['model']} ({r['side']} px)", r["paired_ratio"], f"batch {r['batch']}"))
        return out
    raise ValueError("not a report of bench_vs_reference.py, bench_onnxruntime_processes.py or bench_amp_training.py")


def _flags(doc: dict) -> list[str]:
    return list(doc.get("cpu_flags") or doc.get("machine", {}).get("cpu_flags") or doc.get("bf16_flags") or [])


def _met(goal: Goal, x: float) -> bool:
    return x <= goal.value if goal.direction == "le" else x >= goal.value


def summary(paths: list[Path]) -> str:
    """The Markdown table of every goal measure found in ``paths`` (see the module docs).

    Raises:
        ValueError: a file that is not one of the reports (named in the message), or no file at all.
    """
    if not paths:
        raise ValueError("no report given: pass the JSON files the benchmarks wrote")
    found: dict[Goal, dict[str, list[tuple[float, str, str]]]] = defaultdict(lambda: defaultdict(list))
    machines, flags = set(), set()
    for p in paths:
        doc = json.loads(Path(p).read_text())
        try:
            rows = measures(doc)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
        m = doc.get("machine", {})
        signature = f" [{m['cpu_signature']}]" if m.get("cpu_signature") else ""
        machines.add(f"{m.get('cpu', '?')}{signature}, {m.get('logical_cpus', '?')} logical CPUs, "
                     f"torch {m.get('torch', '?')}")
        flags.update(_flags(doc))
        for goal, name, x, how in rows:
            found[goal][name].append((x, how, Path(p).stem))
    amx = "amx_tile" in flags
    lines = ["# Issue 15's goals: the measured ratios, goal by goal", "",
             *(f"- machine: {m}" for m in sorted(machines)),
             f"- CPU flags recorded: {', '.join(sorted(flags)) or 'none'}{'' if amx else ' (no AMX)'}",
             f"- reports: {', '.join(Path(p).name for p in paths)}",
             "- each value is a paired ratio from one report (< 1: ours faster, except throughput: > 1 faster); "
             "met = runs meeting the goal / runs", "",
             "| goal | measure | goal value | variant | runs (ratio, path, report) | met |",
             "|---|---|---|---|---|---|"]
    for goal in ORDER:
        for name, runs in found.get(goal, {}).items():
            sign = "≤" if goal.direction == "le" else "≥"
            met = sum(_met(goal, x) for x, _, _ in runs)
            note = " (goal set for AMX; this CPU has none)" if goal in NEEDS_AMX and not amx else ""
            cells = "; ".join(f"{x:.2f} ({how}, {src})" for x, how, src in runs)
            mark = "✓" if met == len(runs) else ("✗" if met == 0 else "~")
            if goal == AS_CREATED and (slower := sum(x > 1 for x, _, _ in runs)):
                note += f"; slower than the authors in {slower}"
            lines.append(f"| {goal.number} | {goal.measure} | {sign} {goal.value:g} | {name} | {cells} | {mark} "
                         f"{met}/{len(runs)}"
                         f"{note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="JSON reports of the benchmarks")
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.reports if not r.is_file()]
    if missing:
        print(f"error: no such report: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        text = summary(args.reports)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
