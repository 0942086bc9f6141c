#!/usr/bin/env bash
# Table 1's CIFAR-10 ResNet row (config/cifar10_repro.yaml) on a lent GPU machine, in one call:
#   1. the workflow to results/table1.csv (Snakemake, profiles/local; stops at DEADLINE_S, and
#      a second call with the same WORKDIR on the same machine resumes where it stopped; a lent
#      GPU machine starts bare each call: there, ci/campaign_continue.sh carries the state over);
#   2. `python -m dgkd_core reproduction` -> REPORT_OUT (paired per-seed differences, the
#      paper's claims, the schedule run, provenance);
#   3. the small result files -> EVIDENCE_DIR, relative paths kept (results/table1.csv|md,
#      results/guides.csv|md, each run's metrics.json and history.csv; never a checkpoint);
#   4. a short table, printed last.
# Usage: bash ci/reproduce_table1.sh     (160 epochs, 3 seeds: ~75-100 GPU-minutes, estimated)
#        EPOCHS=10 DEADLINE_S=540 bash ci/reproduce_table1.sh   (a shorter schedule for one
#        10-minute call, estimated to fit; the report says which schedule was run)
#        TEST=1 WORKDIR=/tmp/w bash ci/reproduce_table1.sh      (CPU test: config/repro_tiny.yaml)
# Relative paths in the variables are taken from the repository's root.
#   PYTHON           interpreter with torch and snakemake (default .venv/bin/python, else python3)
#   CIFAR10_ARCHIVE  the CIFAR-10 tar (default ../shared/data/cifar10-images.tar; made absolute)
#   EPOCHS, SEEDS    a shorter schedule / other seeds ("20 31"): an overlay config over the first
#   REPRO_CONFIG     the complete config (default config/cifar10_repro.yaml)
#   REPRO_CONFIG_OVERLAY  one more overlay, merged last (Snakemake merges --configfile in order)
#   DEADLINE_S       seconds for the whole call (default: none); training is cut 60 s before
#   WORKDIR          Snakemake's --directory, holding results/ (default: the repository)
#   REPORT_OUT       the report (default WORKDIR/results/reproduction.md; the committed
#                    docs/reproduction.md is the campaign's, `python -m dgkd_core campaign report`)
#   EVIDENCE_DIR     the small result files (default WORKDIR/results/reproduction_evidence)
#   CORES, GPU_JOBS, THREADS  Snakemake's cores, training jobs sharing the GPU (6), threads per job
#   TEST=1           config/repro_tiny.yaml on the CPU, 1 epoch, seeds 1 2, outputs under WORKDIR
#   GIT_COMMIT       the code's commit, for a copied tree without .git (else git rev-parse HEAD)
#   OUT              if set (a device machine's $OUT): the report, and two archives (the evidence,
#                    the logs): 3 files, within what a device call brings back
# Exit status: non-zero if the workflow or the report failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if [ "${TEST:-0}" = 1 ]; then
    CONFIG=${REPRO_CONFIG:-config/repro_tiny.yaml}
    EPOCHS=${EPOCHS:-1} SEEDS=${SEEDS:-1 2} CORES=${CORES:-2} GPU_JOBS=${GPU_JOBS:-2}
    WORKDIR=${WORKDIR:-results/reproduce_test}
    REPORT_OUT=${REPORT_OUT:-$WORKDIR/reproduction.md}
    EVIDENCE_DIR=${EVIDENCE_DIR:-$WORKDIR/reproduction}
else
    CONFIG=${REPRO_CONFIG:-config/cifar10_repro.yaml}
fi
WORKDIR=$(realpath -m "${WORKDIR:-.}")
REPORT_OUT=$(realpath -m "${REPORT_OUT:-$WORKDIR/results/reproduction.md}")
EVIDENCE_DIR=$(realpath -m "${EVIDENCE_DIR:-$WORKDIR/results/reproduction_evidence}")
case "$EVIDENCE_DIR" in # it is replaced as a whole
/ | "$REPO" | "$REPO/docs" | "$REPO/docs/reproduction"* | "$WORKDIR" | "$WORKDIR/results")
    echo "EVIDENCE_DIR=$EVIDENCE_DIR: give a folder of its own (it is replaced; docs/reproduction/ holds campaign states)" >&2
    exit 2
    ;;
esac
mkdir -p "$WORKDIR/results"
LOG=$WORKDIR/results/reproduce_table1.log
START=$(date +%s)
stage() { echo "== $* ($(date +%T), $(($(date +%s) - START)) s)" | tee -a "$LOG"; }
: >"$LOG"

stage environment
{
    command -v nvidia-smi >/dev/null &&
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, snakemake; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'snakemake', snakemake.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee -a "$LOG"

# The overlay: only what was asked for, so that without variables the run is the config's own.
OVERLAY=$WORKDIR/results/reproduce_overlay.yaml
{
    echo "# written by ci/reproduce_table1.sh; merged over $CONFIG"
    [ -n "${EPOCHS:-}" ] && printf 'hyperparameters:\n  defaults:\n    epochs: %s\n' "$EPOCHS"
    [ -n "${SEEDS:-}" ] && echo "seeds: [$(echo "$SEEDS" | tr -s ' ,' ',' | sed 's/^,//;s/,$//')]"
    # The config's archive path is relative to the repository; Snakemake's is WORKDIR.
    if [ -n "${CIFAR10_ARCHIVE:-}" ] ||
        [ "$(realpath "$CONFIG")" = "$REPO/config/cifar10_repro.yaml" ]; then
        printf 'datasets:\n  cifar10:\n    archive: %s\n' \
            "$(realpath -m "${CIFAR10_ARCHIVE:-../shared/data/cifar10-images.tar}")"
    fi
    [ -n "${THREADS:-}" ] && printf 'resources:\n  threads: %s\n' "$THREADS"
} >"$OVERLAY"
CONFIGS=("$(realpath "$CONFIG")" "$OVERLAY")
[ -n "${REPRO_CONFIG_OVERLAY:-}" ] && CONFIGS+=("$(realpath "$REPRO_CONFIG_OVERLAY")")
cat "$OVERLAY" | tee -a "$LOG"

stage "workflow to results/table1.csv"
SNAKE=($PY -m snakemake results/table1.csv --snakefile "$REPO/Snakefile" --directory "$WORKDIR"
    --profile profiles/local --cores "${CORES:-all}" --resources "gpu_jobs=${GPU_JOBS:-6}"
    --configfile "${CONFIGS[@]}")
LIMIT=()
# SIGTERM: the trainers save their resume state, so a second call in the same WORKDIR
# continues from there. The
# last quarter of DEADLINE_S (at most 60 s) is kept for the report and the copies.
if [ -n "${DEADLINE_S:-}" ]; then
    LIMIT=(timeout --kill-after=20 "$((DEADLINE_S - (DEADLINE_S / 4 < 60 ? DEADLINE_S / 4 : 60)))")
fi
"${LIMIT[@]}" "${SNAKE[@]}" >"$WORKDIR/results/reproduce_snakemake.log" 2>&1
workflow_rc=$?
echo "workflow exit $workflow_rc$( ((workflow_rc == 124 || workflow_rc == 137)) &&
    echo ": cut at DEADLINE_S; call again to resume")" | tee -a "$LOG"
tail -4 "$WORKDIR/results/reproduce_snakemake.log" | tee -a "$LOG"

stage "report -> $REPORT_OUT"
# The exact invocation, as the report quotes it: the variables given, what Snakemake ran, and
# the overlay's content (it lives in WORKDIR, not in the repository).
GIVEN=$(for v in TEST EPOCHS SEEDS REPRO_CONFIG REPRO_CONFIG_OVERLAY CIFAR10_ARCHIVE DEADLINE_S \
    CORES GPU_JOBS THREADS; do [ -n "${!v:-}" ] && printf '%s=%q ' "$v" "${!v}"; done)
COMMAND="${GIVEN}bash ci/reproduce_table1.sh; that is: snakemake results/table1.csv \
--profile profiles/local --cores ${CORES:-all} --resources gpu_jobs=${GPU_JOBS:-6} \
--configfile $CONFIG results/reproduce_overlay.yaml${REPRO_CONFIG_OVERLAY:+ $REPRO_CONFIG_OVERLAY}\
; overlay: $(grep -v '^#' "$OVERLAY" | tr -s ' \n' ' ' | sed 's/ $//')"
REPORT_ARGS=()
for c in "${CONFIGS[@]}"; do REPORT_ARGS+=(--config "$c"); done
[ -n "${GIT_COMMIT:-}" ] && REPORT_ARGS+=(--commit "$GIT_COMMIT")
$PY -m dgkd_core reproduction "${REPORT_ARGS[@]}" --workdir "$WORKDIR" --command "$COMMAND" \
    --out "$REPORT_OUT" 2>&1 | tee -a "$LOG"
report_rc=${PIPESTATUS[0]}

stage "evidence -> $EVIDENCE_DIR"
# The configured runs' small files only (teachers, TAs, students), never model.pt.
FILES=$($PY - "${CONFIGS[@]}" <<'PYEOF'
import sys
from dgkd_core.experiment.plan import Plan
from dgkd_core.reporting.reproduction import merged_config
plan = Plan(merged_config(sys.argv[1:]))
for run in plan.table1_guide_runs() + plan.table1_runs():
    print(run.file("metrics.json"), run.file("history.csv"), sep="\n")
PYEOF
)
PARTIAL=$EVIDENCE_DIR.partial
rm -rf "$PARTIAL" && mkdir -p "$PARTIAL"
(
    cd "$WORKDIR" || exit 1
    for f in results/table1.csv results/table1.md results/guides.csv results/guides.md \
        results/reproduce_overlay.yaml $FILES; do
        [ -f "$f" ] && cp --parents "$f" "$PARTIAL/"
    done
)
rm -rf "$EVIDENCE_DIR" && mv "$PARTIAL" "$EVIDENCE_DIR"
echo "$(find "$EVIDENCE_DIR" -type f | wc -l) files" | tee -a "$LOG"

if [ -n "${OUT:-}" ]; then
    stage "pack -> $OUT"
    mkdir -p "$OUT"
    cp "$REPORT_OUT" "$OUT/" 2>/dev/null
    # One archive, not a tree: a device call brings back at most 8 files, 2 folders deep.
    tar czf "$OUT/reproduce_evidence.tar.gz" -C "$(dirname "$EVIDENCE_DIR")" \
        "$(basename "$EVIDENCE_DIR")"
    tar czf "$OUT/reproduce_logs.tar.gz" -C "$WORKDIR" --exclude='*.pt' results/logs \
        results/benchmarks results/reproduce_snakemake.log results/reproduce_table1.log \
        2>/dev/null
fi

stage summary
if [ -f "$REPORT_OUT" ] && ((report_rc == 0)); then
    # The per-method table and the paired differences, from the report just written.
    sed -n -e '/^| Method /,/^$/p' -e '/^### Paired differences/,/^### The paper/p' \
        -e '/^The paper.s ordering/p' -e '/^DGKD − TAKD/p' -e '/^- Schedule/p' "$REPORT_OUT" |
        grep -v '^### The paper' | cut -c1-200
fi
echo "workflow exit $workflow_rc, report exit $report_rc; report $REPORT_OUT" | tee -a "$LOG"
((workflow_rc == 0 && report_rc == 0))
