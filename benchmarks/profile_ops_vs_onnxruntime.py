#!/usr/bin/env python
"""Where onnxruntime's time goes against ours, op by op: batch-1 inference of one model, our fp32 ONNX export in
onnxruntime (CPU, its node profiler) beside the same weights in PyTorch (``torch.profiler``), as created or with
``optimize_for_inference``, same input, same threads.

Prints each side's time per call by op class (products, attention, convolutions, other ops), then the costliest
products and convolutions of each side with their input shapes, so a shape that one runtime computes much faster
stands out (goal 5 of issue 15: ours at least as fast as onnxruntime). Profiled times are self times summed over
``--calls`` calls; both profilers add a little overhead of their own, so compare classes and shapes, not totals with
the unprofiled latencies of bench_onnxruntime_processes.py.

    python benchmarks/profile_ops_vs_onnxruntime.py crossformer_tiny --threads 2
    python benchmarks/profile_ops_vs_onnxruntime.py fcaformer_l1 --as-created --top 12
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.profiler import profile

import crossformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_ops_vs_reference import op_class  # noqa: E402  (the sibling script's op classes for PyTorch ops)

# onnxruntime node types by class; MatMul / FusedMatMul on 4-d inputs are attention (q k^T, attn v), on fewer
# dimensions linear layers; NCHWc reorders belong to the convolutions that need them
ORT_CONV = ("Conv", "FusedConv", "NchwcConv", "ReorderInput", "ReorderOutput")
ORT_ATTENTION = ("Softmax",)


def ort_class(op: str, shapes: list[list[int]]) -> str:
    """The summary class of an onnxruntime node from its type and input shapes."""
    if op in ORT_CONV:
        return "convolutions"
    if op in ORT_ATTENTION:
        return "attention"
    if op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm"):
        first = shapes[0] if shapes else []
        return "attention" if len(first) >= 4 and op != "Gemm" else "products"
    return "other ops"


def profile_onnxruntime(path: Path, x: np.ndarray, threads: int, calls: int, tmp: Path) -> list[tuple]:
    """(ms per call, class, op, input shapes, count per call) of every distinct onnxruntime node type and shape, the
    session opened as the timed benchmarks open theirs (:func:`~crossformers.utils.onnx_session.open_session`)."""
    from crossformers.utils.onnx_session import open_session

    sess = open_session(path, RuntimeError, "profiling onnxruntime", threads=threads, profile_prefix=str(tmp / "ort"))
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(calls):  # the first calls are warm-up and are left out below by counting from the end
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_call = len(nodes) // calls
    agg: dict = collections.defaultdict(lambda: [0.0, 0])
    for e in nodes[-per_call * (calls // 2):]:  # the second half of the calls
        shapes = e["args"].get("input_type_shape", [])
        key = (e["args"]["op_name"], json.dumps([next(iter(s.values())) for s in shapes]))
        agg[key][0] += e["dur"] / 1e3
        agg[key][1] += 1
    n = calls // 2
    return [(t / n, ort_class(op, json.loads(sh)), op, sh, c // n)
            for (op, sh), (t, c) in agg.items()]


def profile_torch(model: torch.nn.Module, x: torch.Tensor, calls: int) -> list[tuple]:
    """(ms per call, class, op, input shapes, count per call) of every distinct PyTorch op and shape (self time)."""
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(record_shapes=True) as prof:
            for _ in range(calls):
                model(x)
    rows = []
    for k in prof.key_averages(group_by_input_shape=True):
        if k.self_cpu_time_total > 0:
            shapes = json.dumps([s for s in k.input_shapes if s])
            rows.append((k.self_cpu_time_total / calls / 1e3, op_class(k.key), k.key, shapes, k.count // calls))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=20, help="profiled calls per side (default 20)")
    p.add_argument("--top", type=int, default=8, help="products and convolutions listed per side (default 8)")
    p.add_argument("--as-created", action="store_true", help="ours as created instead of optimize_for_inference")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from crossformers.export import export_model
    from crossformers.inference import optimize_for_inference
    from crossformers.profiling.measure import machine_label

    torch.manual_seed(0)
    model = crossformers.create_model(args.model).eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_model(model, output=onnx, verify=False)
        ort_rows = profile_onnxruntime(onnx, x.numpy(), args.threads, args.calls, Path(tmp))
    ours = model if args.as_created else optimize_for_inference(model)
    torch_rows = profile_torch(ours, x, args.calls)
    sides = {"onnxruntime": ort_rows, "ours " + ("as created" if args.as_created else "optimized"): torch_rows}
    print(f"# {args.model}, batch 1, {args.threads} threads, {machine_label()}")
    classes = ("products", "attention", "convolutions", "other ops")
    print("| side | " + " | ".join(classes) + " | total (ms per call) |")
    print("|---|" + "---|" * (len(classes) + 1))
    for side, rows in sides.items():
        by = collections.Counter()
        for t, cls, *_ in rows:
            by[cls if cls in classes else "other ops"] += t
        print(f"| {side} | " + " | ".join(f"{by[c]:.2f}" for c in classes) + f" | {sum(by.values()):.2f} |")
    for cls in ("products", "convolutions"):
        for side, rows in sides.items():
            print(f"\n{cls}, {side} (ms per call, calls, op, input shapes):")
            for t, _, op, shapes, n in sorted((r for r in rows if r[1] == cls), reverse=True)[:args.top]:
                print(f"  {t:7.3f} x{n:<3d} {op} {shapes}")


if __name__ == "__main__":
    main()
