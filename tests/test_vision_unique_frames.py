"""Repeated sampled frames (a video shorter than F frames) are encoded once: same features as
encoding every frame, and the tower sees the distinct frames only."""

from __future__ import annotations

import shutil

import pytest
import torch

from infomerge.runtime.backends.base import encode_unique_frames
from infomerge.runtime.pipeline import Pipeline


class _Spy:
    """Wraps a vision backend; records the frame count of every call."""

    def __init__(self, vision):
        self.vision, self.calls = vision, []
        self.any_frame_count = getattr(vision, "any_frame_count", False)
        self.image_newline = vision.image_newline

    def __call__(self, pixel_values):
        self.calls.append(int(pixel_values.shape[0]))
        return self.vision(pixel_values)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_backbone("tiny", compress_backend="none")


def test_repeats_are_encoded_once_with_identical_features(pipe):
    gen = torch.Generator().manual_seed(3)
    distinct = torch.rand(5, 3, 384, 384, generator=gen) * 2 - 1
    # sampling order with repeats, as a 5-frame video sampled to F = 9 gives (non-decreasing)
    order = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])
    frame_indices = torch.tensor([10, 10, 11, 12, 12, 12, 13, 14, 14])  # decoded-frame numbers
    pixel_values = distinct[order]
    spy = _Spy(pipe.vision)
    got = encode_unique_frames(spy, pixel_values, frame_indices.numpy())
    assert spy.calls == [5]
    full = pipe.vision(pixel_values)  # every frame through the tower
    one_by_one = [pipe.vision(distinct[i : i + 1]) for i in range(5)]  # independent: per frame
    for name in ("H", "A", "g"):
        a, b = getattr(got, name), getattr(full, name)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))
        for row, src in enumerate(order.tolist()):
            torch.testing.assert_close(
                a[row], getattr(one_by_one[src], name)[0], rtol=0, atol=1e-5 * float(b.abs().max())
            )
    # no repeats, no indices, or a backend pinned to F frames: one call with all frames
    spy.calls.clear()
    encode_unique_frames(spy, pixel_values[:4], [1, 2, 3, 4])
    encode_unique_frames(spy, pixel_values, None)
    spy.any_frame_count = False
    encode_unique_frames(spy, pixel_values, frame_indices)
    assert spy.calls == [4, 9, 9]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command-line tool")
def test_short_video_request_encodes_distinct_frames_only(pipe, tmp_path):
    import subprocess

    video = tmp_path / "short.mp4"  # 10 frames: F = 32 samples repeat them
    source = "testsrc=size=320x240:rate=10"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-frames:v", "10"]
    subprocess.run([*cmd, "-pix_fmt", "yuv420p", str(video)], check=True)
    decoded = pipe.decode(video)
    distinct = len(set(decoded.clip.indices.tolist()))
    assert distinct == 10 and len(decoded.clip.indices) == 32
    spy = _Spy(pipe.vision)
    pipe.vision = spy
    try:
        answer = pipe.generate(decoded, max_new_tokens=2)
    finally:
        pipe.vision = spy.vision
    assert spy.calls == [distinct]
    full = pipe.vision(decoded.pixel_values)
    torch.testing.assert_close(answer.features.H, full.H, rtol=0, atol=1e-5 * float(full.H.abs().max()))
