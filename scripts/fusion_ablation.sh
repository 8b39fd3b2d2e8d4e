#!/usr/bin/env bash
# CrossViT's fusion ablation (paper Sec. 3.3, Fig. 3) at CPU scale: the same small two-branch CrossViT trained with
# each of the four fusion strategies on Fashion-MNIST, same recipe and budget; prints a markdown table.
# Usage: bash scripts/fusion_ablation.sh [epochs, default 3] [output root, default runs/fusion]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_start runs/fusion "$@"
# 28x28 grey images; small branch patch 4 (7x7 tokens), large branch patch 7 (4x4 tokens); 2 encoders of (1, 2, L=1)
arch='"img_size": 28, "img_scale": [1.0, 1.0], "patch_size": [4, 7], "embed_dim": [48, 96],
      "depth": [[1, 2, 0], [1, 2, 0]], "num_heads": [3, 3], "mlp_ratio": [3, 3, 1]'
for fusion in cross_attn all_attn class_token pairwise; do
  [ -e "$out/$fusion/last/meta.json" ] && continue
  "$root/.venv/bin/crossformers" train --model crossvit_tiny_240 --model-kwargs "{$arch, \"fusion\": \"$fusion\"}" \
    --data fashion-mnist --epochs "$epochs" --batch-size 128 --lr 2e-3 --warmup-epochs 0.5 --weight-decay 0.05 \
    --label-smoothing 0.1 --scale 0.75 1 --ratio 0.9 1.1 --output "$out/$fusion" --no-progress
done
"$root/.venv/bin/python" - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
import crossformers
from crossformers.profiling import count_macs
root = Path(sys.argv[1])
print("| fusion | params (M) | MMACs | test top-1 (%) | median epoch time (s) |")
print("|---|---|---|---|---|")
for fusion in ("cross_attn", "all_attn", "class_token", "pairwise"):
    meta = json.loads((root / fusion / "last" / "meta.json").read_text())
    rows = [json.loads(line) for line in (root / fusion / "metrics.jsonl").read_text().splitlines()]
    model = crossformers.create_model(meta["model"], **meta["model_kwargs"]).eval()
    macs = count_macs(model, (1, 1, 28, 28))[0]  # explicit attention path, MACs = FLOPs / 2
    params = sum(p.numel() for p in model.parameters()) / 1e6
    best = rows[-1]["val_top1"]  # last epoch (no selection on the test split)
    secs = statistics.median(r["epoch_time_s"] for r in rows)
    print(f"| {fusion} | {params:.3f} | {macs / 1e6:.1f} | {best:.2f} | {secs:.0f} |")
PY
