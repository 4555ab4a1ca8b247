"""The result of reading a video: sampled frames with their indices and real timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class VideoClip:
    """Frames sampled from one video.

    Attributes:
        path: the source (a :class:`~pathlib.Path` for a local file, else the URL / device string).
        frames: (F, H, W, 3) uint8 RGB frames. At the source resolution, unless ``read_video`` was
            given ``size``: then a display copy whose longer side is at most ``display_max`` pixels.
        indices: (F,) int64 decoded-frame index of each sampled frame (0 = the first frame a plain
            sequential decode delivers; for a live source, the first frame read).
        total_frames: frames the stream holds (counted from its packets, or by decoding), or, for
            a live source, frames read.
        fps: the stream's average frame rate (frames per second; 0.0 when unknown).
        claimed_frames: the container's frame-count metadata (may lie; 0 when absent).
        timestamps: (F,) float64 presentation time of each sampled frame, seconds since the first
            frame of the stream (the frame's own timestamp, not index / fps; NaN when the stream has
            none).
        warnings: notes for the user (resampling, live window, fallbacks).
        pixel_values: (F, 3, size, size) float32 in [-1, 1] when ``read_video`` was given ``size``
            (each frame resized as it was decoded), else None.
        sampling: ``"index"``, ``"time"`` or ``"fps"`` (Qwen2.5-VL's rule at ``sampling_fps``).
        window: seconds of the window sampled (live sources, or ``window=``), else None.
        live: whether the source was read as a live stream.
        method: how the frames were found: ``"seek"``, ``"sequential"`` or ``"live"``.
        sampling_fps: the rate asked for with ``sampling="fps"`` (frames per second), else None;
            the rate of the frames kept is ``len(indices) / total_frames * fps``
            (:attr:`sampled_fps`).
    """

    path: Path | str
    frames: np.ndarray
    indices: np.ndarray
    total_frames: int
    fps: float
    claimed_frames: int
    warnings: list[str] = field(default_factory=list)
    timestamps: np.ndarray | None = None
    pixel_values: torch.Tensor | None = None
    sampling: str = "index"
    window: float | None = None
    live: bool = False
    method: str = "seek"
    sampling_fps: float | None = None

    def __post_init__(self) -> None:
        if self.timestamps is None:  # built by hand: derive from index and frame rate
            self.timestamps = (
                self.indices / self.fps if self.fps > 0 else np.full(len(self.indices), np.nan)
            )

    @property
    def sampled_fps(self) -> float:
        """Frames per second of the sampled frames, ``F / total_frames * fps`` (transformers'
        ``VideoMetadata.sampled_fps``; 24 fps assumed for a stream without a rate, as there)."""
        rate = self.fps if self.fps > 0 else 24.0
        return len(self.indices) / max(int(self.total_frames), 1) * rate

    def describe(self) -> str:
        """One line for the user: how many frames, from what span, sampled how."""
        t = self.timestamps
        span = f"{t[0]:.2f}-{t[-1]:.2f} s" if len(t) and np.isfinite(t).all() else "unknown times"
        how = f"uniform in {'time' if self.sampling == 'time' else 'frame index'}"
        if self.sampling == "fps":
            how = f"at {self.sampling_fps:g} fps by Qwen2.5-VL's rule, {self.sampled_fps:.3g} fps kept"
        if self.live:
            where = f"live source: the most recent {self.window:g} s as read"
        elif self.window is not None:
            where = f"the last {self.window:g} s"
        else:
            where = f"all {self.total_frames} frames"
        return f"{len(self.indices)} frames ({how}) over {where}, {span}"
