"""Time of one fixed-budget compress module, eager and as its ONNX graph in ONNX Runtime (CPU),
and whether the two keep the same indices.

Not a test: prints the figures of docs/backbones.md, "full-size random-weight exports" (the TFD
step made exact)::

    PYTHONPATH=. python scripts/time_compress_graph.py --features FEATURES.pt --work /tmp/tcg

``FEATURES.pt``: a ``torch.save``'d dict of ``H`` (L, N, D), ``A`` (L, N), ``g`` (L, G), e.g. the
vision reference of an ``infomerge-export`` run (the 7B Qwen2.5-VL figures used those of
``--backbone qwen2.5-vl-7b --random-weights --fp16``); without it, synthetic features of
``--shape L N D``. ``H`` is fed in fp16 (``--fp32``: fp32). Median of ``--runs`` after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from infomerge.compress.methods import get_method
from infomerge.export.graphs import synthetic_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", type=Path, help="torch.save'd {H, A, g}")
    p.add_argument("--shape", type=int, nargs=3, default=(16, 252, 3584), metavar=("L", "N", "D"))
    p.add_argument("--method", default="infomerge")
    p.add_argument("--retention", type=float, default=0.15)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--fp32", action="store_true", help="feed H in fp32 (default fp16)")
    p.add_argument("--work", type=Path, default=Path("/tmp/time_compress_graph"))
    args = p.parse_args()
    dtype = torch.float32 if args.fp32 else torch.float16
    if args.features is not None:
        d = torch.load(args.features)
        H, A, g = d["H"].to(dtype), d["A"].float(), d["g"].float()
    else:
        H, A, g = synthetic_features(*args.shape, 1152, dtype)
    L, N, D = H.shape
    method = get_method(args.method)
    comp = method.fixed_budget(method.config(args.retention), L, N, D).eval()
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "compress.onnx"
    torch.onnx.export(
        comp, synthetic_features(L, N, D, g.shape[1], dtype), str(path), input_names=["H", "A", "g"],
        output_names=["tokens", "index"], opset_version=17, dynamo=False,
    )
    eager, graph = [], []
    with torch.no_grad():
        comp(H, A, g)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            _, index = comp(H, A, g)
            eager.append(time.perf_counter() - t0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"H": H.numpy(), "A": A.numpy(), "g": g.numpy()}
    sess.run(None, feed)
    for _ in range(args.runs):
        t0 = time.perf_counter()
        _, got = sess.run(None, feed)
        graph.append(time.perf_counter() - t0)
    ms_eager, ms_graph = 1000 * statistics.median(eager), 1000 * statistics.median(graph)
    print(
        f"{args.method} r={args.retention:g} L={L} N={N} D={D} H {dtype}: eager median {ms_eager:.0f} ms, "
        f"ONNX Runtime median {ms_graph:.0f} ms, index equal: {np.array_equal(index.numpy(), got)}"
    )


if __name__ == "__main__":
    main()
