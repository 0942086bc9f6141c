#!/usr/bin/env bash
# ci/gpu_run.sh rehearsed on this CPU machine in the GPU machine's conditions (`make
# rehearse-gpu`; tests/workflow/test_gpu_kit.py runs it):
#   - a virtual environment of its own that sees the packages the GPU image has (torch,
#     torchvision, pandas, matplotlib, PyYAML, ...), linked from .venv, but no snakemake and no
#     jsonschema: those come from the carried wheels;
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
    [ -x .venv/bin/python ] || die "no .venv to link the image's packages from: run 'make setup' first"
    # The same interpreter as .venv, so that its binary packages load.
    "$(.venv/bin/python -c 'import sys; print(sys._base_executable)')" -m venv "$VENV"
    # The image's packages (torch, torchvision, pandas, ... and attrs, requests, ... of snakemake's
    # needs) linked from .venv at its tested versions: a second torch is gigabytes, and a CI
    # machine's disk has no room for it. Snakemake and jsonschema come from the carried wheels.
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    .venv/bin/python ci/wheel_closure.py --link-image ci/gpu_image_packages.txt "$VENV/image-site"
    echo "$(cd "$VENV/image-site" && pwd)" > "$SITE/gpu_image.pth"
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
