"""Profile an exported vision graph in ONNX Runtime: time per op type, and the ops after optimization.

Not a test: prints ONNX Runtime's own profiler (``SessionOptions.enable_profiling``: one
``*_kernel_time`` event per node run) summed per op type, for one run of ``--frames`` frames
after one warm-up run, with the session options of the ``ort`` backend
(:func:`infomerge.runtime.backends.ort.request_session`) unless overridden. Compare with
``scripts/profile_vision.py`` (torch's profile of Hugging Face's and our tower; docs/benchmarks.md,
"ONNX Runtime vision against Hugging Face: profile")::

    PYTHONPATH=. python scripts/profile_ort_vision.py ARTIFACTS/ort/vision.onnx --frames 2

The graph's frame axis must be free (``ort/vision.onnx``) or equal to ``--frames``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path


def op_times(profile: Path) -> tuple[dict[str, float], dict[str, int]]:
    """ONNX Runtime profile JSON -> ({op type: kernel ms}, {op type: nodes run}) of the profile's
    last ``model_run`` (the runs before it are warm-up)."""
    events = json.loads(profile.read_text())
    runs = [ev for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run"]
    start, end = runs[-1]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
    ms: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.Counter()
    for ev in events:
        kernel = ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time")
        if kernel and start <= ev["ts"] <= end:
            op = ev.get("args", {}).get("op_name", "?")
            ms[op] += ev["dur"] / 1000.0
            calls[op] += 1
    return dict(ms), dict(calls)


def main() -> None:
    import onnxruntime as ort

    from infomerge.backbones.registry import get_backbone
    from infomerge.engines.threads import intra_op_threads
    from infomerge.runtime.decode_thread import decode_video
    from infomerge.video import sample_video

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graph", type=Path)
    p.add_argument("--backbone", default="ov-0.5b", help="for the frame size")
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--optimization", choices=("all", "extended", "basic", "off"), default="all")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--spinning", choices=("0", "1"), default="0")
    p.add_argument("--arena", choices=("0", "1"), default="1", help="CPU memory arena (the backend: on)")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--save-optimized", type=Path, default=None, help="write the optimized graph here")
    args = p.parse_args()

    bb = get_backbone(args.backbone)
    pv = decode_video(sample_video(), args.frames, bb.image_size).pixel_values.float().numpy()
    level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[args.optimization]

    def session(profile: bool):
        o = ort.SessionOptions()
        o.log_severity_level = 3
        o.graph_optimization_level = level
        o.enable_cpu_mem_arena = args.arena == "1"
        o.intra_op_num_threads = args.threads or intra_op_threads()
        o.add_session_config_entry("session.intra_op.allow_spinning", args.spinning)
        if profile:
            o.enable_profiling = True
            o.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
        if args.save_optimized is not None:
            o.optimized_model_filepath = str(args.save_optimized)
        return ort.InferenceSession(str(args.graph), sess_options=o, providers=["CPUExecutionProvider"])

    t0 = time.perf_counter()
    sess = session(profile=True)
    load_s = time.perf_counter() - t0
    sess.run(None, {"pixel_values": pv})  # warm-up
    t0 = time.perf_counter()
    sess.run(None, {"pixel_values": pv})
    wall = time.perf_counter() - t0
    ms, calls = op_times(Path(sess.end_profiling()))
    total = sum(ms.values())
    print(f"=== {args.graph}: {args.frames} frames, level {args.optimization}, "
          f"threads {args.threads or intra_op_threads()}, spinning {args.spinning}, load {load_s:.1f} s")
    print("| op type | ms (profiled run) | share |\n|---|---:|---:|")
    for op, t in sorted(ms.items(), key=lambda kv: -kv[1])[: args.rows]:
        print(f"| {op} | {t:.1f} ({calls[op]} nodes) | {100 * t / total:.1f} % |")
    print(f"kernel total {total:.1f} ms; profiled run wall {wall * 1000:.1f} ms")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load}")


if __name__ == "__main__":
    main()
