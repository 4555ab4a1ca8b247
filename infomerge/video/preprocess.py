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
STRIP_ROWS = 256


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


def float_strip(strip: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
    """(h, W, 3) uint8 rows -> (1, 3, h, W) float32 (a channels-last view's layout, as the
    width passes have always filtered it). ``out``: an (n >= h, W, 3) float32 buffer to convert
    into (reused from strip to strip instead of a new allocation)."""
    src = torch.from_numpy(np.ascontiguousarray(strip))
    if out is None:
        return src.permute(2, 0, 1).to(torch.float32)[None]
    dst = out[: strip.shape[0]]
    dst.copy_(src)
    return dst.permute(2, 0, 1)[None]


class WidthPass:
    """The width pass of the separable antialiased bicubic resize, fed a frame's rows in strips.

    ``add`` takes rows ``r .. r + h`` of an (H, W, 3) uint8 RGB frame; ``rows`` then holds the
    (3, H, out_width) float32 result. Strips of :data:`STRIP_ROWS` rows starting at row 0 are what
    :func:`resize_frame` and :func:`display_copy` use, so a decoder that converts a frame to RGB
    strip by strip gets their results bit for bit (each row is filtered on its own).
    """

    def __init__(self, height: int, width: int, out_width: int):
        self.width, self.out_width = width, out_width
        self.rows = torch.empty((3, height, out_width), dtype=torch.float32)

    def add(self, r: int, strip: np.ndarray | torch.Tensor) -> None:
        """Filter rows ``r .. r + h`` along the width: ``strip`` (h, W, 3) uint8, or the same as
        :func:`float_strip` made it (to share one conversion between several passes)."""
        x = strip if isinstance(strip, torch.Tensor) else float_strip(strip)
        if self.out_width != self.width:
            x = F.interpolate(x, size=(x.shape[-2], self.out_width), mode="bicubic", align_corners=False,
                              antialias=True)
        self.rows[:, r : r + x.shape[-2]] = x[0]


def _strips(frame: np.ndarray):
    for r in range(0, frame.shape[0], STRIP_ROWS):
        yield r, frame[r : r + STRIP_ROWS]


def pixel_values_from_rows(rows: torch.Tensor, size: int = SIGLIP_SIZE) -> torch.Tensor:
    """The height pass and SigLIP scaling: (3, H, size) width-filtered rows -> (3, size, size)
    float32 in [-1, 1] (the end of :func:`resize_frame`)."""
    x = rows[None]
    if rows.shape[1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x[0].clamp(0.0, 255.0) / 255.0
    return (x - SIGLIP_MEAN) / SIGLIP_STD


def display_from_rows(rows: torch.Tensor, height: int) -> np.ndarray:
    """The height pass of :func:`display_copy`: (3, H, nw) width-filtered rows -> (height, nw, 3)
    uint8, rounded."""
    out = F.interpolate(rows[None], size=(height, rows.shape[2]), mode="bicubic", align_corners=False,
                        antialias=True)[0]
    return out.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def display_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of the display copy of an H x W frame: longer side at most ``max_side``."""
    if max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frame(frame: np.ndarray, size: int = SIGLIP_SIZE) -> torch.Tensor:
    """:func:`preprocess` of one frame with memory bounded independently of its resolution.

    The antialiased bicubic filter is separable: the width pass runs on strips of rows (float32
    strips of at most ``STRIP_ROWS`` rows, :class:`WidthPass`), the height pass on the
    (3, H, size) result. Equal to ``preprocess(frame[None], size)[0]`` up to float32 rounding
    (tested).

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
    width_pass = WidthPass(h, w, size)
    for r, strip in _strips(frame):
        width_pass.add(r, strip)
    return pixel_values_from_rows(width_pass.rows, size)


def display_copy(frame: np.ndarray, max_side: int) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 frame whose longer side is at most ``max_side`` (aspect kept,
    antialiased bicubic, rounded to uint8); the frame itself when it is small enough."""
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    nh, nw = display_size(h, w, max_side)
    width_pass = WidthPass(h, w, nw)
    for r, strip in _strips(frame):
        width_pass.add(r, strip)
    return display_from_rows(width_pass.rows, nh)
