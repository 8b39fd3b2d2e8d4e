#!/usr/bin/env python
"""``optimize_for_inference`` with MKL linear layers against oneDNN with packed weights, per variant, side by side.

``crossformers profile --calibrate-linear`` decides the ``optimize_for_inference`` path per family on one small
model (CrossViT-9, CrossFormer-T, FcaFormer-L1). This script asks whether that choice carries over to a family's
other variants: each variant is optimized both ways (same weights, logits compared), batch-1 calls alternate in a
shuffled order per round, and the table gives the medians and the paired ratio oneDNN packed / MKL (< 1: oneDNN
faster), with the CPU model and threads.

    python benchmarks/bench_optimize_linear_paths.py crossvit_9_240 crossvit_18_240 fcaformer_l1 fcaformer_l4
    python benchmarks/bench_optimize_linear_paths.py crossformer_base --rounds 21 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import crossformers
from crossformers.engine.modeling import count_macs
from crossformers.inference import optimize_for_inference
from crossformers.profiling import machine_info
from crossformers.profiling.measure import machine_label, paired_ratio, time_alternating


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=11, help="alternating rounds per variant (default 11)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"CPU: {machine_label()}, torch {info.get('torch', '?')}, "
          f"{args.threads} threads; command: python benchmarks/bench_optimize_linear_paths.py {' '.join(sys.argv[1:])}")
    print("| model | GMACs | MKL ms | oneDNN packed ms | oneDNN packed / MKL (paired) | max abs logit diff |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        base = crossformers.create_model(name, onednn_linear=False).eval()
        x = torch.randn(1, *base.pretrained_cfg["input_size"])
        mkl = optimize_for_inference(base, onednn_linear=False, inplace=False)
        onednn = optimize_for_inference(base, onednn_linear=True, pack_weights=True, inplace=False)
        del base
        with torch.inference_mode():
            diff = (mkl(x) - onednn(x)).abs().max().item()
            times = time_alternating({"mkl": lambda m=mkl, x=x: m(x), "onednn_packed": lambda m=onednn, x=x: m(x)},
                                     args.rounds)
        macs = count_macs(mkl, tuple(x.shape[1:])) / 1e9
        row = {"model": name, "gmacs": macs, "mkl_ms": statistics.median(times["mkl"]),
               "onednn_packed_ms": statistics.median(times["onednn_packed"]),
               "ratio_paired": paired_ratio(times["onednn_packed"], times["mkl"]), "max_abs_diff": diff}
        rows.append(row)
        print(f"| {name} | {macs:.2f} | {row['mkl_ms']:.1f} | {row['onednn_packed_ms']:.1f} | "
              f"{row['ratio_paired']:.3f} | {diff:.1e} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "command": sys.argv, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
