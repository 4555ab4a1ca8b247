"""Video decoding and preprocessing in a background thread.

OpenCV's decoder and torch's resize release the GIL, so decoding the video while the main thread
loads models (the CLI starts it before building the pipeline) or tokenizes the prompt overlaps
for real. The order of the request allows nothing more: the vision encoder needs every frame.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

from infomerge.video import SIGLIP_SIZE, VideoClip, preprocess, read_video


@dataclass
class DecodedVideo:
    """A decoded, sampled and preprocessed video.

    Attributes:
        clip: the sampled frames (F, H, W, 3) uint8 and their indices / timestamps.
        pixel_values: (F, 3, size, size) float32 in [-1, 1] (SigLIP preprocessing).
        decode_ms: wall time of decode + preprocess in the thread that did it.
    """

    clip: VideoClip
    pixel_values: torch.Tensor
    decode_ms: float


def decode_video(video: str | os.PathLike, frames: int, size: int = SIGLIP_SIZE) -> DecodedVideo:
    """Decode, sample ``frames`` frames and preprocess (synchronously).

    Raises:
        VideoError: and its subclasses, from :func:`infomerge.video.read_video`, unchanged.
    """
    t0 = time.perf_counter()
    clip = read_video(video, frames)
    pixel_values = preprocess(clip.frames, size)
    return DecodedVideo(clip, pixel_values, (time.perf_counter() - t0) * 1000.0)


class DecodeJob:
    """:func:`decode_video` running in a daemon thread; :meth:`result` joins it.

    An exception raised in the thread (a :class:`~infomerge.errors.VideoError`, say) is re-raised
    by :meth:`result` in the caller's thread, unchanged.
    """

    def __init__(self, video: str | os.PathLike, frames: int, size: int = SIGLIP_SIZE):
        self.video = video
        self.frames = frames
        self._result: DecodedVideo | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(video, frames, size), name="infomerge-decode", daemon=True
        )
        self._thread.start()

    def _run(self, video, frames, size) -> None:
        try:
            self._result = decode_video(video, frames, size)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        """Wait for the thread, ignoring its outcome (call it on an error path: a decoder thread
        still running at interpreter exit aborts the process)."""
        self._thread.join()

    def raise_early(self, wait: float = 0.2) -> None:
        """Re-raise the thread's error if it failed within ``wait`` seconds (a missing or non-video
        file fails in milliseconds), so a caller can report it before loading models."""
        self._thread.join(wait)
        if not self._thread.is_alive() and self._error is not None:
            raise self._error

    def result(self, timeout: float | None = None) -> DecodedVideo:
        """Wait for the thread; return its :class:`DecodedVideo` or raise its exception.

        Raises:
            TimeoutError: still running after ``timeout`` seconds.
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"decoding {self.video} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


__all__ = ["DecodeJob", "DecodedVideo", "decode_video"]
