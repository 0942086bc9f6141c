#!/usr/bin/env bash
# The one script a lent GPU window runs (run ci/device_prepare.sh here first; carry
# .device/wheels and .device/data). Stages, in priority order, none started after DEADLINE_S:
#   0. preamble, fail-fast: install the carried wheels into a target folder, PYTHONPATH = the
#      repository and that folder, import jsonschema, snakemake, dgkd_core and torch.cuda (and
#      see a GPU, unless REHEARSAL=1); on failure exit 2 with a one-line reason;
#   1. the CUDA tests: tests/gpu/test_cuda.py and the CUDA cases of the fused, horizontal and
#      table tests;
#   2. `bench`, every step workload, each loop timed 3 times (the median reported);
#   3. `bench --fused`: K = 15 and 1 resnet8 students and 3 resnet26 teachers, sequential and
#      horizontal (its CUDA graph) first, then solo, cuda_streams, horizontal without the graph
#      and horizontal + torch.compile (fused.json is
#      rewritten after each figure, so the cap keeps the first ones);
#   4. all the time left: the reproduction campaign (ci/campaign_continue.sh), whose state
#      comes back as one file; its runs fused where stage 3 measured a clear win (and stage 1
#      passed: `campaign fuse-choice`), else each its own job.
# Everything comes back in at most 8 files under OUT: summary.txt (its last lines a short
# table), tests.txt, step.json, fused.json, logs.tar.xz, and the campaign's
# campaign_<name>.tar.xz (its state: `python -m dgkd_core campaign unpack` here) and
# campaign_<name>_logs.tar.gz.
# Usage, on the GPU machine (device tool):  DEADLINE_S=540 bash ci/gpu_run.sh
#   OUT          where the files go (the device's $OUT; default results/gpu_run)
#   DEADLINE_S   seconds for the whole call (default 540); stages are capped to what is left
#   PYTHON       the interpreter (default python3: the image's, with torch)
#   CAMPAIGN     the campaign to advance (default cifar10_resnet_80ep; ci/campaign_continue.sh)
#   CAMPAIGN_FUSE  auto (default: fuse on stage 3's measured win), off, or a fuse_mechanism
#   STAGES       the stages to run (default tests,bench,fused,campaign): `STAGES=campaign
#                CAMPAIGN_FUSE=<the choice an earlier window measured>` gives a window whose
#                commit's GPU paths were already tested and measured all its time to the campaign
#   REHEARSAL=1  the CPU rehearsal (ci/rehearse_gpu.sh): no GPU needed, tiny workloads, the
#                campaign on its tiny config
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
OUT=$(realpath -m "${OUT:-results/gpu_run}")
WORK=${GPU_RUN_WORK:-$(mktemp -d /tmp/gpu_run.XXXXXX)}
DEADLINE=$(($(date +%s) + ${DEADLINE_S:-540}))
REHEARSAL=${REHEARSAL:-0}
CAMPAIGN=${CAMPAIGN:-$([ "$REHEARSAL" = 1 ] && echo rehearsal || echo cifar10_resnet_80ep)}
S=$WORK/summary.txt
PACK_RESERVE_S=${PACK_RESERVE_S:-25} # kept at the end for packing
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK/logs"
: >"$S"
. ci/deadline.sh
STAGES=${STAGES:-tests,bench,fused,campaign}
wants() { [[ ",$STAGES," == *",$1,"* ]]; }
TABLE=() # the short table printed last: "stage | result"
row() { TABLE+=("$(printf '%-16s %s' "$1" "$2")"); }

pack() {
    cp "$WORK/tests.txt" "$OUT/" 2>/dev/null
    # Logs and small results only: no wheels, checkpoints, data or extracted images.
    tar cJf "$OUT/logs.tar.xz" -C "$WORK" --exclude=./site --exclude='*.pt' --exclude='*.tar*' \
        --exclude=extracted . 2>/dev/null
    {
        echo "== table"
        printf '%s\n' "${TABLE[@]}"
    } >>"$S"
    cp "$S" "$OUT/summary.txt"
}
fail() {
    echo "gpu_run: $*" | tee -a "$S" >&2
    row preamble "FAILED: $*"
    pack
    printf '%s\n' "${TABLE[@]}"
    exit 2
}

stage "preamble"
for name in ${STAGES//,/ }; do
    case $name in tests | bench | fused | campaign) ;;
    *) fail "unknown stage '$name' in STAGES=$STAGES; use some of tests,bench,fused,campaign" ;;
    esac
done
SITE=$WORK/site
ls .device/wheels/*.whl >/dev/null 2>&1 ||
    fail "no wheels in .device/wheels: run ci/device_prepare.sh here and carry .device/wheels"
WHEELS=(.device/wheels/*.whl)
if [ "$REHEARSAL" = 1 ] && ls .device/local-wheels/*.whl >/dev/null 2>&1; then
    # This machine's Python: its own binary wheels in place of the cp312 ones.
    WHEELS=($(ls .device/wheels/*-none-any.whl) .device/local-wheels/*.whl)
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${WHEELS[@]}" >"$WORK/logs/pip.log" 2>&1 ||
    fail "pip could not install the carried wheels ($(tail -1 "$WORK/logs/pip.log"))"
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
NEED_GPU=$([ "$REHEARSAL" = 1 ] && echo False || echo True)
"$PY" - >>"$S" 2>"$WORK/logs/import.log" <<EOF || fail "import failed: $(tail -1 "$WORK/logs/import.log")"
import sys, jsonschema, snakemake, torch, torchvision, torch.cuda
import dgkd_core.training.trainer, dgkd_core.experiment.plan, dgkd_core.training.fused, dgkd_core.bench.step
assert dgkd_core.__file__.startswith("$REPO/"), f"dgkd_core imported from {dgkd_core.__file__}"
if $NEED_GPU and not torch.cuda.is_available():
    raise SystemExit("torch sees no CUDA device")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision",
      torchvision.__version__, "snakemake", snakemake.__version__, "jsonschema",
      jsonschema.__version__, "|", gpu)
EOF
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader >>"$S"
GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || cat .device/commit 2>/dev/null || echo unknown)}
export GIT_COMMIT
echo "commit $GIT_COMMIT" >>"$S"
row preamble "ok: $(grep -m1 '^python ' "$S" | cut -c1-110)"

if [ "$REHEARSAL" = 1 ]; then
    # Short caps: the stages' plumbing is what is rehearsed; the campaign gets most of the time.
    TEST_CAP=${TEST_CAP:-8} BENCH_CAP=${BENCH_CAP:-5} FUSED_CAP=${FUSED_CAP:-5}
    PACK_RESERVE_S=8 CAMPAIGN_PACK_RESERVE_S=8
    export MIN_TRAIN_S=5
    BENCH_ARGS=(--device cpu --steps 1 --train-images 256)
    FUSED_ARGS=(--device cpu --steps 1 --k 1 --teachers 0 --repeat 1
        --mechanisms sequential,horizontal)
    REPEAT=1
else
    TEST_CAP=${TEST_CAP:-110} BENCH_CAP=${BENCH_CAP:-85} FUSED_CAP=${FUSED_CAP:-45}
    BENCH_ARGS=(--steps 60)
    # Issue 22's key figure first (K = 15 students, horizontal vs sequential and solo); 20
    # rounds x 3 repeats of K = 15 is 900 member-steps per mechanism, seconds on the GPU.
    FUSED_ARGS=(--k 15,1 --teachers 3 --steps 20 --repeat 3 --train-images 8192
        --mechanisms sequential,horizontal,solo,cuda_streams,horizontal_eager,horizontal_compile)
    REPEAT=3
fi

tests_rc=skipped
run_tests() {
    stage "1. CUDA tests"
    timeout "$(cap "$TEST_CAP")" "$PY" -m pytest -q -rs -p no:cacheprovider -m "not slurm" \
        tests/gpu/test_cuda.py tests/unit/training/test_fused.py tests/unit/training/test_horizontal.py \
            tests/unit/training/test_horizontal_graph.py \
        tests/unit/guides/test_guide_tables.py -k cuda \
        >"$WORK/tests.txt" 2>&1
    rc=$?
    tests_rc="exit $rc"
    ((rc == 0)) && tests_rc=0
    tail -12 "$WORK/tests.txt" >>"$S"
    row "1 CUDA tests" "exit $rc: $(grep -E '(passed|failed|skipped|error)' "$WORK/tests.txt" | tail -1)"
}
run_bench() {
    stage "2. bench (alone on the GPU)"
    timeout "$(cap "$BENCH_CAP")" "$PY" -m dgkd_core bench --skip-workflow "${BENCH_ARGS[@]}" --repeat $REPEAT \
        --out "$OUT/step.json" >"$WORK/logs/bench.log" 2>&1
    rc=$?
    tail -8 "$WORK/logs/bench.log" >>"$S"
    row "2 bench" "exit $rc$(grep -E '^dgkd_student_tables' "$WORK/logs/bench.log" |
        awk '{print ": tables " $4 " img/s, " $5 " vs released"}')"
}
run_fused() {
    stage "3. bench --fused"
    timeout "$(cap "$FUSED_CAP")" "$PY" -m dgkd_core bench --fused "${FUSED_ARGS[@]}" \
        --out "$OUT/step.json" >"$WORK/logs/fused.log" 2>&1
    rc=$?
    "$PY" - "$OUT/fused.json" >>"$S" 2>/dev/null <<'EOF'
import json, sys
for e in json.load(open(sys.argv[1]))["workloads"]:
    print(" ".join(f"{k}={v}" for k, v in e.items() if not isinstance(v, (list, dict))))
EOF
    figures=$("$PY" - "$OUT/fused.json" 2>/dev/null <<'EOF'
import json, sys
done = [e for e in json.load(open(sys.argv[1]))["workloads"] if "aggregate_img_s" in e]
k15 = {e["mechanism"]: (e["aggregate_img_s"], e.get("ops_per_round"))
       for e in done if e["workload"].endswith("_k15")}
print(f": {len(done)} figures; K=15 img/s (ops/round) " +
      ", ".join(f"{m} {v:.0f} ({ops})" for m, (v, ops) in k15.items()))
EOF
    )
    row "3 bench --fused" "exit $rc$figures"
}
if wants tests; then run_tests; else row "1 CUDA tests" "skipped (STAGES=$STAGES)"; fi
if wants bench; then run_bench; else row "2 bench" "skipped (STAGES=$STAGES)"; fi
if wants fused; then run_fused; else row "3 bench --fused" "skipped (STAGES=$STAGES)"; fi

# The campaign fuses its runs only on this window's clear, measured win, after the CUDA tests
# passed (dgkd_core.training.fuse_choice.window_fuse_choice); CAMPAIGN_FUSE=off or a mechanism
# overrides.
FUSE_FILE=$WORK/campaign_fuse.yaml
case ${CAMPAIGN_FUSE:-auto} in
auto)
    if [ "$tests_rc" = 0 ]; then
        FUSE_LINE=$("$PY" -m dgkd_core campaign fuse-choice --fused "$OUT/fused.json" \
            --out "$FUSE_FILE" 2>&1 | tail -1)
    else
        FUSE_LINE="fuse: off, every run its own job (the CUDA tests: $tests_rc)"
    fi ;;
off) FUSE_LINE="fuse: off, every run its own job (CAMPAIGN_FUSE=off)" ;;
*) printf 'fuse: true\nfuse_mechanism: %s\n' "$CAMPAIGN_FUSE" >"$FUSE_FILE"
    FUSE_LINE="fuse: $CAMPAIGN_FUSE (CAMPAIGN_FUSE)" ;;
esac
echo "$FUSE_LINE" >>"$S"
row "3 fuse choice" "${FUSE_LINE:0:120}"

stage "4. campaign $CAMPAIGN"
if ! wants campaign; then
    row "4 campaign" "skipped (STAGES=$STAGES)"
elif [ -f ci/campaign_continue.sh ]; then
    budget=$(($(left) - PACK_RESERVE_S))
    if ((budget > 20)); then
        if [ "$REHEARSAL" = 1 ]; then # the tiny config, into a state of its own
            export CAMPAIGN_CONFIGS=config/repro_tiny.yaml STATE_DIR=$WORK/rehearsal_state
        fi
        FUSE_OVERLAY=$([ -f "$FUSE_FILE" ] && echo "$FUSE_FILE") FUSE_NOTE=$FUSE_LINE \
            CAMPAIGN=$CAMPAIGN WORKDIR=$WORK/campaign_work DEADLINE_S=$budget PYTHON=$PY OUT=$OUT \
            PACK_RESERVE_S=${CAMPAIGN_PACK_RESERVE_S:-40} \
            CIFAR10_ARCHIVE=$(realpath -m "${CIFAR10_ARCHIVE:-.device/data/cifar10-images.tar.xz}") \
            bash ci/campaign_continue.sh >"$WORK/logs/campaign.log" 2>&1
        rc=$?
        tail -6 "$WORK/logs/campaign.log" >>"$S"
        row "4 campaign" "exit $rc: $(tail -1 "$WORK/logs/campaign.log" | cut -c1-120)"
    else
        row "4 campaign" "skipped: ${budget} s left"
    fi
else
    row "4 campaign" "skipped: no ci/campaign_continue.sh"
fi

stage pack
pack
ls -la "$OUT" >>"$S"
cp "$S" "$OUT/summary.txt"
printf '%s\n' "${TABLE[@]}"
