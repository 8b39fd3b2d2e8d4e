#!/usr/bin/env python
"""The attention calls of real models, timed on every implementation PyTorch offers on this machine.

Batch-1 attention is what is left of a compiled call once the products run at the CPU's rate (docs/profiling.md),
so this asks, per machine, which way of computing each of a model's attention calls is fastest. A forward pass of
each model at batch 1 records the inputs of every :class:`~crossformers.layers.attention.ScaledDotProduct` call (the
one module every family's attention runs through; CrossViT's single-query cross-attention, which is folded into the
query side, is not among them). Calls with the same shapes, strides and bias shape are timed once and counted. Each
is then timed, calls alternating in a shuffled order per round, as:

* ``fused``: ``F.scaled_dot_product_attention`` as the models call it (:func:`dot_product_attention`, its rule
  that writes out calls over few keys turned off), eager;
* ``explicit``: ``softmax(q k^T * scale + bias) v`` step by step (:func:`explicit_attention`), eager;
* ``fused_compiled`` / ``explicit_compiled``: the same under ``torch.compile`` (inductor);
* ``flex_compiled``: ``torch.nn.attention.flex_attention`` compiled (inductor's attention template), the bias added
  by a ``score_mod`` that reads it.

Prints one line per call shape (median ms, GFLOP/s counting 4 * Nq * Nk * d per head, the paired ratio to
``fused`` and the largest difference from it) and each model's total over its calls; ``--json`` writes the
machine (CPU model and flags), the settings and every measurement. ``--whole-model`` also times each model as a
whole (as created, or ``--optimize``d), every attention call on the fused kernel, as the library runs it (calls over
at most ``EXPLICIT_MAX_KEYS`` keys written out) and every call written out, calls alternating: a kernel that wins
per call need not win in the model.

    python benchmarks/attention_kernels.py crossvit_9_240 crossformer_tiny fcaformer_l1 --threads 2 --json att.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import crossformers
from crossformers.inference import optimize_for_inference
from crossformers.layers import attention
from crossformers.layers.attention import ScaledDotProduct, dot_product_attention, explicit_attention
from crossformers.profiling.measure import compare_alternating, machine_info, paired_ratio, time_alternating

IMPLEMENTATIONS = ("fused", "explicit", "fused_compiled", "explicit_compiled", "flex_compiled")


def capture_attention_calls(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """The distinct attention calls of one forward pass of ``model`` on ``x`` (inference mode).

    Returns:
        One dict per distinct call (first seen first): ``q``, ``k``, ``v``, ``bias`` (the tensors of its first
        occurrence, as the model passed them, strides included; ``bias`` may be None), ``count`` (how many calls of
        the pass had the same shapes, strides and bias shape) and ``key`` (a readable description).

    Raises:
        ValueError: the model has no :class:`ScaledDotProduct` module (nothing to time).
    """
    modules = [m for m in model.modules() if isinstance(m, ScaledDotProduct)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no ScaledDotProduct module: no attention calls to time")
    calls: dict[tuple, dict[str, Any]] = {}

    def hook(module, args, kwargs):
        q, k, v = args[:3]
        bias = args[3] if len(args) > 3 else kwargs.get("bias")
        sig = (tuple(q.shape), q.stride(), tuple(k.shape), k.stride(), tuple(v.shape), v.stride(),
               None if bias is None else (tuple(bias.shape), bias.stride()))
        if sig in calls:
            calls[sig]["count"] += 1
        else:
            bias_desc = "none" if bias is None else "x".join(map(str, bias.shape))
            calls[sig] = dict(q=q, k=k, v=v, bias=bias, count=1,
                              key=f"q {'x'.join(map(str, q.shape))}, k/v {'x'.join(map(str, k.shape))}, "
                                  f"bias {bias_desc}")
        return None

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return list(calls.values())


def _flat4(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *t.shape[-3:])


def _flex_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor | None) -> Callable[[], torch.Tensor]:
    """flex_attention (compiled) on the 4-D flattened call, the bias read by a score_mod."""
    from torch.nn.attention.flex_attention import flex_attention

    lead = q.shape[:-3]
    q4, k4, v4 = _flat4(q), _flat4(k), _flat4(v)
    flex = torch.compile(flex_attention, dynamic=False)
    if bias is None:
        return lambda: flex(q4, k4, v4).reshape(*lead, *q.shape[-3:])
    full = torch.broadcast_to(bias, (*lead, *q.shape[-3:-1], k.shape[-2])).reshape(q4.shape[0], q.shape[-3],
                                                                                     q.shape[-2], k.shape[-2])
    full = full.contiguous()

    def score_mod(score, b, h, qi, ki):
        return score + full[b, h, qi, ki]

    return lambda: flex(q4, k4, v4, score_mod=score_mod).reshape(*lead, *q.shape[-3:])


def _on_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`dot_product_attention` on PyTorch's fused kernel whatever the size (its small-group rule off)."""
    keys = attention.EXPLICIT_MAX_KEYS
    attention.EXPLICIT_MAX_KEYS = 0
    try:
        return dot_product_attention(q, k, v, bias)
    finally:
        attention.EXPLICIT_MAX_KEYS = keys


def implementations(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                    names: tuple[str, ...] = IMPLEMENTATIONS) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument calls computing the attention of (q, k, v, bias) on each of ``names`` (see the module docs)."""
    fused = torch.compile(lambda q, k, v, b: dot_product_attention(q, k, v, b), dynamic=False)
    explicit = torch.compile(lambda q, k, v, b: explicit_attention(q, k, v, b)[0], dynamic=False)
    table: dict[str, Callable[[], Callable[[], torch.Tensor]]] = {
        "fused": lambda: lambda: _on_kernel(q, k, v, bias),
        "explicit": lambda: lambda: explicit_attention(q, k, v, bias)[0],
        "fused_compiled": lambda: lambda: fused(q, k, v, bias),
        "explicit_compiled": lambda: lambda: explicit(q, k, v, bias),
        "flex_compiled": lambda: _flex_call(q, k, v, bias),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown attention implementation(s) {unknown}: choose from {list(table)}")
    return {n: table[n]() for n in names}


def gflop(q: torch.Tensor, k: torch.Tensor) -> float:
    """GFLOP of one call: q k^T and p v, 2 * Nq * Nk * d multiply-adds per head and batch element."""
    return 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1] / 1e9


def time_call(call: dict[str, Any], names: tuple[str, ...], rounds: int) -> dict[str, Any]:
    """Time one captured call on each implementation; implementations that fail are reported, not timed.

    Returns:
        ``{"key", "count", "gflop", "results": {name: {"median_ms", "gflops", "paired_vs_fused",
        "max_abs_diff"} or {"error"}}}`` (``paired_vs_fused`` only when ``fused`` is among ``names``).
    """
    q, k, v, bias = call["q"], call["k"], call["v"], call["bias"]
    # a fresh compile per call shape: dynamo's recompile limit (8 per function) would otherwise send a model's ninth
    # shape to eager flex_attention (orders of magnitude slower) without failing
    torch._dynamo.reset()
    with torch.inference_mode():
        ref = _on_kernel(q, k, v, bias)  # differences are to the fused kernel
        runnable: dict[str, Callable[[], torch.Tensor]] = {}
        results: dict[str, dict[str, Any]] = {}
        for name, fn in implementations(q, k, v, bias, names).items():
            try:
                out = fn()  # compiles the compiled ones
                results[name] = {"max_abs_diff": float((out - ref).abs().max())}
                runnable[name] = fn
            except Exception as e:  # noqa: BLE001 - a kernel this PyTorch cannot run here is a result too
                results[name] = {"error": " ".join(str(e).split())[:200]}
        times = time_alternating(runnable, rounds, warmup=2)
    flop = gflop(q, k)
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name].update(median_ms=med, gflops=flop / (med / 1e3))
        if "fused" in times:
            results[name]["paired_vs_fused"] = paired_ratio(ts, times["fused"])
    return {"key": call["key"], "count": call["count"], "gflop": flop, "results": results}


def model_totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each implementation's attention time per forward pass (ms): the sum over calls of count x median, for the
    implementations that ran every call (none without calls)."""
    if not rows:
        return {}
    names = set.intersection(*({n for n, r in row["results"].items() if "median_ms" in r} for row in rows))
    return {n: sum(row["count"] * row["results"][n]["median_ms"] for row in rows) for n in sorted(names)}


def whole_model(model: nn.Module, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Batch-1 forward time (median ms) of ``model`` three ways, calls alternating over ``rounds`` rounds: ``kernel``
    (every call on PyTorch's fused kernel: ``EXPLICIT_MAX_KEYS = 0``), ``default`` (the library's rule: calls over
    at most ``EXPLICIT_MAX_KEYS`` keys written out) and ``explicit`` (every call written out, ``set_fused_attn``
    off, on a copy); each with its paired ratio to ``kernel``. Raises AssertionError if the logits differ by more
    than 1e-4."""
    import copy

    from crossformers.models._base import set_fused_attn

    rule = attention.EXPLICIT_MAX_KEYS
    explicit = copy.deepcopy(model)
    set_fused_attn(model, True)
    set_fused_attn(explicit, False)

    def run(m: nn.Module, keys: int) -> Callable[[], Any]:
        def call() -> Any:
            attention.EXPLICIT_MAX_KEYS = keys
            return m(x)
        return call

    calls = {"kernel": run(model, 0), "default": run(model, rule), "explicit": run(explicit, rule)}
    try:
        out = compare_alternating(calls, "kernel", rounds, "the attention forms")
    finally:
        attention.EXPLICIT_MAX_KEYS = rule
    out["explicit_max_keys"] = rule
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registered model names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30, help="alternating rounds per call shape")
    p.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the model's own)")
    p.add_argument("--json", type=Path, default=None, help="write every measurement and the machine here")
    p.add_argument("--whole-model", action="store_true",
                   help="also time each model whole: every call on the kernel, the default, every call written out")
    p.add_argument("--no-calls", action="store_true", help="skip the per-call timings (with --whole-model)")
    p.add_argument("--optimize", action="store_true", help="time the whole model after optimize_for_inference")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = tuple(args.implementations)
    if "fused" not in names:
        names = ("fused", *names)
    report: dict[str, Any] = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
                              "torch": torch.__version__, "models": {}}
    print(f"# {report['machine']['cpu']} ({', '.join(report['machine']['cpu_flags'])}), {args.threads} threads, "
          f"torch {torch.__version__}", flush=True)
    for name in args.models:
        model = crossformers.create_model(name).eval()
        chans, _, own_side = model.pretrained_cfg.get("input_size", (3, 224, 224))
        side = args.img_size or int(own_side)
        x = torch.randn(1, chans, side, side)
        rows = [] if args.no_calls else [time_call(c, names, args.rounds) for c in capture_attention_calls(model, x)]
        print(f"## {name} ({side} px)" + (f": {sum(r['count'] for r in rows)} attention calls, {len(rows)} distinct"
                                          if rows else ""), flush=True)
        for row in rows:
            parts = []
            for impl, r in row["results"].items():
                if "error" in r:
                    parts.append(f"{impl} failed ({r['error'][:60]})")
                else:
                    parts.append(f"{impl} {r['median_ms']:.3f} ms ({r['gflops']:.0f} GFLOP/s, "
                                 f"x{r['paired_vs_fused']:.2f}, diff {r['max_abs_diff']:.0e})")
            print(f"{row['key']} x{row['count']}: " + "; ".join(parts), flush=True)
        totals = model_totals(rows)
        if totals:
            print("per forward pass: " + ", ".join(f"{n} {t:.2f} ms" for n, t in totals.items()), flush=True)
        report["models"][name] = {"img_size": side, "calls": rows, "total_ms": totals}
        if args.whole_model:
            whole = whole_model(optimize_for_inference(model) if args.optimize else model, x, args.rounds)
            print(f"whole model{' optimized' if args.optimize else ' as created'}: every call on the kernel "
                  f"{whole['kernel_ms']:.2f} ms, the default (<= {whole['explicit_max_keys']} keys written out) "
                  f"{whole['default_ms']:.2f} ms ({whole['paired_default_vs_kernel']:.3f}x, paired), every call "
                  f"written out {whole['explicit_ms']:.2f} ms ({whole['paired_explicit_vs_kernel']:.3f}x)", flush=True)
            report["models"][name]["whole_model"] = whole
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
