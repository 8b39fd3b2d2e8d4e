#!/usr/bin/env python
"""Training steps (or batch-1 inference calls) with glibc's default allocator settings against
``retain_freed_memory()``, each in fresh processes.

``crossformers train`` calls :func:`crossformers.inference.retain_freed_memory` before training (no tensor is mapped
afresh and freed memory stays in the process; ``--no-retain-freed-memory`` turns it off). The setting is
process-wide and cannot be undone for blocks already mapped, so each measurement is a child process of its own: it
builds the model, takes ``--steps`` training steps as the trainer does (train mode, timm's AdamW, cross-entropy, the
engine's linear path, denormals flushed) and reports the median step time after the first, its peak resident size (``ru_maxrss``) and
its minor page faults. With ``--inference PATH`` each process instead makes ``--steps`` inference calls (eval
mode, ``torch.inference_mode``) of the model as created, after ``optimize_for_inference`` or after
``compile_for_inference`` (the first call, which compiles, is untimed). The two settings alternate, in a shuffled
order per pair of processes; the table gives the medians and the paired ratio retain / default (< 1: retaining is
faster), with the CPU model and threads.

    python benchmarks/bench_freed_memory.py --threads 2 --out docs/benchmarks --tag freed_memory_train
    python benchmarks/bench_freed_memory.py --models crossformer_tiny:32:224 --pairs 3
    python benchmarks/bench_freed_memory.py --inference created --steps 31 --models fcaformer_l1:1:224
"""
from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
from pathlib import Path

from _processes import parse_or_serve, run_child, seeded_model, write_report

#: name:batch:side, one per family at the papers' input sizes, and the demo's model and batch (scripts/demo.sh)
DEFAULT_MODELS = ("crossformer_tiny:32:224", "fcaformer_l1:32:224", "crossvit_9_240:32:240", "fcaformer_nano:128:56")


def _child(spec: dict) -> dict:
    """One process: the setting, the model, ``steps`` training steps (or inference calls); their times (ms), peak
    RSS (MiB), minor faults."""
    import torch

    from crossformers.inference import retain_freed_memory

    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(True)  # as the trainer does on the CPU
    active = retain_freed_memory() if spec["retain"] else False
    times, faults = _inference_calls(spec) if spec.get("inference") else _training_steps(spec)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"active": active, "step_ms": times[1:], "median_ms": statistics.median(times[1:]),
            "peak_rss_mib": usage.ru_maxrss / 1024, "minor_faults": usage.ru_minflt,
            "faults_per_step": faults / max(len(times) - 1, 1)}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_calls(fn, steps: int) -> tuple[list[float], int]:
    """Times (ms) of ``steps`` calls of ``fn`` (the first, which compiles or touches fresh memory, is timed alone;
    the rest by ``profiling.measure.time_calls``) and the minor page faults after the first."""
    import torch

    from crossformers.profiling.measure import time_calls

    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    faults = _minor_faults()
    times = time_calls(fn, torch.device("cpu"), warmup=0, repeats=steps - 1)
    return [first, *times], _minor_faults() - faults


def _inference_calls(spec: dict) -> tuple[list[float], int]:
    """``steps`` timed calls (ms) of the model on one batch, as created / optimized / compiled (``inference``), and
    the minor page faults after the first."""
    import torch

    from crossformers.inference import compile_for_inference, optimize_for_inference

    model = seeded_model(spec["model"])
    run = {"created": lambda m: m, "optimize": optimize_for_inference,
           "compile": compile_for_inference}[spec["inference"]](model)
    in_chans = model.pretrained_cfg.get("input_size", (3,))[0]
    x = torch.randn(spec["batch"], in_chans, spec["side"], spec["side"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return _timed_calls(lambda: run(x), spec["steps"])


def _training_steps(spec: dict) -> tuple[list[float], int]:
    """``steps`` training steps (ms) as the trainer takes them, and the minor page faults after the first."""
    import torch
    import torch.nn.functional as F
    from timm.optim import create_optimizer_v2

    import crossformers
    from crossformers.layers.linear import onednn_for_training

    model = crossformers.create_model(spec["model"], num_classes=10).train()
    model.linear_kernel = "onednn" if onednn_for_training(model) else "native"
    in_chans = model.pretrained_cfg.get("input_size", (3,))[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], in_chans, spec["side"], spec["side"], generator=g)
    y = torch.randint(0, 10, (spec["batch"],), generator=g)
    opt = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return _timed_calls(step, spec["steps"])


def med(runs: list[dict], key: str) -> float:
    """The median of ``key`` over the processes' results."""
    return statistics.median(x[key] for x in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME:BATCH:SIDE")
    p.add_argument("--steps", type=int, default=5, help="training steps per process, the first untimed (default 5)")
    p.add_argument("--pairs", type=int, default=2, help="processes per setting and model (default 2)")
    p.add_argument("--inference", choices=("created", "optimize", "compile"),
                   help="time inference calls of the model as created / optimized / compiled instead of training")
    opened = parse_or_serve(p, "freed_memory_train", _child)
    if opened is None:
        return
    args, info, machine = opened

    rng = random.Random(0)
    unit = "call" if args.inference else "step"
    rows = []
    for text in args.models:
        name, batch, side = text.split(":")
        runs: dict[str, list[dict]] = {"default": [], "retain": []}
        for _ in range(args.pairs):
            order = ["default", "retain"]
            rng.shuffle(order)
            for mode in order:
                spec = {"model": name, "batch": int(batch), "side": int(side), "threads": args.threads,
                        "steps": args.steps, "retain": mode == "retain", "inference": args.inference}
                runs[mode].append(run_child(__file__, spec))
                print(f"{name} b{batch} {mode}: {runs[mode][-1]['median_ms']:.1f} ms/{unit}, "
                      f"{runs[mode][-1]['peak_rss_mib']:.0f} MiB", flush=True)
        ratio = statistics.median(r["median_ms"] / d["median_ms"] for r, d in zip(runs["retain"], runs["default"], strict=True))
        rows.append({"model": name, "batch": int(batch), "side": int(side), "runs": runs, "ratio_paired": ratio,
                     "active": all(r["active"] for r in runs["retain"])})

    what = f"Inference calls ({args.inference})" if args.inference else "Training steps"
    lines = [f"# {what}: glibc defaults against `retain_freed_memory()` ({info.get('cpu', '?')})", "",
             f"{machine}. Command: `python benchmarks/{Path(__file__).name} "
             f"{' '.join(sys.argv[1:])}`; each cell is the median over {args.pairs} fresh processes of the median of "
             f"{args.steps - 1} timed {unit}s; minor faults count the whole process, faults per timed {unit} only the timed {unit}s.", "",
             f"| model | batch | input | default ms/{unit} | retained ms/{unit} | retained / default (paired) "
             "| default peak MiB | retained peak MiB | minor faults default / retained | "
             f"faults per timed {unit} default / retained |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        d, r = row["runs"]["default"], row["runs"]["retain"]
        lines.append(f"| {row['model']} | {row['batch']} | {row['side']} | {med(d, 'median_ms'):.1f} | "
                     f"{med(r, 'median_ms'):.1f} | {row['ratio_paired']:.2f} | {med(d, 'peak_rss_mib'):.0f} | "
                     f"{med(r, 'peak_rss_mib'):.0f} | {med(d, 'minor_faults'):.0f} / {med(r, 'minor_faults'):.0f} | "
                     f"{med(d, 'faults_per_step'):.0f} / {med(r, 'faults_per_step'):.0f} |")
    write_report(args, "\n".join(lines) + "\n", info, rows)


if __name__ == "__main__":
    main()
