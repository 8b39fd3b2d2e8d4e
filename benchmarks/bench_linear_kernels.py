#!/usr/bin/env python
"""MKL (``F.linear``) against oneDNN (``mkldnn::_linear_pointwise``, plain and with a packed weight) on the linear
products of the models, calls alternating in a shuffled order; prints one line per product shape (M x K x N).

    python benchmarks/bench_linear_kernels.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from crossformers.profiling.measure import paired_ratio, time_alternating

SHAPES = [(197, 384, 1152), (197, 384, 1536), (197, 1536, 384), (3136, 64, 256), (784, 128, 512), (401, 192, 576),
          (32 * 197, 384, 1152)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30, help="alternating rounds (a sixth of them for M > 5000)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for m, k, n in SHAPES:
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, max(m, 256))
        calls = {"mkl": lambda x=x, w=w, b=b: F.linear(x, w, b),
                 "onednn": lambda x=x, w=w, b=b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
                 "onednn_packed": lambda x=x, w=packed, b=b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [],
                                                                                                 "")}
        with torch.inference_mode():
            times = time_alternating(calls, args.rounds if m < 5000 else max(3, args.rounds // 6), warmup=1)
        parts = []
        for c, ts in times.items():
            med = statistics.median(ts) / 1e3  # s
            paired = paired_ratio(ts, times["mkl"])
            parts.append(f"{c} {med * 1e3:.2f} ms ({2 * m * k * n / med / 1e9:.0f} GFLOP/s, paired/mkl {paired:.2f})")
        print(f"{m}x{k}x{n}: " + "  ".join(parts), flush=True)


if __name__ == "__main__":
    main()
