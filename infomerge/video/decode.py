"""Decode and sample a video with PyAV (FFmpeg inside its wheel): seek to the sampled frames,
decoding sequentially only where seeking cannot be trusted.

How a file is read:

1. **Scan.** Demux every packet of the video stream without decoding it (cheap: no pixels) and
   collect the presentation timestamps (pts) of the frames a sequential decode delivers, in
   presentation order: packets flagged *discard* (outside an MP4 edit list) are left out, as
   libavcodec drops their frames. Frame ``i`` of a sequential decode is the frame with the
   ``i``-th smallest pts, so frame indices (lmms-eval sampling) and times (``sampling="time"``)
   map to exact pts values before any decoding.
2. **Seek.** For each sampled pts ``T``: seek backward to a keyframe, and check the first packet
   read: it must be a keyframe with pts ``<= T``; otherwise (an open GOP's leading frames, a
   demuxer whose seek index holds dts, an inexact seek) step further back. Then decode forward
   until the frame with pts ``T``. Starting at a keyframe that precedes ``T`` in presentation
   order gives the same pixels as decoding from the start. When no keyframe lies between the
   previous sampled frame and the next, decoding simply continues (no seek). On the way, packets
   that are not sampled are decoded with ``skip_frame="NONREF"``: frames nothing refers to are
   dropped unseen, which leaves the sampled frames' pixels unchanged. For a local file up to
   1080p the sampled frames are cut into runs at keyframes and each run is decoded by its own
   container in a thread, one per core (:func:`_read_seeking`).
3. **Fallback.** Without usable pts (raw H.264 streams, some MPEG-TS), when a seek never lands
   before its target, or when the frame with the expected pts never comes out, the file is decoded
   sequentially, like the OpenCV reader before it: the frames are sampled by the counted total,
   with a second pass when the container's count was wrong.

Each kept frame is converted to RGB and, when ``size`` is given, resized on the spot
(:func:`~infomerge.video.preprocess.resize_frame`), so memory does not grow with resolution:
frames above 1080p are converted strip by strip (:class:`_Keeper`), and glibc is told to return
large freed buffers (:mod:`infomerge.video.allocator`).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from infomerge.errors import (
    DecodeCancelledError,
    FrameCountError,
    NoDecodableFrameError,
    TruncatedVideoError,
    UsageError,
    VideoSourceError,
)
from infomerge.video.allocator import return_large_buffers
from infomerge.video.clip import VideoClip
from infomerge.video.preprocess import (
    STRIP_ROWS,
    WidthPass,
    display_copy,
    display_from_rows,
    display_size,
    float_strip,
    pixel_values_from_rows,
    resize_frame,
)
from infomerge.video.sampling import (
    SAMPLINGS,
    fps_for_count,
    fps_frame_count,
    sample_by_fps,
    sample_by_time,
    sample_indices,
    window_start,
)
from infomerge.video.source import Source, open_source, parse_source

DISPLAY_MAX = 1280  # longer side of VideoClip.frames when read_video is given ``size``
LIVE_WINDOW_S = 10.0  # window of a live source when none is given
DECODE_DEVICES = ("cpu", "cuda")
_SEEK_TRIES = 12
_FRAME_THREADS_MAX_PIXELS = 1920 * 1088
_WORKERS_MAX = 4  # decoders side by side on a file's sampled frames (see _decode_workers)
_WORKER_THREADS = "SLICE"  # FFmpeg threading of each of them


class _SeekFailed(Exception):
    """Seeking cannot deliver the frame exactly: decode sequentially instead."""


@dataclass
class _Timeline:
    """The frames of a stream, from a demux-only scan.

    pts: (N,) int64 ascending presentation timestamps (stream time base) of the frames.
    keys: (K,) int64 ascending pts of keyframe packets (discarded ones included: seek points).
    indexed: frames the container's index lists (0 when it has no per-frame index).
    """

    pts: np.ndarray
    keys: np.ndarray
    indexed: int


def _set_threads(stream) -> None:
    """Frame + slice threads for frames up to 1080p; for larger ones slice threads only: every
    frame thread holds frames of its own, which at 4K/8K would make memory grow with resolution.
    Before frames above 1080p are decoded, glibc is told to return large freed buffers to the
    system (:func:`~infomerge.video.allocator.return_large_buffers`)."""
    ctx = stream.codec_context
    big = (ctx.width or 0) * (ctx.height or 0) > _FRAME_THREADS_MAX_PIXELS
    stream.thread_type = "SLICE" if big else "AUTO"
    if big:
        return_large_buffers()


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DecodeCancelledError("video", "decoding cancelled")


def _scan(container, stream, cancel, src: Source) -> _Timeline | None:
    """Demux every packet of ``stream``; None when some frame lacks a pts or two share one.

    Raises:
        VideoSourceError: reading fails before the first packet (FFmpeg's reason).
    """
    import av

    pts: list[int] = []
    keys: list[int] = []
    try:
        for i, packet in enumerate(container.demux(stream)):
            if not i & 1023:
                _check(cancel)
            if packet.size == 0:  # the flush packet at the end
                continue
            p = packet.pts
            if p is None:
                return None
            if packet.is_keyframe:
                keys.append(p)
            if not packet.is_discard:
                pts.append(p)
    except av.FFmpegError as exc:
        if not pts and not keys:
            raise _read_error(src, exc) from exc
        # else a damaged tail: the packets read so far are what the file holds
    arr = np.sort(np.asarray(pts, dtype=np.int64))
    if len(arr) > 1 and not np.all(np.diff(arr) > 0):
        return None
    indexed = sum(1 for e in stream.index_entries if not e.is_discard)
    return _Timeline(arr, np.sort(np.asarray(keys, dtype=np.int64)), indexed)


def _read_error(src: Source, exc: Exception) -> VideoSourceError:
    reason = getattr(exc, "strerror", None) or str(exc)
    hint = ""
    if src.kind == "url":
        hint = ("; if the server does not answer HTTP range requests, an MP4 whose index (moov) sits "
                "at its end cannot be read from it: download it first, or re-mux it with "
                "`ffmpeg -i IN -c copy -movflags +faststart OUT.mp4`")
    return VideoSourceError(src.name, f"reading failed: {reason}{hint}")


class _Cursor:
    """Frames of a seekable stream by exact pts; continues decoding when that beats a seek.

    Between a keyframe and a sampled frame, packets that are not sampled are decoded with
    ``skip_frame="NONREF"``: the decoder drops the frames no other frame refers to (H.264/HEVC
    non-reference pictures, MPEG-4 B-frames), which cannot change the sampled frames' pixels and
    saves their decoding. A packet whose pts is sampled, or that has no pts, is decoded in full.
    """

    def __init__(self, container, stream, keys: np.ndarray, cancel, wanted: set[int] | None = None):
        self.container, self.stream, self.keys, self.cancel = container, stream, keys, cancel
        self.wanted = wanted
        self._frames = None  # generator of decoded frames since the last seek
        self._last: int | None = None  # pts of the last frame it delivered
        self.seeks = 0

    def close(self) -> None:
        """Finish the decode generator now, not at garbage collection: a signal handler that runs
        inside a generator's clean-up during ``gc.collect`` has its exception swallowed (the
        interrupt would be lost), and the decoder's buffers would stay alive until then."""
        if self._frames is not None:
            self._frames.close()
            self._frames = None

    def _key_at_or_before(self, t: int) -> int | None:
        i = int(np.searchsorted(self.keys, t, side="right")) - 1
        return int(self.keys[i]) if i >= 0 else None

    def frame(self, t: int):
        """The decoded frame whose pts is ``t`` (an av.VideoFrame). Raises _SeekFailed."""
        key = self._key_at_or_before(t)
        if self._frames is None or self._last is None or t <= self._last or (
            key is not None and key > self._last
        ):
            self._seek(t)
        for frame in self._frames:
            self._last = frame.pts
            if frame.pts == t:
                return frame
            if frame.pts > t:
                raise _SeekFailed(f"no frame with pts {t}: the decoder went from below it to {frame.pts}")
        raise _SeekFailed(f"no frame with pts {t} before the end of the stream")

    def _seek(self, t: int) -> None:
        """Start decoding at a keyframe whose pts is <= t. Tries t itself, then just before each
        known keyframe at or before t (latest first): a demuxer whose seek lands late (index by
        dts, MPEG-TS's search by bytes) is walked back one GOP at a time, down to the first."""
        import av

        below = self.keys[self.keys <= t][::-1]
        second = max(1, int(1 / self.stream.time_base)) if self.stream.time_base else 1
        first_key = int(self.keys[0]) if len(self.keys) else t
        targets = [t] + [int(k) - 1 for k in below[:_SEEK_TRIES]]
        targets += [first_key - second, first_key - 60 * second]
        for target in targets:
            _check(self.cancel)
            try:
                self.container.seek(int(target), stream=self.stream, backward=True, any_frame=False)
            except av.FFmpegError as exc:
                raise _SeekFailed(f"seek failed: {exc}") from exc
            self.seeks += 1
            self.stream.codec_context.flush_buffers()
            packets = self.container.demux(self.stream)
            # the first keyframe read (packets before it cannot start a decode)
            try:
                first = next((p for p in packets if p.size and p.is_keyframe), None)
            except av.FFmpegError as exc:
                raise _SeekFailed(f"reading after a seek failed: {exc}") from exc
            if first is not None and first.pts is not None and first.pts <= t:
                self.close()
                self._frames = self._decode(first, packets)
                self._last = None
                return
            packets.close()
        raise _SeekFailed(f"no seek landed on a keyframe before pts {t}")

    def _decode(self, first, packets):
        import av

        def all_packets():
            yield first
            try:
                yield from packets
            except av.FFmpegError as exc:
                raise _SeekFailed(f"reading after a seek failed: {exc}") from exc

        ctx = self.stream.codec_context
        ctx.skip_frame = "DEFAULT"
        skipping = False
        for i, packet in enumerate(all_packets()):
            if not i & 15:
                _check(self.cancel)
            skip = self.wanted is not None and packet.pts is not None and packet.pts not in self.wanted
            if skip != skipping:
                ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            try:
                frames = self.stream.decode(packet)
            except av.FFmpegError:
                continue  # a damaged packet: a sequential decode skips it too
            for frame in frames:
                if frame.pts is None:
                    raise _SeekFailed("decoded frame without pts")
                yield frame


def _choose(
    times: np.ndarray, frames: int, sampling: str, window: float | None, rate: tuple | None = None
) -> np.ndarray:
    """Sampled indices into ``times`` (ascending seconds of every frame); ``sampling="fps"`` samples
    at ``rate = (fps, video_fps)`` (:func:`~infomerge.video.sampling.sample_by_fps`)."""
    lo = window_start(times, window) if window is not None else 0
    if sampling == "fps":
        return sample_by_fps(len(times) - lo, rate[1], rate[0]) + lo
    if sampling == "time":
        return sample_by_time(times[lo:], frames) + lo
    return sample_indices(len(times) - lo, frames) + lo


class _Keeper:
    """What is kept of a sampled frame: RGB (resized for display when ``size`` is set) and, with
    ``size``, its SigLIP pixel values, computed right away so no full-resolution copy stays.

    Frames above 1080p in 4:2:0 (what H.264/HEVC/AV1 cameras write) are converted to RGB strip by
    strip (:func:`_rgb_strips`), each strip going straight into the width passes of the display
    copy and of the pixel values: no full-resolution RGB frame (95 MiB at 8K) exists.
    """

    def __init__(self, size: int | None, display_max: int):
        self.size, self.display_max = size, display_max
        self._buffers_of: dict[int, tuple] = {}  # thread id -> (frame size, buffers)

    def __call__(self, frame):
        if self.size is not None and _by_strips(frame, self.display_max):
            return self.from_strips(frame)
        return self.from_rgb(frame.to_ndarray(format="rgb24"))

    def from_rgb(self, rgb: np.ndarray):
        if self.size is None:
            return rgb, None
        return display_copy(rgb, self.display_max), resize_frame(rgb, self.size)

    def from_strips(self, frame):
        h, w = frame.height, frame.width
        nh, nw = display_size(h, w, self.display_max)
        display, pixels, buf = self._buffers(h, w, nw)
        for r, rgb in _rgb_strips(frame):
            x = float_strip(rgb, buf)  # one conversion for both passes
            display.add(r, x)
            pixels.add(r, x)
        return display_from_rows(display.rows, nh), pixel_values_from_rows(pixels.rows, self.size)

    def _buffers(self, h: int, w: int, nw: int):
        """The width passes and the float32 strip of an h x w frame, allocated once per thread and
        frame size and reused for every sampled frame (each is overwritten in full): large
        buffers allocated and freed per frame are what made the allocator's footprint grow."""
        key, thread = (h, w, nw, self.size), threading.get_ident()
        cached = self._buffers_of.get(thread)
        if cached is None or cached[0] != key:
            cached = (key, (WidthPass(h, w, nw), WidthPass(h, w, self.size),
                            torch.empty((STRIP_ROWS, w, 3), dtype=torch.float32)))
            self._buffers_of[thread] = cached
        return cached[1]

    def release(self) -> None:
        """Drop the reused buffers (110 MiB at 8K) once decoding is over, before the kept frames
        are stacked into the clip."""
        self._buffers_of.clear()


_STRIP_FORMATS = ("yuv420p", "yuvj420p")


def _by_strips(frame, display_max: int) -> bool:
    """Convert ``frame`` to RGB in strips: above 1080p, 4:2:0 planar, even width, height a multiple
    of 4 (whole chroma rows in every strip), and a display copy smaller than the frame."""
    h, w = frame.height, frame.width
    return (h * w > _FRAME_THREADS_MAX_PIXELS and frame.format.name in _STRIP_FORMATS and w % 2 == 0
            and h % 4 == 0 and max(h, w) > display_max)


def _rgb_strips(frame):
    """Yield ``(r, rgb)``: rows ``r .. r + n`` of ``frame.to_ndarray(format="rgb24")``, (n, W, 3)
    uint8, n = STRIP_ROWS (fewer at the bottom), computed from a copy of those rows' Y and chroma
    planes by the same swscale conversion. FFmpeg's 4:2:0 -> RGB conversion at equal size is local
    to each pair of rows (it runs on row slices in its own threads too), so the strips are the
    full frame's rows byte for byte (tested on 4K-class frames against ``to_ndarray``)."""
    import av

    h, w = frame.height, frame.width
    y, u, v = (np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)[:, : p.width]
               for p in frame.planes)
    for r in range(0, h, STRIP_ROWS):
        n = min(STRIP_ROWS, h - r)
        yuv = np.empty((n * 3 // 2, w), dtype=np.uint8)  # from_ndarray's layout: Y, then U, then V
        yuv[:n] = y[r : r + n]
        yuv[n : n + n // 4].reshape(n // 2, w // 2)[:] = u[r // 2 : (r + n) // 2]
        yuv[n + n // 4 :].reshape(n // 2, w // 2)[:] = v[r // 2 : (r + n) // 2]
        strip = av.VideoFrame.from_ndarray(yuv, format=frame.format.name)
        strip.colorspace, strip.color_range = frame.colorspace, frame.color_range
        yield r, strip.to_ndarray(format="rgb24")


def _assemble(
    src: Source, kept: dict, idx: np.ndarray, times: np.ndarray, total: int, fps: float, claimed: int,
    notes: list[str], sampling: str, window: float | None, live: bool, method: str,
) -> VideoClip:
    import torch

    rgb = np.stack([kept[int(i)][0] for i in idx])
    pv = None
    if kept[int(idx[0])][1] is not None:
        pv = torch.stack([kept[int(i)][1] for i in idx])
    path = src.url if src.kind == "file" else src.name
    from pathlib import Path

    return VideoClip(
        Path(path) if src.kind == "file" else path, rgb, idx.astype(np.int64), int(total), fps, claimed,
        notes, np.asarray(times, dtype=np.float64)[idx], pv, sampling, window, live, method,
    )


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    return fps if np.isfinite(fps) else 0.0


class _Either:
    """Set when the caller's ``cancel`` or a sibling worker's ``stop`` is set (``is_set`` only)."""

    def __init__(self, cancel: threading.Event | None, stop: threading.Event):
        self.cancel, self.stop = cancel, stop

    def is_set(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())


def _split(targets: list[int], keys: np.ndarray, parts: int) -> list[list[int]]:
    """Cut the ascending sampled pts ``targets`` into at most ``parts`` runs of about equal length,
    only where a keyframe lies between two neighbours (each run then starts with its own seek, so
    no GOP is decoded twice)."""
    gop = np.searchsorted(keys, targets, side="right")  # (len(targets),) GOP of each sampled pts
    cuts = [i for i in range(1, len(targets)) if gop[i] > gop[i - 1]]
    chosen: list[int] = []
    for k in range(1, parts):
        ideal = k * len(targets) / parts
        best = min(cuts, key=lambda c: abs(c - ideal), default=None)
        if best is not None and best not in chosen:
            chosen.append(best)
    bounds = [0, *sorted(chosen), len(targets)]
    return [targets[a:b] for a, b in zip(bounds, bounds[1:])]


def _walk(container, stream, keys, cancel, wanted, run: list[int], keep) -> dict[int, tuple]:
    """Decode the frames at the pts in ``run`` (ascending) with one cursor: {pts: keep(frame)}."""
    cursor = _Cursor(container, stream, keys, cancel, wanted)
    try:
        return {t: keep(cursor.frame(t)) for t in run}
    finally:
        cursor.close()


def _decode_workers(src: Source, stream) -> int:
    """How many containers decode a file's sampled frames side by side: one per core (at most
    :data:`_WORKERS_MAX`) for local files up to 1080p; one for URLs (one connection) and for larger
    frames (each decoder holds frames of its own)."""
    ctx = stream.codec_context
    if src.kind != "file" or (ctx.width or 0) * (ctx.height or 0) > _FRAME_THREADS_MAX_PIXELS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, _WORKERS_MAX))


def _read_seeking(
    container, stream, timeline: _Timeline, frames, sampling, window, keep, cancel, src=None, rate=None
):
    """Seek to the sampled frames. With several workers (:func:`_decode_workers`), the sampled pts
    are cut into runs at keyframes and each run is decoded by its own container and decoder in a
    thread (FFmpeg releases the GIL while it demuxes and decodes); every frame still comes from a
    decode that starts at a keyframe before it, so the pixels are those of one sequential decode."""
    tb = float(stream.time_base)
    times = (timeline.pts - timeline.pts[0]) * tb
    idx = _choose(times, frames, sampling, window, rate)
    wanted = {int(p) for p in timeline.pts[idx]}
    targets = [int(timeline.pts[i]) for i in np.unique(idx)]
    workers = _decode_workers(src, stream) if src is not None else 1
    runs = _split(targets, timeline.keys, workers) if workers > 1 else [targets]
    if len(runs) == 1:
        by_pts = _walk(container, stream, timeline.keys, cancel, wanted, targets, keep)
    else:
        by_pts = _walk_parallel(container, stream, timeline.keys, cancel, wanted, runs, keep, src)
    kept = {int(i): by_pts[int(timeline.pts[i])] for i in np.unique(idx)}
    return kept, idx, times


def _walk_parallel(container, stream, keys, cancel, wanted, runs, keep, src: Source) -> dict[int, tuple]:
    """:func:`_walk` on each run in its own thread: the first on ``container``, the others on
    containers of their own (single-threaded decoders: the workers already fill the cores)."""
    stop = threading.Event()
    either = _Either(cancel, stop)
    results: list[dict | BaseException | None] = [None] * len(runs)

    def work(k: int) -> None:
        own = None
        try:
            if k == 0:
                c, s = container, stream
            else:
                own, s = open_source(src)
                c = own
            s.thread_type = _WORKER_THREADS
            results[k] = _walk(c, s, keys, either, wanted, runs[k], keep)
        except BaseException as exc:  # handed to the caller below
            results[k] = exc
            stop.set()
        finally:
            if own is not None:
                own.close()

    threads = [threading.Thread(target=work, args=(k,), name=f"infomerge-decode-{k}", daemon=True)
               for k in range(len(runs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        # an interrupt while joining: the workers stop at their next packet; wait for that, as the
        # caller closes the container the first one reads
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:  # a worker's own error before the cancellations it caused in its siblings
        raise next((e for e in errors if not isinstance(e, DecodeCancelledError)), errors[0])
    out: dict[int, tuple] = {}
    for r in results:
        out.update(r)
    return out


def _decode_all(src: Source, wanted: set[int], keep, cancel):
    """Sequential decode from the start; keep frames at ``wanted`` indices. Returns (kept, times)."""
    import av

    container, stream = open_source(src)
    _set_threads(stream)
    kept, times = {}, []
    try:
        for i, packet in enumerate(container.demux(stream)):
            if not i & 15:
                _check(cancel)
            try:
                decoded = stream.decode(packet)
            except av.FFmpegError:
                continue
            for frame in decoded:
                n = len(times)
                times.append(float(frame.time) if frame.time is not None else np.nan)
                if n in wanted:
                    kept[n] = keep(frame)
    except av.FFmpegError:
        pass  # a damaged tail ends the stream, as it ended the OpenCV reader
    finally:
        container.close()
    return kept, np.asarray(times, dtype=np.float64)


def _read_sequential(src, frames, sampling, window, keep, cancel, guess: int, rate=None, expected=None):
    """Returns (kept, idx, times, total). With ``sampling="fps"`` the count is checked against
    ``expected`` once the frames are counted (:func:`_fps_count`)."""
    wanted = []
    if guess > 0 and window is None and sampling == "index":
        wanted = sample_indices(guess, frames)
    elif guess > 0 and window is None and sampling == "fps":
        try:
            wanted = sample_by_fps(guess, rate[1], rate[0])
        except ValueError:
            wanted = []
    kept, times = _decode_all(src, {int(i) for i in wanted}, keep, cancel)
    if len(times) == 0:
        raise NoDecodableFrameError(src.name, "the container opened but no frame could be decoded")
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0):
        if sampling == "time" or window is not None:
            raise VideoSourceError(src.name, "the stream has no usable timestamps: use sampling by index "
                                   "(--sampling index, no --window)")
        times = np.arange(len(times), dtype=np.float64)
    else:
        times = times - times[0]
    if sampling == "fps":
        lo = window_start(times, window) if window is not None else 0
        _fps_count(src, len(times) - lo, rate[1], rate[0], expected)
    idx = _choose(times, frames, sampling, window, rate)
    missing = {int(i) for i in idx} - set(kept)
    if missing:
        more, times2 = _decode_all(src, missing, keep, cancel)
        if len(times2) != len(times) or set(more) != missing:
            from infomerge.errors import CorruptVideoError

            raise CorruptVideoError(src.name, "the decoder delivered different frames on a second pass")
        kept.update(more)
    return kept, idx, times, len(times)


def _read_live(container, stream, src, frames, window, keep, cancel, notes):
    """Read ``window`` seconds of a live source from now; keep F frames uniform in time."""
    import av

    instants = np.linspace(0.0, window, frames)
    chosen: list[int | None] = [None] * frames
    kept: dict[int, tuple] = {}
    times: list[float] = []
    prev, j, t0, wall0 = None, 0, None, time.monotonic()
    try:
        for packet in container.demux(stream):
            _check(cancel)
            try:
                decoded = stream.decode(packet)
            except av.FFmpegError:
                continue
            for frame in decoded:
                t = float(frame.time) if frame.time is not None else time.monotonic() - wall0
                t0 = t if t0 is None else t0
                rel = t - t0
                while j < frames and rel > instants[j] + 1e-9:
                    chosen[j] = prev[0]
                    kept.setdefault(prev[0], prev[1]())
                    j += 1
                if j == frames:
                    break
                n = len(times)
                times.append(rel)
                prev = (n, (lambda f=frame: keep(f)))
            if j == frames:
                break
    except av.FFmpegError as exc:
        if prev is None:
            raise VideoSourceError(src.name, f"reading failed: {exc}") from exc
        notes.append(f"the stream ended early ({exc})")
    if prev is None:
        raise NoDecodableFrameError(src.name, "the source opened but no frame could be decoded")
    while j < frames:  # the source ended (or stopped) before the window did
        chosen[j] = prev[0]
        kept.setdefault(prev[0], prev[1]())
        j += 1
    if times and times[-1] < window * 0.9:
        notes.append(f"the source delivered only {times[-1]:.2f} s of the {window:g} s window")
    return kept, np.asarray(chosen, dtype=np.int64), np.asarray(times), len(times)


def _fps_count(src: Source, total: int, video_fps: float, fps: float, expected: int | None) -> int:
    """:func:`~infomerge.video.sampling.fps_frame_count` of the stream, checked against ``expected``.

    Raises:
        UsageError: a stream without a frame rate, or too short for 2 frames.
        FrameCountError: the count is not ``expected`` (names both, and a rate that gives it).
    """
    try:
        n = fps_frame_count(total, video_fps, fps)
    except ValueError as exc:
        raise UsageError(f"{src.name}: {exc}") from None
    if expected is not None and n != expected:
        better = fps_for_count(total, video_fps, expected)
        fix = (f"--fps {better:g} gives {expected}" if better is not None
               else f"no rate gives {expected} frames of this video")
        raise FrameCountError(
            f"{src.name}: --fps {fps:g} samples {n} frames ({total} frames at {video_fps:.4g} fps, "
            f"{total / video_fps:.2f} s; Qwen's rule: floor to even of duration x fps, clamped to "
            f"[4, 768]), but the exported graphs take exactly {expected}: {fix}; or drop --fps "
            f"({expected} frames uniform in index), or export for {n} frames (infomerge-export ... "
            f"--frames {n})"
        )
    return n


def read_video(
    path,
    frames: int = 32,
    *,
    fps: float | None = None,
    require_frames: int | None = None,
    sampling: str = "index",
    window: float | None = None,
    size: int | None = None,
    display_max: int = DISPLAY_MAX,
    live: bool | None = None,
    decode_device: str = "cpu",
    cancel: threading.Event | None = None,
) -> VideoClip:
    """Decode ``path`` and sample ``frames`` frames, seeking to them (see the module docstring).

    Args:
        path: a video file, an http(s) URL, an RTSP/RTMP/UDP/SRT URL, or a camera (``"0"`` or
            ``"/dev/video0"``).
        frames: F, the number of frames to sample (>= 1); ignored with ``fps``.
        fps: sample at this rate (frames per second) by Qwen2.5-VL's rule instead
            (:func:`~infomerge.video.sampling.sample_by_fps`: ``n`` = duration x fps floored to
            even, clamped to [4, 768], at ``round(linspace(0, N - 1, n))``); files only, CPU
            decoding, ``sampling="index"``.
        require_frames: with ``fps``, the count a fixed-shape graph takes: checked after the
            demux scan, before any frame is decoded (:class:`FrameCountError`).
        sampling: ``"index"``: frames ``floor(linspace(0, N-1, F))`` of the N frames (lmms-eval);
            ``"time"``: the frames shown at F instants uniform in presentation time (variable
            frame rate). A live source is always sampled in time.
        window: seconds; sample only the most recent ``window`` seconds (the end of a file; for a
            live source, the ``window`` seconds read from now, default 10 s).
        size: when given, each sampled frame is resized as it is decoded into
            ``VideoClip.pixel_values`` (F, 3, size, size) float32 (SigLIP preprocessing) and
            ``VideoClip.frames`` holds display copies at most ``display_max`` pixels on the longer
            side: memory then does not grow with the source's resolution.
        display_max: see ``size``.
        live: force (True) or forbid (False) live reading; default: streams and cameras are live,
            an http(s) URL is live when it has no duration, files are not.
        decode_device: ``"cpu"`` (PyAV) or ``"cuda"`` (NVDEC through torchcodec; see
            :mod:`infomerge.video.hardware`).
        cancel: an Event; when set, decoding stops with :class:`DecodeCancelledError` within one
            packet.

    Returns:
        :class:`VideoClip` with (F, H, W, 3) uint8 RGB frames, their indices and timestamps.

    Raises:
        ValueError: ``frames < 1``, unknown ``sampling``/``decode_device``, ``window <= 0``, ``size < 1``;
            ``fps <= 0`` or ``fps`` with ``sampling="time"``, NVDEC or a live source (UsageError).
        FrameCountError: ``fps`` gives another count than ``frames``.
        VideoNotFoundError: the path (or camera device) does not exist.
        NotAVideoError: the file is empty or is no media container.
        NoVideoStreamError: media without a video stream (audio only).
        StillImageError: a still image (refused).
        UnsupportedCodecError: a codec PyAV cannot decode (named, with what to install).
        CorruptVideoError: a video container that cannot be opened (truncated, damaged).
        TruncatedVideoError: a container whose file ends before the frames its index lists.
        NoDecodableFrameError: the container opens but no frame decodes.
        VideoSourceError: a URL, stream or camera that cannot be opened or read (FFmpeg's reason).
        BackendUnavailableError: ``decode_device="cuda"`` without a usable NVDEC decoder.
        DecodeCancelledError: ``cancel`` was set.
    """
    if fps is None and frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if fps is not None:
        _check_fps(fps, require_frames, sampling, decode_device, live)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if window is not None and not window > 0:
        raise ValueError(f"window must be > 0 seconds, got {window}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if decode_device not in DECODE_DEVICES:
        raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {decode_device!r}")
    src = parse_source(path)
    keep = _Keeper(size, display_max)
    if decode_device == "cuda":
        from infomerge.video.hardware import read_video_nvdec

        return read_video_nvdec(src, frames, sampling=sampling, window=window, keep=keep)
    container, stream = open_source(src)
    notes: list[str] = []
    try:
        _set_threads(stream)
        fps_video, claimed = _fps(stream), int(stream.frames or 0)
        is_live = live if live is not None else (
            src.live or (src.kind == "url" and container.duration is None and stream.duration is None)
        )
        if is_live:
            if fps is not None:
                raise UsageError(f"{src.name}: a live source has no length to sample by fps; sample a "
                                 "frame count (--frames) instead of --fps")
            if window is None:
                window = LIVE_WINDOW_S
                notes.append(f"live source: no window given, sampled the default {window:g} s")
            kept, idx, times, total = _read_live(container, stream, src, frames, window, keep, cancel, notes)
            clip = _assemble(src, kept, idx, times, total, fps_video, 0, notes, "time", window, True, "live")
            notes.insert(0, f"live source: {clip.describe()}")
            return clip
        timeline = _scan(container, stream, cancel, src)
        if timeline is not None and timeline.indexed > len(timeline.pts):
            raise TruncatedVideoError(
                src.name,
                f"truncated: the file ends after {len(timeline.pts)} of the {timeline.indexed} frames "
                f"its index lists; to use the {len(timeline.pts)} frames it holds, re-mux it: "
                "`ffmpeg -i IN -c copy OUT.mp4`",
            )
        result = None
        rate = None if fps is None else (float(fps), fps_video)
        if rate is not None and timeline is not None and len(timeline.pts):  # before any decoding
            times = (timeline.pts - timeline.pts[0]) * float(stream.time_base)
            lo = window_start(times, window) if window is not None else 0
            frames = _fps_count(src, len(times) - lo, fps_video, float(fps), require_frames)
        sampled_by = "fps" if rate is not None else sampling
        if timeline is not None and len(timeline.pts):
            try:
                kept, idx, times = _read_seeking(
                    container, stream, timeline, frames, sampled_by, window, keep, cancel, src, rate
                )
                result = (kept, idx, times, len(timeline.pts), "seek")
            except _SeekFailed as exc:
                notes.append(f"exact seeking failed ({exc}); decoded sequentially")
        if result is None:
            guess = len(timeline.pts) if timeline is not None and len(timeline.pts) else claimed
            kept, idx, times, total = _read_sequential(src, frames, sampled_by, window, keep, cancel, guess,
                                                       rate, require_frames)
            result = (kept, idx, times, total, "sequential")
    finally:
        container.close()
        keep.release()
    kept, idx, times, total, method = result
    if claimed and claimed != total:
        notes.append(f"container claims {claimed} frames, decoder delivered {total}; resampled")
    for note in notes:
        warnings.warn(f"{src.name}: {note}", stacklevel=2)
    clip = _assemble(
        src, kept, idx, times, total, fps_video, claimed, notes, sampled_by, window, False, method
    )
    clip.sampling_fps = None if rate is None else rate[0]
    return clip


def fps_sample_count(path, fps: float, *, window: float | None = None, require_frames: int | None = None):
    """Frames ``read_video(path, fps=fps, window=window)`` will sample, from a demux-only scan (no
    frame decoded): what a command checks before loading models.

    Returns:
        the count, or None when the stream has no usable timestamps (the decode then counts the
        frames and checks ``require_frames`` itself).

    Raises:
        UsageError: ``fps <= 0``, a live source, a stream without a frame rate or too short.
        FrameCountError: the count is not ``require_frames`` (both named, with the fix).
        VideoError: subclasses, as :func:`read_video` opening the source.
    """
    _check_fps(fps, require_frames, "index", "cpu", None)
    src = parse_source(path)
    if src.live:
        raise UsageError(f"{src.name}: a live source has no length to sample by fps; sample a frame count "
                         "(--frames) instead of --fps")
    container, stream = open_source(src)
    try:
        timeline = _scan(container, stream, None, src)
        if timeline is None or not len(timeline.pts):
            return None
        times = (timeline.pts - timeline.pts[0]) * float(stream.time_base)
        lo = window_start(times, window) if window is not None else 0
        return _fps_count(src, len(times) - lo, _fps(stream), float(fps), require_frames)
    finally:
        container.close()


def _check_fps(fps, frames, sampling: str, decode_device: str, live) -> None:
    """Arguments of ``read_video(fps=...)``. Raises UsageError."""
    if not fps > 0:
        raise UsageError(f"fps must be > 0, got {fps}")
    if frames is not None and frames < 1:
        raise UsageError(f"require_frames must be >= 1 or None, got {frames}")
    if sampling != "index":
        raise UsageError("sampling by fps picks frames by index (Qwen2.5-VL's rule): drop sampling='time'")
    if decode_device != "cpu":
        raise UsageError("sampling by fps is wired for CPU decoding only: drop decode_device='cuda'")
    if live:
        raise UsageError("a live source has no length to sample by fps; sample a frame count instead")
