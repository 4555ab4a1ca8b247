"""Which frames to keep: by frame index (lmms-eval) or uniformly in presentation time."""

from __future__ import annotations

import numpy as np

SAMPLINGS = ("index", "time")


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
