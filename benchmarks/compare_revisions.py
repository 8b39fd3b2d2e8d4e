"""Before/after check of a change's speed: ``bench_vs_reference.py`` run from two revisions of this repository,
alternately, on the same machine in one session.

Each revision measures itself against the same reference implementations (the authors' code), so its ratio
(ours / reference, < 1: ours faster) is a yardstick that cancels the machine's drift; the two revisions alternate
``--repeats`` times and the table gives the mean of their paired ratios and the change in percent. A change
"keeps the speed" where no ratio grows by more than ``--tolerance`` percent (3 by default, issue 13's criterion).

    python benchmarks/compare_revisions.py --base 1a21f7e --official-root /tmp/official/crossformer \\
        --official-root /tmp/official/fcaformer --official-root /tmp/official/crossvit

The base revision is checked out with ``git worktree`` into a temporary folder (removed at the end) and runs with
this virtual environment; it needs a ``bench_vs_reference.py`` that takes the options below. Writes
``docs/benchmarks/<tag>.md`` and ``.json`` (``--out``, ``--tag``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from crossformers.profiling.measure import machine_label

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "ours_fast")


def _bench(tree: Path, out: Path, tag: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_vs_reference.py"), "--variants", *args.variants,
           "--no-train", "--rounds", str(args.rounds), "--threads", str(args.threads), "--out", str(out), "--tag", tag]
    for root in args.official_root:
        cmd += ["--official-root", root]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / f"{tag}.json").read_text())


def _paired(doc: dict) -> dict[str, dict[str, float]]:
    return {r["variant"]: {s: r["stats"][s]["paired_ratio"] for s in SIDES} for r in doc["latency"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the revision to compare against (commit, tag or branch)")
    p.add_argument("--official-root", action="append", default=[], metavar="DIR", help="as bench_vs_reference.py")
    p.add_argument("--variants", nargs="+", default=["crossformer_tiny", "fcaformer_l1", "crossvit_9_240"])
    p.add_argument("--repeats", type=int, default=3, help="alternations base / this tree (default 3)")
    p.add_argument("--rounds", type=int, default=21, help="latency rounds per run (default 21)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=3.0, help="largest allowed slowdown in percent (default 3)")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    p.add_argument("--tag", default="compare_revisions")
    args = p.parse_args()
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), base], cwd=ROOT, check=True)
        try:
            for i in range(args.repeats):
                for side, where in (("base", tree), ("head", ROOT)):
                    print(f"run {i + 1}/{args.repeats}: {side} ...", file=sys.stderr, flush=True)
                    runs[side].append(_paired(_bench(where, Path(tmp), f"{side}_{i}", args)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    rows, worst = [], 0.0
    for v in args.variants:
        for s in SIDES:
            b = statistics.mean(r[v][s] for r in runs["base"])
            h = statistics.mean(r[v][s] for r in runs["head"])
            change = 100 * (h / b - 1)
            worst = max(worst, change)
            rows.append(dict(variant=v, side=s, base=b, head=h, change_pct=change,
                             base_runs=[r[v][s] for r in runs["base"]], head_runs=[r[v][s] for r in runs["head"]]))
    doc = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), cpu=machine_label(), base=base, head=head,
               command="python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
               repeats=args.repeats, rounds=args.rounds, threads=args.threads, tolerance_pct=args.tolerance,
               worst_change_pct=worst, kept=worst <= args.tolerance, rows=rows)
    lines = [f"# Speed before/after: {base} vs {head} ({doc['date']})", "",
             f"- command: `{doc['command']}`", f"- CPU: {doc['cpu']}; {args.threads} threads; batch 1, eager fp32",
             f"- {args.repeats} alternating runs per revision, {args.rounds} latency rounds each; ratio = ours / the "
             "authors' code (paired median per run, mean over runs; < 1: ours faster); `ours fast` = "
             "`optimize_for_inference`", "",
             "| variant | side | ratio before | ratio after | change | runs before | runs after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = ", ".join
        lines.append(f"| {r['variant']} | {r['side']} | {r['base']:.3f} | {r['head']:.3f} | {r['change_pct']:+.1f} % "
                     f"| {fmt(f'{x:.3f}' for x in r['base_runs'])} | {fmt(f'{x:.3f}' for x in r['head_runs'])} |")
    lines += ["", f"Largest slowdown: {worst:+.1f} % ({'within' if doc['kept'] else 'OVER'} the {args.tolerance:g} % "
              "tolerance)."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
