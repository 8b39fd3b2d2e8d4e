#!/usr/bin/env python
"""Our fastest PyTorch paths against onnxruntime on our own export, each runtime alone in fresh processes.

``crossformers profile MODEL --onnx FILE`` times both runtimes in one process, in alternating blocks. On a 2-core VM
that ratio moved by up to 20 % from run to run, mostly with onnxruntime's own time (docs/profiling.md): the two
runtimes' thread pools share the cores. Here no process holds more than one runtime. Per model, the weights are
drawn once (seed 0), exported to ONNX at the model's default input size (batch 1, fp32, static shapes), and then
each pair of processes runs, in a shuffled order, our model (``--ours``: ``compile`` = ``compile_for_inference``,
``optimize`` = ``optimize_for_inference``, both with this machine's calibrated linear path) and onnxruntime (CPU
provider, all graph optimisations, the same intra-op threads). Each process makes untimed warm-up calls (ours
compiles in the first, or loads the package the first process of ours kept in a temporary compile cache, so that
8 pairs take minutes, not 25 s of compiling per process), then ``--calls`` timed calls at batch 1; its time is
their median. The table gives each
side's median over the processes and the paired ratio (median over pairs of ours / onnxruntime; < 1: ours faster),
with the CPU model and threads.

    python benchmarks/bench_onnxruntime_processes.py --threads 2 --out docs/benchmarks --tag onnxruntime_processes
    python benchmarks/bench_onnxruntime_processes.py --models fcaformer_l1 --ours compile optimize
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

from _processes import parse_or_serve, run_child, seeded_model, write_report

DEFAULT_MODELS = ("crossformer_tiny", "fcaformer_l1", "crossvit_9_240")


def _child(spec: dict) -> dict:
    """One process, one runtime: warm-up calls, then ``calls`` timed calls (ms each); or the export."""
    import torch

    from crossformers.profiling.measure import time_calls

    torch.set_num_threads(spec["threads"])
    if spec["runtime"] == "export":
        return _export(spec["model"], Path(spec["onnx"]))
    if spec["runtime"] == "onnxruntime":
        from crossformers.profiling.onnx_timing import onnx_runner

        call = onnx_runner(spec["onnx"], tuple(spec["shape"]), spec["threads"])
    else:
        from crossformers.inference import compile_for_inference, optimize_for_inference

        model = seeded_model(spec["model"])
        model = (compile_for_inference(model, cache_dir=spec.get("cache_dir")) if spec["runtime"] == "compile"
                 else optimize_for_inference(model))
        x = torch.randn(*spec["shape"], generator=torch.Generator().manual_seed(0))

        def call():
            with torch.inference_mode():
                return model(x)
    times = time_calls(call, torch.device("cpu"), repeats=spec["calls"])
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def _export(name: str, path: Path) -> dict:
    """Write our fp32 ONNX export of the run's weights (batch 1, default size) to ``path``; its input shape."""
    from crossformers.export import export_model

    model = seeded_model(name)
    export_model(model, output=path, verify=False)
    return {"shape": [1, *model.pretrained_cfg["input_size"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--ours", nargs="+", choices=("compile", "optimize"), default=["compile"],
                   help="our paths to time (default: compile)")
    p.add_argument("--calls", type=int, default=30, help="timed calls per process (default 30)")
    p.add_argument("--pairs", type=int, default=8, help="processes per runtime and model (default 8)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="compile in every process of ours instead of keeping the first one's packages in a "
                        "temporary compile cache (compile_for_inference's cache_dir) that later processes load")
    opened = parse_or_serve(p, "onnxruntime_processes", _child)
    if opened is None:
        return
    args, info, machine = opened

    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            onnx = Path(tmp) / f"{name}.onnx"  # exported in a child too: this process never loads a runtime
            shape = run_child(__file__, {"runtime": "export", "model": name, "onnx": str(onnx),
                                         "threads": args.threads})["shape"]
            sides = [*args.ours, "onnxruntime"]
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for _ in range(args.pairs):
                order = list(sides)
                rng.shuffle(order)
                for side in order:
                    spec = {"runtime": side, "model": name, "onnx": str(onnx), "shape": shape,
                            "threads": args.threads, "calls": args.calls,
                            "cache_dir": None if args.no_compile_cache else str(Path(tmp) / "packages")}
                    runs[side].append(run_child(__file__, spec))
                    print(f"{name} {side}: {runs[side][-1]['median_ms']:.1f} ms", flush=True)
            pair_ratios = {side: [o["median_ms"] / r["median_ms"]
                                  for o, r in zip(runs[side], runs["onnxruntime"], strict=True)]
                           for side in args.ours}
            ratios = {side: statistics.median(q) for side, q in pair_ratios.items()}
            spans = {side: (min(q), max(q)) for side, q in pair_ratios.items()}
            rows.append({"model": name, "shape": shape, "runs": runs, "ratio_paired": ratios, "ratio_span": spans})

    lines = [f"# Ours against onnxruntime, each runtime alone in fresh processes ({info.get('cpu', '?')})", "",
             f"{machine}. Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`; each time is "
             f"the median over {args.pairs} processes of the median of {args.calls} batch-1 calls; ratios paired "
             "by process pair (median, and the range over pairs)"
             + ("." if args.no_compile_cache else "; our compiled packages are made by the first process and loaded "
                "from a temporary compile cache by the others."), "",
             "| model | input | onnxruntime ms | " + " | ".join(f"ours {s} ms | ours {s} / onnxruntime"
                                                            for s in args.ours) + " |",
             "|---|---|---|" + "---|---|" * len(args.ours)]
    for row in rows:
        med = {s: statistics.median(r["median_ms"] for r in runs) for s, runs in row["runs"].items()}
        cells = [f"{med[s]:.1f} | {row['ratio_paired'][s]:.2f} ({row['ratio_span'][s][0]:.2f}-"
                 f"{row['ratio_span'][s][1]:.2f})" for s in args.ours]
        lines.append(f"| {row['model']} | {row['shape'][2]} | {med['onnxruntime']:.1f} | " + " | ".join(cells) + " |")
    # every process's time, in run order: on a shared VM whole processes can land in a slower state (docs/profiling.md)
    lines += ["", "Each process's median, ms, in the order the processes ran:", ""]
    for row in rows:
        for side, runs in row["runs"].items():
            lines.append(f"- {row['model']} {side}: " + ", ".join(f"{r['median_ms']:.1f}" for r in runs))
    write_report(args, "\n".join(lines) + "\n", info, rows)


if __name__ == "__main__":
    main()
