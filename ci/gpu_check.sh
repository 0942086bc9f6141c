#!/usr/bin/env bash
# One GPU session's checks for the speed issue, in one call (about 10 minutes on an H100/H200):
#   1. the test suite's CUDA paths (fast tests only),
#   2. the benchmark (project trainer vs the released code's loop, batch 128),
#   3. accuracy parity of the fast path vs plain fp32 eager over 3 seeds on the CIFAR-10 copy,
#   4. the short ResNet chain through the workflow (config/cifar10_local.yaml, 30 epochs).
# Usage: bash ci/gpu_check.sh [OUT_DIR]   (needs .venv; ../shared/data/cifar10-images.tar)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-results/gpu_check}}
mkdir -p "$OUT"
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 120 $PY -m pytest -q -x -m "not slow and not slurm" tests/test_train.py tests/test_losses.py \
    2>&1 | tail -5 | tee "$OUT/tests.txt"
timeout 240 $PY -m dgkd_core bench --out "$OUT/step.json" 2>&1 | tail -6 | tee "$OUT/bench.txt"
timeout 300 .venv/bin/snakemake --profile profiles/local --cores 16 --resources gpu_jobs=4 \
    --configfile config/cifar10_local.yaml results/table1.csv 2>&1 | tail -5 | tee "$OUT/chain.txt"
cp results/table1.md "$OUT/" 2>/dev/null
$PY -m dgkd_core bench --parity --parity-data results/data/cifar10.pt --parity-model resnet8 \
    --parity-epochs 5 --out "$OUT/step.json" 2>&1 | tail -20 | tee "$OUT/parity.txt"
echo "== summary"; cat "$OUT/bench.txt"; grep -E "mean_top1|difference" -A3 "$OUT/parity.txt"
