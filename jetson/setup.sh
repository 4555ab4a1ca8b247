#!/usr/bin/env bash
# Set up infomerge on an NVIDIA Jetson (JetPack 6.1+ / L4T R36.4+, or JetPack 7).
#
# Detects the L4T release (and so the JetPack), CUDA, TensorRT, Python, torch and onnxruntime,
# checks them against what infomerge needs, then installs the package into a virtual environment
# that also sees JetPack's own TensorRT Python bindings (--system-site-packages):
#   - torch with CUDA from NVIDIA's Jetson wheel index when the system has none;
#   - infomerge itself (editable) with the extras asked for, torch pinned to the CUDA build;
#   - onnxruntime-gpu (CUDA and TensorRT providers) from the same index, replacing the CPU wheel;
#   - a final check that torch runs a kernel on the GPU, TensorRT imports and onnxruntime runs a
#     graph on the CUDA provider (python -m infomerge.jetson.install_check): a wheel built for
#     another GPU imports cleanly and fails only there, with the index to try instead.
# A requirement that is not met stops it with a line saying exactly what is missing and the fix.
#
# Usage: jetson/setup.sh [--check | --dry-run] [--venv DIR | --system-python] [--extras LIST]
#                        [--torch-index URL] [--no-ort-gpu] [--skip-gpu-check]
#   --check           detect and check only; exit 0 when every requirement is met, 1 otherwise
#   --dry-run         detect, check, and print the install commands instead of running them
#   --venv DIR        virtual environment to create or reuse (default: .venv in the repository)
#   --extras LIST     pip extras of infomerge, comma separated (default: none; "genai" adds the
#                     onnxruntime-genai model builder, needed only to BUILD the int4 LLM here)
#   --torch-index URL pip index with Jetson CUDA wheels of torch and onnxruntime-gpu
#                     (default by L4T release; also $INFOMERGE_TORCH_INDEX)
#   --no-ort-gpu      keep the CPU onnxruntime wheel
#   --skip-gpu-check  do not require a visible GPU at the end (container builds have none)
#
# Detection inputs, overridable (tests use fake files; containers have no /etc/nv_tegra_release):
#   INFOMERGE_NV_TEGRA_RELEASE (/etc/nv_tegra_release)  INFOMERGE_L4T (e.g. 36.4.3, skips that file)
#   INFOMERGE_DEVICE_MODEL (/proc/device-tree/model)    INFOMERGE_CUDA_HOME (/usr/local/cuda)
#   INFOMERGE_TRT_HEADER (/usr/include/aarch64-linux-gnu/NvInferVersion.h)
#   INFOMERGE_MEMINFO (/proc/meminfo)                   INFOMERGE_PYTHON (python3)
#
# Exit status: 0 ok, 1 a requirement is not met (or an install step failed), 2 bad usage.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NV_TEGRA_RELEASE="${INFOMERGE_NV_TEGRA_RELEASE:-/etc/nv_tegra_release}"
DEVICE_MODEL_FILE="${INFOMERGE_DEVICE_MODEL:-/proc/device-tree/model}"
CUDA_HOME_DIR="${INFOMERGE_CUDA_HOME:-/usr/local/cuda}"
TRT_HEADER="${INFOMERGE_TRT_HEADER:-/usr/include/aarch64-linux-gnu/NvInferVersion.h}"
MEMINFO="${INFOMERGE_MEMINFO:-/proc/meminfo}"
PYTHON="${INFOMERGE_PYTHON:-python3}"

# What infomerge needs.
MIN_PYTHON="3.10"
MIN_TRT="10.3"
MIN_CUDA="12.2"

MODE="install"
VENV_DIR="$REPO_DIR/.venv"
USE_VENV=1
EXTRAS=""
TORCH_INDEX="${INFOMERGE_TORCH_INDEX:-}"
ORT_GPU=1
GPU_CHECK=1

FAILS=0
WARNS=0

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die_usage() {
    echo "setup.sh: $1" >&2
    echo "run 'jetson/setup.sh --help' for the options" >&2
    exit 2
}

ok() { printf '  OK    %s\n' "$1"; }
warn() { printf '  WARN  %s\n' "$1"; WARNS=$((WARNS + 1)); }
fail() { printf '  FAIL  %s\n' "$1"; FAILS=$((FAILS + 1)); }

# version_ge A B: A >= B, comparing dotted numbers field by field.
version_ge() {
    local IFS=.
    local -a a b
    read -r -a a <<<"$1"
    read -r -a b <<<"$2"
    local i x y
    for ((i = 0; i < ${#a[@]} || i < ${#b[@]}; i++)); do
        x="${a[i]:-0}"
        y="${b[i]:-0}"
        x="${x%%[!0-9]*}"
        y="${y%%[!0-9]*}"
        ((10#${x:-0} > 10#${y:-0})) && return 0
        ((10#${x:-0} < 10#${y:-0})) && return 1
    done
    return 0
}

# ---- detection ----------------------------------------------------------------------------
L4T_VERSION=""
detect_l4t() {
    if [[ -n "${INFOMERGE_L4T:-}" ]]; then
        L4T_VERSION="${INFOMERGE_L4T#R}"
        return
    fi
    [[ -r "$NV_TEGRA_RELEASE" ]] || return 0
    # "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ..."
    local line major rev
    line="$(head -n 1 "$NV_TEGRA_RELEASE")"
    major="$(sed -n 's/^# R\([0-9][0-9]*\) (release).*/\1/p' <<<"$line")"
    rev="$(sed -n 's/.*REVISION: *\([0-9][0-9.]*\).*/\1/p' <<<"$line")"
    if [[ -n "$major" && -n "$rev" ]]; then
        L4T_VERSION="$major.$rev"
    fi
}

# jetpack_of L4T_VERSION -> JetPack release name
jetpack_of() {
    case "$1" in
        32.*) echo "4.x" ;;
        35.*) echo "5.1.x" ;;
        36.0* | 36.1* | 36.2*) echo "6.0 DP" ;;
        36.3*) echo "6.0" ;;
        36.4.0 | 36.4 | 36.4.1 | 36.4.2) echo "6.1" ;;
        36.4.3) echo "6.2" ;;
        36.4.* | 36.5*) echo "6.2.1" ;; # R36.4.4, R36.4.7, R36.5.0 (jetson-containers' L4T table)
        38.*) echo "7.0/7.1" ;;
        39.*) echo "7.2" ;;
        *) echo "unknown" ;;
    esac
}

BOARD=""
detect_board() {
    if [[ -r "$DEVICE_MODEL_FILE" ]]; then
        BOARD="$(tr -d '\0' <"$DEVICE_MODEL_FILE")"
    fi
}

CUDA_VERSION=""
detect_cuda() {
    local f="$CUDA_HOME_DIR/version.json"
    if [[ -r "$f" ]]; then
        # {"cuda" : {"name" : "CUDA SDK", "version" : "12.6.68"}, ...}
        CUDA_VERSION="$(tr -d '\n' <"$f" | sed -n 's/.*"cuda"[^}]*"version" *: *"\([0-9.]*\)".*/\1/p')"
    fi
    if [[ -z "$CUDA_VERSION" && -x "$CUDA_HOME_DIR/bin/nvcc" ]]; then
        CUDA_VERSION="$("$CUDA_HOME_DIR/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
    fi
    if [[ -z "$CUDA_VERSION" && -r "$CUDA_HOME_DIR/version.txt" ]]; then
        CUDA_VERSION="$(sed -n 's/^CUDA Version \([0-9.]*\).*/\1/p' "$CUDA_HOME_DIR/version.txt")"
    fi
    return 0
}

# header_define NAME: value of "#define NAME value" in the TensorRT header, following one alias
# (TensorRT 10 writes "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE").
header_define() {
    local v
    v="$(sed -n "s/^#define $1 \\([A-Za-z0-9_]*\\).*/\\1/p" "$TRT_HEADER" | head -n 1)"
    if [[ -n "$v" && ! "$v" =~ ^[0-9]+$ ]]; then
        v="$(sed -n "s/^#define $v \\([0-9][0-9]*\\).*/\\1/p" "$TRT_HEADER" | head -n 1)"
    fi
    echo "$v"
}

TRT_VERSION=""
TRT_SOURCE=""
detect_tensorrt() {
    if [[ -r "$TRT_HEADER" ]]; then
        local major minor patch
        major="$(header_define NV_TENSORRT_MAJOR)"
        minor="$(header_define NV_TENSORRT_MINOR)"
        patch="$(header_define NV_TENSORRT_PATCH)"
        if [[ -n "$major" ]]; then
            TRT_VERSION="$major.${minor:-0}.${patch:-0}"
            TRT_SOURCE="$TRT_HEADER"
        fi
    fi
    if [[ -z "$TRT_VERSION" && "$PY_TENSORRT" != "none" && -n "$PY_TENSORRT" ]]; then
        TRT_VERSION="$PY_TENSORRT"
        TRT_SOURCE="python module"
    fi
    return 0
}

# One Python run reports everything Python-side as key=value lines.
PY_VERSION=""
PY_EXE=""
PY_TENSORRT="none"
PY_TORCH="none"
PY_TORCH_CUDA="none"
PY_ORT="none"
PY_ORT_CUDA="none"
probe_python() {
    local out key value
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        return 0
    fi
    out="$("$PYTHON" - <<'PY' 2>/dev/null || true
import sys
print("python=%d.%d.%d" % sys.version_info[:3])
print("executable=" + sys.executable)
try:
    import tensorrt
    print("tensorrt=" + tensorrt.__version__)
except Exception:
    print("tensorrt=none")
try:
    import torch
    print("torch=" + torch.__version__.split("+")[0])
    print("torch_cuda=%d" % int(torch.cuda.is_available()))
except Exception:
    print("torch=none")
try:
    import onnxruntime as ort
    print("onnxruntime=" + ort.__version__)
    print("ort_cuda=%d" % int("CUDAExecutionProvider" in ort.get_available_providers()))
except Exception:
    print("onnxruntime=none")
PY
)"
    while IFS='=' read -r key value; do
        case "$key" in
            python) PY_VERSION="$value" ;;
            executable) PY_EXE="$value" ;;
            tensorrt) PY_TENSORRT="$value" ;;
            torch) PY_TORCH="$value" ;;
            torch_cuda) PY_TORCH_CUDA="$value" ;;
            onnxruntime) PY_ORT="$value" ;;
            ort_cuda) PY_ORT_CUDA="$value" ;;
        esac
    done <<<"$out"
}

MEM_MIB=""
SWAP_MIB=""
detect_memory() {
    [[ -r "$MEMINFO" ]] || return 0
    MEM_MIB="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024}' "$MEMINFO")"
    SWAP_MIB="$(awk '/^SwapTotal:/ {printf "%d", $2 / 1024}' "$MEMINFO")"
}

# planner_device: the infomerge-plan --device name for this board, from its model and memory.
planner_device() {
    local mem="${MEM_MIB:-0}"
    case "$BOARD" in
        *"AGX Orin"*) if ((mem > 40000)); then echo agx-orin-64gb; else echo agx-orin-32gb; fi ;;
        *"Orin NX"*) if ((mem > 10000)); then echo orin-nx-16gb; else echo orin-nx-8gb; fi ;;
        *"Orin Nano"*) echo orin-nano-8gb ;;
        *) echo "" ;;
    esac
}

default_torch_index() {
    case "$1" in
        36.*) echo "https://pypi.jetson-ai-lab.io/jp6/cu126" ;;
        38.*) echo "https://pypi.jetson-ai-lab.io/sbsa/cu130" ;; # JetPack 7.0/7.1: Thor only, CUDA 13.0
        39.*) echo "https://pypi.jetson-ai-lab.io/jp7/cu132" ;;  # JetPack 7.2: CUDA 13.2 (docs/jetson.md)
        *) echo "" ;;
    esac
}

# ---- checks -------------------------------------------------------------------------------
report_and_check() {
    local jp dev l4t_major
    jp="$(jetpack_of "${L4T_VERSION:-none}")"
    dev="$(planner_device)"
    echo "infomerge Jetson setup ($MODE)"
    echo "  board       : ${BOARD:-unknown (no $DEVICE_MODEL_FILE)}"
    echo "  L4T         : ${L4T_VERSION:+R$L4T_VERSION (JetPack $jp)}${L4T_VERSION:-not found}"
    echo "  CUDA        : ${CUDA_VERSION:-not found under $CUDA_HOME_DIR}"
    echo "  TensorRT    : ${TRT_VERSION:-not found}${TRT_SOURCE:+ (from $TRT_SOURCE)}"
    echo "  Python      : ${PY_VERSION:-not found ($PYTHON)}${PY_EXE:+ ($PY_EXE)}"
    echo "  torch       : $PY_TORCH (CUDA available: $PY_TORCH_CUDA)"
    echo "  onnxruntime : $PY_ORT (CUDA provider: $PY_ORT_CUDA)"
    echo "  memory      : ${MEM_MIB:-?} MiB RAM (shared by CPU and GPU), ${SWAP_MIB:-?} MiB swap"
    echo "checks:"

    if [[ -z "$L4T_VERSION" ]]; then
        fail "no L4T release: $NV_TEGRA_RELEASE is missing or unreadable, so this is not a Jetson running Jetson Linux. Run this script on the board (or set INFOMERGE_L4T=36.4.3 inside a container)."
    else
        l4t_major="${L4T_VERSION%%.*}"
        if ! version_ge "$L4T_VERSION" 36; then
            fail "L4T R$L4T_VERSION (JetPack $jp) is too old: infomerge needs Python >= $MIN_PYTHON and TensorRT >= $MIN_TRT, which come with JetPack 6.1 (L4T R36.4) or newer. Reflash the board with JetPack 6.1+ (SD card image or SDK Manager)."
        elif ! version_ge "$L4T_VERSION" 36.4; then
            fail "L4T R$L4T_VERSION (JetPack $jp) ships TensorRT 8.6; infomerge needs TensorRT >= $MIN_TRT, which comes with JetPack 6.1 (L4T R36.4). Upgrade to JetPack 6.1+ (NVIDIA's over-the-air upgrade of the r36 apt source, or a reflash)."
        elif ((l4t_major > 39)); then
            warn "L4T R$L4T_VERSION is newer than the releases infomerge was written for (R36.4 to R39); continuing"
        else
            ok "L4T R$L4T_VERSION (JetPack $jp) is supported"
        fi
    fi

    if [[ -z "$CUDA_VERSION" ]]; then
        fail "CUDA not found under $CUDA_HOME_DIR (no version.json, bin/nvcc or version.txt). Install JetPack's CUDA: sudo apt install nvidia-jetpack (or set INFOMERGE_CUDA_HOME)."
    elif ! version_ge "$CUDA_VERSION" "$MIN_CUDA"; then
        fail "CUDA $CUDA_VERSION is older than $MIN_CUDA; JetPack 6.1+ ships CUDA 12.6. Upgrade JetPack."
    else
        ok "CUDA $CUDA_VERSION"
    fi

    if [[ -z "$TRT_VERSION" ]]; then
        fail "TensorRT not found ($TRT_HEADER missing and 'import tensorrt' fails). Install JetPack's TensorRT: sudo apt install nvidia-jetpack (or: sudo apt install tensorrt python3-libnvinfer)."
    elif ! version_ge "$TRT_VERSION" "$MIN_TRT"; then
        fail "TensorRT $TRT_VERSION is older than $MIN_TRT; JetPack 6.1+ ships TensorRT 10.3. Upgrade JetPack."
    else
        ok "TensorRT $TRT_VERSION"
        if version_ge "$TRT_VERSION" 11; then
            ok "TensorRT 11 builds strongly typed networks only: export with --fp16 so the ONNX carries fp16 (build_engines.sh does)"
        fi
    fi

    if [[ -z "$PY_VERSION" ]]; then
        fail "Python not found ($PYTHON). Install it: sudo apt install python3 python3-venv python3-pip"
    elif ! version_ge "$PY_VERSION" "$MIN_PYTHON"; then
        fail "Python $PY_VERSION is older than $MIN_PYTHON (pyproject requires-python). JetPack 6 ships Python 3.10."
    else
        ok "Python $PY_VERSION"
        if [[ -n "$TRT_VERSION" && "$PY_TENSORRT" == "none" ]]; then
            fail "TensorRT's Python bindings are not importable by $PYTHON. Install them: sudo apt install python3-libnvinfer python3-libnvinfer-dev"
        fi
        if [[ "$MODE" != "check" ]] && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 && ((USE_VENV)); then
            fail "$PYTHON cannot create virtual environments. Install: sudo apt install python3-venv python3-pip"
        fi
    fi

    if [[ ",$EXTRAS," == *",genai,"* && -n "$PY_VERSION" ]] && ! version_ge "$PY_VERSION" 3.12; then
        fail "--extras genai: onnxruntime-genai publishes no aarch64 wheel for Python $PY_VERSION on PyPI. Export the int4 LLM on a workstation (infomerge-export --llm int4 --llm-ep cuda) and copy it here (jetson/README.md, step 4); drop --extras genai."
    fi

    case "$PY_TORCH_CUDA" in
        1) ok "torch $PY_TORCH sees the GPU (kept, pinned while installing infomerge)" ;;
        0) warn "torch $PY_TORCH is a CPU-only build; setup installs the Jetson CUDA wheel into the venv" ;;
        *) ok "no torch yet; setup installs the Jetson CUDA wheel from ${TORCH_INDEX:-the Jetson index}" ;;
    esac

    if [[ -n "$MEM_MIB" ]]; then
        if ((MEM_MIB < 9000)); then
            warn "${MEM_MIB} MiB RAM shared by CPU and GPU: build engines with a bounded workspace (build_engines.sh does), stop the desktop (sudo systemctl isolate multi-user.target) and add swap before building; see jetson/README.md"
        fi
        if ((MEM_MIB < 30000)); then
            warn "less than 30 GiB RAM: build the int4 LLM on a workstation (infomerge-export --llm int4 --llm-ep cuda) and copy it here; see jetson/README.md"
        fi
    fi
    if [[ -n "$dev" ]]; then
        local bb=ov-0.5b
        [[ "$dev" == agx-orin-* ]] && bb=ov-7b
        ok "memory planner: infomerge-plan --device $dev --backbone $bb --llm-quant int4 --retention 0.15"
    fi
}

# ---- install ------------------------------------------------------------------------------
run() {
    printf '+ %s\n' "$*"
    if [[ "$MODE" == "install" ]]; then
        "$@"
    fi
}

install() {
    local vpy spec constraints
    if ((USE_VENV)); then
        run "$PYTHON" -m venv --system-site-packages "$VENV_DIR"
        vpy="$VENV_DIR/bin/python"
    else
        vpy="$PYTHON"
    fi
    run "$vpy" -m pip install --upgrade pip setuptools wheel

    if [[ "$PY_TORCH_CUDA" != "1" ]]; then
        run "$vpy" -m pip install --index-url "$TORCH_INDEX" torch
    fi
    constraints="${VENV_DIR}/jetson-constraints.txt"
    ((USE_VENV)) || constraints="${TMPDIR:-/tmp}/infomerge-jetson-constraints.txt"
    if [[ "$MODE" == "install" ]]; then
        "$vpy" -c 'import torch; print("torch==" + torch.__version__)' >"$constraints"
    fi
    echo "+ pin torch to the CUDA build: $constraints"

    spec="$REPO_DIR"
    [[ -n "$EXTRAS" ]] && spec="${REPO_DIR}[${EXTRAS}]"
    run "$vpy" -m pip install --constraint "$constraints" -e "$spec"

    if ((ORT_GPU)) && [[ "$PY_ORT_CUDA" != "1" ]]; then
        # both wheels own the same onnxruntime/ package folder: remove both, then install the GPU one
        run "$vpy" -m pip uninstall -y onnxruntime onnxruntime-gpu
        run "$vpy" -m pip install --index-url "$TORCH_INDEX" --constraint "$constraints" onnxruntime-gpu
    fi
    verify "$vpy"
}

verify() {
    local vpy="$1"
    local -a opts=(--min-trt "$MIN_TRT" --torch-index "$TORCH_INDEX")
    ((GPU_CHECK)) || opts+=(--no-gpu)
    ((ORT_GPU)) || opts+=(--no-ort-gpu)
    # runs a kernel in torch and a graph in onnxruntime on the GPU (infomerge/jetson/install_check.py)
    run "$vpy" -m infomerge.jetson.install_check "${opts[@]}" || {
        echo "setup.sh: the installation does not work; fix the FAIL lines above" >&2
        exit 1
    }
}

main() {
    while (($#)); do
        case "$1" in
            --check) MODE="check" ;;
            --dry-run) MODE="dry-run" ;;
            --venv)
                [[ $# -ge 2 ]] || die_usage "--venv needs a directory"
                VENV_DIR="$2"
                shift
                ;;
            --system-python) USE_VENV=0 ;;
            --extras)
                [[ $# -ge 2 ]] || die_usage "--extras needs a list such as genai,compare"
                EXTRAS="$2"
                shift
                ;;
            --torch-index)
                [[ $# -ge 2 ]] || die_usage "--torch-index needs a URL"
                TORCH_INDEX="$2"
                shift
                ;;
            --no-ort-gpu) ORT_GPU=0 ;;
            --skip-gpu-check) GPU_CHECK=0 ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die_usage "unknown option '$1'" ;;
        esac
        shift
    done
    if [[ -n "$EXTRAS" && ! "$EXTRAS" =~ ^[a-z0-9_,-]+$ ]]; then
        die_usage "--extras takes names separated by commas, got '$EXTRAS'"
    fi

    detect_l4t
    detect_board
    detect_cuda
    probe_python
    detect_tensorrt
    detect_memory
    [[ -n "$TORCH_INDEX" ]] || TORCH_INDEX="$(default_torch_index "${L4T_VERSION:-none}")"

    report_and_check
    if ((FAILS)); then
        echo "setup.sh: $FAILS requirement(s) not met; fix the FAIL lines above and run it again" >&2
        exit 1
    fi
    if [[ "$MODE" == "check" ]]; then
        echo "setup.sh: every requirement is met ($WARNS warning(s))"
        exit 0
    fi
    if [[ -z "$TORCH_INDEX" ]]; then
        echo "setup.sh: no default wheel index for L4T R$L4T_VERSION; pass --torch-index URL" >&2
        exit 1
    fi
    install
    if [[ "$MODE" == "install" ]]; then
        echo "setup.sh: done. Activate with: . $VENV_DIR/bin/activate   then: jetson/build_engines.sh --help"
    fi
}

main "$@"
