#!/usr/bin/env bash
# The measurements of issue 15 on one machine, in the order they depend on each other, each written as
# <OUT>/<LABEL>_<what>.md and .json (the tables name the CPU model, its flags and the threads themselves):
#   1. lscpu, and `crossformers profile --calibrate-linear --compile` (the linear paths every later run follows);
#   2. batch-1 latency against the authors' code, as created / optimize_for_inference / compile_for_inference;
#   3. training steps against the authors' code (batch 32, freed memory retained on both sides, as `train` runs);
#   4. bf16 / int8 against the authors' fp32 code, batch 1 and throughput at batch 32;
#   5. ours against onnxruntime, each runtime in fresh processes of its own;
#   6. bf16 autocast training steps against fp32 (`crossformers train --amp`);
#   7. the goals in one table, from the reports of steps 2-6 present in OUT (goal_summary.py -> <LABEL>_goals.md);
#   8. every attention call of three models on each attention kernel PyTorch offers (attention_kernels.py).
# Every step runs with 2 threads. Expect about two hours on a 2-core machine.
#
# usage: bash benchmarks/machine_suite.sh LABEL CROSSFORMER_DIR FCAFORMER_DIR CROSSVIT_DIR [OUT]
#   LABEL: names the machine in the file names, e.g. intel_xeon_amx
#   *_DIR: checkouts of cheerss/CrossFormer, hkzhang-git/FcaFormer, IBM/CrossViT
#   OUT:   output directory (default docs/benchmarks)
# Needs `pip install -e '.[bench,int8]'` (the authors' FcaFormer file needs einops; int8 needs torchao).
# STEPS="1 2" (for example) runs only those steps.
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
label=$1 crossformer=$2 fcaformer=$3 crossvit=$4 out=${5:-docs/benchmarks}
steps=${STEPS:-1 2 3 4 5 6 7 8}
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
roots=(--official-root "$crossformer" --official-root "$fcaformer" --official-root "$crossvit")
small=(crossvit_9_240 crossformer_tiny crossformer_small fcaformer_l1)
mkdir -p "$out"

want() { [[ " $steps " == *" $1 "* ]]; }

if want 1; then
    lscpu > "$out/${label}_lscpu.txt"
    "$py" -m crossformers profile --calibrate-linear --compile --threads 2 | tee "$out/${label}_calibration.txt"
fi
if want 2; then
    "$py" "$here/bench_vs_reference.py" "${roots[@]}" --variants "${small[@]}" --compile-variants "${small[@]}" \
        --no-train --rounds 9 --threads 2 --retain-freed-memory --out "$out" --tag "${label}_latency"
fi
if want 3; then
    "$py" "$here/bench_vs_reference.py" "${roots[@]}" --no-latency --no-train-memory --train-rounds 5 --threads 2 \
        --retain-freed-memory --out "$out" --tag "${label}_train"
fi
if want 4; then
    "$py" "$here/bench_vs_reference.py" "${roots[@]}" --variants crossvit_9_240 crossformer_tiny fcaformer_l1 \
        --precisions bf16 bf16_compiled int8 --throughput-batch 32 --no-train --rounds 9 --threads 2 \
        --retain-freed-memory --out "$out" --tag "${label}_precision"
fi
if want 5; then
    "$py" "$here/bench_onnxruntime_processes.py" --models crossvit_9_240 crossformer_tiny fcaformer_l1 \
        --ours compile optimize --pairs 8 --calls 30 --threads 2 --out "$out" --tag "${label}_onnxruntime"
fi
if want 6; then
    "$py" "$here/bench_amp_training.py" --threads 2 --out "$out" --tag "${label}_amp_training"
fi
if want 7; then
    reports=()
    for what in latency train precision onnxruntime amp_training; do
        [ -f "$out/${label}_${what}.json" ] && reports+=("$out/${label}_${what}.json")
    done
    if [ ${#reports[@]} -gt 0 ]; then
        "$py" "$here/goal_summary.py" "${reports[@]}" --out "$out/${label}_goals.md"
    fi
fi
if want 8; then
    "$py" "$here/attention_kernels.py" crossvit_9_240 crossformer_tiny fcaformer_l1 --rounds 21 --threads 2 \
        --json "$out/${label}_attention_kernels.json" | tee "$out/${label}_attention_kernels.md"
fi
