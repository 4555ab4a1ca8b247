"""Vision-side savings on the CPU: bf16 towers and skipping near-duplicate frames (issue 20, items 6-7).

    python -m infomerge.bench.studies.vision_savings precision [--backbone tiny] [--frames 32]
        [--videos bigbuckbunny.mp4 ...] [--repeat 3]
    python -m infomerge.bench.studies.vision_savings dedup [--backbone tiny] [--frames 32]
        [--videos ...] [--static-clip PATH] [--thresholds 0.005 0.01 0.02 0.05]

``precision``: the same :class:`~infomerge.backbones.vision.VisionEncoder` in fp32 and with the
tower and projector cast to bf16 (:meth:`VisionEncoder.to_compute_dtype`; LayerNorms, softmax and
the SigLIP head stay fp32), on real frames: max and mean absolute error of H, A and g against fp32
(relative to fp32's peak and mean magnitude), the share of the fp32 InfoMerge (r = 0.15) kept
indices that the bf16 features keep too, and the two towers' times (interleaved, medians).

``dedup``: skip the tower for a frame whose pixels are within ``threshold`` (mean absolute
difference of the preprocessed [-1, 1] pixels) of the last ENCODED frame, and reuse that frame's
(H, A, g). Per video and threshold: frames skipped, the tower time saved (measured: the encoder on
the kept frames only against all frames), and, for every registered method at r = 0.15, the share
of the kept indices unchanged and the largest token change (relative to the peak).

Both print a markdown table (stdout) and log progress to stderr. Full-size backbones use random
weights (seed 0, no checkpoint is reachable offline): their errors say how bf16 rounds THIS
architecture's activations, not a trained model's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from infomerge.backbones.vision import VisionEncoder
from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.methods import METHODS
from infomerge.compress.reference import reference
from infomerge.video import load_frames, sample_video

VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
CHUNK = 4  # frames per encoder call (bounds activation memory)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def encoder(backbone: str) -> VisionEncoder:
    """The fp32 encoder of ``backbone`` (tiny: embedded weights; others: random, seed 0)."""
    return VisionEncoder.from_backbone(backbone, random_weights=backbone != "tiny")


def frames_of(video: str, frames: int) -> torch.Tensor:
    """(F, 3, 384, 384) preprocessed frames of a sample clip name or a file path."""
    path = sample_video(video) if "/" not in video else video
    return load_frames(path, frames)


@torch.inference_mode()
def encode(enc: VisionEncoder, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H, A, g) float32 of ``px``, :data:`CHUNK` frames per call."""
    parts = [enc(px[i : i + CHUNK]) for i in range(0, px.shape[0], CHUNK)]
    return tuple(torch.cat([p[k] for p in parts]).float() for k in range(3))


def _timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _err(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |x - ref| / max |ref|, mean |x - ref| / mean |ref|)."""
    d = (x - ref).abs()
    peak, mean = ref.abs().max().clamp_min(1e-30), ref.abs().mean().clamp_min(1e-30)
    return float(d.max() / peak), float(d.mean() / mean)


def kept_share(ref_index: torch.Tensor, other_index: torch.Tensor) -> float:
    """Share of ``ref_index`` that ``other_index`` also holds."""
    if ref_index.numel() == 0:
        return 1.0
    return float(torch.isin(ref_index, other_index).double().mean())


# ---- item 6: bf16 tower ---------------------------------------------------------------------------
def precision(backbone: str, videos, frames: int, repeat: int) -> list[dict]:
    """fp32 vs bf16 tower on each video: errors, kept-index share, times (see the module docstring)."""
    enc32 = encoder(backbone)
    enc16 = copy.deepcopy(enc32).to_compute_dtype(torch.bfloat16)
    cfg = InfoMergeConfig.paper(0.15)
    rows = []
    for video in videos:
        px = frames_of(video, frames)
        encode(enc32, px[:1]), encode(enc16, px[:1])  # warm-up (first calls pay one-time costs)
        t32, t16 = [], []
        for _ in range(repeat):  # interleaved
            s, f32 = _timed(encode, enc32, px)
            t32.append(s)
            s, f16 = _timed(encode, enc16, px)
            t16.append(s)
        row = {"backbone": backbone, "video": video, "frames": frames}
        for name, a, b in zip("HAg", f16, f32):
            row[name] = _err(a, b)
        row["kept"] = kept_share(reference(*f32, cfg).index, reference(*f16, cfg).index)
        row["fp32_s"], row["bf16_s"] = statistics.median(t32), statistics.median(t16)
        _log(f"{row}")
        rows.append(row)
    return rows


def precision_table(rows: list[dict]) -> str:
    head = (
        "| backbone | video | frames | H max / peak | H mean / mean | A max / peak | A mean / mean | "
        "g max / peak | g mean / mean | InfoMerge 15% kept shared | fp32 tower (s) | bf16 tower (s) | "
        "speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        errs = " | ".join(f"{r[k][0]:.1e} | {r[k][1]:.1e}" for k in "HAg")
        lines.append(
            f"| {r['backbone']} | {r['video']} | {r['frames']} | {errs} | {r['kept']:.3f} | "
            f"{r['fp32_s']:.2f} | {r['bf16_s']:.2f} | {r['fp32_s'] / r['bf16_s']:.2f}x |"
        )
    return head + "\n".join(lines) + "\n"


# ---- item 7: skipping near-duplicate frames -------------------------------------------------------
def duplicate_plan(px: torch.Tensor, threshold: float) -> torch.Tensor:
    """(F,) int64: the frame whose features each frame uses. A frame reuses the last encoded
    frame's when the mean absolute difference of their pixels is below ``threshold``."""
    source = torch.arange(px.shape[0])
    last = 0
    for l in range(1, px.shape[0]):
        if float((px[l] - px[last]).abs().mean()) < threshold:
            source[l] = last
        else:
            last = l
    return source


def _methods_kept(feats, cfg_retention: float) -> dict:
    out = {}
    for name, m in METHODS.items():
        try:
            out[name] = m.reference(*feats, m.config(cfg_retention))
        except Exception as exc:  # a method that needs more than (H, A, g): reported, not fatal
            out[name] = exc
    return out


def dedup(backbone: str, videos, frames: int, thresholds, retention: float = 0.15) -> list[dict]:
    """Per video and threshold: skipped frames, tower time saved, kept-token changes per method."""
    enc = encoder(backbone)
    rows = []
    for video in videos:
        px = frames_of(video, frames)
        encode(enc, px[:1])  # warm-up (the first call pays one-time costs)
        full_s, full = _timed(encode, enc, px)
        base = _methods_kept(full, retention)
        for thr in thresholds:
            plan = duplicate_plan(px, thr)
            encoded = torch.unique(plan)
            part_s, part = _timed(encode, enc, px[encoded])
            pos = torch.searchsorted(encoded, plan)
            feats = tuple(t[pos] for t in part)
            # the reused frames' features exactly; the encoded ones within batch-size rounding
            new = _methods_kept(feats, retention)
            row = {
                "backbone": backbone,
                "video": video,
                "threshold": thr,
                "skipped": int(frames - encoded.numel()),
                "frames": frames,
                "full_s": full_s,
                "part_s": part_s,
                "methods": {},
            }
            for name, ref in base.items():
                got = new[name]
                if isinstance(ref, Exception) or isinstance(got, Exception):
                    row["methods"][name] = None
                    continue
                share = kept_share(ref.index, got.index)
                both = torch.isin(ref.index, got.index)
                diff = 0.0
                if bool(both.any()):
                    a = ref.tokens[both].float()
                    b = got.tokens[torch.isin(got.index, ref.index)].float()
                    diff = float((a - b).abs().max() / ref.tokens.float().abs().max().clamp_min(1e-30))
                row["methods"][name] = (share, diff)
            _log(f"{video} thr={thr}: skipped {row['skipped']}/{frames}, {full_s:.2f} -> {part_s:.2f} s")
            rows.append(row)
    return rows


def dedup_table(rows: list[dict]) -> str:
    names = list(rows[0]["methods"]) if rows else []
    head = (
        "| video | threshold | frames skipped | tower all (s) | tower kept frames (s) | "
        + " | ".join(f"{n}: kept shared / max token change" for n in names)
        + " |\n|"
        + "---|" * (5 + len(names))
        + "\n"
    )
    lines = []
    for r in rows:
        cells = [
            "n/a" if r["methods"][n] is None else f"{r['methods'][n][0]:.3f} / {r['methods'][n][1]:.1e}"
            for n in names
        ]
        lines.append(
            f"| {r['video'].split('/')[-1]} | {r['threshold']} | {r['skipped']} / {r['frames']} | "
            f"{r['full_s']:.2f} | {r['part_s']:.2f} | " + " | ".join(cells) + " |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infomerge.bench.studies.vision_savings", description=__doc__.split("\n")[0]
    )
    p.add_argument("study", choices=("precision", "dedup"))
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--videos", nargs="+", default=list(VIDEOS), help="sample clip names or file paths")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (precision)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    a = p.parse_args(argv)
    if a.frames < 1 or a.repeat < 1 or a.threads < 1:
        p.error("--frames, --repeat and --threads must be >= 1")
    torch.set_num_threads(a.threads)
    if a.study == "precision":
        print(precision_table(precision(a.backbone, a.videos, a.frames, a.repeat)))
    else:
        print(dedup_table(dedup(a.backbone, a.videos, a.frames, a.thresholds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
