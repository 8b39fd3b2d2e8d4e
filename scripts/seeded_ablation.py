"""The papers' ablations at Fashion-MNIST scale, with several seeds: mean +- std of top-1, MACs and epoch time, and
whether each of the paper's orderings holds beyond the seed noise.

Two ablations (``--ablation``):

* ``fcaformer_table5`` — FcaFormer paper Table 5's path on the small hybrid FcaFormer (``fcaformer_nano``, 56x56
  input): the ConvViT baseline (global attention, no cross tokens: ``fca=False``), + naive forward cross attention
  (``fca=True``), + learnable scale factors (``lsf=True``), + token merge and enhancement (``tme=True``, the full
  model). The paper (ImageNet, ~6 M params): 79.4 -> 79.4 -> 79.9 -> 80.3.
* ``crossvit_fusion`` — CrossViT Sec. 3.3 / Fig. 3: one small two-branch CrossViT (28x28 input) with each fusion:
  cross-attention (the paper's), all-attention, class token, pairwise. The paper: cross-attention best, all-attention
  the most costly.

Every run is ``crossformers train`` with the same recipe and budget, differing only in the switch and ``--seed``; a
finished run (``RUN/last/meta.json``) is not trained again, so an interrupted ablation continues where it stopped.
Accuracy is on the official 10k test split after the last epoch (no selection on it). An ordering "holds" when the
difference of the means exceeds twice its standard error (``sqrt(s_a^2 / n + s_b^2 / n)``), is "reversed" when it
is below minus twice that, and is "within noise" otherwise.

    python scripts/seeded_ablation.py --ablation fcaformer_table5          # 3 seeds, see --help for the budget
    python scripts/seeded_ablation.py --ablation crossvit_fusion --seeds 0 1 2 --epochs 2

Prints a markdown table and writes ``OUT/summary.json`` and ``OUT/summary.md`` (``OUT`` defaults to
``runs/ablations/<ablation>``).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# switch name -> (label, model kwargs); in the order of the paper's path
ABLATIONS = {
    "fcaformer_table5": dict(
        model="fcaformer_nano", img_size=56, extra=["--drop-path-rate", "0.05", "--scale", "0.9", "1", "--ratio", "1",
                                                     "1", "--hflip", "0.5"],
        arch={},
        configs=[("ConvViT (fca=False)", dict(fca=False, lsf=False, tme=False)),
                 ("+ Fca (naive)", dict(fca=True, lsf=False, tme=False)),
                 ("+ LSF", dict(fca=True, lsf=True, tme=False)),
                 ("+ TME (FcaFormer)", dict(fca=True, lsf=True, tme=True))],
        # consecutive steps of the path, as the paper's table reads (a -> b should not lose accuracy)
        orderings=[(0, 1), (1, 2), (2, 3), (0, 3)],
        paper="FcaFormer Table 5 (ImageNet top-1): ConvViT 79.4, + Fca 79.4, + LSF 79.9, + TME 80.3"),
    "crossvit_fusion": dict(
        model="crossvit_tiny_240", img_size=None, extra=["--scale", "0.75", "1", "--ratio", "0.9", "1.1"],
        # 28x28 grey; small branch patch 4 (7x7 tokens), large branch patch 7 (4x4 tokens); 2 encoders (1, 2, L=1)
        arch=dict(img_size=28, img_scale=[1.0, 1.0], patch_size=[4, 7], embed_dim=[48, 96],
                  depth=[[1, 2, 0], [1, 2, 0]], num_heads=[3, 3], mlp_ratio=[3, 3, 1]),
        configs=[("cross-attention", dict(fusion="cross_attn")), ("all-attention", dict(fusion="all_attn")),
                 ("class token", dict(fusion="class_token")), ("pairwise", dict(fusion="pairwise"))],
        orderings=[(1, 0), (2, 0), (3, 0)],  # the paper: cross-attention above each of the others
        paper="CrossViT Sec. 3.3: cross-attention fusion best; all-attention the most costly"),
}


def _slug(kwargs: dict) -> str:
    return "-".join(f"{k}_{v}" for k, v in kwargs.items())


def _train(spec: dict, switch: dict, seed: int, run: Path, args: argparse.Namespace) -> None:
    if (run / "last" / "meta.json").is_file():
        return
    cmd = [str(ROOT / ".venv" / "bin" / "crossformers"), "train", "--model", spec["model"],
           "--model-kwargs", json.dumps({**spec["arch"], **switch}), "--data", "fashion-mnist",
           "--epochs", str(args.epochs), "--batch-size", "128", "--lr", "2e-3", "--warmup-epochs", "0.5",
           "--weight-decay", "0.05", "--label-smoothing", "0.1", "--seed", str(seed), "--output", str(run),
           "--no-progress", *spec["extra"]]
    if spec["img_size"]:
        cmd += ["--img-size", str(spec["img_size"])]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    if run.exists():
        cmd += ["--resume", str(run)]
    print(f"[ablation] {run}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _complexity(spec: dict, switch: dict) -> tuple[float, float]:
    """(params in M, MACs in M) at the training input size, on the explicit attention path."""
    import crossformers
    from crossformers.profiling import count_macs

    kwargs = {**spec["arch"], **switch, "in_chans": 1, "num_classes": 10}
    if spec["img_size"]:
        kwargs["img_size"] = spec["img_size"]
    model = crossformers.create_model(spec["model"], **kwargs).eval()
    side = spec["img_size"] or spec["arch"]["img_size"]
    return sum(p.numel() for p in model.parameters()) / 1e6, count_macs(model, (1, side, side))[0] / 1e6


def _verdict(a: list[float], b: list[float]) -> tuple[float, float, str]:
    """(mean(b) - mean(a), its standard error, 'holds' / 'reversed' / 'within noise')."""
    n = len(a)
    diff = statistics.mean(b) - statistics.mean(a)
    if n < 2:
        return diff, float("nan"), "one seed: no noise estimate"
    se = math.sqrt((statistics.variance(a) + statistics.variance(b)) / n)
    return diff, se, "holds" if diff > 2 * se else "reversed" if diff < -2 * se else "within noise"


def _fmt(xs: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ablation", required=True, choices=sorted(ABLATIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    p.add_argument("--limit-train", type=int, default=15000,
                   help="class-balanced training subset per run (default 15000 of 60000; 0 = all)")
    p.add_argument("--output", help="runs root (default runs/ablations/ABLATION)")
    args = p.parse_args()
    spec = ABLATIONS[args.ablation]
    out = Path(args.output or ROOT / "runs" / "ablations" / args.ablation)
    start = time.time()
    for _label, switch in spec["configs"]:
        for seed in args.seeds:
            _train(spec, switch, seed, out / _slug(switch) / f"seed{seed}", args)
    rows = []
    for label, switch in spec["configs"]:
        top1, secs = [], []
        for seed in args.seeds:
            run = out / _slug(switch) / f"seed{seed}"
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            top1.append(float(metrics[-1]["val_top1"]))
            secs.append(statistics.median(float(m["epoch_time_s"]) for m in metrics))
        params, macs = _complexity(spec, switch)
        rows.append(dict(label=label, switch=switch, top1=top1, epoch_time_s=secs, params_m=params, macs_m=macs))
    orderings = []
    for a, b in spec["orderings"]:
        diff, se, verdict = _verdict(rows[a]["top1"], rows[b]["top1"])
        orderings.append(dict(lower=rows[a]["label"], higher=rows[b]["label"], diff=diff, se=se, verdict=verdict))
    budget = (f"{args.epochs} epochs on {args.limit_train or 60000} training images (class-balanced), batch 128, "
              "AdamW lr 2e-3, 0.5 warm-up epochs, weight decay 0.05, label smoothing 0.1")
    lines = [f"Seeds {', '.join(map(str, args.seeds))}; {budget}; top-1 on the 10k test split after the last epoch. "
             f"Paper: {spec['paper']}.", "",
             "| configuration | params (M) | MMACs | test top-1 (%), mean ± std | per seed | epoch time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['params_m']:.3f} | {r['macs_m']:.1f} | {_fmt(r['top1'])} | "
                     f"{', '.join(f'{x:.2f}' for x in r['top1'])} | {_fmt(r['epoch_time_s'], 0)} |")
    lines += ["", "| paper's ordering | difference (points) | 2 x standard error | verdict |", "|---|---|---|---|"]
    for o in orderings:
        lines.append(f"| {o['lower']} < {o['higher']} | {o['diff']:+.2f} | {2 * o['se']:.2f} | {o['verdict']} |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(dict(ablation=args.ablation, seeds=args.seeds, epochs=args.epochs,
                                                      limit_train=args.limit_train, rows=rows, orderings=orderings,
                                                      wall_s=time.time() - start), indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
