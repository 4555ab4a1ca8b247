"""Time a method's paper-exact reference on synthetic input at the 7B shape (32 x 196 x 3584).

    python -m infomerge.bench.studies.reference_timing --time [--method infomerge] [--layout all]

:func:`synthetic_inputs` builds ``(H, A, g)`` with a known segmentation, so the timing covers the
typical case (8 segments of 4 frames), the worst case for CABA (one 25-frame segment) and the
all-singletons case. Figures: ``docs/algorithm.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from infomerge.compress.methods import METHODS, get_method

LAYOUTS = {
    "even": [4] * 8,  # 8 segments of 4 frames: the typical c = 8 case
    "worst": [25] + [1] * 7,  # one 25-frame segment: the largest Gram matrix (D x D) of CABA
    "single": [1] * 32,  # every frame its own segment (what unstructured random g gives)
}


def synthetic_inputs(
    segment_lengths: list[int],
    tokens: int = 196,
    dim: int = 3584,
    global_dim: int = 1152,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    noise: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic ``(H, A, g)`` with a known segmentation (for timing and tests).

    Each segment has its own random base tokens and base global feature; frames add noise (a
    third of the positions nearly static, the rest dynamic), so adjacent global cosines are about
    0.99 inside a segment and about 0 across: with ``len(segment_lengths) >= c`` the segmentation
    reproduces ``segment_lengths`` exactly. ``A`` is a per-frame softmax of random logits.
    """
    gen = torch.Generator().manual_seed(seed)
    frames = sum(segment_lengths)
    h = torch.empty(frames, tokens, dim, dtype=torch.float64)
    g = torch.empty(frames, global_dim, dtype=torch.float64)
    static_pos = torch.arange(tokens) % 3 == 0
    scale = torch.where(static_pos, 0.05, noise).to(torch.float64).unsqueeze(-1)
    start = 0
    for length in segment_lengths:
        base = torch.randn(tokens, dim, generator=gen, dtype=torch.float64)
        gbase = torch.randn(global_dim, generator=gen, dtype=torch.float64)
        for l in range(start, start + length):
            h[l] = base + scale * torch.randn(tokens, dim, generator=gen, dtype=torch.float64)
            g[l] = gbase + 0.1 * torch.randn(global_dim, generator=gen, dtype=torch.float64)
        start += length
    a = torch.softmax(2.0 * torch.randn(frames, tokens, generator=gen, dtype=torch.float64), dim=-1)
    return h.to(dtype), a.to(dtype), g.to(dtype)


def time_reference(
    layout: str = "even",
    retention: float = 0.15,
    tokens: int = 196,
    dim: int = 3584,
    repeat: int = 3,
    method: str = "infomerge",
) -> dict:
    """Time ``method``'s reference on :func:`synthetic_inputs` (float32) at the 7B shape by default.

    Returns:
        dict with ``layout``, ``segments``, ``kept``, ``seconds`` (each run) and ``median``.
    """
    h, a, g = synthetic_inputs(LAYOUTS[layout], tokens, dim)
    m = get_method(method)
    config = m.config(retention)
    seconds, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = m.reference(h, a, g, config)
        seconds.append(time.perf_counter() - t0)
    return {
        "layout": layout,
        "method": method,
        "shape": tuple(h.shape),
        "segments": [e - s for s, e in getattr(out, "segments", [])],
        "kept": int(out.index.numel()),
        "seconds": seconds,
        "median": statistics.median(seconds),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m infomerge.bench.studies.reference_timing --time``: time a reference at the 7B shape."""
    parser = argparse.ArgumentParser(
        prog="python -m infomerge.bench.studies.reference_timing", description=main.__doc__
    )
    parser.add_argument("--time", action="store_true", help="time the reference on synthetic 7B-shape input")
    parser.add_argument("--layout", choices=[*LAYOUTS, "all"], default="all")
    parser.add_argument("--retention", type=float, default=0.15)
    parser.add_argument("--method", choices=list(METHODS), default="infomerge")
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if not args.time:
        parser.print_help()
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    layouts = list(LAYOUTS) if args.layout == "all" else [args.layout]
    worst = 0.0
    for layout in layouts:
        r = time_reference(layout, args.retention, args.tokens, args.dim, args.repeat, args.method)
        runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
        print(
            f"{layout:>6}: shape {r['shape']} r={args.retention:g} ({r['method']}) segments {r['segments']} "
            f"kept {r['kept']}  median {r['median']:.2f} s  (runs {runs}; torch threads {r['threads']})"
        )
        worst = max(worst, r["median"])
    print(f"slowest median: {worst:.2f} s (bound: 10 s)")
    return 0 if math.isfinite(worst) else 1


if __name__ == "__main__":
    sys.exit(main())
