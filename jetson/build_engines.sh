#!/usr/bin/env bash
# Build infomerge's TensorRT engines ON the Jetson (engines are specific to the GPU and the
# TensorRT version, so they are built where they run), then print the equivalent trtexec lines.
#
# It runs:  infomerge-export --backbone B --fp16 --engine trt --workspace W --retention R
#                            [--frames F] --llm L --output DIR [--model-path ...] [EXTRA ...]
# after sizing the builder workspace to the board's memory and showing the memory plan
# (infomerge-plan) for the board.
#
# Usage: jetson/build_engines.sh [options] [-- EXTRA infomerge-export arguments]
#   --backbone NAME     backbone (default ov-7b)
#   --output DIR        artifact directory (default artifacts/<backbone>-jetson)
#   --llm MODE          auto | int4 | none (default auto: int4 on boards with >= 30 GiB RAM, none
#                       below: there the fp16 checkpoint does not fit for the int4 conversion;
#                       build it on a workstation and copy it, see jetson/README.md)
#   --frames F          frames per video (default: the backbone's)
#   --retention R       InfoMerge retention ratio (default 0.15)
#   --workspace MB      TensorRT builder workspace (default by RAM: 1024 up to 8 GB boards,
#                       2048 up to 16 GB, 4096 above)
#   --model-path DIR    local checkpoint directory (default: the hub id, cached or downloaded)
#   --siglip-path DIR   local google/siglip-so400m-patch14-384 checkpoint (head weights)
#   --device NAME       infomerge-plan device (default: detected from the board)
#   --from-artifacts DIR  do not export: build engines for the graphs of DIR, an artifact directory
#                       exported elsewhere (e.g. on a workstation, with the int4 LLM), via
#                       python -m infomerge.engines.builder DIR --engine trt --workspace W
#   --dry-run           print the commands, run nothing
#   --trtexec-only      only print the trtexec lines for an existing artifact directory
#
# Inputs, overridable: INFOMERGE_MEMINFO (/proc/meminfo), INFOMERGE_DEVICE_MODEL
# (/proc/device-tree/model), INFOMERGE_EXPORT (infomerge-export), INFOMERGE_PLAN (infomerge-plan),
# INFOMERGE_PYTHON (python3).
#
# Exit status: that of the build (0 ok), 1 a missing tool or graph, 2 bad usage.
set -euo pipefail

MEMINFO="${INFOMERGE_MEMINFO:-/proc/meminfo}"
DEVICE_MODEL_FILE="${INFOMERGE_DEVICE_MODEL:-/proc/device-tree/model}"
EXPORT="${INFOMERGE_EXPORT:-infomerge-export}"
PLAN="${INFOMERGE_PLAN:-infomerge-plan}"
PYTHON="${INFOMERGE_PYTHON:-python3}"

BACKBONE="ov-7b"
OUTPUT=""
LLM="auto"
FRAMES=""
RETENTION="0.15"
WORKSPACE=""
MODEL_PATH=""
SIGLIP_PATH=""
DEVICE=""
FROM_ARTIFACTS=""
DRY_RUN=0
TRTEXEC_ONLY=0
EXTRA=()

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die_usage() {
    echo "build_engines.sh: $1" >&2
    echo "run 'jetson/build_engines.sh --help' for the options" >&2
    exit 2
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die_usage "$1 needs a value"
}

parse_args() {
    while (($#)); do
        case "$1" in
            --backbone) need_value "$@"; BACKBONE="$2"; shift ;;
            --output) need_value "$@"; OUTPUT="$2"; shift ;;
            --llm) need_value "$@"; LLM="$2"; shift ;;
            --frames) need_value "$@"; FRAMES="$2"; shift ;;
            --retention) need_value "$@"; RETENTION="$2"; shift ;;
            --workspace) need_value "$@"; WORKSPACE="$2"; shift ;;
            --model-path) need_value "$@"; MODEL_PATH="$2"; shift ;;
            --siglip-path) need_value "$@"; SIGLIP_PATH="$2"; shift ;;
            --device) need_value "$@"; DEVICE="$2"; shift ;;
            --from-artifacts) need_value "$@"; FROM_ARTIFACTS="$2"; shift ;;
            --dry-run) DRY_RUN=1 ;;
            --trtexec-only) TRTEXEC_ONLY=1 ;;
            -h | --help) usage; exit 0 ;;
            --) shift; EXTRA=("$@"); break ;;
            *) die_usage "unknown option '$1' (pass infomerge-export options after --)" ;;
        esac
        shift
    done
    case "$LLM" in auto | int4 | none) ;; *) die_usage "--llm must be auto, int4 or none, got '$LLM'" ;; esac
    [[ -z "$FRAMES" || "$FRAMES" =~ ^[1-9][0-9]*$ ]] || die_usage "--frames must be a positive integer, got '$FRAMES'"
    [[ -z "$WORKSPACE" || "$WORKSPACE" =~ ^[1-9][0-9]*$ ]] || die_usage "--workspace must be a positive integer (MiB), got '$WORKSPACE'"
    [[ "$RETENTION" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die_usage "--retention must be a number in (0, 1], got '$RETENTION'"
    if [[ -n "$FROM_ARTIFACTS" ]]; then
        [[ -z "$OUTPUT" || "$OUTPUT" == "$FROM_ARTIFACTS" ]] || die_usage "--from-artifacts builds in place; drop --output"
        OUTPUT="$FROM_ARTIFACTS"
    fi
    [[ -n "$OUTPUT" ]] || OUTPUT="artifacts/${BACKBONE}-jetson"
}

MEM_MIB=0
AVAIL_MIB=0
BOARD=""
detect() {
    if [[ -r "$MEMINFO" ]]; then
        MEM_MIB="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024}' "$MEMINFO")"
        AVAIL_MIB="$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024}' "$MEMINFO")"
    fi
    if [[ -r "$DEVICE_MODEL_FILE" ]]; then
        BOARD="$(tr -d '\0' <"$DEVICE_MODEL_FILE")"
    fi
    if [[ -z "$DEVICE" ]]; then
        case "$BOARD" in
            *"AGX Orin"*) if ((MEM_MIB > 40000)); then DEVICE=agx-orin-64gb; else DEVICE=agx-orin-32gb; fi ;;
            *"Orin NX"*) if ((MEM_MIB > 10000)); then DEVICE=orin-nx-16gb; else DEVICE=orin-nx-8gb; fi ;;
            *"Orin Nano"*) DEVICE=orin-nano-8gb ;;
        esac
    fi
    if [[ -z "$WORKSPACE" ]]; then
        if ((MEM_MIB > 0 && MEM_MIB <= 9000)); then
            WORKSPACE=1024
        elif ((MEM_MIB > 0 && MEM_MIB <= 17000)); then
            WORKSPACE=2048
        else
            WORKSPACE=4096
        fi
    fi
    if [[ "$LLM" == "auto" ]]; then
        if ((MEM_MIB >= 30000)); then LLM=int4; else LLM=none; fi
    fi
}

print_trtexec() {
    local -a args=("$OUTPUT" --workspace "$WORKSPACE")
    [[ -n "$FRAMES" ]] && args+=(--frames "$FRAMES")
    echo
    echo "Equivalent trtexec command lines (for reference and debugging; our builder already wrote the engines):"
    if compgen -G "$OUTPUT/*.onnx" >/dev/null; then
        "$PYTHON" -m infomerge.jetson.trtexec "${args[@]}"
    else
        echo "# (no graph in $OUTPUT yet: one line per $OUTPUT/<graph>.onnx, e.g.)"
        echo "/usr/src/tensorrt/bin/trtexec --onnx=$OUTPUT/vision.onnx --saveEngine=$OUTPUT/vision.trtexec.engine --fp16 --memPoolSize=workspace:${WORKSPACE}M --skipInference"
        echo "# TensorRT 11 (JetPack 7): --stronglyTyped instead of --fp16"
    fi
}

main() {
    parse_args "$@"
    detect

    echo "board: ${BOARD:-unknown}  RAM: ${MEM_MIB} MiB (available ${AVAIL_MIB} MiB)  planner device: ${DEVICE:-unknown}"
    echo "backbone $BACKBONE, retention $RETENTION, frames ${FRAMES:-backbone default}, workspace ${WORKSPACE} MiB, LLM $LLM"

    if ((TRTEXEC_ONLY)); then
        print_trtexec
        return 0
    fi

    if ((AVAIL_MIB > 0 && AVAIL_MIB < 3 * WORKSPACE)); then
        echo "warning: only ${AVAIL_MIB} MiB available for a ${WORKSPACE} MiB workspace; the build may fail with" \
            "allocation errors. Close other programs, stop the desktop (sudo systemctl isolate multi-user.target)," \
            "or pass --workspace $((WORKSPACE / 2)). See jetson/README.md, Troubleshooting." >&2
    fi
    if [[ -z "$FROM_ARTIFACTS" && "$LLM" == "none" && "$MEM_MIB" -gt 0 ]]; then
        echo "note: no LLM is built here (${MEM_MIB} MiB RAM). Export on a workstation with" \
            "'infomerge-export --backbone $BACKBONE --fp16 --llm int4 --output DIR', copy DIR here and run" \
            "'jetson/build_engines.sh --from-artifacts DIR' (jetson/README.md, step 4b)."
    fi

    if [[ -n "$DEVICE" ]] && { ((DRY_RUN)) || command -v "$PLAN" >/dev/null 2>&1; }; then
        local -a plan=("$PLAN" --device "$DEVICE" --backbone "$BACKBONE" --llm-quant int4 --retention "$RETENTION")
        [[ -n "$FRAMES" ]] && plan+=(--frames "$FRAMES")
        echo "+ ${plan[*]}"
        if ((!DRY_RUN)); then
            "${plan[@]}" || echo "warning: the memory plan says this does not fit $DEVICE; see the table above" >&2
        fi
    fi

    local -a cmd
    if [[ -n "$FROM_ARTIFACTS" ]]; then
        cmd=("$PYTHON" -m infomerge.engines.builder "$FROM_ARTIFACTS" --engine trt --workspace "$WORKSPACE")
    else
        cmd=("$EXPORT" --backbone "$BACKBONE" --fp16 --engine trt --workspace "$WORKSPACE"
            --retention "$RETENTION" --llm "$LLM" --output "$OUTPUT")
        [[ -n "$FRAMES" ]] && cmd+=(--frames "$FRAMES")
        [[ -n "$MODEL_PATH" ]] && cmd+=(--model-path "$MODEL_PATH")
        [[ -n "$SIGLIP_PATH" ]] && cmd+=(--siglip-path "$SIGLIP_PATH")
    fi
    ((${#EXTRA[@]})) && cmd+=("${EXTRA[@]}")
    echo "+ ${cmd[*]}"
    if ((DRY_RUN)); then
        print_trtexec
        return 0
    fi
    if [[ -n "$FROM_ARTIFACTS" ]]; then
        compgen -G "$FROM_ARTIFACTS/*.onnx" >/dev/null || {
            echo "build_engines.sh: no *.onnx graph in $FROM_ARTIFACTS; export it first (infomerge-export)" >&2
            exit 1
        }
    elif ! command -v "$EXPORT" >/dev/null 2>&1; then
        echo "build_engines.sh: '$EXPORT' not found: run jetson/setup.sh, then activate its venv (. .venv/bin/activate)" >&2
        exit 1
    fi

    local start=$SECONDS status=0
    "${cmd[@]}" || status=$?
    if ((status)); then
        echo "build_engines.sh: ${cmd[0]} failed (status $status) after $((SECONDS - start)) s;" \
            "see jetson/README.md, Troubleshooting" >&2
        exit "$status"
    fi
    echo "built in $((SECONDS - start)) s: $OUTPUT"
    print_trtexec
    echo
    echo "Next: infomerge-run --artifacts $OUTPUT --video VIDEO.mp4 --prompt 'Describe the video.'" \
        "--vision-backend trt --compress-backend trt --llm ort --device cuda"
    if [[ ! -d "$OUTPUT/llm" ]]; then
        echo "      (--llm ort needs the int4 LLM in $OUTPUT/llm: see jetson/README.md, step 4b)"
    fi
}

main "$@"
