"""Qwen2.5-VL video preprocessing at a fixed shape, as transformers' ``Qwen2VLVideoProcessor`` does it.

Qwen's processor (``transformers/models/qwen2_vl/video_processing_qwen2_vl.py``) takes F uint8
frames and

1. resizes every frame to H x W, both multiples of 28 (patch 14 x merge 2; ``smart_resize`` picks
   them within min / max pixels; the export pins them: ``Backbone.frame_height`` / ``frame_width``)
   with torchvision's antialiased bicubic resize on uint8 tensors (a float resize, then clamp to
   [0, 255] and round back to uint8);
2. rescales by 1/255 and normalises with the OpenAI CLIP mean / std;
3. flattens to ``pixel_values_videos`` (L * h * w, 3 * 2 * 14 * 14): L = F / 2 temporal patches,
   h = H / 14, w = W / 14, patches ordered (l, h/2, w/2, 2, 2) so that each 2 x 2 merge group is
   contiguous, each row (channel, temporal, 14, 14); ``video_grid_thw`` = (L, h, w).

:func:`qwen_preprocess` does steps 1-2 (the runtime's ``pixel_values`` (F, 3, H, W)), and
:func:`qwen_patchify` step 3. :func:`second_per_grid` is the time one temporal patch spans, which
the M-RoPE temporal positions scale with (``Qwen2_5_VLProcessor._process_videos``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# OPENAI_CLIP_MEAN / OPENAI_CLIP_STD of transformers.image_utils (Qwen2-VL's processors use them)
QWEN_MEAN = (0.48145466, 0.4578275, 0.40821073)
QWEN_STD = (0.26862954, 0.26130258, 0.27577711)


def qwen_resize(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 frames to ``height x width``, rounded back to uint8.

    What ``torchvision.transforms.v2.functional.resize`` does on a uint8 tensor with
    ``InterpolationMode.BICUBIC, antialias=True`` (the resize of Qwen's video processor): a float32
    ``interpolate(mode="bicubic", antialias=True)``, clamp to [0, 255], round.

    Args:
        frames: (F, Hs, Ws, 3) uint8 RGB.
        height, width: output size in pixels.

    Returns:
        (F, 3, height, width) uint8.

    Raises:
        ValueError: frames not (F, H, W, 3) uint8, or a non-positive size.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    if height < 1 or width < 1:
        raise ValueError(f"resize size must be positive, got {height} x {width}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) == (height, width):
        return x.contiguous()
    out = torch.empty((x.shape[0], 3, height, width), dtype=torch.uint8)
    for i in range(x.shape[0]):  # one float copy of one frame at a time
        y = F.interpolate(
            x[i : i + 1].to(torch.float32), size=(height, width), mode="bicubic", align_corners=False,
            antialias=True,
        )
        out[i] = y[0].clamp_(0.0, 255.0).round_().to(torch.uint8)
    return out


def qwen_preprocess(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Resize (:func:`qwen_resize`), x / 255, CLIP mean / std normalisation.

    Args:
        frames: (F, Hs, Ws, 3) uint8 RGB.
        height, width: the fixed frame size (multiples of 28 for Qwen2.5-VL).

    Returns:
        (F, 3, height, width) float32: ``(x / 255 - mean) / std`` per channel.

    Raises:
        ValueError: as :func:`qwen_resize`; a size that is not a multiple of 28.
    """
    if height % 28 or width % 28:
        raise ValueError(
            f"Qwen2.5-VL frame size must be multiples of 28 (patch 14 x merge 2), got {height} x {width}"
        )
    x = qwen_resize(frames, height, width).to(torch.float32) / 255.0
    mean = torch.tensor(QWEN_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(QWEN_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def qwen_patchify(
    pixel_values: torch.Tensor, patch: int = 14, merge: int = 2, temporal: int = 2
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Flatten (F, 3, H, W) frames into Qwen's ``pixel_values_videos`` and ``video_grid_thw``.

    Order of ``Qwen2VLVideoProcessor.patchify``: rows (l, i, j, mi, mj) with l the temporal patch,
    (i, j) the merged cell, (mi, mj) the patch inside its 2 x 2 merge group; columns (channel,
    frame within the temporal patch, y, x). An odd F is padded by repeating the last frame.

    Args:
        pixel_values: (F, 3, H, W) float (normalised), H and W multiples of ``patch * merge``.
        patch, merge, temporal: 14, 2, 2 for Qwen2.5-VL.

    Returns:
        ((L * h * w, 3 * temporal * patch^2) tensor of the input dtype, (L, h, w)) with
        L = ceil(F / temporal), h = H / patch, w = W / patch.

    Raises:
        ValueError: not (F, 3, H, W) or H, W not multiples of ``patch * merge``.
    """
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"expected (F, 3, H, W) pixel values, got {tuple(pixel_values.shape)}")
    f, c, height, width = pixel_values.shape
    if height % (patch * merge) or width % (patch * merge):
        raise ValueError(f"frame size {height} x {width} is not a multiple of {patch * merge}")
    if pad := -f % temporal:
        pixel_values = torch.cat([pixel_values, pixel_values[-1:].expand(pad, -1, -1, -1)])
        f += pad
    gt, gh, gw = f // temporal, height // patch, width // patch
    x = pixel_values.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # (l, t, c, i, mi, y, j, mj, x) -> (l, i, j, mi, mj, c, t, y, x)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), (gt, gh, gw)


def second_per_grid(total_frames: int, fps: float, frames: int, temporal: int = 2) -> float:
    """Seconds one temporal patch spans: ``temporal / sampled_fps`` with ``sampled_fps = frames /
    total_frames * fps`` (``Qwen2_5_VLProcessor._process_videos``, ``VideoMetadata.sampled_fps``).

    A stream without a frame rate (``fps`` 0) is taken as 24 frames per second, the fallback of
    ``VideoMetadata.sampled_fps``.

    Returns:
        seconds (float) per temporal patch.
    """
    rate = fps if fps and fps > 0 else 24.0
    sampled = frames / max(int(total_frames), 1) * rate
    return temporal / sampled


__all__ = ["QWEN_MEAN", "QWEN_STD", "qwen_patchify", "qwen_preprocess", "qwen_resize", "second_per_grid"]
