#!/usr/bin/env bash
# A lent GPU's checks for fused training (issue 11), in one call that stops starting work at
# DEADLINE_S:
#   1. `bench --fused`, alone on the GPU: the two fused workloads against K solo runs;
#   2. tests/unit/training/test_fused.py (its CUDA test: a CUDA-streams group against solo runs);
#   3. the ResNet chain on the CIFAR-10 copy through the workflow (5 methods x SEEDS, Table 1's
#      27 trainings with 3 seeds) once per variant, at EPOCHS epochs: the wall time, the GPU
#      seconds (the training and table jobs' own wall seconds, summed), and each run's mean top-1
#      over the seeds per variant (the 0.5-point fused check, the 0.3-point table check).
# Usage: bash ci/gpu_check_fused.sh [OUT_DIR]
#   PYTHON, CIFAR10_ARCHIVE as ci/gpu_check.sh; DEADLINE_S (default 540); EPOCHS (default 10);
#   SEEDS (default "[20, 31, 55]"); VARIANTS: space-separated fuse:guide_tables pairs, default
#   "true:false false:false" (fused vs solo); e.g. "false:false false:true true:true" compares
#   today's code, guide tables, and both (guide_tables: true, as auto gives short runs none).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-results/gpu_check_fused}}
WORK=results/gpu_check_fused_work
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
ARCHIVE=$(realpath "${CIFAR10_ARCHIVE:-../shared/data/cifar10-images.tar}")
DEADLINE=$(($(date +%s) + ${DEADLINE_S:-540}))
export PYTHONUNBUFFERED=1
S="$OUT/summary.txt"
. ci/deadline.sh

stage "bench --fused (alone on the GPU)"
timeout "$(cap 150)" $PY -m dgkd_core bench --fused --out "$OUT/step.json" >"$WORK/bench.log" 2>&1
echo "bench exit $?" | tee -a "$S"
cat "$OUT/fused.json" 2>/dev/null | tee -a "$S"

stage "tests/unit/training/test_fused.py"
timeout "$(cap 150)" $PY -m pytest -q -rs -p no:cacheprovider -m "not slow" tests/unit/training/test_fused.py \
    >"$OUT/tests.txt" 2>&1
echo "tests exit $?" | tee -a "$S"
tail -8 "$OUT/tests.txt" | tee -a "$S"

for variant in ${VARIANTS:-true:false false:false}; do
    fuse=${variant%%:*} tables=${variant##*:} dir="$WORK/fuse-${variant%%:*}_tables-${variant##*:}"
    stage "chain through the workflow, fuse: $fuse, guide_tables: $tables, ${EPOCHS:-10} epochs"
    mkdir -p "$dir"
    cat >"$dir/overlay.yaml" <<YAML
datasets:
  cifar10:
    source: imagefolder
    archive: $ARCHIVE
methods: [nokd, kd, takd, dgkd, sdgkd]
seeds: ${SEEDS:-[20, 31, 55]}
fuse: $fuse
guide_tables: $tables
hyperparameters:
  defaults:
    epochs: ${EPOCHS:-10}
resources:
  threads: 2
YAML
    start=$(date +%s)
    timeout "$(cap 400)" $PY -m snakemake results/table1.csv --snakefile Snakefile \
        --directory "$dir" --profile profiles/local --cores 16 --resources gpu_jobs=8 \
        --scheduler greedy --configfile config/cifar10_local.yaml "$dir/overlay.yaml" \
        >"$dir/chain.log" 2>&1
    echo "$variant: exit $? after $(($(date +%s) - start)) s wall" | tee -a "$S"
done

$PY - "$WORK" <<'PYEOF' 2>&1 | tee -a "$S"
import csv, json, pathlib, statistics, sys
work = pathlib.Path(sys.argv[1])
variants = sorted(p.name for p in work.glob("fuse-*_tables-*"))
rows = {}
for variant in variants:
    bench = work / variant / "results" / "benchmarks"
    gpu_s = sum(float(next(csv.DictReader(f.open(), delimiter="\t"))["s"])
                for f in bench.glob("**/*.tsv") if "prepare" not in str(f))
    print(f"{variant}: {gpu_s:.0f} job-seconds (training, fused and table jobs)")
    for p in sorted((work / variant / "results" / "runs").glob("**/metrics.json")):
        m = json.loads(p.read_text())
        key = str(p.parent).split("/runs/", 1)[1].split("/", 2)[2]  # method/lineage
        rows.setdefault(key, {}).setdefault(variant, []).append(m["top1_last"])
print(f"{'run':45s} " + " ".join(f"{v:>24s}" for v in variants) + "  (mean top-1, seeds)")
for key, by in sorted(rows.items()):
    cells = [f"{statistics.mean(by[v]):6.2f} ({len(by[v])})" if v in by else "-" for v in variants]
    print(f"{key:45s} " + " ".join(f"{c:>24s}" for c in cells))
PYEOF
stage pack
tar czf "$OUT/logs.tar.gz" --exclude='*.pt' --exclude='extracted' "$WORK" 2>/dev/null
ls -la "$OUT" | tee -a "$S"
