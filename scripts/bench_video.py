"""Benchmark of ``infomerge.video.read_video``: decode time against video length, peak memory
against resolution, before (OpenCV, sequential) and after (PyAV, seeking).

Not a test: it prints a Markdown table for docs/video.md. Two steps:

    python scripts/bench_video.py make /tmp/videos      # ffmpeg: test videos (once, a few minutes)
    python scripts/bench_video.py time /tmp/videos      # decode time, 1..60 min x 3 resolutions
    python scripts/bench_video.py time /tmp/videos --impl after --sizes 720p   # one row
    python scripts/bench_video.py memory /tmp/videos    # peak RSS, 720p / 1080p / 4K / 8K
    python scripts/bench_video.py memory /tmp/videos --impl after --impl after:no-strips   # ablation
    python scripts/bench_video.py time /tmp/videos --gops default 30 --impl after:one-decoder

"before" is ``infomerge/video.py`` as of commit ``e7d4bde`` (loaded with ``git show``), so the two
implementations run on the same machine, files and Python. Each measurement runs in a fresh
subprocess (peak RSS is the subprocess's ``ru_maxrss``); time is the wall time of the
``read_video`` call only (imports excluded), best of ``--repeat`` runs, page cache warm.

The videos: ffmpeg's ``testsrc2`` pattern, H.264 (libx264 ``-preset veryfast``: B-frames, CABAC,
keyframe every 250 frames, the x264 default), 30 fps, yuv420p, in MP4. Longer videos are the
1-minute clip concatenated without re-encoding (same decode cost per frame).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LENGTHS_MIN = (1, 5, 15, 30, 60)
SIZES = {"320x240": (320, 240), "720p": (1280, 720), "1080p": (1920, 1080)}
BIG = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160), "8K": (7680, 4320)}
BEFORE_REV = "e7d4bde"
IMPLS = ("before", "after")
# ablations of "after" (``after:PART[:PART]``): RGB in one piece above 1080p, glibc's dynamic mmap
# threshold left alone, one decoder with frame threads (the previous default), frame threads in
# each parallel decoder
VARIANTS = ("after:no-strips", "after:no-threshold", "after:no-strips:no-threshold", "after:one-decoder",
            "after:frame-threads")
GOPS = (None, 30)  # x264's default (keyint 250: 8.3 s at 30 fps) and 1 s, as phones and cameras write
REPO = Path(__file__).resolve().parents[1]


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def clip_path(root: Path, size: str, minutes: int, gop: int | None = None) -> Path:
    """``{size}_{minutes}min.mp4`` (x264's default GOP) or ``..._g{gop}.mp4``."""
    return root / (f"{size}_{minutes}min.mp4" if gop is None else f"{size}_{minutes}min_g{gop}.mp4")


def make(root: Path, gops=GOPS) -> None:
    """Write the benchmark videos into ``root`` (skips files that exist)."""
    root.mkdir(parents=True, exist_ok=True)
    for size, (w, h) in SIZES.items():
        for gop in gops:
            one = clip_path(root, size, 1, gop)
            if not one.exists():
                keyint = () if gop is None else ("-g", str(gop))
                _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=30", "-t", "60", "-c:v", "libx264",
                        "-preset", "veryfast", *keyint, "-pix_fmt", "yuv420p", str(one))
            for minutes in LENGTHS_MIN[1:]:
                out = clip_path(root, size, minutes, gop)
                if out.exists():
                    continue
                with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as lst:
                    lst.write(f"file '{one}'\n" * minutes)
                _ffmpeg("-f", "concat", "-safe", "0", "-i", lst.name, "-c", "copy", str(out))
                os.unlink(lst.name)
    for size, (w, h) in BIG.items():
        out = root / f"mem_{size}.mp4"
        if not out.exists():
            _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=30", "-t", "2", "-c:v", "libx264",
                     "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out))
    print(f"videos in {root}")



_CHILD = r"""
import importlib.util, json, resource, sys, time, types, warnings
warnings.simplefilter("ignore")
impl, path, frames, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
size = None if size == "none" else int(size)
if impl == "before":
    import subprocess
    src = subprocess.run(["git", "-C", sys.argv[5], "show", sys.argv[6] + ":infomerge/video.py"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("video_before"); sys.modules["video_before"] = mod
    exec(compile(src, "video_before.py", "exec"), mod.__dict__)
    def run():
        clip = mod.read_video(path, frames)
        return mod.preprocess(clip.frames) if size else clip
else:
    import infomerge.video.decode as dec
    from infomerge.video import read_video
    for part in impl.split(":")[1:]:  # ablations of this version (see VARIANTS)
        if part == "no-strips":
            dec._by_strips = lambda *a: False
        elif part == "no-threshold":
            dec.return_large_buffers = lambda: False
        elif part == "one-decoder":
            dec._WORKERS_MAX = 1
        elif part == "frame-threads":
            dec._WORKER_THREADS = "AUTO"
        else:
            raise SystemExit(f"unknown variant {part}")
    def run():
        return read_video(path, frames, size=size)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = run()
dt = time.perf_counter() - t0
print(json.dumps({"s": dt, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mib": base / 1024}))
"""


def measure(impl: str, path: Path, frames: int = 32, size: int | None = None, timeout: float = 900) -> dict:
    """Run one read in a fresh interpreter; {"s": seconds of read_video, "rss_mib": peak RSS}."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-c", _CHILD, impl, str(path), str(frames), "none" if size is None else str(size),
           str(REPO), BEFORE_REV]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(impl, path, repeat, **kw):
    runs = [measure(impl, path, **kw) for _ in range(repeat)]
    ok = [r for r in runs if "s" in r]
    return min(ok, key=lambda r: r["s"]) if ok else runs[0]


def time_table(root: Path, repeat: int, before_max_min: int, sizes=tuple(SIZES), impls=IMPLS,
               gops=(None,)) -> None:
    """Decode time of 32 frames vs length; "before" only up to ``before_max_min`` minutes (its
    cost is linear in length: longer ones are extrapolated from the longest measured, marked ~)."""
    print("| video | " + " | ".join(f"{m} min" for m in LENGTHS_MIN) + " |")
    print("|---|" + "---|" * len(LENGTHS_MIN))
    for size, impl, gop in ((s, i, g) for s in sizes for g in gops for i in impls):
        label = f"{size} {impl}" + ("" if gop is None else f", {gop}-frame GOP")
        cells, last = [], None
        for minutes in LENGTHS_MIN:
            if impl == "before" and minutes > before_max_min:
                cells.append(f"~{last[1] * minutes / last[0]:.1f} s" if last else "-")
                continue
            r = _best(impl, clip_path(root, size, minutes, gop), repeat if impl != "before" else 1)
            cells.append(f"{r['s']:.2f} s" if "s" in r else r["error"][:40])
            if "s" in r:
                last = (minutes, r["s"])
            print(f"# {label} {minutes} min: {r}", file=sys.stderr, flush=True)
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def memory_table(root: Path, impls=("before", "after"), repeat: int = 1) -> None:
    """Peak RSS of reading 32 frames of a 2 s clip and preprocessing them to 384x384 (median of
    ``repeat`` fresh processes per cell; the 720p cells vary by about +-20 MiB between runs)."""
    print("| source | " + " | ".join(f"{i}: peak RSS" for i in impls) + f" | {impls[-1]}: time |")
    print("|---|" + "---|" * (len(impls) + 1))
    for size in BIG:
        path = root / f"mem_{size}.mp4"
        cells, last = [], {}
        for impl in impls:
            runs = [measure(impl, path, size=384) for _ in range(repeat)]
            runs.sort(key=lambda r: r.get("rss_mib", 0))
            last = runs[len(runs) // 2]
            cells.append(f"{last['rss_mib']:.0f} MiB" if "rss_mib" in last else last["error"][:50])
            print(f"# {size} {impl}: {runs}", file=sys.stderr, flush=True)
        print(f"| {size} | " + " | ".join(cells) + f" | {last.get('s', float('nan')):.2f} s |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("make", "time", "memory"))
    ap.add_argument("root", type=Path, help="directory of the test videos")
    ap.add_argument("--repeat", type=int, default=2, help="runs per 'after' cell (best kept)")
    ap.add_argument("--before-max-min", type=int, default=5,
                    help="longest video the slow 'before' reader decodes (longer ones: extrapolated)")
    ap.add_argument("--impl", choices=IMPLS + VARIANTS, action="append",
                    help="only this reader (repeatable); after:... are ablations of this version")
    ap.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=tuple(SIZES),
                    help="time: these sizes only")
    ap.add_argument("--gops", nargs="+", default=["default"], choices=["default", "30"],
                    help="time: keyframe intervals (x264's default 250, or 30 = 1 s)")
    args = ap.parse_args()
    if args.what == "make":
        make(args.root)
    elif args.what == "time":
        gops = tuple(None if g == "default" else int(g) for g in args.gops)
        time_table(args.root, args.repeat, args.before_max_min, args.sizes, tuple(args.impl or IMPLS), gops)
    else:
        memory_table(args.root, tuple(args.impl or IMPLS), args.repeat)


if __name__ == "__main__":
    main()
