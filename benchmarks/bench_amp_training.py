#!/usr/bin/env python
"""Training steps in fp32 against bf16 autocast (``crossformers train --amp``) on this machine, side by side.

Each model trains as ``crossformers train`` runs it: train mode, AdamW (timm's ``create_optimizer_v2``), cross-entropy,
the linear path the engine would take (:func:`crossformers.layers.linear.onednn_for_training`), denormals flushed;
``--amp`` wraps the forward pass in ``torch.autocast("cpu", torch.bfloat16)``. The two forms of a model (separate
copies with the same initial weights) alternate in a shuffled order per round; the table gives median ms per step,
images/s and the paired ratio amp / fp32 (< 1: bf16 faster). The CPU model, its bf16 flags (AMX, AVX512-BF16) and
the thread count head the table, since bf16 speed depends on them.

    python benchmarks/bench_amp_training.py --threads 2 --out docs/benchmarks --tag amp_training
    python benchmarks/bench_amp_training.py --models fcaformer_nano:128:28 crossformer_tiny:16:224
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

import crossformers
from crossformers.layers.linear import onednn_for_training
from crossformers.profiling import machine_info
from crossformers.profiling.measure import cpu_flags, paired_ratio, time_alternating

#: name:batch:side; the first is the demo's model and batch (scripts/demo.sh), the others one per family at 224
DEFAULT_MODELS = ("fcaformer_nano:128:56", "crossformer_tiny:16:224", "fcaformer_l1:16:224", "crossvit_9_240:16:240")


def _parse(spec: str) -> tuple[str, int, int]:
    name, batch, side = spec.split(":")
    return name, int(batch), int(side)


def bench(name: str, batch: int, side: int, rounds: int) -> dict:
    """Median step times (ms) of fp32 and amp for one model, and their paired ratio."""
    torch.manual_seed(0)
    base = crossformers.create_model(name, num_classes=10, img_size=side).train()
    base.linear_kernel = "onednn" if onednn_for_training(base) else "native"
    chans = base.pretrained_cfg["input_size"][0]
    x = torch.randn(batch, chans, side, side)
    y = torch.randint(0, 10, (batch,))

    def stepper(amp: bool):
        model = copy.deepcopy(base)
        opt = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return step

    times = time_alternating({"fp32": stepper(False), "amp": stepper(True)}, rounds, warmup=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = paired_ratio(times["amp"], times["fp32"])
    return {"model": name, "batch": batch, "side": side, "linear_kernel": base.linear_kernel,
            "fp32_ms": med["fp32"], "amp_ms": med["amp"], "paired_ratio": paired,
            "fp32_img_s": batch / med["fp32"] * 1e3, "amp_img_s": batch / med["amp"] * 1e3, "samples_ms": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME:BATCH:SIDE")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per model (default 5)")
    p.add_argument("--out", type=Path, default=None, help="directory for <tag>.md and <tag>.json")
    p.add_argument("--tag", default="amp_training")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the engine does on the CPU
    flags = [f for f in cpu_flags() if "bf16" in f or f.startswith("amx")]
    rows = []
    for spec in args.models:
        r = bench(*_parse(spec), args.rounds)
        print(f"{r['model']} batch {r['batch']} at {r['side']}: fp32 {r['fp32_ms']:.0f} ms, amp {r['amp_ms']:.0f} ms, "
              f"paired amp/fp32 {r['paired_ratio']:.2f}", flush=True)
        rows.append(r)
    info = machine_info()
    lines = [f"# Training steps: fp32 vs bf16 autocast (`--amp`) ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "",
             f"- command: `python benchmarks/bench_amp_training.py --threads {args.threads} --rounds {args.rounds} "
             f"--models {' '.join(args.models)}`",
             f"- machine: {info['cpu']} [{info['cpu_signature']}] ({info['logical_cpus']} logical CPUs), torch {info['torch']}, timm "
             f"{info['timm']}; bf16 flags: {', '.join(flags) or 'none (bf16 emulated)'}; {args.threads} thread(s)",
             "- step: forward (autocast for amp) + cross-entropy + backward + AdamW; random weights and inputs; "
             "the two forms alternate, median of the rounds; paired = median of per-round ratios amp / fp32",
             "", "| model | batch | input | linear | fp32 ms | amp ms | fp32 img/s | amp img/s | amp / fp32 (paired) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['side']} | {r['linear_kernel']} | {r['fp32_ms']:.0f} | "
                     f"{r['amp_ms']:.0f} | {r['fp32_img_s']:.1f} | {r['amp_img_s']:.1f} | {r['paired_ratio']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.tag}.md").write_text(text)
        (args.out / f"{args.tag}.json").write_text(json.dumps(
            {"machine": info, "bf16_flags": flags, "threads": args.threads, "rounds": args.rounds, "rows": rows},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
