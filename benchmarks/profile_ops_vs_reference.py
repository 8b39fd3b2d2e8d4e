#!/usr/bin/env python
"""Per-op ``torch.profiler`` table of batch-1 inference for one variant: the reference (see bench_vs_reference.py for
how it is found), ours as created and ours with ``optimize_for_inference``, same weights and input. With
``--compile``: ours compiled with ``compile_for_inference`` as well. With ``--train B``: a training step at batch B
instead (forward, cross-entropy, backward, AdamW step), reference, ours as created and ours with
``optimize_for_training`` (as ``crossformers train`` runs it). ``--retain-freed-memory``: both sides with freed memory
kept in the process (``retain_freed_memory()``, as the commands run).

After the per-op tables, a summary gives each side's time per call (ms, profiler self times) by op class: matrix
products (``addmm``/``mm``, oneDNN and MKL linear kernels), attention (fused SDPA, or ``bmm`` and softmax where it
is written out), convolutions, every
other op (norms, element-wise, copies) and what runs outside any op (inductor's fused kernels and the Python between
ops). ``products / reference`` is the share of the reference's time that our products alone take: run at the same
rate as the reference's (both sides use the same kernels), ours / reference cannot go below it in fp32.

    python benchmarks/profile_ops_vs_reference.py crossvit_9_240 --official-root ~/src/CrossViT --threads 2
    python benchmarks/profile_ops_vs_reference.py crossformer_tiny --official-root ~/src/CrossFormer --compile
    python benchmarks/profile_ops_vs_reference.py crossformer_tiny --official-root ~/src/CrossFormer --train 8
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_reference as bench  # noqa: E402  (the sibling script: reference loading and weight copying)

# op class of each profiled op name (by prefix, first match wins); everything else is "other ops"
OP_CLASSES = (
    ("products", ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise", "mkl::_mkl_linear", "aten::mkldnn_linear",
                  "aten::_addmm_activation")),
    # batched products only appear in written-out attention in these models (q k^T and attn v)
    ("attention", ("aten::_scaled_dot_product", "aten::_softmax", "aten::bmm", "aten::baddbmm")),
    ("convolutions", ("aten::mkldnn_convolution", "mkldnn::_convolution", "aten::convolution_backward",
                      "aten::_convolution_pointwise", "aten::thnn_conv", "aten::_slow_conv", "aten::slow_conv")),
)
# profiler rows that only wrap other ops (their self time is the time between and around the ops they contain)
OUTSIDE = ("## Call CompiledFxGraph", "Torch-Compiled Region", "TorchDynamo Cache Lookup", "Pregraph bytecode",
           "AOTDispatcher", "autograd::engine::evaluate_function", "Optimizer.")


def op_class(name: str) -> str:
    """The summary class of a profiled op name: products, attention, convolutions, outside ops, or other ops."""
    for label, prefixes in OP_CLASSES:
        if name.startswith(prefixes):
            return label
    if name.startswith(OUTSIDE):
        return "outside ops"
    return "other ops"


def by_class(prof, calls: int, wall_ms: float) -> dict[str, float]:
    """ms per call in each op class; ``outside ops`` also takes the wall time no profiled op accounts for."""
    out = {label: 0.0 for label, _ in OP_CLASSES} | {"other ops": 0.0, "outside ops": 0.0}
    for event in prof.key_averages():
        out[op_class(event.key)] += event.self_cpu_time_total / 1e3 / calls
    out["outside ops"] += max(0.0, wall_ms - sum(out.values()))
    out["total"] = wall_ms
    return out


def print_summary(rows: dict[str, dict[str, float]]) -> None:
    """One line per side: ms per call by op class, and its products as a share of the reference's total."""
    classes = [label for label, _ in OP_CLASSES] + ["other ops", "outside ops", "total"]
    ref_total = rows["reference"]["total"]
    print("=== ms per call by op class (profiler self times; wall time under the profiler) ===")
    print(f"{'side':<16}" + "".join(f"{c:>14}" for c in classes) + f"{'products / reference':>22}")
    for side, row in rows.items():
        print(f"{side:<16}" + "".join(f"{row[c]:>14.2f}" for c in classes)
              + f"{row['products'] / ref_total:>22.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant")
    p.add_argument("--official-root", action="append", default=[], metavar="DIR")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=10, help="profiled calls per side (default 10)")
    p.add_argument("--rows", type=int, default=14, help="ops per table (default 14)")
    p.add_argument("--train", type=int, default=0, metavar="B",
                   help="profile training steps at batch B instead of batch-1 inference")
    p.add_argument("--compile", action="store_true", help="also profile ours with compile_for_inference")
    p.add_argument("--retain-freed-memory", action="store_true", help=(
        "call crossformers.inference.retain_freed_memory() first (both sides), as crossformers train, eval, predict "
        "and profile do"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.retain_freed_memory:
        print(f"freed memory retained: {bench.retain_freed_memory()}")
    pair = bench._pair(args.variant, bench.find_official(args.official_root))
    if pair is None:
        p.error(f"no reference for {args.variant}: pass --official-root")
    _, ref, ours, _, side = pair
    summary: dict[str, dict[str, float]] = {}

    def run(label: str, call, what: str) -> None:
        for _ in range(3):
            call()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(args.calls):
                call()
            wall_ms = (time.perf_counter() - t0) * 1e3 / args.calls
        print(f"=== {args.variant} {label} {what} ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                        max_name_column_width=40))
        summary[label] = by_class(prof, args.calls, wall_ms)

    if args.train:
        x = torch.randn(args.train, 3, side, side)
        y = torch.randint(0, 10, (args.train,))
        fast = bench.optimize_for_training(copy.deepcopy(ours))
        for label, model in (("reference", ref), ("ours", ours), ("ours_fast", fast)):
            run(label, bench._train_step_fn(model, x, y),
                f"training step ({args.calls} steps, batch {args.train}, input {side}, {args.threads} threads)")
    else:
        sides = {"reference": ref.eval(), "ours": ours.eval(),
                 "ours_fast": bench.optimize_for_inference(copy.deepcopy(ours))}
        if args.compile:
            sides["ours_compiled"] = bench.compile_for_inference(copy.deepcopy(ours))
        x = torch.randn(1, 3, side, side)
        for label, model in sides.items():
            with torch.inference_mode():
                run(label, lambda m=model: m(x), f"({args.calls} calls, input {side}, {args.threads} threads)")
    print_summary(summary)

if __name__ == "__main__":
    main()
