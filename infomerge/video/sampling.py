"""Which frames to keep: by frame index (lmms-eval), uniformly in presentation time, or at a
frame rate (Qwen2.5-VL's rule)."""

from __future__ import annotations

import math

import numpy as np

SAMPLINGS = ("index", "time")

# qwen-vl-utils (github.com/QwenLM/Qwen2.5-VL, qwen-vl-utils/src/qwen_vl_utils/vision_process.py);
# transformers' Qwen2VLVideoProcessor has the same min / max frames and temporal patch
FPS_DEFAULT = 2.0  # FPS
FRAME_FACTOR = 2  # FRAME_FACTOR: the temporal patch
FPS_MIN_FRAMES = 4  # FPS_MIN_FRAMES
FPS_MAX_FRAMES = 768  # FPS_MAX_FRAMES


def fps_frame_count(
    total: int,
    video_fps: float,
    fps: float = FPS_DEFAULT,
    *,
    factor: int = FRAME_FACTOR,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: int = FPS_MAX_FRAMES,
) -> int:
    """Frames Qwen2.5-VL samples from a video at ``fps`` frames per second (``smart_nframes``).

    ``n = floor_f(min(max(total / video_fps * fps, ceil_f(min_frames)), floor_f(min(max_frames,
    total)), total))`` with ``floor_f`` / ``ceil_f`` rounding down / up to a multiple of ``factor``:
    qwen-vl-utils' ``smart_nframes`` (FPS 2.0, FRAME_FACTOR 2, FPS_MIN_FRAMES 4, FPS_MAX_FRAMES 768);
    transformers' ``Qwen2VLVideoProcessor.sample_frames`` computes the same count.

    Args:
        total: frames in the video (or the window sampled). video_fps: its frame rate (frames / s).
        fps: the sampling rate asked for (frames / s).

    Returns:
        n, a multiple of ``factor`` in [factor, total].

    Raises:
        ValueError: ``fps`` or ``video_fps`` not > 0 (a stream without a frame rate), or a video
            too short for ``factor`` frames.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not video_fps > 0:
        raise ValueError("the video has no frame rate: sampling by fps needs one; sample a frame count")
    lo = math.ceil(min_frames / factor) * factor
    hi = math.floor(min(max_frames, total) / factor) * factor
    n = total / video_fps * fps
    n = math.floor(min(max(n, lo), hi, total) / factor) * factor
    if not factor <= n <= total:
        raise ValueError(f"a video of {total} frames is too short to sample {factor} frames by fps")
    return int(n)


def fps_for_count(total: int, video_fps: float, frames: int) -> float | None:
    """A sampling rate at which :func:`fps_frame_count` gives exactly ``frames``, or None when none
    does (``frames`` odd, below 4 unless the video is that short, above 768 or above ``total``).

    ``n = frames`` where ``frames <= total / video_fps * fps < frames + 2`` (inside the clamps):
    the middle, ``(frames + 1) video_fps / total``, rounded to 4 significant digits, checked.
    """
    if total < 1 or not video_fps > 0 or frames < 1:
        return None
    for digits in (4, 6, 9):
        fps = float(f"{(frames + 1) * video_fps / total:.{digits}g}")
        try:
            if fps > 0 and fps_frame_count(total, video_fps, fps) == frames:
                return fps
        except ValueError:
            return None
    return None


def sample_by_fps(total: int, video_fps: float, fps: float = FPS_DEFAULT) -> np.ndarray:
    """Indices of the frames Qwen2.5-VL samples at ``fps``: ``n = fps_frame_count(...)`` frames at
    ``round(linspace(0, total - 1, n))``, computed as qwen-vl-utils does (``torch.linspace`` in
    float32, ``round`` half to even).

    transformers' ``Qwen2VLVideoProcessor.sample_frames`` takes the same count but other frames
    (``arange(0, total, total / n)`` truncated); qwen-vl-utils' is what Qwen's model cards use.

    Returns:
        (n,) int64 ascending indices (first and last frame included).

    Raises:
        ValueError: as :func:`fps_frame_count`.
    """
    import torch

    n = fps_frame_count(total, video_fps, fps)
    return torch.linspace(0, total - 1, n).round().long().numpy()


def sample_indices(total: int, frames: int) -> np.ndarray:
    """Frame indices ``floor(linspace(0, total - 1, frames))`` (int64, shape (frames,)).

    The LLaVA-OneVision / lmms-eval convention: first and last frame included; a video shorter
    than ``frames`` frames yields repeated indices.

    Raises:
        ValueError: ``total < 1`` or ``frames < 1``.
    """
    if total < 1 or frames < 1:
        raise ValueError(f"need total >= 1 and frames >= 1, got total={total}, frames={frames}")
    return np.floor(np.linspace(0, total - 1, frames)).astype(np.int64)


def sample_by_time(times: np.ndarray, frames: int, start: float | None = None) -> np.ndarray:
    """Indices of the frames shown at ``frames`` instants uniform in presentation time.

    The instants are ``linspace(start, times[-1], frames)``; the frame shown at instant ``t`` is the
    last one whose timestamp is ``<= t``, so the last frame is always included and, with the
    default ``start = times[0]``, the first one too. Right for variable frame rate, where frame
    indices are not proportional to time.

    Args:
        times: (N,) float64 seconds of each frame, ascending.
        frames: F >= 1.
        start: the first instant (seconds); default ``times[0]``.

    Returns:
        (F,) int64 indices into ``times`` (repeats where frames are sparser than the instants).

    Raises:
        ValueError: empty ``times``, ``frames < 1``, or ``times`` not ascending.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0 or frames < 1:
        raise ValueError(f"need a non-empty 1-D times array and frames >= 1, got {times.shape}, {frames}")
    if np.any(np.diff(times) < 0):
        raise ValueError("frame times must be ascending")
    t0 = times[0] if start is None else max(float(start), times[0])
    instants = np.linspace(t0, times[-1], frames)
    idx = np.searchsorted(times, instants, side="right") - 1
    return np.clip(idx, 0, len(times) - 1).astype(np.int64)


def window_start(times: np.ndarray, window: float) -> int:
    """Index of the first frame within the last ``window`` seconds of ``times`` (ascending seconds)."""
    return int(np.searchsorted(times, times[-1] - window, side="left"))
