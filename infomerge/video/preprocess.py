"""SigLIP preprocessing: antialiased bicubic resize to size x size, x / 255, (x - 0.5) / 0.5.

The resize uses ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``, which matches
PIL's bicubic filter (what the Hugging Face SigLIP processor uses) far better than OpenCV's
non-antialiased ``INTER_CUBIC`` when downscaling 720p to 384. The aspect ratio is not kept.

:func:`resize_frame` computes the same thing for one frame with bounded memory (the separable
filter applied along the width on strips of rows, then along the height), so that a decoder can
resize each frame as it is decoded and never hold a float32 copy of a 4K or 8K frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIGLIP_SIZE = 384
SIGLIP_MEAN = 0.5
SIGLIP_STD = 0.5
# rows per strip of the width pass in resize_frame: 256 rows of 8K RGB float32 = 24 MB
_STRIP_ROWS = 256


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


def resize_frame(frame: np.ndarray, size: int = SIGLIP_SIZE) -> torch.Tensor:
    """:func:`preprocess` of one frame with memory bounded independently of its resolution.

    The antialiased bicubic filter is separable: the width pass runs on strips of rows (float32
    strips of at most ``_STRIP_ROWS`` rows), the height pass on the (3, H, size) result. Equal to
    ``preprocess(frame[None], size)[0]`` up to float32 rounding (tested).

    Args:
        frame: (H, W, 3) uint8 RGB.
        size: output side in pixels.

    Returns:
        (3, size, size) float32 in [-1, 1].

    Raises:
        ValueError: frame not (H, W, 3) uint8.
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
    h, w = frame.shape[:2]
    if (h, w) == (size, size):
        return preprocess(frame[None], size)[0]
    src = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)  # (3, H, W) uint8 view
    if w != size:
        rows = torch.empty((3, h, size), dtype=torch.float32)
        for r in range(0, h, _STRIP_ROWS):
            strip = src[:, r : r + _STRIP_ROWS].to(torch.float32)[None]
            rows[:, r : r + _STRIP_ROWS] = F.interpolate(
                strip, size=(strip.shape[-2], size), mode="bicubic", align_corners=False, antialias=True
            )[0]
    else:
        rows = src.to(torch.float32)
    x = rows[None]
    if h != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x[0].clamp(0.0, 255.0) / 255.0
    return (x - SIGLIP_MEAN) / SIGLIP_STD


def display_copy(frame: np.ndarray, max_side: int) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 frame whose longer side is at most ``max_side`` (aspect kept,
    antialiased bicubic, rounded to uint8); the frame itself when it is small enough."""
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    src = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
    out = torch.empty((3, nh, nw), dtype=torch.float32)
    rows = torch.empty((3, h, nw), dtype=torch.float32)
    for r in range(0, h, _STRIP_ROWS):
        strip = src[:, r : r + _STRIP_ROWS].to(torch.float32)[None]
        rows[:, r : r + _STRIP_ROWS] = F.interpolate(
            strip, size=(strip.shape[-2], nw), mode="bicubic", align_corners=False, antialias=True
        )[0]
    out = F.interpolate(rows[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
    return out.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
