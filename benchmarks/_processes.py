"""Helpers of the benchmarks that measure in fresh processes: run one child measurement, and the machine line every
published table starts with."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def run_child(script: str, spec: dict, timeout_s: float = 3600) -> dict:
    """Run ``python <script> --child <spec as JSON>`` and return the JSON object the child printed on its last line.

    Raises:
        SystemExit: the child failed (its last 2000 characters of stderr are shown).
    """
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise SystemExit(f"child failed for {spec}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seeded_model(name: str):
    """Our model ``name`` with the weights every process of a run uses (seed 0), in eval mode."""
    import torch

    import crossformers

    torch.manual_seed(0)
    return crossformers.create_model(name).eval()


def machine_line(threads: int) -> tuple[dict, str]:
    """(``machine_info()``, "CPU: <model> [<signature>] (<relevant flags>), torch <version>, <threads> threads")."""
    from crossformers.profiling import machine_info
    from crossformers.profiling.measure import machine_label

    info = machine_info()
    return info, f"CPU: {machine_label()}, torch {info.get('torch', '?')}, {threads} threads"


def add_run_arguments(parser: argparse.ArgumentParser, tag: str) -> None:
    """The options every fresh-process benchmark takes: --threads, --out, --tag and the hidden --child."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write <tag>.md and <tag>.json here")
    parser.add_argument("--tag", default=tag)
    parser.add_argument("--child", help=argparse.SUPPRESS)


def serve_child(args: argparse.Namespace, child: Callable[[dict], dict]) -> bool:
    """In a child process (``--child SPEC``): run ``child(spec)``, print its JSON result and return True."""
    if not args.child:
        return False
    print(json.dumps(child(json.loads(args.child))))
    return True


def parse_or_serve(parser: argparse.ArgumentParser, tag: str,
                   child: Callable[[dict], dict]) -> tuple[argparse.Namespace, dict, str] | None:
    """The opening of every fresh-process benchmark's ``main``: add the run options (:func:`add_run_arguments`, file
    stem ``tag``) and parse the command line. In a child process (``--child SPEC``) run ``child`` and return None
    (``main`` then returns); else return (args, ``machine_info()``, the machine line of :func:`machine_line`)."""
    add_run_arguments(parser, tag)
    args = parser.parse_args()
    if serve_child(args, child):
        return None
    return (args, *machine_line(args.threads))


def report_head(title: str, machine: str, *notes: str) -> list[str]:
    """The opening lines of a Markdown report: ``# title (date, UTC)``, the command, the machine line and ``notes``
    (each a ``- `` item), then a blank line."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [f"# {title} ({when})", "", f"- command: `python {' '.join(sys.argv)}`", f"- {machine}",
            *(f"- {n}" for n in notes), ""]


def write_report(args: argparse.Namespace, text: str, info: dict, rows: list) -> None:
    """Print the Markdown ``text`` and, with --out, write it and the rows (with the machine and command) as JSON."""
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.tag}.md").write_text(text)
        (args.out / f"{args.tag}.json").write_text(json.dumps({"machine": info, "command": sys.argv, "rows": rows},
                                                              indent=1) + "\n")
