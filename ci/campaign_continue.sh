#!/usr/bin/env bash
# One GPU window of a reproduction campaign (dgkd_core/campaign/state.py): the campaign advances by
# the time this window spends, nothing lost. On a bare machine:
#   1. prepare the data (Snakemake, the data files only; an archive may be .tar or .tar.xz);
#   2. `campaign restore`: the committed state (docs/reproduction/$CAMPAIGN) into WORKDIR, after
#      the data, so that restored runs are newer than it and Snakemake does not retrain them;
#   3. Snakemake to results/table1.csv under `timeout`, the teachers' and TAs' jobs first
#      (--prioritize); at the deadline SIGTERM reaches every trainer, which writes its resume.pt;
#   4. `campaign pack` -> $OUT/campaign_$CAMPAIGN.tar.xz (finished runs, resume states,
#      manifest), and the window's logs -> $OUT/campaign_${CAMPAIGN}_logs.tar.gz;
#   5. one progress line, printed last.
# Back home: python -m dgkd_core campaign unpack $OUT/campaign_$CAMPAIGN.tar.xz \
#   --state docs/reproduction/$CAMPAIGN, then `campaign report`, then commit the state.
# Variables (relative paths are taken from the repository's root):
#   CAMPAIGN         the campaign (dgkd_core.campaign.state.CAMPAIGNS), e.g. cifar10_resnet_80ep
#   WORKDIR          Snakemake's --directory (a fresh folder each window)
#   OUT              where the packed state goes
#   DEADLINE_S       seconds for the whole call (default 600); training stops PACK_RESERVE_S
#                    (default 90) before it, the trainers get 20 s more to save
#   PYTHON           interpreter with torch and snakemake (default python3)
#   CIFAR10_ARCHIVE  the CIFAR-10 tar for the configs' cifar10 dataset (absolute, or made so)
#   GPU_JOBS (6), CORES (all)  Snakemake's training jobs sharing the GPU, and cores
#   MIN_TRAIN_S      no training when less is left before the reserve (default 30)
#   GIT_COMMIT       the code's commit, for a copied tree without .git (recorded by pack)
#   FUSE_OVERLAY     a workflow overlay that fuses this window's runs (`campaign fuse-choice`,
#                    which ci/gpu_run.sh calls on the window's own `bench --fused` figures); if
#                    that workflow fails, the rest of the window trains every run alone
#   FUSE_NOTE        how this window trains, for the manifest (default "solo jobs")
#   CAMPAIGN_CONFIGS, STATE_DIR  other configs (space-separated) / state folder (tests)
# Exit status: 0 when the state was packed (training finished or was cut at the deadline).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
START=$(date +%s)
: "${CAMPAIGN:?set CAMPAIGN (dgkd_core.campaign.state.CAMPAIGNS)}" "${WORKDIR:?set WORKDIR}" \
    "${OUT:?set OUT}"
PY=${PYTHON:-python3}
DEADLINE_S=${DEADLINE_S:-600}
RESERVE=${PACK_RESERVE_S:-90}
STATE=$(realpath -m "${STATE_DIR:-docs/reproduction/$CAMPAIGN}")
WORKDIR=$(realpath -m "$WORKDIR")
OUT=$(realpath -m "$OUT")
mkdir -p "$WORKDIR/results" "$OUT"
LOG=$WORKDIR/results/campaign_continue.log
: >"$LOG"
stage() { echo "== $* ($(($(date +%s) - START)) s)" | tee -a "$LOG"; }

if [ -n "${CAMPAIGN_CONFIGS:-}" ]; then
    read -ra CONFIGS <<<"$CAMPAIGN_CONFIGS"
else
    mapfile -t CONFIGS < <($PY -m dgkd_core campaign targets configs --campaign "$CAMPAIGN")
fi
((${#CONFIGS[@]})) || { echo "no configs for campaign $CAMPAIGN" >&2; exit 2; }
CONFIG_ARGS=()
for c in "${CONFIGS[@]}"; do CONFIG_ARGS+=(--config "$(realpath "$c")"); done
SNAKE_CONFIGS=("${CONFIGS[@]}")
HAS_CIFAR10=$($PY -c "import sys; from dgkd_core.reporting.reproduction import merged_config
print(int('cifar10' in merged_config(sys.argv[1:]).get('datasets', {})))" "${CONFIGS[@]}")
if [ -n "${CIFAR10_ARCHIVE:-}" ] && [ "$HAS_CIFAR10" = 1 ]; then
    # Where the data is: not part of what a run computes, so no run's config hash changes.
    OVERLAY=$WORKDIR/results/campaign_archive.yaml
    printf 'datasets:\n  cifar10:\n    archive: %s\n' "$(realpath -m "$CIFAR10_ARCHIVE")" >"$OVERLAY"
    SNAKE_CONFIGS+=("$OVERLAY")
fi
SNAKE=(--snakefile "$REPO/Snakefile" --directory "$WORKDIR" --profile profiles/local
    --cores "${CORES:-all}" --scheduler greedy --resources "gpu_jobs=${GPU_JOBS:-6}")
# greedy: the ILP scheduler needs pulp, which the GPU kit does not carry (ci/device_prepare.sh);
# with a handful of jobs at a time it picks the same ones, by --prioritize first.

stage "data"
mapfile -t DATA < <($PY -m dgkd_core campaign targets data "${CONFIG_ARGS[@]}")
if ! $PY -m snakemake "${DATA[@]}" "${SNAKE[@]}" --configfile "${SNAKE_CONFIGS[@]}" \
    >"$WORKDIR/results/campaign_data.log" 2>&1; then
    tail -5 "$WORKDIR/results/campaign_data.log"
    echo "campaign $CAMPAIGN: data preparation failed (log above); the state is unchanged" >&2
    exit 1
fi

stage "restore from $STATE"
$PY -m dgkd_core campaign restore --state "$STATE" --workdir "$WORKDIR" "${CONFIG_ARGS[@]}" \
    2>&1 | tee -a "$LOG"
((PIPESTATUS[0] == 0)) || { echo "campaign $CAMPAIGN: restore failed" >&2; exit 1; }

mapfile -t PRIORITY < <($PY -m dgkd_core campaign targets prioritize "${CONFIG_ARGS[@]}")
train_left() { echo $((DEADLINE_S - ($(date +%s) - START) - RESERVE)); }
workflow() { # one Snakemake call to results/table1.csv for $1 s; the rest: more arguments
    local seconds=$1
    shift
    stage "workflow to results/table1.csv for $seconds s$TRAINING_NOTE"
    # --keep-incomplete: a job that finished just before the signal reaches its shell counts
    # as failed, and Snakemake would delete its (complete, atomically written) outputs; pack
    # takes a run as finished only with all three outputs, metrics.json written last.
    timeout --kill-after=20 "$seconds" $PY -m snakemake results/table1.csv "${SNAKE[@]}" \
        --keep-incomplete --prioritize "${PRIORITY[@]}" "$@" \
        >>"$WORKDIR/results/campaign_snakemake.log" 2>&1
    workflow_rc=$?
    echo "workflow exit $workflow_rc$( ((workflow_rc == 124 || workflow_rc == 137)) &&
        echo ": cut at the deadline, resume states written")" | tee -a "$LOG"
    tail -3 "$WORKDIR/results/campaign_snakemake.log" | tee -a "$LOG"
}
workflow_rc=0
TRAINING=${FUSE_NOTE:-solo jobs}
TRAINING_NOTE=""
if (($(train_left) < ${MIN_TRAIN_S:-30})); then
    echo "only $(train_left) s left before the pack reserve: no training this window" | tee -a "$LOG"
elif [ -n "${FUSE_OVERLAY:-}" ]; then
    TRAINING_NOTE=", fused ($FUSE_OVERLAY)"
    workflow "$(train_left)" --configfile "${SNAKE_CONFIGS[@]}" "$(realpath "$FUSE_OVERLAY")"
    case $workflow_rc in
    0 | 124 | 137) ;;
    *) # The fused path failed (it is newer than the solo one): the rest of the window trains
        # every run alone. What the fused jobs finished stays (mtime only: their rules and
        # params were the fused ones); what they left half done is rerun, from its resume.pt.
        TRAINING="$TRAINING; the fused workflow failed (exit $workflow_rc), then solo jobs"
        TRAINING_NOTE=", solo jobs after the fused workflow failed"
        if (($(train_left) >= ${MIN_TRAIN_S:-30})); then
            workflow "$(train_left)" --rerun-incomplete --rerun-triggers mtime \
                --configfile "${SNAKE_CONFIGS[@]}"
        fi ;;
    esac
else
    workflow "$(train_left)" --configfile "${SNAKE_CONFIGS[@]}"
fi

stage "pack -> $OUT/campaign_$CAMPAIGN.tar.xz"
tar czf "$OUT/campaign_${CAMPAIGN}_logs.tar.gz" -C "$WORKDIR" --exclude='*.pt' results/logs \
    results/campaign_continue.log results/campaign_data.log \
    results/campaign_snakemake.log 2>/dev/null
SUMMARY=$($PY -m dgkd_core campaign pack --workdir "$WORKDIR" --state "$STATE" \
    --campaign "$CAMPAIGN" "${CONFIG_ARGS[@]}" --out "$OUT/campaign_$CAMPAIGN.tar.xz" \
    --window-seconds "$(($(date +%s) - START))" --window-training "$TRAINING" 2>&1)
pack_rc=$?
echo "$SUMMARY" >>"$LOG"
((pack_rc == 0)) || { echo "$SUMMARY" >&2; echo "campaign $CAMPAIGN: pack failed" >&2; exit 1; }
case $workflow_rc in
0 | 124 | 137) ;;
*) echo "warning: the workflow failed (exit $workflow_rc; see campaign_${CAMPAIGN}_logs.tar.gz)" ;;
esac
echo "$SUMMARY" | tail -1
