#!/usr/bin/env python
"""CrossFormer's convolution layouts on this machine, whole model, paired: the library's default against each of
its two layout choices turned off (``crossformers.layers.embed``):

* ``stem_as_given``: ``STEM_CHANNELS_LAST = False``, the CEL stem convolves images in the layout they come in
  (contiguous) instead of channels-last;
* ``merges_channels_last_copy``: ``PACK_MERGE_WEIGHTS = False``, the patch merges keep a channels-last weight copy
  instead of the weight packed in oneDNN's layout.

Both choices were measured on an AVX2-only AMD EPYC Zen 3 (``docs/profiling.md``); this checks them on another CPU.
Each model runs as created (or ``--optimize``d) in inference mode at ``--batch``, the three settings alternating in
a shuffled order per round; prints the median ms and each setting's paired ratio to the default (> 1: the default
is faster), and ``--json`` writes them with the machine.

    python benchmarks/conv_layouts.py crossformer_tiny crossformer_pp_small --threads 2 --rounds 25
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import crossformers
from crossformers.inference import optimize_for_inference
from crossformers.layers import embed
from crossformers.profiling.measure import compare_alternating, machine_info, machine_label

SETTINGS = {"default": {}, "stem_as_given": {"STEM_CHANNELS_LAST": False},
            "merges_channels_last_copy": {"PACK_MERGE_WEIGHTS": False}}


def layouts(model: nn.Module, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median ms of ``model(x)`` under each of :data:`SETTINGS`, their paired ratios to ``default`` and the largest
    logit difference from it. The module switches are restored afterwards. Raises AssertionError if the logits
    differ by more than 1e-4."""
    saved = {k: getattr(embed, k) for k in ("STEM_CHANNELS_LAST", "PACK_MERGE_WEIGHTS")}

    def run(setting: dict[str, bool]) -> Callable[[], Any]:
        def call() -> Any:
            for k, v in saved.items():
                setattr(embed, k, setting.get(k, v))
            return model(x)
        return call

    try:
        return compare_alternating({name: run(s) for name, s in SETTINGS.items()}, "default", rounds, "the layouts")
    finally:
        for k, v in saved.items():
            setattr(embed, k, v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registered CrossFormer / CrossFormer++ names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--optimize", action="store_true", help="time the models after optimize_for_inference")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"# {machine_label()}, {args.threads} threads, batch {args.batch}, "
          f"{'optimized' if args.optimize else 'as created'}")
    rows = {}
    for name in args.models:
        torch.manual_seed(0)
        model = crossformers.create_model(name).eval()
        if args.optimize:
            model = optimize_for_inference(model)
        x = torch.randn(args.batch, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
        r = rows[name] = layouts(model, x, args.rounds)
        print(f"{name}: default {r['default_ms']:.1f} ms; stem as given {r['stem_as_given_ms']:.1f} ms "
              f"(x{r['paired_stem_as_given_vs_default']:.3f}); merges with a channels-last copy "
              f"{r['merges_channels_last_copy_ms']:.1f} ms (x{r['paired_merges_channels_last_copy_vs_default']:.3f})",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "settings": vars(args) | {"json": str(args.json)},
                                         "models": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
