#!/usr/bin/env python
"""The dynamo path of ``compile_for_inference`` with dynamo's default guards against tensor guards only.

With MKL weight packing (the compiled calibration of the Intel Xeon) or on CUDA, ``compile_for_inference`` compiles
with dynamo, which evaluates its guards before every call. ``compile_for_inference`` keeps only the guards on tensors
(``inference.compile.tensor_guards_only``). Per model, in a process of its own (freed memory retained), this compiles
it both ways (MKL packing, ``CompiledForInference`` around ``torch.compile(model, fullgraph=True)`` for the default)
and alternates batch-1 calls (``profiling.measure.time_alternating``, blocks of ``--block`` calls, shuffled order per
round). It also profiles ``--profiled`` calls of each for the time of dynamo's "TorchDynamo Cache Lookup" per call.

    python benchmarks/bench_dynamo_guards.py --models fcaformer_l1 crossformer_tiny crossvit_9_240 --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import copy
import statistics

from _processes import parse_or_serve, report_head, run_child, seeded_model, write_report


def _child(spec: dict) -> dict:
    """One process: one model compiled both ways, its alternating times and guard time per call."""
    import timm
    import torch
    from torch.profiler import ProfilerActivity, profile

    from crossformers.inference import compile_for_inference, retain_freed_memory
    from crossformers.inference.compile import CompiledForInference
    from crossformers.profiling.measure import paired_ratio, time_alternating

    torch.set_num_threads(spec["threads"])
    retain_freed_memory()
    model = seeded_model(spec["model"])
    side = int(timm.models.get_pretrained_cfg(spec["model"]).input_size[-1]) if spec["side"] is None else spec["side"]
    x = torch.randn(1, getattr(model, "in_chans", 3), side, side)
    default = copy.deepcopy(model)
    forms = {"default guards": CompiledForInference(default, torch.compile(default, fullgraph=True), onednn=False),
             "tensor guards": compile_for_inference(model, onednn=False, ahead_of_time=False)}
    lookup_ms = {}
    with torch.inference_mode():
        expected = model(x)
        diff = max((f(x) - expected).abs().max().item() for f in forms.values())  # compiles each
        for label, f in forms.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(spec["profiled"]):
                    f(x)
            lookup = [e for e in prof.key_averages() if e.key == "TorchDynamo Cache Lookup"]
            lookup_ms[label] = lookup[0].cpu_time_total / 1e3 / spec["profiled"] if lookup else 0.0
        times = time_alternating({k: (lambda f=f: f(x)) for k, f in forms.items()}, spec["rounds"],
                                 block=spec["block"])
    return {"model": spec["model"], "side": side, "max_abs_diff": diff, "lookup_ms": lookup_ms,
            "median_ms": {k: statistics.median(v) for k, v in times.items()},
            "ratio": paired_ratio(times["tensor guards"], times["default guards"], block=spec["block"]),
            "samples_ms": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fcaformer_l1", "crossformer_tiny", "crossvit_9_240"])
    p.add_argument("--side", type=int, default=None, help="input side (default: each model's pretrained_cfg)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block", type=int, default=5, help="calls per side per round (default 5)")
    p.add_argument("--profiled", type=int, default=20, help="profiled calls per side (default 20)")
    opened = parse_or_serve(p, "dynamo_guards", _child)
    if opened is None:
        return
    args, info, machine = opened
    results = [run_child(__file__, {"model": m, "side": args.side, "rounds": args.rounds, "block": args.block,
                                    "profiled": args.profiled, "threads": args.threads}) for m in args.models]
    lines = report_head(
        "The dynamo path: default guards vs tensor guards only",
        f"{machine}; freed memory retained; MKL weight packing",
        f"{args.rounds} alternating rounds of {args.block} batch-1 calls per side; ratio = tensor guards / default "
        "guards, paired (< 1: skipping the other guards is faster); guard time: the profiler's \"TorchDynamo Cache "
        f"Lookup\" over {args.profiled} calls")
    lines += ["| model | input | default ms | tensor guards ms | ratio (paired) | guard ms per call, default / "
              "tensor | max abs diff |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['side']} | {r['median_ms']['default guards']:.1f} | "
                     f"{r['median_ms']['tensor guards']:.1f} | {r['ratio']:.3f} | "
                     f"{r['lookup_ms']['default guards']:.2f} / {r['lookup_ms']['tensor guards']:.2f} | "
                     f"{r['max_abs_diff']:.1e} |")
    write_report(args, "\n".join(lines) + "\n", info, results)


if __name__ == "__main__":
    main()
