"""A/B of ONNX Runtime session settings for an exported vision graph, beside Hugging Face's tower.

Not a test: one process holds Hugging Face's ``get_video_features`` (unless ``--no-hf``) and one
ONNX Runtime session per configuration on the same decoded frames, runs each once per round in
turn (one untimed round first) and prints medians and ratios to Hugging Face
(docs/benchmarks.md, "ONNX Runtime vision against Hugging Face")::

    PYTHONPATH=. python scripts/ab_ort_vision.py --graph ARTIFACTS/ort/vision.onnx --frames 8 \\
        before:arena=0,chunk=8 now:arena=1,shrink=1,chunk=2

A configuration is ``name:key=value,...`` with keys ``arena`` (CPU memory arena, 0/1), ``shrink``
(arena shrinkage at the end of each run), ``chunk`` (frames per run; 0: all), ``spin``
(``session.intra_op.allow_spinning``), ``daz`` (``session.set_denormal_as_zero``), ``opt``
(all / extended / basic), ``threads`` (intra-op; default: the toolkit's policy), ``graph`` (another
graph file than ``--graph`` for this configuration).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    import onnxruntime as ort
    import torch

    from infomerge.backbones.loading import resolve_checkpoint
    from infomerge.backbones.random_weights import random_checkpoint
    from infomerge.backbones.registry import get_backbone
    from infomerge.engines.threads import intra_op_threads
    from infomerge.runtime.decode_thread import decode_video
    from infomerge.video import sample_video

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", metavar="NAME:KEY=VALUE,...")
    p.add_argument("--graph", required=True)
    p.add_argument(
        "--backbone", default="ov-0.5b", help="Hugging Face checkpoint: its random weights (tiny: its own)"
    )
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-hf", action="store_true")
    args = p.parse_args()

    bb = get_backbone(args.backbone)
    pv = decode_video(sample_video(), args.frames, bb.image_size).pixel_values
    x = pv.float().numpy()
    variants = {}
    if not args.no_hf:
        from infomerge.bench.hf import HFBaseline

        tiny = bb.name.startswith("tiny")
        checkpoint = resolve_checkpoint(bb, None) if tiny else random_checkpoint(bb.name, 0)
        hf = HFBaseline(checkpoint, frames=args.frames, tokens_per_frame=bb.tokens_per_frame)
        variants["hf"] = lambda: hf.vision(pv)
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }
    for spec in args.configs:
        name, _, kv = spec.partition(":")
        cfg = dict(item.split("=") for item in kv.split(",") if item)
        o = ort.SessionOptions()
        o.log_severity_level = 3
        o.graph_optimization_level = levels[cfg.get("opt", "all")]
        o.enable_cpu_mem_arena = cfg.get("arena", "1") == "1"
        o.intra_op_num_threads = int(cfg.get("threads", intra_op_threads()))
        o.add_session_config_entry("session.intra_op.allow_spinning", cfg.get("spin", "0"))
        o.add_session_config_entry("session.set_denormal_as_zero", cfg.get("daz", "0"))
        t0 = time.perf_counter()
        graph = cfg.get("graph", args.graph)
        sess = ort.InferenceSession(graph, sess_options=o, providers=["CPUExecutionProvider"])
        print(f"{name}: session load {time.perf_counter() - t0:.2f} s", flush=True)
        ro = ort.RunOptions()
        if cfg.get("shrink") == "1":
            ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        step = int(cfg.get("chunk", "0")) or len(x)

        def run(sess=sess, ro=ro, step=step):
            for i in range(0, len(x), step):
                sess.run(None, {"pixel_values": x[i : i + step]}, ro)

        variants[name] = run
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for i in range(args.runs + 1):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                if i:
                    times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["hf"]) if "hf" in times else None
    for name, xs in times.items():
        med = statistics.median(xs)
        ratio = f", {ref / med:.3f}x Hugging Face" if ref else ""
        print(f"{name}: median {med:.3f} s of {[round(v, 3) for v in xs]}{ratio}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average {load}, {time.strftime('%H:%M:%S', time.gmtime())} UTC")


if __name__ == "__main__":
    main()
