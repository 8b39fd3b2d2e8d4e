#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then train the small FcaFormer on Fashion-MNIST (60k train images),
# evaluate it on the official 10k test split and classify a few test images from the saved checkpoint.
# Usage: bash scripts/demo.sh [output dir, default runs/fashion-mnist-nano]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
cf="$root/.venv/bin/crossformers"
out="${1:-runs/fashion-mnist-nano}"
if [ -e "$out" ]; then
  echo "[demo] $out exists: remove it or pass another directory" >&2
  exit 2
fi

start=$(date +%s)
"$cf" train --model fcaformer_nano --data fashion-mnist --epochs 5 --batch-size 128 --lr 2e-3 \
  --warmup-epochs 0.5 --weight-decay 0.05 --label-smoothing 0.1 --drop-path-rate 0.05 \
  --scale 0.9 1 --ratio 1 1 --hflip 0.5 --output "$out"
echo "[demo] training took $(( $(date +%s) - start )) s"

"$cf" eval "$out" --data fashion-mnist --split val
mkdir -p "$out/samples"
"$root/.venv/bin/python" - "$out/samples" <<'PY'
import sys
from crossformers.data import build_dataset
test = build_dataset("fashion-mnist", "val")
for i in (0, 1, 2, 3):
    img, label = test[i]
    img.save(f"{sys.argv[1]}/test{i}_{test.classes[label].replace('/', '-').replace(' ', '_')}.png")
PY
"$cf" predict "$out" "$out"/samples/*.png --topk 3
