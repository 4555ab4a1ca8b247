"""Vision and TTFT side by side with Hugging Face, interleaved in one process (issue 20, item 3).

    python -m infomerge.bench.studies.side_by_side --backbone ov-0.5b --random-weights --frames 8 \\
        --artifacts DIR [--runs 3] [--retention 0.15] [--variants KEY ...] [--json OUT]

One process holds every pipeline on the same checkpoint and the same decoded frames, and each
timed round runs every variant once, in turn, so a change in the machine's load hits all of them
alike (``infomerge-bench`` measures one backend after the other). Reported: medians over the
rounds after one warm-up round, and each variant's ratio to Hugging Face's.

Vision (``pixel_values`` -> features):

- ``hf``: transformers' ``get_video_features`` (SDPA) of :class:`~infomerge.bench.hf.HFBaseline`;
- ``torch``: our :class:`~infomerge.backbones.vision.VisionEncoder` (SDPA tower + MAP head);
- ``torch, attention written out``: the same with the tower's attention as matmul + fp32 softmax
  (the form before SDPA), for the record;
- ``ort vision.onnx`` / ``ort ort/vision.onnx``: the exported graph without and with ONNX Runtime's
  transformer fusions (sessions at ``ORT_ENABLE_ALL``, as the runtime opens them; the fused graph in
  runs of :data:`~infomerge.runtime.backends.ort.FRAMES_PER_RUN` frames);
- ``ort ort/vision.onnx (fused), all frames in one run``: the same session options, the F frames
  in one run (for the record: the runtime before it split the frames).

Time to first token (video file -> first token, one request): Hugging Face uncompressed (decode,
template, ``get_video_features``, splice, prefill: what ``generate`` does for its first token),
infomerge torch at r = 1.0 and at ``--retention``, infomerge ORT at ``--retention`` (with
``--artifacts``: fused vision graph, fixed-budget compressor, onnxruntime-genai LLM).

``--variants`` names the rows to run by their keys (:data:`VISION_VARIANTS`, :data:`TTFT_VARIANTS`;
default: all). ``hf`` and ``hf-ttft``, the references of the ratios, always run; e.g.
``--variants torch ort-fused torch-r ort-r`` leaves out the rows kept only for the record (the
written-out attention, the unfused ``vision.onnx``, torch at r = 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

#: vision row keys -> row names (``--variants``)
VISION_VARIANTS = {
    "hf": "hf",
    "torch": "torch",
    "torch-explicit": "torch, attention written out",
    "ort-plain": "ort vision.onnx",
    "ort-fused": "ort ort/vision.onnx (fused)",
    "ort-fused-one-run": "ort ort/vision.onnx (fused), all frames in one run",
}
#: TTFT row keys -> row names (``r`` is ``--retention``)
TTFT_VARIANTS = {
    "hf-ttft": "Hugging Face, uncompressed",
    "torch-r1": "infomerge torch, r = 1.0",
    "torch-r": "infomerge torch, r = {r:g}",
    "ort-r": "infomerge ORT, r = {r:g}",
}
#: the references of the ratios: always run
_ALWAYS = ("hf", "hf-ttft")


def _explicit_attention(self, x: torch.Tensor) -> torch.Tensor:
    """The tower attention before SDPA: matmul, fp32 softmax, matmul (for the comparison row)."""
    q, k, v = self._heads(self.q_proj, x), self._heads(self.k_proj, x), self._heads(self.v_proj, x)
    p = torch.matmul(q * self.scale, k.transpose(-1, -2)).float().softmax(dim=-1).to(x.dtype)
    return self.out_proj(torch.matmul(p, v).transpose(1, 2).reshape(-1, self.tokens, self.dim))


def interleaved(variants: dict[str, Callable[[], dict | None]], runs: int, warmup: int = 1) -> dict:
    """Run every variant once per round, in turn; ``warmup`` untimed rounds first.

    A variant returns a dict of stage times in ms (``"ttft"`` among them), or anything else (then its
    wall time is the figure, ``"wall"``). Returns ``{name: {stage: [ms per timed round]}}``.
    """
    out: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    for i in range(warmup + runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            stages = fn()
            wall = (time.perf_counter() - t0) * 1000.0
            if i < warmup:
                continue
            for stage, ms in (stages if isinstance(stages, dict) else {"wall": wall}).items():
                out[name].setdefault(stage, []).append(float(ms))
    return out


def _median(samples: dict, stage: str) -> float | None:
    xs = samples.get(stage)
    return statistics.median(xs) if xs else None


def _fmt_s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f} s"


def main(argv: list[str] | None = None) -> int:
    from infomerge.backbones.loading import resolve_checkpoint
    from infomerge.backbones.registry import get_backbone
    from infomerge.bench.hf import HFBaseline
    from infomerge.bench.machine import describe
    from infomerge.runtime.decode_thread import decode_video
    from infomerge.runtime.embeddings import DEFAULT_PROMPT
    from infomerge.runtime.pipeline import Pipeline
    from infomerge.video import sample_video

    p = argparse.ArgumentParser(prog="python -m infomerge.bench.studies.side_by_side", description=__doc__)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--video", type=Path, default=None, help="default: bigbuckbunny.mp4")
    p.add_argument("--artifacts", type=Path, default=None, help="infomerge-export directory (ORT rows)")
    p.add_argument("--retention", type=float, default=0.15)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-ttft", action="store_true", help="vision only")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=[*VISION_VARIANTS, *TTFT_VARIANTS],
        default=None,
        metavar="KEY",
        help="rows to run, by key (default: all); hf and hf-ttft always run",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    chosen = set(args.variants or [*VISION_VARIANTS, *TTFT_VARIANTS]) | set(_ALWAYS)
    ort_rows = {"ort-plain", "ort-fused", "ort-fused-one-run", "ort-r"}
    if args.artifacts is None and chosen & ort_rows and args.variants:
        p.error("the ort rows (ort-plain, ort-fused, ort-fused-one-run, ort-r) need --artifacts DIR "
                "(an infomerge-export dir)")

    bb = get_backbone(args.backbone)
    frames = args.frames or bb.frames
    video = args.video or sample_video()
    if args.random_weights:
        from infomerge.backbones.random_weights import random_checkpoint

        checkpoint = random_checkpoint(bb.name, 0)
    else:
        checkpoint = resolve_checkpoint(bb, None)
    decoded = decode_video(video, frames, bb.image_size)
    pv = decoded.pixel_values

    hf = HFBaseline(checkpoint, frames=frames, tokens_per_frame=bb.tokens_per_frame)
    pipe = Pipeline.from_backbone(bb.name, model_path=checkpoint, frames=frames, retention=args.retention)
    encoder = pipe.vision.encoder
    attention_cls = type(encoder.vision_tower.encoder.layers[0].self_attn)
    sdpa_forward = attention_cls.forward

    def torch_written_out():
        attention_cls.forward = _explicit_attention
        try:
            pipe.vision(pv)
        finally:
            attention_cls.forward = sdpa_forward

    vision_variants = {"hf": lambda: hf.vision(pv)}
    if "torch" in chosen:
        vision_variants["torch"] = lambda: pipe.vision(pv)
    if "torch-explicit" in chosen:
        vision_variants[VISION_VARIANTS["torch-explicit"]] = torch_written_out
    ort_pipe = plain = fused = one_run = None
    if args.artifacts is not None:
        from infomerge.artifacts.layout import IMAGE_NEWLINE, VISION_ONNX, VISION_ORT_ONNX
        from infomerge.runtime.backends.ort import OrtVision

        if "ort-plain" in chosen:
            plain = OrtVision(args.artifacts / VISION_ONNX, args.artifacts / IMAGE_NEWLINE)
            vision_variants[VISION_VARIANTS["ort-plain"]] = lambda: plain(pv)
        if "ort-fused" in chosen and (args.artifacts / VISION_ORT_ONNX).is_file():
            fused = OrtVision(args.artifacts / VISION_ORT_ONNX, args.artifacts / IMAGE_NEWLINE)
            vision_variants[VISION_VARIANTS["ort-fused"]] = lambda: fused(pv)
        if "ort-fused-one-run" in chosen and (args.artifacts / VISION_ORT_ONNX).is_file():
            one_run = OrtVision(args.artifacts / VISION_ORT_ONNX, args.artifacts / IMAGE_NEWLINE,
                                frames_per_run=frames)
            vision_variants[VISION_VARIANTS["ort-fused-one-run"]] = lambda: one_run(pv)
    with torch.inference_mode():
        vision = interleaved(vision_variants, args.runs)
    plain = fused = one_run = None
    vision_variants.clear()

    ttft = {}
    if not args.no_ttft:
        full = pipe.with_compression(retention=None, backend="none")
        if args.artifacts is not None and "ort-r" in chosen:
            ort_pipe = Pipeline.from_backbone(
                bb.name,
                model_path=checkpoint,
                frames=frames,
                retention=args.retention,
                vision_backend="ort",
                compress_backend="ort",
                llm="ort",
                artifacts=args.artifacts,
            )

        def ours(pl):
            def run():
                t = pl.generate(video, DEFAULT_PROMPT, max_new_tokens=1).timings
                return {
                    "ttft": t.ttft_ms,
                    **{k: t.stages_ms.get(k, 0.0) for k in ("vision", "compress", "prefill")},
                }

            return run

        def hf_request():
            t0 = time.perf_counter()
            d = decode_video(video, frames, bb.image_size)
            prompt = hf.prompt(hf.prompt_ids(DEFAULT_PROMPT))
            t1 = time.perf_counter()
            feats = hf.vision(d.pixel_values)
            t2 = time.perf_counter()
            logits, _ = hf.prefill(hf.assemble(prompt, feats))
            int(np.argmax(logits))
            t3 = time.perf_counter()
            return {"ttft": (t3 - t0) * 1e3, "vision": (t2 - t1) * 1e3, "prefill": (t3 - t2) * 1e3}

        runs = {"hf-ttft": hf_request, "torch-r1": ours(full), "torch-r": ours(pipe)}
        if ort_pipe is not None:
            runs["ort-r"] = ours(ort_pipe)
        variants = {TTFT_VARIANTS[k].format(r=args.retention): fn for k, fn in runs.items() if k in chosen}
        ttft = interleaved(variants, args.runs)

    hf_vision = _median(vision["hf"], "wall")
    hf_ttft = _median(ttft.get("Hugging Face, uncompressed", {}), "ttft")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{bb.name}, {frames} frames, medians of {args.runs} interleaved rounds (load average {load})")
    print("| vision | time | vs Hugging Face |\n|---|---:|---:|")
    for name, s in vision.items():
        m = _median(s, "wall")
        print(f"| {name} | {_fmt_s(m)} | {hf_vision / m:.2f}x |")
    if ttft:
        print("\n| pipeline | TTFT | vision | compress | prefill | TTFT vs Hugging Face |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, s in ttft.items():
            m = _median(s, "ttft")
            cells = [_fmt_s(_median(s, k)) for k in ("ttft", "vision", "compress", "prefill")]
            print(f"| {name} | " + " | ".join(cells) + f" | {hf_ttft / m:.2f}x |")
    if args.json is not None:
        payload = {
            "command": " ".join(["python -m infomerge.bench.studies.side_by_side", *(argv or sys.argv[1:])]),
            "machine": describe(),
            "load_average_end": os.getloadavg(),
            "torch_threads": torch.get_num_threads(),
            "backbone": bb.name,
            "frames": frames,
            "video": str(video),
            "vision_ms": vision,
            "ttft_ms": ttft,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
