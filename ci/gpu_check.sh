#!/usr/bin/env bash
# A lent GPU's checks for the speed issue, in one call that stops starting work at DEADLINE_S:
#   1. the benchmark, alone on the GPU (project trainer, inline, prepared guides and guide tables,
#      vs the released code's loop and a careful eager loop, batch 128; the table build);
#   2. side by side: the ResNet chain (resnet26 -> resnet20, resnet14 -> resnet8; NoKD, KD, TAKD,
#      DGKD; one seed) on the CIFAR-10 copy through the workflow, the accuracy parity of the
#      fast path against plain fp32 eager (3 seeds, same prepared file), and the CUDA tests;
#   3. the demo workflow's wall time, if time is left.
# Usage: bash ci/gpu_check.sh [OUT_DIR]
#   PYTHON           interpreter with torch and snakemake (default .venv/bin/python, else python3)
#   CIFAR10_ARCHIVE  the CIFAR-10 tar, .tar or .tar.xz (default ../shared/data/cifar10-images.tar)
#   DEADLINE_S       seconds after which no stage starts and running ones are cut (default 540)
#   CHAIN_EPOCHS (30), PARITY_EPOCHS (8)
# Writes OUT_DIR/{summary.txt,step.json,parity.json,table1.md,tests.txt,logs.tar.gz}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-results/gpu_check}}
WORK=results/gpu_check_work
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
ARCHIVE=${CIFAR10_ARCHIVE:-../shared/data/cifar10-images.tar}
DEADLINE=$(($(date +%s) + ${DEADLINE_S:-540}))
export PYTHONUNBUFFERED=1
S="$OUT/summary.txt"

. ci/deadline.sh

stage environment
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, torchvision, snakemake; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'torchvision', torchvision.__version__, 'snakemake', \
snakemake.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee -a "$S"

stage "bench (alone on the GPU)"
timeout "$(cap 240)" $PY -m dgkd_core bench --skip-workflow --out "$OUT/step.json" \
    >"$WORK/bench.log" 2>&1
echo "bench exit $?" | tee -a "$S"
tail -6 "$WORK/bench.log" | tee -a "$S"

stage "chain + parity + tests, side by side"
cat >"$WORK/overlay.yaml" <<EOF
datasets:
  cifar10:
    source: imagefolder
    archive: $ARCHIVE
methods: [nokd, kd, takd, dgkd]
hyperparameters:
  defaults:
    epochs: ${CHAIN_EPOCHS:-30}
resources:
  threads: 2
EOF
chain_start=$(date +%s)
(
    timeout "$(cap 400)" $PY -m snakemake results/table1.csv --profile profiles/local \
        --cores 12 --resources gpu_jobs=6 --scheduler greedy \
        --configfile config/cifar10_local.yaml "$WORK/overlay.yaml" >"$WORK/chain.log" 2>&1
    echo "chain exit $? after $(($(date +%s) - chain_start)) s" >"$WORK/chain.rc"
) &
(
    for _ in $(seq 120); do [ -f results/data/cifar10.pt ] && break; sleep 1; done
    timeout "$(cap 400)" $PY -m dgkd_core bench --parity --parity-data results/data/cifar10.pt \
        --parity-model resnet8 --parity-epochs "${PARITY_EPOCHS:-8}" --out "$OUT/step.json" \
        >"$WORK/parity.log" 2>&1
    echo "parity exit $?" >"$WORK/parity.rc"
) &
timeout "$(cap 300)" $PY -m pytest -q -rs -p no:cacheprovider -m "not slow and not slurm" \
    tests/gpu/test_cuda.py tests/unit/training/test_trainer.py tests/unit/method/test_losses.py >"$OUT/tests.txt" 2>&1
echo "tests exit $?" | tee -a "$S"
tail -15 "$OUT/tests.txt" | tee -a "$S"
wait
cat "$WORK/chain.rc" "$WORK/parity.rc" 2>/dev/null | tee -a "$S"
tail -4 "$WORK/chain.log" | tee -a "$S"
cp results/table1.md "$OUT/" 2>/dev/null && cat results/table1.md | tee -a "$S"
grep -hE '"(mean_top1|difference|within_0.5)"' -A2 "$OUT/parity.json" 2>/dev/null | tee -a "$S"

$PY - <<'PYEOF' 2>&1 | tee -a "$S"
import json, pathlib
for p in sorted(pathlib.Path("results/runs").glob("**/metrics.json")):
    m = json.loads(p.read_text())
    print(f"{m['method']:5s} {m['model']:9s} top1 {m['top1_last']:6.2f}  {m['img_per_s']:7.0f} img/s"
          f"  train {m['train_time_s']:5.0f} s  wall {m['wall_time_s']:5.0f} s"
          f"  graph fallback: {m['determinism'].get('cuda_graph_fallback')}")
PYEOF
grep -rh "capture failed" results/logs "$WORK"/*.log 2>/dev/null | sort -u | head -3 | tee -a "$S"

if (($(left) > 90)); then
    stage "demo workflow (config/demo.yaml), end to end"
    demo_start=$(date +%s)
    timeout "$(cap 200)" $PY -m snakemake --snakefile Snakefile --directory "$WORK/demo" \
        --configfile config/demo.yaml --profile profiles/local --cores 16 --resources gpu_jobs=8 \
        --scheduler greedy --quiet >"$WORK/demo.log" 2>&1
    echo "demo exit $? after $(($(date +%s) - demo_start)) s wall" | tee -a "$S"
fi

stage pack
tar czf "$OUT/logs.tar.gz" --exclude='*.pt' --exclude='extracted' results 2>/dev/null
ls -la "$OUT" | tee -a "$S"
