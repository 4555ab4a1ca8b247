"""Video decoding and preprocessing in a background thread.

PyAV's decoder and torch's resize release the GIL, so decoding the video while the main thread
loads models (the CLI starts it before building the pipeline) or tokenizes the prompt overlaps
for real. The order of the request allows nothing more: the vision encoder needs every frame.

Each sampled frame is resized as it is decoded (``read_video(size=...)``), so no full-resolution
copy of a 4K or 8K frame outlives its decoding (Qwen2.5-VL's fixed-size resize runs on the sampled
frames after decoding: ``preprocess``). :meth:`DecodeJob.cancel` stops the decoder within
one packet; :meth:`DecodeJob.join` cancels first, so an error or Ctrl-C never waits for a whole
decode.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from infomerge.interrupts import raise_if_signalled
from infomerge.video import SIGLIP_SIZE, VideoClip, read_video


@dataclass
class DecodedVideo:
    """A decoded, sampled and preprocessed video.

    Attributes:
        clip: the sampled frames (F, H, W, 3) uint8 (display copies, longer side <= 1280) and their
            indices / timestamps.
        pixel_values: (F, 3, size, size) float32 in [-1, 1] (SigLIP preprocessing).
        decode_ms: wall time of decode + preprocess in the thread that did it.
    """

    clip: VideoClip
    pixel_values: torch.Tensor
    decode_ms: float


def decode_video(
    video: str | os.PathLike, frames: int, size: int = SIGLIP_SIZE, cancel: threading.Event | None = None,
    preprocess: Callable[[np.ndarray], torch.Tensor] | None = None,
    **options,
) -> DecodedVideo:
    """Decode, sample ``frames`` frames and preprocess (synchronously).

    Args:
        video: a file, URL, stream or camera (see :func:`infomerge.video.read_video`).
        frames: F.
        size: side of the preprocessed frames (pixels; SigLIP's square resize while decoding).
        cancel: an Event that stops decoding when set.
        preprocess: instead of SigLIP's square resize: a function of the sampled (F, H, W, 3) uint8
            RGB frames (kept at full resolution) giving ``pixel_values`` (Qwen2.5-VL:
            :func:`infomerge.video.qwen_preprocess.qwen_preprocess` at the backbone's fixed size).
        options: ``sampling``, ``window``, ``live``, ``decode_device``, and ``fps`` /
            ``require_frames`` (Qwen2.5-VL's sampling by rate; ``frames`` is then ignored) for
            :func:`read_video`.

    Raises:
        VideoError: and its subclasses, from :func:`infomerge.video.read_video`, unchanged.
    """
    t0 = time.perf_counter()
    clip = read_video(video, frames, size=size if preprocess is None else None, cancel=cancel, **options)
    pixel_values = clip.pixel_values if preprocess is None else preprocess(clip.frames)
    return DecodedVideo(clip, pixel_values, (time.perf_counter() - t0) * 1000.0)


def decode_options(backbone) -> dict:
    """How ``backbone`` wants its frames preprocessed, as :func:`decode_video` / :class:`DecodeJob`
    keyword arguments, asked of its family
    (:meth:`~infomerge.backbones.family.BackboneFamily.decode_options`): ``{"size": 384}`` (SigLIP's
    square resize, LLaVA) or ``{"preprocess": f}`` with ``f`` =
    :func:`infomerge.video.qwen_preprocess.qwen_preprocess` at the backbone's fixed
    ``frame_height x frame_width`` (Qwen2.5-VL)."""
    return backbone.family_spec.decode_options(backbone)


_LIVE: weakref.WeakSet = weakref.WeakSet()  # jobs whose thread may still run


@atexit.register
def _stop_live_jobs(timeout: float = 1.0) -> None:
    """At interpreter exit (after an interrupt, say), cancel every decode still running and wait
    for its thread, at most ``timeout`` seconds in all.

    A daemon thread left inside FFmpeg or torch while the interpreter finalizes keeps running
    native code as the process's static destructors tear down the thread pools it uses, which can
    abort the process ("terminate called without an active exception", SIGABRT) instead of
    letting it exit with its status. The decoder checks the cancel flag between packets."""
    jobs = [job for job in list(_LIVE) if job._thread.is_alive()]
    for job in jobs:
        job._cancel.set()
    deadline = time.monotonic() + timeout
    for job in jobs:
        job._thread.join(max(0.0, deadline - time.monotonic()))


class DecodeJob:
    """:func:`decode_video` running in a daemon thread; :meth:`result` joins it.

    An exception raised in the thread (a :class:`~infomerge.errors.VideoError`, say) is re-raised
    by :meth:`result` in the caller's thread, unchanged.

    Args:
        video, frames, size, preprocess, options: as :func:`decode_video`.
    """

    def __init__(
        self, video: str | os.PathLike, frames: int, size: int = SIGLIP_SIZE, preprocess=None, **options
    ):
        self.video = video
        self.frames = frames
        self._cancel = threading.Event()
        self._result: DecodedVideo | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(video, frames, size, dict(options, preprocess=preprocess)),
            name="infomerge-decode", daemon=True,
        )
        self._thread.start()
        _LIVE.add(self)

    def _run(self, video, frames, size, options) -> None:
        try:
            self._result = decode_video(video, frames, size, self._cancel, **options)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Ask the decoder to stop (it checks between packets); returns at once."""
        self._cancel.set()

    def join(self, timeout: float | None = 0.5) -> bool:
        """On an error path: cancel the decode if it still runs and wait for the thread at most
        ``timeout`` seconds (a decoder blocked on a network read may not stop sooner). Returns
        whether the thread has ended; a finished job is left as it is."""
        if self._thread.is_alive():
            self._cancel.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def raise_early(self, wait: float = 0.2) -> None:
        """Re-raise the thread's error if it failed within ``wait`` seconds (a missing or non-video
        file fails in milliseconds), so a caller can report it before loading models."""
        self._thread.join(wait)
        if not self._thread.is_alive() and self._error is not None:
            raise self._error

    def result(self, timeout: float | None = None) -> DecodedVideo:
        """Wait for the thread; return its :class:`DecodedVideo` or raise its exception.

        The wait polls every 0.1 s for an interrupt whose exception was lost
        (:func:`infomerge.interrupts.raise_if_signalled`): a decoder blocked on a stalled stream
        must never keep a Ctrl-C'd run waiting.

        Raises:
            TimeoutError: still running after ``timeout`` seconds.
            KeyboardInterrupt: an interrupt arrived while waiting.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._thread.join(0.1 if left is None else min(0.1, left))
            raise_if_signalled()
        if self._thread.is_alive():
            raise TimeoutError(f"decoding {self.video} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


__all__ = ["DecodeJob", "DecodedVideo", "decode_options", "decode_video"]
