#!/usr/bin/env bash
# CrossViT's fusion ablation (paper Sec. 3.3, Fig. 3) at CPU scale, one seed on the whole training set: the same
# small two-branch CrossViT trained with each of the four fusion strategies on Fashion-MNIST, same recipe and budget;
# prints a markdown table. The seeded version (3 seeds, a smaller budget, mean +- std and the ordering verdicts) is
# `python scripts/seeded_ablation.py --ablation crossvit_fusion`; this script is that ablation with seed 0.
# Usage: bash scripts/fusion_ablation.sh [epochs, default 3] [output root, default runs/fusion]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_start runs/fusion "$@"
"$root/.venv/bin/python" "$root/scripts/seeded_ablation.py" --ablation crossvit_fusion --seeds 0 \
  --epochs "$epochs" --limit-train 0 --output "$out"
