"""NVDEC (NVIDIA hardware) decoding behind ``decode_device="cuda"`` / ``--decode-device cuda``.

The route is torchcodec's CUDA decoder (``torchcodec.decoders.VideoDecoder(..., device="cuda")``),
which needs an NVIDIA GPU, a CUDA build of torch and a torchcodec built against it. Where any of
that is missing, :func:`read_video_nvdec` raises :class:`~infomerge.errors.BackendUnavailableError`
naming what is missing and the fix, before decoding anything. PyNvVideoCodec is the other NVIDIA
library; its presence is reported in that message but it is not wired in. On Jetson, decode with
GStreamer's ``nvv4l2decoder`` instead (jetson/README.md).

Not exercised on hardware yet: the machine this was written on has no GPU (see docs/video.md).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from infomerge.errors import BackendUnavailableError


def nvdec_problem() -> str | None:
    """Why NVDEC decoding is unavailable here (None when torchcodec's CUDA decoder can run)."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(f"torch {torch.__version__} sees no CUDA GPU")
    if importlib.util.find_spec("torchcodec") is None:
        problems.append("torchcodec is not installed")
    else:
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any load failure is the reason to report
            problems.append(f"torchcodec does not load ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    if importlib.util.find_spec("PyNvVideoCodec") is not None:
        problems.append("PyNvVideoCodec is installed but infomerge does not use it yet")
    return "; ".join(problems) or None


def read_video_nvdec(src, frames: int, *, sampling: str, window, keep):
    """Sample ``frames`` frames of a local file on the GPU with torchcodec (``seek_mode="exact"``).

    Same sampling and result as :func:`infomerge.video.read_video` (``VideoClip``); ``keep`` is the
    CPU-side frame keeper, fed the decoded RGB frames.

    Raises:
        BackendUnavailableError: no usable NVDEC route here (message names what is missing).
        VideoSourceError: a source other than a local file (not wired for NVDEC yet).
    """
    problem = nvdec_problem()
    if problem:
        raise BackendUnavailableError(
            f"--decode-device cuda: NVDEC decoding is not available here: {problem}. It needs an NVIDIA "
            "GPU, a CUDA build of torch and `pip install torchcodec` built for it (or, on Jetson, the "
            "GStreamer route in jetson/README.md). Use --decode-device cpu (the default)."
        )
    from torchcodec.decoders import VideoDecoder

    from infomerge.errors import VideoSourceError
    from infomerge.video.decode import _assemble, _choose

    if src.kind != "file":
        raise VideoSourceError(src.name, "--decode-device cuda reads local files only; use the cpu decoder")
    dec = VideoDecoder(src.url, device="cuda", seek_mode="exact")
    n = int(dec.metadata.num_frames)
    times = np.asarray(dec.get_frames_at(list(range(n))).pts_seconds.cpu(), dtype=np.float64) if (
        sampling == "time" or window is not None) else np.arange(n, dtype=np.float64)
    idx = _choose(times - times[0], frames, sampling, window)
    kept = {}
    for i in np.unique(idx):
        rgb = dec.get_frame_at(int(i)).data.permute(1, 2, 0).cpu().numpy()  # (H, W, 3) uint8
        kept[int(i)] = keep.from_rgb(rgb)
    fps = float(dec.metadata.average_fps or 0.0)
    return _assemble(src, kept, idx, times - times[0], n, fps, n, [], sampling, window, False, "nvdec")
