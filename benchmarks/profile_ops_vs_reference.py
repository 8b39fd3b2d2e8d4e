#!/usr/bin/env python
"""Per-op ``torch.profiler`` table of batch-1 inference for one variant: the reference (see bench_vs_reference.py for
how it is found), ours as created and ours with ``optimize_for_inference``, same weights and input. With
``--train B``: a training step at batch B instead (forward, cross-entropy, backward, AdamW step), reference and ours
as created.

    python benchmarks/profile_ops_vs_reference.py crossvit_9_240 --official-root ~/src/CrossViT --threads 2
    python benchmarks/profile_ops_vs_reference.py crossformer_tiny --official-root ~/src/CrossFormer --train 8
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_reference as bench  # noqa: E402  (the sibling script: reference loading and weight copying)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant")
    p.add_argument("--official-root", action="append", default=[], metavar="DIR")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=10, help="profiled calls per side (default 10)")
    p.add_argument("--rows", type=int, default=14, help="ops per table (default 14)")
    p.add_argument("--train", type=int, default=0, metavar="B",
                   help="profile training steps at batch B instead of batch-1 inference")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pair = bench._pair(args.variant, bench.find_official(args.official_root))
    if pair is None:
        p.error(f"no reference for {args.variant}: pass --official-root")
    _, ref, ours, _, side = pair
    if args.train:
        x = torch.randn(args.train, 3, side, side)
        y = torch.randint(0, 10, (args.train,))
        for label, model in (("reference", ref), ("ours", ours)):
            step = bench._train_step_fn(model, x, y)
            for _ in range(2):
                step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.calls):
                    step()
            print(f"=== {args.variant} {label} training step ({args.calls} steps, batch {args.train}, input {side}, "
                  f"{args.threads} threads) ===")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                            max_name_column_width=40))
        return
    fast = bench.optimize_for_inference(copy.deepcopy(ours))
    x = torch.randn(1, 3, side, side)
    for label, model in (("reference", ref.eval()), ("ours", ours.eval()), ("ours_fast", fast)):
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.calls):
                    model(x)
        print(f"=== {args.variant} {label} ({args.calls} calls, input {side}, {args.threads} threads) ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                        max_name_column_width=40))


if __name__ == "__main__":
    main()
