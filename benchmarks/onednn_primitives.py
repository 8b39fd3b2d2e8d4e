#!/usr/bin/env python
"""Where a model's batch-1 time goes inside oneDNN: every oneDNN primitive it runs (matrix products, convolutions),
timed by oneDNN itself, also inside a compiled model.

``torch.profiler`` sees the kernels of an eager model and of a dynamo-compiled one with a Python wrapper, but not
inside an ahead-of-time package (``compile_for_inference``'s default where oneDNN packing is chosen), whose C++ calls
its kernels directly. oneDNN's own verbose mode (``torch.backends.mkldnn.verbose``) times each primitive execution
wherever it is called from. Per model and path, in a fresh process: the model (seed-0 weights) is built, made fast
(``--path compile`` = ``compile_for_inference``, ``optimize`` = ``optimize_for_inference``, ``created`` = as
created), warmed up, timed for ``--calls`` batch-1 calls without verbose output (the wall time), and then run
``--calls`` more times with verbose output captured. The table lists the primitives by their time per forward
call, with the rate of each product and convolution (GFLOP/s, 2 FLOPs per multiply-add), and the share of the wall
time spent outside oneDNN (attention, inductor's fused loops, MKL products, the code around the kernels). Timings
carry the verbose mode's small overhead; compare shapes and rates, not single microseconds.

    python benchmarks/onednn_primitives.py --models crossvit_9_240 fcaformer_l1 --path compile --threads 2
    python benchmarks/onednn_primitives.py --models crossformer_small --path compile optimize --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

from _processes import parse_or_serve, run_child, seeded_model, write_report


def problem_flops(kind: str, problem: str) -> float | None:
    """FLOPs (2 per multiply-add) of one oneDNN primitive execution from its verbose problem descriptor, or None for
    primitives that are not products or convolutions (reorders, element-wise, ...).

    >>> problem_flops("inner_product", "mb197ic256oc768")
    77463552.0
    >>> problem_flops("convolution", "g64mb1_ic64oc64_ih56oh56kh7sh1dh0ph3_iw56ow56kw7sw1dw0pw3")
    19668992.0
    >>> problem_flops("matmul", "4x197x64:4x64x197")
    19870208.0
    """
    if kind == "inner_product":
        m = re.fullmatch(r"mb(\d+)ic(\d+)(?:ih(\d+))?(?:iw(\d+))?oc(\d+)", problem)
        return None if m is None else 2.0 * math.prod(int(v) for v in m.groups() if v is not None)
    if kind in ("convolution", "deconvolution"):
        def dim(name: str, default: int = 1) -> int:
            found = re.search(rf"(?<![a-z]){name}(\d+)", problem)
            return int(found.group(1)) if found else default
        groups, mb, ic, oc = dim("g"), dim("mb"), dim("ic"), dim("oc")
        out = dim("oh") * dim("ow") * dim("od")
        kernel = dim("kh") * dim("kw") * dim("kd")
        return 2.0 * mb * oc * out * (ic // groups) * kernel
    if kind == "matmul":
        parts = problem.split(":")
        if len(parts) < 2:
            return None
        src, wei = ([int(v) for v in p.split("x")] for p in parts[:2])
        *batch, m_rows, k = src
        n = wei[-1]
        return 2.0 * math.prod(batch or [1]) * m_rows * k * n
    return None


def parse_verbose(lines: list[str], calls: int) -> list[dict]:
    """Aggregate oneDNN verbose ``exec`` lines (``onednn_verbose,...,primitive,exec,cpu,<kind>,<impl>,...,
    <problem>,<ms>``) by primitive kind and problem: calls and ms per forward call, µs per execution, GFLOP/s."""
    acc: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    for line in lines:
        fields = line.strip().split(",")
        if len(fields) < 8 or fields[0] != "onednn_verbose" or "exec" not in fields[2:4]:
            continue
        at = fields.index("exec")
        kind, impl = fields[at + 2], fields[at + 3]
        post_ops = "+".join(re.findall(r"attr-post-ops:([^,\s]+)", line))
        acc[(kind, fields[-2], post_ops or impl.split(":")[-1])].append(float(fields[-1]))
    rows = []
    for (kind, problem, detail), times in acc.items():
        flops = problem_flops(kind, problem)
        mean_ms = statistics.fmean(times)
        rows.append({"kind": kind, "problem": problem, "detail": detail, "per_call": len(times) / calls,
                     "us_each": mean_ms * 1e3, "ms_per_call": sum(times) / calls,
                     "gflops": None if flops is None else flops / (mean_ms * 1e-3) / 1e9})
    return sorted(rows, key=lambda r: -r["ms_per_call"])


def _child(spec: dict) -> dict:
    """One process: build, warm up, time ``calls`` calls, then capture oneDNN's verbose output of ``calls`` more."""
    import torch

    from crossformers.inference import compile_for_inference, optimize_for_inference
    from crossformers.profiling.measure import time_calls

    torch.set_num_threads(spec["threads"])
    model = seeded_model(spec["model"])
    shape = (1, *model.pretrained_cfg["input_size"])
    if spec["path"] == "compile":
        model = compile_for_inference(model)
    elif spec["path"] == "optimize":
        model = optimize_for_inference(model)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        walls = time_calls(lambda: model(x), x.device, repeats=spec["calls"])
        with tempfile.TemporaryFile("w+") as log:  # oneDNN prints to the process's stdout: send it to a file
            sys.stdout.flush()
            saved = os.dup(1)
            os.dup2(log.fileno(), 1)
            try:
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    for _ in range(spec["calls"]):
                        model(x)
            finally:
                os.dup2(saved, 1)
                os.close(saved)
            log.seek(0)
            rows = parse_verbose(log.readlines(), spec["calls"])
    return {"wall_ms": statistics.median(walls), "shape": list(shape), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["crossformer_tiny", "fcaformer_l1", "crossvit_9_240"])
    p.add_argument("--path", nargs="+", choices=("compile", "optimize", "created"), default=["compile"],
                   help="which form of each model to run (default: compile)")
    p.add_argument("--calls", type=int, default=10, help="timed calls, and verbose calls (default 10)")
    p.add_argument("--top", type=int, default=12, help="primitives listed per model (default 12)")
    opened = parse_or_serve(p, "onednn_primitives", _child)
    if opened is None:
        return
    args, info, machine = opened
    lines = [f"# oneDNN primitives per batch-1 call ({info.get('cpu', '?')})", "",
             f"{machine}. Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`. Wall: median "
             f"of {args.calls} calls without verbose output; primitives: oneDNN's own timing over {args.calls} "
             "further calls (ms per forward call; GFLOP/s at 2 FLOPs per multiply-add).", ""]
    results = []
    for name in args.models:
        for path in args.path:
            res = run_child(__file__, {"model": name, "path": path, "threads": args.threads, "calls": args.calls})
            results.append({"model": name, "path": path, **res})
            inside = sum(r["ms_per_call"] for r in res["rows"])
            products = sum(r["ms_per_call"] for r in res["rows"] if r["kind"] in ("inner_product", "matmul"))
            convs = sum(r["ms_per_call"] for r in res["rows"] if "convolution" in r["kind"])
            lines += [f"## {name}, {path} (input {'x'.join(map(str, res['shape'][1:]))})", "",
                      f"Wall {res['wall_ms']:.1f} ms per call; in oneDNN {inside:.1f} ms (products {products:.1f}, "
                      f"convolutions {convs:.1f}); outside oneDNN {res['wall_ms'] - inside:.1f} ms "
                      f"({100 * (1 - inside / res['wall_ms']):.0f} %).", "",
                      "| primitive | problem | post-op / ISA | per call | µs each | ms per call | GFLOP/s |",
                      "|---|---|---|---|---|---|---|"]
            for r in res["rows"][:args.top]:
                rate = "-" if r["gflops"] is None else f"{r['gflops']:.0f}"
                lines.append(f"| {r['kind']} | {r['problem']} | {r['detail']} | {r['per_call']:g} | "
                             f"{r['us_each']:.1f} | {r['ms_per_call']:.3f} | {rate} |")
            lines.append("")
            print(f"{name} {path}: wall {res['wall_ms']:.1f} ms, oneDNN {inside:.1f} ms", flush=True)
    write_report(args, "\n".join(lines), info, results)


if __name__ == "__main__":
    main()
