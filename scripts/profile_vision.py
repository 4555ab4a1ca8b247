"""Profile our torch vision stage against Hugging Face's ``get_video_features`` on the same weights.

Not a test: prints ``torch.profiler`` CPU time per op for both (docs/benchmarks.md, "Torch vision
against Hugging Face: profile")::

    PYTHONPATH=. python scripts/profile_vision.py --backbone ov-0.5b --random-weights --frames 2

Both run on the same checkpoint and the same decoded frames (bigbuckbunny), under
``torch.inference_mode``, after one untimed warm-up call each; then each is profiled once and
timed ``--runs`` times, interleaved. ``--method`` picks the compression method whose vision
outputs our encoder computes (its ``extra_outputs``); the MAP head runs only when the method
reads ``A`` or ``g``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    from infomerge.backbones.loading import resolve_checkpoint
    from infomerge.backbones.registry import get_backbone
    from infomerge.bench.hf import HFBaseline
    from infomerge.runtime.decode_thread import decode_video
    from infomerge.runtime.pipeline import Pipeline
    from infomerge.video import sample_video

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rows", type=int, default=14, help="ops listed per profile")
    p.add_argument("--method", default="infomerge")
    args = p.parse_args()

    bb = get_backbone(args.backbone)
    if args.random_weights:
        from infomerge.backbones.random_weights import random_checkpoint

        checkpoint = random_checkpoint(bb.name, 0)
    else:
        checkpoint = resolve_checkpoint(bb, None)
    pv = decode_video(sample_video(), args.frames, bb.image_size).pixel_values
    hf = HFBaseline(checkpoint, frames=args.frames, tokens_per_frame=bb.tokens_per_frame)
    pipe = Pipeline.from_backbone(bb.name, model_path=checkpoint, frames=args.frames, method=args.method)
    variants = {"hf": lambda: hf.vision(pv), "torch": lambda: pipe.vision(pv)}

    with torch.inference_mode():
        for fn in variants.values():
            fn()
        for name, fn in variants.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                fn()
            threads = torch.get_num_threads()
            print(f"=== {name}: {args.backbone}, {args.frames} frames, torch threads {threads}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.runs):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    hf_med = statistics.median(times["hf"])
    for name, xs in times.items():
        med = statistics.median(xs)
        print(f"{name}: median {med:.3f} s of {[round(x, 3) for x in xs]}, {hf_med / med:.2f}x Hugging Face")
    print(f"load average {load}")


if __name__ == "__main__":
    main()
