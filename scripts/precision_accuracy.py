"""Accuracy kept at reduced precision: our trained runs evaluated on the Fashion-MNIST test split (10k images) in fp32,
bf16 and int8 (``crossformers.inference.to_precision``), with top-1, top-1 agreement with fp32 and the logit drift.

    python scripts/precision_accuracy.py runs/fashion-mnist-nano runs/ablations/crossvit_fusion/fusion_cross_attn/seed0

Each run is evaluated with :func:`crossformers.engine.evaluate` (the ``crossformers eval RUN --precision P`` path);
the logits of every precision are recorded and compared with fp32's on the same images. The goal (issue 15): bf16
within 0.1 top-1 points of fp32, int8 within 0.5. Prints a markdown table and writes it with the numbers to
``--out`` (``.md`` and ``.json``; default ``runs/precision_accuracy``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from crossformers.engine import evaluate
from crossformers.inference import precision_support, to_precision
from crossformers.profiling.measure import cpu_flags, cpu_name

GOAL = {"bf16": 0.1, "int8": 0.5}  # largest top-1 change in points


class _Recording(nn.Module):
    """Runs ``inner`` and keeps every output (float32, on the CPU)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.outputs.append(out.detach().float().cpu())
        return out


def _cpu() -> str:
    return f"{cpu_name()} ({', '.join(cpu_flags()) or 'no AVX-512 / AMX flags'})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="our run / checkpoint directories trained on Fashion-MNIST")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    p.add_argument("--limit", type=int, help="a class-balanced subset of the test split (default: all 10k)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="runs/precision_accuracy", help="output stem (.md and .json)")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for run in args.runs:
        logits: dict[str, torch.Tensor] = {}
        result: dict[str, dict] = {}
        for precision in args.precisions:
            why = None if precision == "fp32" else precision_support(precision)
            if why is not None:
                print(f"{run}: {precision} skipped ({why})")
                continue
            holder: dict[str, _Recording] = {}

            def transform(model: nn.Module, precision: str = precision, holder: dict = holder) -> nn.Module:
                holder["rec"] = _Recording(model if precision == "fp32" else to_precision(model, precision))
                return holder["rec"]

            res = evaluate(run, "fashion-mnist", "val", batch_size=args.batch_size, limit=args.limit, device="cpu",
                           model_transform=transform, progress=False)
            logits[precision] = torch.cat(holder["rec"].outputs)
            result[precision] = dict(top1=res["top1"], seconds=res["seconds"], model=res["model"])
        ref = logits["fp32"]
        for precision, out in logits.items():
            drift = float((out - ref).abs().max() / ref.abs().max())
            agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean() * 100)
            change = result[precision]["top1"] - result["fp32"]["top1"]
            goal = GOAL.get(precision)
            rows.append(dict(run=run, model=result[precision]["model"], precision=precision,
                             top1=result[precision]["top1"], change=change, agreement=agree, rel_logit_drift=drift,
                             seconds=result[precision]["seconds"],
                             meets_goal=None if goal is None else abs(change) <= goal))
    lines = [f"CPU: {_cpu()}; torch {torch.__version__}; Fashion-MNIST test split "
             f"({args.limit or 10000} images); `python scripts/precision_accuracy.py {' '.join(args.runs)}`", "",
             "| run | model | precision | top-1 (%) | change (points) | top-1 agreement with fp32 (%) | "
             "max abs(logit - fp32) / max abs(fp32) | eval time (s) | goal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = "" if r["meets_goal"] is None else ("✓" if r["meets_goal"] else "✗") + f" (±{GOAL[r['precision']]})"
        lines.append(f"| {r['run']} | {r['model']} | {r['precision']} | {r['top1']:.2f} | {r['change']:+.2f} | "
                     f"{r['agreement']:.2f} | {r['rel_logit_drift']:.2e} | {r['seconds']:.0f} | {goal} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(dict(cpu=_cpu(), rows=rows), indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
