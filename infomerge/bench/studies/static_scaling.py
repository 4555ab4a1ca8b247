"""How the fixed-budget InfoMerge graph's cost grows with the frame count L (issue 20, item 5).

    python -m infomerge.bench.studies.static_scaling [--frames 8 16 32 64 128] [--dims 896]
        [--layout even] [--repeat 3] [--threads 1] [--no-onnx] [--write-docs docs/compression.md]

For every (L, D): the paper-exact reference, the eager :class:`FixedBudgetCompressor` and its ONNX
graph in ONNX Runtime (CPU), timed interleaved in one process (reference, eager, ORT, repeated;
medians), the export time, the first eager call's transient memory in a fresh process (peak RSS
above the RSS before the call, from ``/proc/self/status`` after resetting the peak through
``/proc/self/clear_refs``), and whether ORT's kept indices equal eager's. Inputs:
``reference_timing.synthetic_inputs`` with 8 segments of L/8 frames (``even``, the c = 8 case)
or one long segment after 7 single frames (``long``, the reference's worst case for the merge),
InfoMerge at r = 0.15. The table goes between ``<!-- scaling:begin -->`` and
``<!-- scaling:end -->``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from infomerge.bench.studies.agreement import export_compress, heavy_lock, write_section
from infomerge.bench.studies.reference_timing import synthetic_inputs
from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor
from infomerge.compress.reference import reference
from infomerge.engines.ort import ort_session

N = 196
LAYOUTS = ("even", "long")


def segment_lengths(layout: str, frames: int) -> list[int]:
    """Segment lengths of ``layout`` for ``frames`` frames (at least 8 frames)."""
    if frames < 8:
        raise ValueError(f"need at least 8 frames (c = 8 segments), got {frames}")
    if layout == "even":
        base, extra = divmod(frames, 8)
        return [base + (k < extra) for k in range(8)]
    if layout == "long":
        return [1] * 7 + [frames - 7]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def transient_mib(fn) -> float:
    """Peak RSS during ``fn()`` above the RSS before it, MiB (Linux; NaN elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return float("nan")
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024.0


def _first_call_mib(frames: int, dim: int, layout: str, threads: int) -> float:
    """:func:`transient_mib` of the first eager call, in this (fresh) process."""
    torch.set_num_threads(threads)
    h, a, g = synthetic_inputs(segment_lengths(layout, frames), N, dim)
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.15), frames, N, dim).eval()
    with torch.no_grad():
        return transient_mib(lambda: comp(h, a, g))


def first_call_mib(frames: int, dim: int, layout: str) -> float:
    """Transient memory of the first eager call, measured in a fresh process (the allocator of a
    long-lived one keeps freed memory mapped, which hides later peaks)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_first_call_mib, (frames, dim, layout, torch.get_num_threads()))


def measure(
    frames: int, dim: int, layout: str = "even", repeat: int = 3, onnx: bool = True, log=print
) -> dict:
    """Time reference, eager and ORT at one (L, D); see the module docstring."""
    h, a, g = synthetic_inputs(segment_lengths(layout, frames), N, dim)
    cfg = InfoMergeConfig.paper(0.15)
    comp = FixedBudgetCompressor(cfg, frames, N, dim).eval()
    row = {"frames": frames, "dim": dim, "layout": layout, "budget": comp.budget}
    with torch.no_grad():
        row["memory_mib"] = first_call_mib(frames, dim, layout)
        sess = None
        if onnx:
            import numpy as np

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "compress.onnx"
                row["export_s"] = export_compress(comp, (h, a, g), path)
                # the one session loader (the runtime's threading policy), as many threads as torch
                sess = ort_session(path, threads=torch.get_num_threads())
            feed = {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()}
            sess.run(None, feed)  # warm-up
        times = {"reference": [], "eager": [], "ort": []}
        for _ in range(repeat):
            t0 = time.perf_counter()
            reference(h, a, g, cfg)
            times["reference"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, index = comp(h, a, g)
            times["eager"].append(time.perf_counter() - t0)
            if sess is not None:
                t0 = time.perf_counter()
                out = sess.run(None, feed)
                times["ort"].append(time.perf_counter() - t0)
                row["ort_index_equal"] = bool(np.array_equal(out[1], index.numpy()))
    for k, v in times.items():
        row[k + "_s"] = statistics.median(v) if v else float("nan")
    log(
        f"L={frames} D={dim} {layout}: ref {row['reference_s']:.3f} s, eager {row['eager_s']:.3f} s, "
        f"ORT {row['ort_s']:.3f} s, export {row.get('export_s', float('nan')):.1f} s, "
        f"transient {row['memory_mib']:.0f} MiB, ORT index equal {row.get('ort_index_equal', '-')}"
    )
    return row


def table(rows: list[dict], threads: int, repeat: int, load: float) -> str:
    """Markdown table of :func:`measure` rows with a header saying how they were measured."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    head = (
        f"InfoMerge paper preset, r = 0.15, N = 196, fp32; median of {repeat}, reference / eager / ORT "
        f"interleaved in one process; {threads} intra-op thread(s); {os.cpu_count()} CPU cores ({cpu}), "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; 1-min load average {load:.1f} at "
        "the start (a shared machine: read the ratios).\n\n"
        "| L | D | segments | B | reference (s) | eager static (s) | ORT static (s) | eager / ref | "
        "ORT / ref | export (s) | transient (MiB) | ORT index == eager |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['frames']} | {r['dim']} | {r['layout']} | {r['budget']} | {r['reference_s']:.3f} | "
            f"{r['eager_s']:.3f} | {r['ort_s']:.3f} | {r['eager_s'] / r['reference_s']:.2f} | "
            f"{r['ort_s'] / r['reference_s']:.2f} | {r.get('export_s', float('nan')):.1f} | "
            f"{r['memory_mib']:.0f} | {r.get('ort_index_equal', '-')} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infomerge.bench.studies.static_scaling", description=__doc__.split("\n")[0]
    )
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--dims", type=int, nargs="+", default=[896])
    p.add_argument("--layout", choices=LAYOUTS, nargs="+", default=["even"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (default 1)")
    p.add_argument("--no-onnx", action="store_true", help="skip the export and ONNX Runtime")
    p.add_argument("--write-docs", type=Path, help="replace the scaling section of this markdown file")
    a = p.parse_args(argv)
    if a.repeat < 1 or a.threads < 1 or min(a.frames) < 8:
        p.error("--repeat and --threads must be >= 1 and every --frames >= 8")
    torch.set_num_threads(a.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = []
    with heavy_lock():
        load = os.getloadavg()[0]
        for dim in a.dims:
            for layout in a.layout:
                for frames in a.frames:
                    rows.append(measure(frames, dim, layout, a.repeat, not a.no_onnx, log))
    text = table(rows, a.threads, a.repeat, load)
    print(text)
    if a.write_docs:
        write_section(a.write_docs, "scaling", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
