#!/usr/bin/env bash
# The GPU check of issue 20 (item 8), one command for the first task that is lent a device:
#
#   1. environment: GPU, driver, Python and library versions;
#   2. `pytest -m cuda` (tests/test_cuda.py): vision and compression on the device without host
#      round trips, the Triton merge kernel at the 7B shape, the torch LLM eager and compiled with
#      CUDA graphs, the bench's CUDA-event timing;
#   3. the ov-7b random-weight checkpoint, drawn on the GPU (seconds; 5 min on a CPU);
#   4. infomerge-bench --backbone ov-7b --random-weights --device cuda (torch backend, plus the
#      Hugging Face row where the bench has one), retentions 1.0 0.15 0.05;
#   5. the report: $OUT/gpu.md, docs/gpu.md with the figures and the goals marked met / not met.
#
# On the device machine (docs/gpu.md says how to call it):   bash scripts/device_check.sh
#   with `.whl` carried (scripts/device_wheels.sh prepares PyAV and scikit-video there).
# Dry run on a machine without a GPU (automatic when torch sees no CUDA device):
#   DEVICE_CHECK_DRY_RUN=1 PYTHON=.venv/bin/python bash scripts/device_check.sh
#   (tiny backbone on the CPU: every step but the CUDA work runs; the cuda tests skip).
#
# Environment: OUT (results folder; default runs/device-check), PYTHON (default python3),
# DEVICE_CHECK_BUDGET_S (whole script, default 450 s), DEVICE_CHECK_ONLY (steps to run, e.g.
# "pytest-cuda" or "checkpoint bench", for a shorter second call), DEVICE_CHECK_COMPILE=1 (also
# the bench's torch.compile rows: minutes of compilation for a 7B LLM), INFOMERGE_CACHE (where the
# checkpoint goes; default /dev/shm when it has 40 GB free).
# Files under $OUT (at most 8, as the device tool returns them): device_check.log, steps.tsv,
# pytest-cuda.xml, bench/results.json, bench/results.md, bench/bench.png, gpu.md.
# Exit status: 0 when every step succeeded, 1 otherwise (the report is written either way).

set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
OUT=${OUT:-$REPO/runs/device-check}
PY=${PYTHON:-python3}
BUDGET=${DEVICE_CHECK_BUDGET_S:-450}
START=$SECONDS
mkdir -p "$OUT" || exit 2
LOG=$OUT/device_check.log
STEPS=$OUT/steps.tsv
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
printf 'step\tseconds\texit\n' >"$STEPS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
FAILED=0

# step NAME LIMIT_S CMD...: run CMD under a time limit that also fits the budget; record it
step() {
    local name=$1 limit=$2 left rc t0
    shift 2
    if [[ -n ${DEVICE_CHECK_ONLY:-} && " $DEVICE_CHECK_ONLY wheels environment report " != *" $name "* ]]; then
        echo "== $name: not in DEVICE_CHECK_ONLY ($DEVICE_CHECK_ONLY)"
        return 0
    fi
    left=$((BUDGET - (SECONDS - START) - 25)) # 25 s kept for the report
    if ((left < limit)); then limit=$left; fi
    if ((limit < 10)); then
        echo "== $name: skipped, the ${BUDGET}s budget is spent"
        printf '%s\t0\t124\n' "$name" >>"$STEPS"
        FAILED=1
        return 124
    fi
    echo "== $name (limit ${limit}s)"
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    printf '%s\t%s\t%d\n' "$name" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')" "$rc" >>"$STEPS"
    if ((rc != 0)); then
        echo "== $name: exit status $rc$( ((rc == 124)) && echo ' (time limit)')"
        FAILED=1
    fi
    return "$rc"
}

# ---- carried wheels (PyAV, scikit-video): installed beside the image's packages -------------
shopt -s nullglob
WHEELS=(.whl/*.whl)
if ((${#WHEELS[@]})); then
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/infomerge-site.XXXXXX")
    trap 'rm -rf "$SITE"' EXIT
    step wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "${WHEELS[@]}" && export PYTHONPATH=$REPO:$SITE
fi

# ---- mode ----------------------------------------------------------------------------------------
if [[ ${DEVICE_CHECK_DRY_RUN:-0} == 1 ]] || ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    MODE=dry-run DEVICE=cpu BACKBONE=tiny RUNS=2 WARMUP=1 TTFT_RUNS=1
else
    MODE=device DEVICE=cuda BACKBONE=ov-7b RUNS=5 WARMUP=2 TTFT_RUNS=3
    if [[ -z ${INFOMERGE_CACHE:-} ]]; then # the 16 GB checkpoint in memory when there is room
        if (($(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}') > 40 * 1024 * 1024)); then
            export INFOMERGE_CACHE=/dev/shm/infomerge
        else
            export INFOMERGE_CACHE=/tmp/infomerge-cache
        fi
    fi
fi
echo "== device check: mode $MODE, backbone $BACKBONE on $DEVICE, budget ${BUDGET}s, results in $OUT"

ENVIRONMENT='
import importlib.metadata as md, os, platform, shutil, subprocess, time, torch
print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "| python", platform.python_version(),
      "| cpus", os.cpu_count(), "| load", os.getloadavg())
if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"])
print("torch", torch.__version__, "cuda", torch.version.cuda, "| device:",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for d in ("transformers", "triton", "onnx", "onnxruntime", "av", "scikit-video", "numpy", "safetensors"):
    try:
        print(f"  {d} {md.version(d)}")
    except md.PackageNotFoundError:
        print(f"  {d} not installed")
'
step environment 30 "$PY" -c "$ENVIRONMENT"

# ---- pytest -m cuda ------------------------------------------------------------------------------
PYTEST=("$PY" -m pytest -q -m cuda -p no:cacheprovider -rA tests/test_cuda.py --junitxml="$OUT/pytest-cuda.xml")
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then PYTEST+=(--timeout=100); fi
step pytest-cuda 220 "${PYTEST[@]}"
if [[ $MODE == dry-run ]]; then # what CI checks on the CPU in place of the device's sync check
    step pytest-host-sync 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_host_sync.py
fi

# ---- the benchmark -------------------------------------------------------------------------------
if "$PY" -c 'import av' 2>/dev/null; then
    step checkpoint 200 "$PY" -c "from infomerge.backbones.random_weights import random_checkpoint as r; print(r('$BACKBONE'))"
    BACKENDS=$("$PY" -c 'from infomerge.bench.stages import BACKENDS as b; print(" ".join(x for x in ("hf", "torch") if x in b))')
    COMPILE=--no-torch-compile
    [[ ${DEVICE_CHECK_COMPILE:-0} == 1 ]] && COMPILE=--torch-compile
    # shellcheck disable=SC2086 # BACKENDS is a word list
    step bench 330 "$PY" -m infomerge.bench.cli --backbone "$BACKBONE" --random-weights --device "$DEVICE" \
        --backends $BACKENDS --method infomerge --retention 1.0 0.15 0.05 --runs "$RUNS" \
        --warmup "$WARMUP" --ttft-runs "$TTFT_RUNS" --decode-tokens 16 "$COMPILE" --output "$OUT/bench"
else
    echo "== bench: skipped: PyAV is not installed (it decodes the video). Run scripts/device_wheels.sh on a"
    echo "   machine with network access and carry .whl (docs/gpu.md)."
    printf 'bench\t0\t127\n' >>"$STEPS"
    FAILED=1
fi

# ---- the report ------------------------------------------------------------------------------------
BUDGET=$((BUDGET + 25)) # the reserve
step report 25 "$PY" -m infomerge.bench.gpu_report --results "$OUT/bench/results.json" \
    --pytest-xml "$OUT/pytest-cuda.xml" --steps "$STEPS" --template docs/gpu.md --output "$OUT/gpu.md"
if [[ -f $OUT/gpu.md ]]; then # the figures last: the device tool returns the output's tail
    sed -n '/^### pytest -m cuda/,/<!-- device-check:end -->/p' "$OUT/gpu.md"
fi
echo "== device check done in $((SECONDS - START)) s, mode $MODE, $( ((FAILED)) && echo 'some steps failed' || echo 'every step succeeded')"
exit "$FAILED"
