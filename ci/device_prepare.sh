#!/usr/bin/env bash
# Prepares, on this (CPU) machine, everything a lent GPU machine's call needs that its image
# lacks, in one git-ignored folder, .device/:
#   .device/wheels/        cp312 manylinux wheels of jsonschema, snakemake and their whole
#                          closure, less what the GPU image has (ci/gpu_image_packages.txt);
#                          the versions are this machine's .venv's, the stack the tests pass on
#   .device/local-wheels/  the same packages' binary wheels for this machine's Python, for the
#                          rehearsal (ci/rehearse_gpu.sh); never carried
#   .device/data/cifar10-images.tar.xz   an xz copy of the CIFAR-10 tar (about 19 MB)
#   .device/manifest.txt   what is there, with sizes and sha256
# It checks that the tracked tree plus the carried folders fit in the device's 64 MiB and
# prints the `carry` list for the device tool's `run`. Safe to run again: it reuses what is
# there and up to date.
# Usage: bash ci/device_prepare.sh
#   PYTHON           the interpreter whose installed versions are carried (default .venv/bin/python)
#   CIFAR10_ARCHIVE  the CIFAR-10 tar (default ../shared/data/cifar10-images.tar)
#   NO_DATA=1        skip the data copy (the rehearsal's tiny config needs none)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ARCHIVE=${CIFAR10_ARCHIVE:-../shared/data/cifar10-images.tar}
DEV=.device
LIMIT_BYTES=$((64 * 1024 * 1024))
die() { echo "device_prepare: $*" >&2; exit 2; }
[ -x "$PY" ] || command -v "$PY" >/dev/null || die "no interpreter $PY: run 'make setup' first"
git check-ignore -q "$DEV/x" || die "$DEV/ is not git-ignored: add '/.device/' to .gitignore"
mkdir -p "$DEV/wheels" "$DEV/local-wheels" "$DEV/data"

# name==version of every package the closure of snakemake and jsonschema needs, less the
# image's packages (their names normalised as PEP 503 does).
NEEDED=$("$PY" ci/wheel_closure.py ci/gpu_image_packages.txt snakemake jsonschema) ||
    die "could not read the closure of snakemake and jsonschema from $PY"
# pulp (16 MB, the CBC solver's binaries for four platforms) is imported only by Snakemake's
# ILP scheduler, lazily; the GPU scripts run Snakemake with --scheduler greedy.
NEEDED=$(echo "$NEEDED" | grep -v '^pulp==')
PIP=("$PY" -m pip --disable-pip-version-check -q)
GPU_PLATFORMS=(--python-version 3.12 --implementation cp --only-binary=:all:)
for n in 17 24 27 28 31 34; do GPU_PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
GPU_PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
have() { ls "$1"/"$(echo "$2" | tr '-' '_')"-"$3"-*.whl >/dev/null 2>&1; }
for spec in $NEEDED; do
    name=${spec%%==*} version=${spec##*==}
    if ! have "$DEV/wheels" "$name" "$version"; then
        # A package with no wheel on the index (sdist only) is pure Python: build its wheel.
        "${PIP[@]}" download --no-deps "${GPU_PLATFORMS[@]}" -d "$DEV/wheels" "$spec" 2>/dev/null ||
            "${PIP[@]}" wheel --no-deps -w "$DEV/wheels" "$spec" ||
            die "no wheel for $spec"
    fi
    wheel=$(ls "$DEV/wheels"/"$(echo "$name" | tr '-' '_')"-"$version"-*.whl 2>/dev/null | head -1)
    [ -n "$wheel" ] || die "no wheel for $spec in $DEV/wheels (its file name is unusual?)"
    case "$wheel" in
    *-none-any.whl) ;;
    *) have "$DEV/local-wheels" "$name" "$version" ||
        "${PIP[@]}" download --no-deps --only-binary=:all: -d "$DEV/local-wheels" "$spec" ;;
    esac
done
# Stale versions (an older run's) would make two versions of one package: keep the wanted ones.
"$PY" ci/wheel_closure.py --prune "$DEV/wheels" "$DEV/local-wheels" -- $NEEDED

if [ "${NO_DATA:-0}" != 1 ]; then
    [ -f "$ARCHIVE" ] || die "no CIFAR-10 tar at $ARCHIVE: set CIFAR10_ARCHIVE"
    XZ=$DEV/data/cifar10-images.tar.xz
    if [ ! -f "$XZ" ] || [ "$ARCHIVE" -nt "$XZ" ]; then
        echo "compressing $ARCHIVE -> $XZ (about a minute)"
        xz -6 -T0 -c "$ARCHIVE" >"$XZ.partial" && mv "$XZ.partial" "$XZ"
    fi
fi

{
    echo "# .device/, written by ci/device_prepare.sh on $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)"
    (cd "$DEV" && find wheels data -type f -printf '%s %p\n' | sort -k2 |
        while read -r size path; do echo "$size $(sha256sum "$path" | cut -c1-16) $path"; done)
} >"$DEV/manifest.txt.partial" && mv "$DEV/manifest.txt.partial" "$DEV/manifest.txt"

# What travels: the tracked and untracked-not-ignored files, plus the carried folders.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb "$DEV/wheels" "$DEV/data" | awk '{s += $1} END {print s}')
total=$((tree_bytes + carry_bytes))
printf 'tree %.1f MiB + carried %.1f MiB = %.1f MiB of 64 MiB\n' \
    "$(echo "$tree_bytes / 1048576" | bc -l)" "$(echo "$carry_bytes / 1048576" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)"
((total < LIMIT_BYTES)) || die "the tree and .device/ come to $total bytes, over 64 MiB"
echo "wheels: $(ls "$DEV/wheels" | wc -l) ($(du -sh "$DEV/wheels" | cut -f1)); data: $(ls "$DEV/data")"
# The campaigns' committed states travel with the tree (docs/reproduction/<campaign>/).
for state in docs/reproduction/*/; do
    [ -f "$state/manifest.json" ] && echo "campaign state $state: $(du -sh "$state" | cut -f1)"
done
echo 'carry: [".device/wheels", ".device/data"]'
