#!/usr/bin/env bash
# ci/gpu_run.sh rehearsed on this CPU machine in the GPU machine's conditions (`make
# rehearse-gpu`; tests/workflow/test_gpu_kit.py runs it):
#   - a virtual environment of its own with torch and torchvision and the other packages the GPU
#     image has that the project uses (pandas, matplotlib, PyYAML, Jinja2, tqdm, Pillow, pytest,
#     TensorBoard), but no snakemake and no jsonschema: those come from the carried wheels;
#   - the carried wheels (.device/wheels; this Python's binary wheels from .device/local-wheels);
#   - no CUDA (CUDA_VISIBLE_DEVICES empty), REHEARSAL=1: tiny workloads, the campaign on its tiny
#     config, a DEADLINE_S of 60 s.
# It passes when gpu_run.sh exits 0 and leaves at most 8 files, at most 2 folders deep, in OUT.
# Usage: bash ci/rehearse_gpu.sh [OUT]   (default results/rehearse_gpu)
#   REHEARSE_VENV  where the environment lives (default .device/rehearse-venv; reused)
#   DEADLINE_S     (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-results/rehearse_gpu}")
VENV=${REHEARSE_VENV:-.device/rehearse-venv}
BASE_PY=${PYTHON:-python3}
die() { echo "rehearse_gpu: $*" >&2; exit 1; }

ls .device/wheels/*.whl >/dev/null 2>&1 || NO_DATA=1 bash ci/device_prepare.sh
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
    rm -rf "$VENV"
    "$BASE_PY" -m venv "$VENV"
    # The pins of the project's own stack; of snakemake's and jsonschema's needs, those the
    # image has (attrs, requests, ...), at this machine's .venv's versions.
    IN_IMAGE=$(.venv/bin/python ci/wheel_closure.py --in-image ci/gpu_image_packages.txt \
        snakemake jsonschema) || die "no .venv to read versions from: run 'make setup' first"
    "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 \
        pandas matplotlib pyyaml jinja2 tqdm pillow pytest tensorboard $IN_IMAGE
    touch "$VENV/.complete"
fi
"$VENV/bin/python" - <<'EOF' || die "$VENV holds snakemake or jsonschema: remove it and run again"
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) for m in ("snakemake", "jsonschema")))
EOF

rm -rf "$OUT"
CUDA_VISIBLE_DEVICES="" REHEARSAL=1 DEADLINE_S=${DEADLINE_S:-60} OUT=$OUT \
    PYTHON="$(cd "$VENV/bin" && pwd)/python" PYTHONPATH="" bash ci/gpu_run.sh
files=$(find "$OUT" -type f | wc -l)
deep=$(find "$OUT" -mindepth 4 | wc -l) # OUT/a/b/file is the deepest that comes back
((files <= 8)) || die "gpu_run.sh left $files files in $OUT; at most 8 come back"
((deep == 0)) || die "gpu_run.sh left files more than 2 folders deep in $OUT"
grep -q '^== table' "$OUT/summary.txt" || die "no table at the end of $OUT/summary.txt"
echo "rehearsal passed: $files files in $OUT"
