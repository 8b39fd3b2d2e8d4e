#!/usr/bin/env bash
# CrossFormer++'s amplitude cooling layer (ACL, CrossFormer++ Sec. 3) at CPU scale: the same narrow, deep
# CrossFormer++ trained on Fashion-MNIST with and without ACL (same recipe, seed and budget), then the block output
# amplitudes of both (`crossformers analyze amplitude`) on 64 test images. Prints the accuracies and the amplitude
# summary; the plot is runs/acl/amplitude/amplitude.png.
# Usage: bash scripts/acl_ablation.sh [epochs, default 3] [output root, default runs/acl]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_start runs/acl "$@"
cf="$root/.venv/bin/crossformers"
# 56x56 grey input (maps 14, 7, 4, 2); CrossFormer++ group sizes/intervals; 16 blocks, 4 of them followed by an ACL
arch='"embed_dim": 32, "depths": [2, 2, 10, 2], "num_heads": [2, 4, 8, 16], "group_size": [4, 4, 14, 7],
      "interval": [4, 2, 1, 1], "drop_path_rate": 0.05'
for acl in true false; do
  [ -e "$out/acl-$acl/last/meta.json" ] && continue
  "$cf" train --model crossformer_pp_small --model-kwargs "{$arch, \"acl\": $acl}" --img-size 56 \
    --data fashion-mnist --epochs "$epochs" --batch-size 128 --lr 2e-3 --warmup-epochs 0.5 --weight-decay 0.05 \
    --label-smoothing 0.1 --scale 0.9 1 --ratio 1 1 --hflip 0.5 --seed 0 --output "$out/acl-$acl" --no-progress
done
"$cf" analyze amplitude "$out/acl-true" "$out/acl-false" --labels "with ACL" "without ACL" \
  --data fashion-mnist --num-images 64 --output "$out/amplitude"
"$root/.venv/bin/python" - "$out" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
amp = json.loads((root / "amplitude" / "amplitude.json").read_text())
stage3 = {m["label"]: [b for b in m["blocks"] if b["name"].startswith("stages.2.")] for m in amp["models"]}
first_acl = next(i for i, b in enumerate(stage3["with ACL"]) if b["acl"])  # blocks from here on follow an ACL
print("| model | test top-1 (%) | train time (s) | stage 3 from the first ACL on: max abs(output) | stage 3: mean "
      "abs(output), first -> last block | last block: max / mean |")
print("|---|---|---|---|---|---|")
for run, label in (("acl-true", "with ACL"), ("acl-false", "without ACL")):
    rows = [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
    blocks = next(m for m in amp["models"] if m["label"] == label)["blocks"]
    s3 = stage3[label]  # the deep stage, where the ACLs sit
    print(f"| {label} | {rows[-1]['val_top1']:.2f} | {sum(r['epoch_time_s'] for r in rows):.0f} | "
          f"{max(b['max_abs'] for b in s3[first_acl:]):.1f} | {s3[0]['mean_abs']:.2f} -> {s3[-1]['mean_abs']:.2f} | "
          f"{blocks[-1]['max_abs']:.1f} / {blocks[-1]['mean_abs']:.2f} |")
PY
