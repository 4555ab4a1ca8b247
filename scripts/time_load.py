"""Load time of the torch pipeline against Hugging Face's ``from_pretrained`` on the same checkpoint.

Not a test: prints the figures of docs/runtime.md, "Load and start-up"::

    PYTHONPATH=. python scripts/time_load.py --backbone ov-0.5b --rounds 3

The checkpoint is :func:`infomerge.backbones.random_weights.random_checkpoint` (full size, random
weights; written once, about 3.6 GB for ov-0.5b). In one process, interleaved round after round,
after one warm-up round (imports, page cache):

- ``hf``: ``LlavaOnevisionForConditionalGeneration.from_pretrained`` (vision tower and LLM);
- ``pipeline``: :meth:`Pipeline.from_backbone` with torch backends (vision encoder, SigLIP head,
  LLM, tokenizer): its ``load_ms``;
- ``vision (eager init + sha256)``: the vision encoder as it was loaded before the meta device:
  the module built with random initialisation, the weights' sha256 computed, then copied in;
- ``vision (meta)``: :meth:`VisionEncoder.from_backbone` as a run calls it (no fingerprint).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch


def _hf(ckpt):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()


def _pipeline(ckpt, backbone):
    from infomerge.runtime.pipeline import Pipeline

    return Pipeline.from_backbone(backbone, model_path=ckpt)


def _vision_eager(ckpt, backbone):
    from infomerge.backbones import loading
    from infomerge.backbones.registry import get_backbone
    from infomerge.backbones.vision import VisionEncoder

    enc = VisionEncoder(get_backbone(backbone))  # random initialisation of every parameter
    state, _ = loading.load_vision_state(backbone, ckpt, fingerprint=False)
    loading.tensors_sha256({k: v for k, v in state.items() if not k.startswith("siglip_head.")})
    loading.tensors_sha256({k: v for k, v in state.items() if k.startswith("siglip_head.")})
    enc.load_encoder_state(state)
    return enc.eval()


def _vision_meta(ckpt, backbone):
    from infomerge.backbones.vision import VisionEncoder

    return VisionEncoder.from_backbone(backbone, ckpt, fingerprint=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="ov-0.5b")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from infomerge.backbones.random_weights import random_checkpoint

    ckpt = random_checkpoint(args.backbone)
    cases = {
        "hf from_pretrained": lambda: _hf(ckpt),
        "infomerge torch pipeline": lambda: _pipeline(ckpt, args.backbone),
        "vision encoder, eager init + sha256 (before)": lambda: _vision_eager(ckpt, args.backbone),
        "vision encoder, meta device (after)": lambda: _vision_meta(ckpt, args.backbone),
    }
    seconds: dict[str, list[float]] = {k: [] for k in cases}
    loads = []
    for r in range(args.rounds + 1):
        for name, fn in cases.items():
            gc.collect()
            t0 = time.perf_counter()
            obj = fn()
            dt = time.perf_counter() - t0
            if name == "infomerge torch pipeline":
                dt = obj.load_ms / 1000.0
            del obj
            if r:  # round 0 is the warm-up
                seconds[name].append(dt)
                loads.append(os.getloadavg()[0])
    print(f"{args.backbone} at {ckpt}; 1-min load average {min(loads):.1f}-{max(loads):.1f}")
    print("| load | median (s) | runs (s) |")
    print("|---|---|---|")
    for name, ts in seconds.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")


if __name__ == "__main__":
    main()
