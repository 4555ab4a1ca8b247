"""Print ``trtexec`` command lines equivalent to the engines ``infomerge-export --engine trt`` builds.

For reference and debugging on the device (``jetson/build_engines.sh`` prints them after a build)::

    python -m infomerge.jetson.trtexec ARTIFACT_DIR [--workspace MB] [--trt-major 10|11]

One line per top-level ``*.onnx`` of the artifact directory (the graphs the engine builder builds;
the onnxruntime-genai LLM lives in its own folder and is not a TensorRT engine):

- TensorRT 10.x (JetPack 6), weakly typed like our builder: ``--fp16`` for a graph that holds fp16.
  Our builder also pins normalisation, softmax and reduce layers to fp32; trtexec's closest form is
  ``--precisionConstraints=obey --layerPrecisions=<layer>:fp32`` per layer, or ``--stronglyTyped``,
  which keeps the fp32 islands the fp16 export already wrote into the ONNX.
- TensorRT 11.x (JetPack 7): strongly typed only, ``--stronglyTyped``; the ONNX decides the precision.
- ``--memPoolSize=workspace:<MB>M`` bounds the builder workspace (8 GB boards: keep it at 1024 or less).
- Our graphs are shape-static, so no ``--shapes`` is needed; a symbolic dimension, should one
  appear, is filled with ``--frames`` when it is named ``frames`` and left as ``<name>`` otherwise.
- A node outside the standard ONNX domains is a plugin op. Ours (``MergeToAnchors``) is a Python AOT
  plugin registered by :func:`infomerge.engines.plugin.register_plugin`; there is no plugin library
  for ``--dynamicPlugins``, so such a graph's line is printed commented out with a note.

On JetPack, trtexec lives in ``/usr/src/tensorrt/bin`` (not on PATH); that path is used when present.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
_FP16 = 10  # onnx.TensorProto.FLOAT16


def trtexec_binary() -> str:
    """``/usr/src/tensorrt/bin/trtexec`` where JetPack installed it, else plain ``trtexec``."""
    return JETPACK_TRTEXEC if os.access(JETPACK_TRTEXEC, os.X_OK) else "trtexec"


def inspect_onnx(path: str | os.PathLike) -> dict:
    """Inputs (name -> dims, a dim is an int or a symbolic name), whether the graph holds fp16, and
    the op types outside the standard ONNX domains (:func:`infomerge.artifacts.onnx_graph.inspect_onnx`)."""
    from infomerge.artifacts.onnx_graph import inspect_onnx as inspect

    info = inspect(path)
    return {
        "inputs": {name: spec["shape"] for name, spec in info.inputs.items()},
        "fp16": info.fp16,
        "custom_ops": list(info.custom_ops),
    }


def trtexec_command(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    workspace_mib: int = 1024,
    trt_major: int = 10,
    frames: int | None = None,
    binary: str | None = None,
) -> tuple[list[str], list[str]]:
    """The trtexec argv for one graph, and notes (plugin ops, unresolved dimensions).

    Args:
        onnx_path: the graph.
        engine_path: where trtexec should write the engine (default ``<graph>.trtexec.engine`` beside it,
            so it never overwrites the engines our builder wrote).
        workspace_mib: builder workspace limit (MiB, >= 1).
        trt_major: 10 (weakly typed, ``--fp16``) or 11+ (``--stronglyTyped``).
        frames: value for a symbolic ``frames`` dimension.
        binary: the trtexec executable (default :func:`trtexec_binary`).

    Raises:
        FileNotFoundError: the graph does not exist. ValueError: workspace < 1.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX graph")
    if workspace_mib < 1:
        raise ValueError(f"workspace must be >= 1 MiB, got {workspace_mib}")
    info = inspect_onnx(onnx_path)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".trtexec.engine")
    argv = [binary or trtexec_binary(), f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if trt_major >= 11:
        argv.append("--stronglyTyped")
    elif info["fp16"]:
        argv.append("--fp16")
    argv.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
    notes = []
    if any(isinstance(d, str) for dims in info["inputs"].values() for d in dims):
        shapes = []
        for name, dims in info["inputs"].items():
            resolved = []
            for d in dims:
                if isinstance(d, int):
                    resolved.append(str(d))
                elif d == "frames" and frames:
                    resolved.append(str(frames))
                else:
                    resolved.append(f"<{d}>")
                    notes.append(f"input {name}: set the dimension <{d}> by hand")
            shapes.append(f"{name}:{'x'.join(resolved)}")
        argv.append("--shapes=" + ",".join(shapes))
    if info["custom_ops"]:
        notes.append(
            f"plugin op(s) {', '.join(info['custom_ops'])}: the merge plugin is a TensorRT Python AOT "
            "plugin that infomerge registers from Python (infomerge.engines.plugin.register_plugin, "
            "TensorRT >= 10.9); infomerge ships no plugin library for trtexec, so trtexec cannot build "
            "this graph (line commented out): use compress.onnx, the same compression without the plugin"
        )
    argv.append("--skipInference")
    return argv, notes


def _detect_trt_major() -> int:
    try:
        import tensorrt

        return int(str(tensorrt.__version__).split(".")[0])
    except Exception:  # noqa: BLE001 - absent or broken bindings: assume JetPack 6's TensorRT 10
        return 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infomerge.jetson.trtexec",
        description="Print trtexec command lines equivalent to the TensorRT engines of an artifact dir.",
    )
    p.add_argument("artifact_dir", type=Path)
    p.add_argument("--workspace", type=int, default=1024, metavar="MB", help="workspace limit (default 1024)")
    p.add_argument("--trt-major", type=int, default=None,
                   help="TensorRT major version (default: the installed tensorrt module's, else 10)")
    p.add_argument("--frames", type=int, default=None, help="value of a symbolic 'frames' dimension")
    args = p.parse_args(argv)
    graphs = sorted(args.artifact_dir.glob("*.onnx"))
    if not graphs:
        print(f"{args.artifact_dir}: no *.onnx graph; run infomerge-export first", file=sys.stderr)
        return 2
    major = args.trt_major if args.trt_major is not None else _detect_trt_major()
    try:
        for g in graphs:
            cmd, notes = trtexec_command(g, workspace_mib=args.workspace, trt_major=major, frames=args.frames)
            plugin = inspect_onnx(g)["custom_ops"]
            print(("# " if plugin else "") + shlex.join(cmd))
            for note in notes:
                print(f"#   note: {note}")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
