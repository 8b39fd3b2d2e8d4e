#!/usr/bin/env python
"""Ahead-of-time packages specialised to a batch size against one package with a free batch dimension.

``compile_for_inference`` compiles CPU inputs ahead of time (AOTInductor). It specialises a package to each of the
first ``SPECIALISED_BATCHES`` batch sizes of an image size and serves later batch sizes from one package exported
with a free batch (see ``crossformers.inference.compile``). This measures what the free batch costs: per model, in a
process of its own, the specialised packages for ``--batches`` and one free-batch package are compiled through
``CompiledForInference._compile_ahead_of_time`` (the attention biases as constants in both). Then, per batch size,
the two alternate (``profiling.measure.time_alternating``, shuffled order per round) for ``--rounds`` rounds. The
table gives the compile times, the medians and the paired ratio free / specialised (> 1: the free batch is slower),
with the CPU model and threads.

    python benchmarks/bench_free_batch.py --models fcaformer_l1 crossformer_tiny --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import statistics
import time

from _processes import parse_or_serve, report_head, run_child, seeded_model, write_report


def _child(spec: dict) -> dict:
    """One process: one model's packages and their alternating times per batch size."""
    import torch

    from crossformers.inference import compile_for_inference, retain_freed_memory
    from crossformers.profiling.measure import paired_ratio, time_alternating

    torch.set_num_threads(spec["threads"])
    retain_freed_memory()  # as crossformers eval / predict / profile run
    model = seeded_model(spec["model"])
    compiled = compile_for_inference(model, onednn=True, ahead_of_time=True)
    side, chans = spec["side"], getattr(model, "in_chans", 3)
    compile_s: dict[str, float] = {}

    def build(batch: int, any_batch: bool):
        t0 = time.perf_counter()
        run = compiled._compile_ahead_of_time(torch.randn(batch, chans, side, side), any_batch=any_batch)
        compile_s["free" if any_batch else f"batch {batch}"] = time.perf_counter() - t0
        if run is None:
            raise SystemExit(f"{spec['model']}: torch.export failed")
        return run

    free = build(2, True)
    rows = []
    for batch in spec["batches"]:
        specialised = build(batch, False)
        x = torch.randn(batch, chans, side, side)
        with torch.no_grad():
            diff = (free(x) - specialised(x)).abs().max().item()
            times = time_alternating({"specialised": lambda s=specialised, x=x: s(x),
                                      "free": lambda x=x: free(x)},
                                     spec["rounds"], block=spec["block"])
        rows.append({"batch": batch, "max_abs_diff": diff,
                     "specialised_ms": statistics.median(times["specialised"]),
                     "free_ms": statistics.median(times["free"]),
                     "ratio": paired_ratio(times["free"], times["specialised"], block=spec["block"]),
                     "samples_ms": times})
    return {"model": spec["model"], "side": side, "compile_s": compile_s, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fcaformer_l1", "crossformer_tiny"])
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--block", type=int, default=5, help="calls per side per round (default 5)")
    opened = parse_or_serve(p, "free_batch", _child)
    if opened is None:
        return
    args, info, machine = opened
    results = [run_child(__file__, {"model": m, "side": args.side, "batches": args.batches, "rounds": args.rounds,
                                    "block": args.block, "threads": args.threads}) for m in args.models]
    lines = report_head(
        "Ahead-of-time packages: specialised batch vs free batch", f"{machine}; freed memory retained",
        f"{args.rounds} alternating rounds of {args.block} calls per side; ratio = free / specialised, paired "
        "(> 1: the free batch is slower)")
    lines += ["| model | batch | compile s (specialised / free) | specialised ms | free ms | ratio (paired) | "
              "max abs diff |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            own = r["compile_s"][f"batch {row['batch']}"]
            lines.append(f"| {r['model']} | {row['batch']} | {own:.0f} / "
                         f"{r['compile_s']['free']:.0f} | {row['specialised_ms']:.1f} | {row['free_ms']:.1f} | "
                         f"{row['ratio']:.3f} | {row['max_abs_diff']:.1e} |")
    write_report(args, "\n".join(lines) + "\n", info, results)


if __name__ == "__main__":
    main()
