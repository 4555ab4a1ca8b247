#!/usr/bin/env bash
# Build infomerge's TensorRT engines ON the Jetson (engines are specific to the GPU and the
# TensorRT version, so they are built where they run), then print the equivalent trtexec lines.
#
# Two modes:
#   export here:  infomerge-export --backbone B --fp16 --engine trt --workspace W --retention R
#                 [--merge-plugin] --llm L [--llm-ep cuda] --output DIR [--model-path ...] [EXTRA ...]
#   --from-artifacts DIR: build engines for the graphs of DIR, exported elsewhere (a workstation,
#                 with the int4 LLM); the backbone, frames and LLM execution provider are read from
#                 DIR/manifest.json and checked against what infomerge-run needs on this board.
# Before either, it sizes the builder workspace to the board's memory, shows the memory plan
# (infomerge-plan), and says which engines the board's TensorRT gets:
#   - the merge plugin graph (compress_plugin.onnx) only where TensorRT >= 10.9 can load Python AOT
#     plugins (JetPack 7.2: 10.16; TensorRT 11); the standard graph compress.onnx everywhere (it is
#     the one infomerge-run uses);
#   - TensorRT 10 (JetPack 6.x, JetPack 7.2): weakly typed network with the FP16 builder flag;
#     TensorRT 11: strongly typed (the fp16 ONNX decides every layer's precision).
#
# Usage: jetson/build_engines.sh [options] [-- EXTRA infomerge-export arguments]
#   --backbone NAME     tiny | ov-0.5b | ov-7b | llava-video-7b (default ov-0.5b; with
#                       --from-artifacts: the artifact's, and a different one is refused)
#   --output DIR        artifact directory (default artifacts/<backbone>, as infomerge-export)
#   --llm MODE          auto | int4 | none (default auto: int4, built for the CUDA execution
#                       provider, where onnxruntime-genai imports and the board has >= 30 GiB RAM;
#                       none otherwise: export the LLM on a workstation, see jetson/README.md)
#   --retention R       InfoMerge retention ratio (default 0.15)
#   --workspace MB      TensorRT builder workspace (default by RAM: 1024 up to 8 GB boards,
#                       2048 up to 16 GB, 4096 above)
#   --model-path DIR    local checkpoint directory (default: the hub id, cached or downloaded)
#   --siglip-path DIR   local google/siglip-so400m-patch14-384 checkpoint (head weights)
#   --device NAME       infomerge-plan device (default: detected from the board)
#   --from-artifacts DIR  do not export: build engines for the graphs of DIR (see above)
#   --dry-run           print the commands, run nothing
#   --trtexec-only      only print the trtexec lines for an existing artifact directory
# There is no --frames: infomerge-run samples the backbone's own frame count and refuses artifacts
# exported for another one.
#
# Inputs, overridable: INFOMERGE_MEMINFO (/proc/meminfo), INFOMERGE_DEVICE_MODEL
# (/proc/device-tree/model), INFOMERGE_TRT_HEADER (/usr/include/aarch64-linux-gnu/NvInferVersion.h),
# INFOMERGE_TRT_VERSION (skips the header and the tensorrt module), INFOMERGE_EXPORT
# (infomerge-export), INFOMERGE_PLAN (infomerge-plan), INFOMERGE_PYTHON (python3).
#
# Exit status: that of the build (0 ok), 1 a missing tool or graph or an artifact this board cannot
# run, 2 bad usage.
set -euo pipefail

MEMINFO="${INFOMERGE_MEMINFO:-/proc/meminfo}"
DEVICE_MODEL_FILE="${INFOMERGE_DEVICE_MODEL:-/proc/device-tree/model}"
TRT_HEADER="${INFOMERGE_TRT_HEADER:-/usr/include/aarch64-linux-gnu/NvInferVersion.h}"
EXPORT="${INFOMERGE_EXPORT:-infomerge-export}"
PLAN="${INFOMERGE_PLAN:-infomerge-plan}"
PYTHON="${INFOMERGE_PYTHON:-python3}"

# The registry's backbones and the frames infomerge-run samples for each
# (infomerge/backbones/registry.py; tests/test_jetson_scripts.py checks both against it).
BACKBONES="tiny ov-0.5b ov-7b llava-video-7b"
backbone_frames() {
    case "$1" in
        llava-video-7b) echo 64 ;;
        *) echo 32 ;;
    esac
}
# TensorRT loads Python AOT plugins (the merge plugin) from this version on
# (infomerge.engines.flavour.PLUGIN_MIN_TRT; the tests check they agree).
PLUGIN_MIN_TRT="10.9"

BACKBONE="ov-0.5b"
BACKBONE_SET=0
OUTPUT=""
LLM="auto"
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

die() {
    echo "build_engines.sh: $1" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die_usage "$1 needs a value"
}

# quoted CMD...: the command as one line that a shell reads back as the same words.
quoted() {
    local out="" w
    for w in "$@"; do
        out+="${out:+ }$(printf '%q' "$w")"
    done
    printf '%s\n' "$out"
}

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

parse_args() {
    while (($#)); do
        case "$1" in
            --backbone) need_value "$@"; BACKBONE="$2"; BACKBONE_SET=1; shift ;;
            --output) need_value "$@"; OUTPUT="$2"; shift ;;
            --llm) need_value "$@"; LLM="$2"; shift ;;
            --frames) die_usage "--frames is not an option: infomerge-run samples the backbone's own frame count ($(backbone_frames "$BACKBONE") for $BACKBONE) and refuses artifacts exported for another; drop it" ;;
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
    case " $BACKBONES " in
        *" $BACKBONE "*) ;;
        *) die_usage "unknown backbone '$BACKBONE'; choose one of: ${BACKBONES// /, } (ov-0.5b for 8 GB boards, ov-7b for AGX Orin)" ;;
    esac
    case "$LLM" in auto | int4 | none) ;; *) die_usage "--llm must be auto, int4 or none, got '$LLM'" ;; esac
    [[ -z "$WORKSPACE" || "$WORKSPACE" =~ ^[1-9][0-9]*$ ]] || die_usage "--workspace must be a positive integer (MiB), got '$WORKSPACE'"
    [[ "$RETENTION" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die_usage "--retention must be a number in (0, 1], got '$RETENTION'"
    if [[ -n "$FROM_ARTIFACTS" ]]; then
        [[ -z "$OUTPUT" || "$OUTPUT" == "$FROM_ARTIFACTS" ]] || die_usage "--from-artifacts builds in place; drop --output"
        [[ "$LLM" == "auto" ]] || die_usage "--llm does not apply to --from-artifacts (the LLM comes with the artifact); drop it"
        ((${#EXTRA[@]} == 0)) || die_usage "infomerge-export options after -- do not apply to --from-artifacts; drop them"
        OUTPUT="$FROM_ARTIFACTS"
    fi
    [[ -n "$OUTPUT" ]] || OUTPUT="artifacts/${BACKBONE}"
}

MEM_MIB=0
AVAIL_MIB=0
BOARD=""
TRT_VERSION=""
PLUGIN=0
detect_trt() {
    if [[ -n "${INFOMERGE_TRT_VERSION:-}" ]]; then
        TRT_VERSION="$INFOMERGE_TRT_VERSION"
    elif [[ -r "$TRT_HEADER" ]]; then
        local major minor patch
        major="$(header_define NV_TENSORRT_MAJOR)"
        minor="$(header_define NV_TENSORRT_MINOR)"
        patch="$(header_define NV_TENSORRT_PATCH)"
        [[ -n "$major" ]] && TRT_VERSION="$major.${minor:-0}.${patch:-0}"
    fi
    if [[ -z "$TRT_VERSION" ]]; then
        TRT_VERSION="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
    fi
    if [[ -n "$TRT_VERSION" ]] && version_ge "$TRT_VERSION" "$PLUGIN_MIN_TRT"; then
        PLUGIN=1
    fi
}

# header_define NAME: value of "#define NAME value" in the TensorRT header, following one alias.
header_define() {
    local v
    v="$(sed -n "s/^#define $1 \\([A-Za-z0-9_]*\\).*/\\1/p" "$TRT_HEADER" | head -n 1)"
    if [[ -n "$v" && ! "$v" =~ ^[0-9]+$ ]]; then
        v="$(sed -n "s/^#define $v \\([0-9][0-9]*\\).*/\\1/p" "$TRT_HEADER" | head -n 1)"
    fi
    echo "$v"
}

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
    if [[ "$LLM" == "auto" && -z "$FROM_ARTIFACTS" ]]; then
        if ((MEM_MIB >= 30000)) && "$PYTHON" -c 'import onnxruntime_genai' >/dev/null 2>&1; then
            LLM=int4
        else
            LLM=none
        fi
    fi
    detect_trt
}

# Reads backbone, frames and the LLM's execution provider from DIR/manifest.json and checks them
# against what infomerge-run --device cuda needs.
ART_FRAMES=""
ART_LLM_EP=""
read_artifact() {
    local dir="$1" manifest="$1/manifest.json" out name
    [[ -d "$dir" ]] || die "--from-artifacts $dir: no such directory. Copy the workstation's export here first (jetson/README.md, step 4)."
    [[ -r "$manifest" ]] || die "$dir has no manifest.json: it is not an infomerge-export directory. Export it with infomerge-export --output $dir."
    out="$("$PYTHON" - "$manifest" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print("backbone=" + str(m.get("backbone", {}).get("name", "")))
print("frames=" + str(m.get("frames") or ""))
print("llm_ep=" + str((m.get("llm") or {}).get("execution_provider", "")))
PY
)" || die "$manifest is not readable JSON; re-copy the artifact directory"
    while IFS='=' read -r key value; do
        case "$key" in
            backbone) name="$value" ;;
            frames) ART_FRAMES="$value" ;;
            llm_ep) ART_LLM_EP="$value" ;;
        esac
    done <<<"$out"
    [[ -n "$name" ]] || die "$manifest names no backbone; re-export the directory with infomerge-export"
    if ((BACKBONE_SET)) && [[ "$name" != "$BACKBONE" ]]; then
        die_usage "$dir holds a $name export, not $BACKBONE; drop --backbone (it is read from the artifact) or pass --backbone $name"
    fi
    BACKBONE="$name"
    local want
    want="$(backbone_frames "$BACKBONE")"
    if [[ -n "$ART_FRAMES" && "$ART_FRAMES" != "$want" ]]; then
        die "$dir was exported for $ART_FRAMES frames; infomerge-run samples $want for $BACKBONE and would refuse it. Re-export without --frames."
    fi
    if [[ -n "$ART_LLM_EP" && "$ART_LLM_EP" != "cuda" ]]; then
        die "$dir/llm was built for the $ART_LLM_EP execution provider; infomerge-run --device cuda refuses it. Re-export on the workstation with --llm int4 --llm-ep cuda."
    fi
}

print_trtexec() {
    local -a args=("$OUTPUT" --workspace "$WORKSPACE")
    [[ -n "$TRT_VERSION" ]] && args+=(--trt-major "${TRT_VERSION%%.*}")
    echo
    echo "Equivalent trtexec command lines (for reference and debugging; our builder already wrote the engines):"
    if compgen -G "$OUTPUT/*.onnx" >/dev/null; then
        "$PYTHON" -m infomerge.jetson.trtexec "${args[@]}"
    else
        local flag="--fp16"
        [[ -n "$TRT_VERSION" ]] && version_ge "$TRT_VERSION" 11 && flag="--stronglyTyped"
        echo "# (no graph in $OUTPUT yet: one line per $OUTPUT/<graph>.onnx, e.g.)"
        quoted /usr/src/tensorrt/bin/trtexec "--onnx=$OUTPUT/vision.onnx" "--saveEngine=$OUTPUT/vision.trtexec.engine" \
            "$flag" "--memPoolSize=workspace:${WORKSPACE}M" --skipInference
    fi
}

# The builder command for one graph of --from-artifacts DIR; the plugin graph registers the plugin first.
builder_cmd() {
    local graph="$1"
    if [[ "$(basename "$graph")" == compress_plugin.onnx ]]; then
        BUILD=("$PYTHON" -c 'import sys; from infomerge.engines.plugin import register_plugin; register_plugin(); from infomerge.engines.builder import main; sys.exit(main(sys.argv[1:]))'
            "$graph" --engine trt --workspace "$WORKSPACE" --out "$OUTPUT/engines")
    else
        BUILD=("$PYTHON" -m infomerge.engines.builder "$graph" --engine trt --workspace "$WORKSPACE" --out "$OUTPUT/engines")
    fi
}

main() {
    parse_args "$@"
    detect
    if [[ -n "$FROM_ARTIFACTS" ]]; then
        read_artifact "$FROM_ARTIFACTS"
    fi

    echo "board: ${BOARD:-unknown}  RAM: ${MEM_MIB} MiB (available ${AVAIL_MIB} MiB)  planner device: ${DEVICE:-unknown}"
    echo "backbone $BACKBONE, retention $RETENTION, frames $(backbone_frames "$BACKBONE"), workspace ${WORKSPACE} MiB, LLM ${FROM_ARTIFACTS:+from the artifact}${FROM_ARTIFACTS:-$LLM}"
    if [[ -z "$TRT_VERSION" ]]; then
        echo "TensorRT: not found (no $TRT_HEADER, no tensorrt module): run jetson/setup.sh --check"
    elif version_ge "$TRT_VERSION" 11; then
        echo "TensorRT $TRT_VERSION: strongly typed networks (the fp16 ONNX decides each layer's precision)"
    else
        echo "TensorRT $TRT_VERSION: weakly typed networks with the FP16 builder flag"
    fi
    if ((PLUGIN)); then
        echo "merge graph: plugin graph compress_plugin.onnx as well (TensorRT $TRT_VERSION >= $PLUGIN_MIN_TRT loads the Python AOT merge plugin); infomerge-run uses the standard compress.onnx engine"
    else
        echo "merge graph: standard graph compress.onnx only (TensorRT ${TRT_VERSION:-unknown} < $PLUGIN_MIN_TRT cannot load the Python AOT merge plugin)"
    fi

    if ((TRTEXEC_ONLY)); then
        print_trtexec
        return 0
    fi

    if ((AVAIL_MIB > 0 && AVAIL_MIB < 3 * WORKSPACE)); then
        echo "warning: only ${AVAIL_MIB} MiB available for a ${WORKSPACE} MiB workspace; the build may fail with" \
            "allocation errors. Close other programs, stop the desktop (sudo systemctl isolate multi-user.target)," \
            "or pass --workspace $((WORKSPACE / 2)). See jetson/README.md, Troubleshooting." >&2
    fi
    if [[ -z "$FROM_ARTIFACTS" && "$LLM" == "none" ]]; then
        echo "note: no LLM is built here (onnxruntime-genai missing or under 30 GiB RAM). Export it on a workstation:" \
            "$(quoted infomerge-export --backbone "$BACKBONE" --fp16 --llm int4 --llm-ep cuda --output "artifacts/$BACKBONE")," \
            "copy the directory here and run $(quoted jetson/build_engines.sh --from-artifacts "artifacts/$BACKBONE") (jetson/README.md, step 4)."
    fi

    if [[ -n "$DEVICE" ]] && { ((DRY_RUN)) || command -v "$PLAN" >/dev/null 2>&1; }; then
        local -a plan=("$PLAN" --device "$DEVICE" --backbone "$BACKBONE" --llm-quant int4 --retention "$RETENTION")
        echo "+ $(quoted "${plan[@]}")"
        if ((!DRY_RUN)); then
            "${plan[@]}" || echo "warning: the memory plan says this does not fit $DEVICE; see the table above" >&2
        fi
    fi

    local -a cmds=()
    local -a cmd
    if [[ -n "$FROM_ARTIFACTS" ]]; then
        local g n=0
        for g in "$FROM_ARTIFACTS"/*.onnx; do
            [[ -e "$g" ]] || continue
            if [[ "$(basename "$g")" == compress_plugin.onnx ]] && ((!PLUGIN)); then
                echo "skip $g: TensorRT ${TRT_VERSION:-unknown} < $PLUGIN_MIN_TRT cannot load the merge plugin (compress.onnx is built instead)"
                continue
            fi
            builder_cmd "$g"
            cmds+=("$(quoted "${BUILD[@]}")")
            n=$((n + 1))
        done
        ((n)) || die "no *.onnx graph in $FROM_ARTIFACTS; export it first (infomerge-export)"
    else
        cmd=("$EXPORT" --backbone "$BACKBONE" --fp16 --engine trt --workspace "$WORKSPACE"
            --retention "$RETENTION")
        ((PLUGIN)) && cmd+=(--merge-plugin)
        cmd+=(--llm "$LLM")
        [[ "$LLM" != "none" ]] && cmd+=(--llm-ep cuda)
        cmd+=(--output "$OUTPUT")
        [[ -n "$MODEL_PATH" ]] && cmd+=(--model-path "$MODEL_PATH")
        [[ -n "$SIGLIP_PATH" ]] && cmd+=(--siglip-path "$SIGLIP_PATH")
        ((${#EXTRA[@]})) && cmd+=("${EXTRA[@]}")
        cmds+=("$(quoted "${cmd[@]}")")
    fi
    local line
    for line in "${cmds[@]}"; do
        echo "+ $line"
    done
    if ((DRY_RUN)); then
        print_trtexec
        return 0
    fi
    if [[ -z "$FROM_ARTIFACTS" ]] && ! command -v "$EXPORT" >/dev/null 2>&1; then
        die "'$EXPORT' not found: run jetson/setup.sh, then activate its venv (. .venv/bin/activate)"
    fi

    local start=$SECONDS status=0
    local -a words
    for line in "${cmds[@]}"; do
        eval "words=($line)"
        "${words[@]}" || status=$?
        if ((status)); then
            echo "build_engines.sh: ${words[0]} failed (status $status) after $((SECONDS - start)) s;" \
                "see jetson/README.md, Troubleshooting" >&2
            exit "$status"
        fi
    done
    echo "built in $((SECONDS - start)) s: $OUTPUT"
    print_trtexec
    echo
    echo "Next: $(quoted infomerge-run --artifacts "$OUTPUT" --video VIDEO.mp4 --prompt 'Describe the video.' \
        --vision-backend trt --compress-backend trt --llm ort --device cuda)"
    if [[ ! -d "$OUTPUT/llm" ]]; then
        echo "      (--llm ort needs the int4 LLM in $OUTPUT/llm: see jetson/README.md, step 4)"
    fi
}

main "$@"
