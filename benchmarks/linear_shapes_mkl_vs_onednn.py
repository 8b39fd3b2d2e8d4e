"""MKL (``F.linear``) against unpacked oneDNN (``mkldnn::_linear_pointwise``) on every linear product a model computes
at batch 1, calls alternating in a shuffled order (40 rounds, median), with the per-model sum weighted by how often
each product occurs: which linear path wins *on this machine* for the models as they run.

    python benchmarks/linear_shapes_mkl_vs_onednn.py --threads 2
    python benchmarks/linear_shapes_mkl_vs_onednn.py --models crossvit_9_240:224 fcaformer_l2

Products below ``crossformers.layers.linear.MIN_MACS`` run through MKL in our models anyway (listed for completeness).
"""
from __future__ import annotations

import argparse
import collections
import statistics

import torch
import torch.nn.functional as F

import crossformers
from crossformers.profiling.measure import time_alternating


def linear_shapes(name: str, size: int | None) -> collections.Counter:
    """(M, K, N) -> count of the ``nn.Linear`` products of ``name`` on one image of ``size`` (default: its own)."""
    model = crossformers.create_model(name).eval()
    size = size or model.pretrained_cfg["input_size"][-1]
    shapes: collections.Counter = collections.Counter()

    def hook(module, inputs, output):
        x = inputs[0]
        shapes[(x.numel() // x.shape[-1], x.shape[-1], module.out_features)] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        model(torch.randn(1, model.pretrained_cfg["input_size"][0], size, size))
    for h in handles:
        h.remove()
    return shapes


def time_pair(m: int, k: int, n: int, rounds: int = 40) -> dict[str, float]:
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    calls = {"mkl": lambda: F.linear(x, w, b),
             "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")}
    with torch.inference_mode():
        times = time_alternating(calls, rounds)
    return {c: statistics.median(v) for c, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["crossvit_9_240:224", "crossformer_tiny", "fcaformer_l1"],
                   help="model names, NAME:SIZE for another input size")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.models:
        name, _, size = spec.partition(":")
        total = {"mkl": 0.0, "onednn": 0.0}
        shapes = linear_shapes(name, int(size) if size else None)
        for (m, k, n), count in sorted(shapes.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[0][2] * kv[1]):
            med = time_pair(m, k, n)
            for c in total:
                total[c] += med[c] * count
            print(f"{name:18} {m:5}x{k:4}x{n:5} x{count:3}  {m * k * n / 1e6:7.2f} MMACs  MKL {med['mkl']:.3f} ms  "
                  f"oneDNN {med['onednn']:.3f} ms  ({med['onednn'] / med['mkl']:.2f})")
        print(f"== {name}: all products MKL {total['mkl']:.1f} ms, oneDNN {total['onednn']:.1f} ms "
              f"({total['onednn'] / total['mkl']:.2f})")


if __name__ == "__main__":
    main()
