"""Helpers of the benchmarks that measure in fresh processes: run one child measurement, and the machine line every
published table starts with."""
from __future__ import annotations

import json
import subprocess
import sys


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


def machine_line(threads: int) -> tuple[dict, str]:
    """(``machine_info()``, "CPU: <model> [<signature>] (<relevant flags>), torch <version>, <threads> threads")."""
    from crossformers.profiling import machine_info
    from crossformers.profiling.measure import machine_label

    info = machine_info()
    return info, f"CPU: {machine_label()}, torch {info.get('torch', '?')}, {threads} threads"
