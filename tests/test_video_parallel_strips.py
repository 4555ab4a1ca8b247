"""Two decode speed/memory paths against independent computations.

* Parallel GOP walks: the sampled frames cut into runs at keyframes, each run decoded by its own
  container in a thread; the frames must equal a plain sequential decode (the oracle).
* Frames above 1080p converted to RGB strip by strip: the strips must equal PyAV's whole-frame
  ``to_ndarray(format="rgb24")``, and the display copies and pixel values those computed from the
  whole frame (``display_copy``/``resize_frame``, themselves tested against ``preprocess``/PIL).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import warnings

import av
import numpy as np
import pytest
import torch

import infomerge.video.decode as dec
from infomerge.errors import DecodeCancelledError
from infomerge.video import read_video
from infomerge.video.preprocess import display_copy, resize_frame

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command-line tool")


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)],
                   check=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("par")
    x264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    src = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25"]
    _ffmpeg(*src, "-t", 6, *x264, "-bf", 3, "-g", 12, d / "bframes.mp4")
    _ffmpeg(*src, "-t", 6, *x264, "-x264-params", "open-gop=1:keyint=20:min-keyint=20:bframes=3:scenecut=0",
            d / "opengop.mp4")
    _ffmpeg("-i", d / "opengop.mp4", "-c", "copy", d / "opengop.ts")
    big = ["-f", "lavfi", "-i", "testsrc2=size=2048x1152:rate=5", "-frames:v", 3, "-c:v", "libx264",
           "-preset", "ultrafast"]
    _ffmpeg(*big, "-pix_fmt", "yuv420p", d / "big.mp4")
    _ffmpeg(*big, "-pix_fmt", "yuvj420p", d / "big_fullrange.mp4")
    _ffmpeg(*big, "-pix_fmt", "yuv420p", "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc",
            "bt709", d / "big_bt709.mp4")
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=2048x1150:rate=5", "-frames:v", 2, "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p", d / "big_odd_rows.mp4")  # 1150 % 4 != 0
    return {p.name: p for p in d.iterdir()}


def oracle(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# ---- parallel GOP walks -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bframes.mp4", "opengop.mp4", "opengop.ts"])
@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_walks_equal_sequential_decode(files, monkeypatch, name, workers):
    runs = []
    walk_parallel = dec._walk_parallel

    def spy(container, stream, keys, cancel, wanted, parts, keep, src):
        runs.append([len(p) for p in parts])
        return walk_parallel(container, stream, keys, cancel, wanted, parts, keep, src)

    monkeypatch.setattr(dec, "_decode_workers", lambda src, stream: workers)
    monkeypatch.setattr(dec, "_walk_parallel", spy)
    every = oracle(files[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip = read_video(files[name], 16)
    assert clip.method == "seek" and len(runs) == 1 and len(runs[0]) == workers and sum(runs[0]) == 16
    assert clip.indices.tolist() == [int(k * (len(every) - 1) / 15) for k in range(16)]
    for frame, i in zip(clip.frames, clip.indices):
        np.testing.assert_array_equal(frame, every[int(i)])


def test_split_cuts_only_between_gops():
    keys = np.array([0, 100, 200, 300])
    # 4 samples in GOP 0, 2 in GOP 1, 2 in GOP 3: the cut nearest the middle (after 4) is a GOP edge
    runs = dec._split([0, 10, 20, 30, 110, 120, 310, 320], keys, 2)
    assert runs == [[0, 10, 20, 30], [110, 120, 310, 320]]
    assert dec._split([0, 10, 20], keys, 2) == [[0, 10, 20]]  # one GOP: one run
    assert dec._split([0, 110, 210, 310], keys, 8) == [[0], [110], [210], [310]]


def test_worker_failure_falls_back_to_sequential(files, monkeypatch):
    """A seek failure in one worker ends the others and the sequential fallback gives the frames."""
    walk = dec._walk

    def failing(container, stream, keys, cancel, wanted, run, keep):
        if threading.current_thread().name.endswith("-1"):
            raise dec._SeekFailed("injected")
        return walk(container, stream, keys, cancel, wanted, run, keep)

    monkeypatch.setattr(dec, "_decode_workers", lambda src, stream: 2)
    monkeypatch.setattr(dec, "_walk", failing)
    every = oracle(files["bframes.mp4"])
    with pytest.warns(UserWarning, match="injected"):
        clip = read_video(files["bframes.mp4"], 8)
    assert clip.method == "sequential"
    for frame, i in zip(clip.frames, clip.indices):
        np.testing.assert_array_equal(frame, every[int(i)])


def test_parallel_walks_cancel(files, monkeypatch):
    monkeypatch.setattr(dec, "_decode_workers", lambda src, stream: 2)
    stop = threading.Event()
    stop.set()
    with pytest.raises(DecodeCancelledError):
        read_video(files["bframes.mp4"], 8, cancel=stop)


def test_urls_and_large_frames_use_one_decoder(files):
    for name, workers in [("bframes.mp4", None), ("big.mp4", 1)]:
        src = dec.parse_source(str(files[name]))
        container, stream = dec.open_source(src)
        with container:
            got = dec._decode_workers(src, stream)
            assert got == workers if workers else got >= 1
    src = dec.parse_source("http://127.0.0.1:9/x.mp4")
    container, stream = dec.open_source(dec.parse_source(str(files["bframes.mp4"])))
    with container:
        assert dec._decode_workers(src, stream) == 1


# ---- frames above 1080p in strips ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["big.mp4", "big_fullrange.mp4", "big_bt709.mp4"])
def test_rgb_strips_equal_whole_frame_conversion(files, name):
    with av.open(str(files[name])) as c:
        for frame in c.decode(video=0):
            assert dec._by_strips(frame, 1280)
            strips = list(dec._rgb_strips(frame))
            assert [r for r, _ in strips] == list(range(0, frame.height, dec.STRIP_ROWS))
            np.testing.assert_array_equal(np.concatenate([s for _, s in strips]),
                                          frame.to_ndarray(format="rgb24"))


@pytest.mark.parametrize("name", ["big.mp4", "big_fullrange.mp4", "big_odd_rows.mp4"])
def test_large_frames_kept_as_from_the_whole_frame(files, name):
    every = oracle(files[name])
    clip = read_video(files[name], len(every), size=384)
    for k, i in enumerate(clip.indices):
        np.testing.assert_array_equal(clip.frames[k], display_copy(every[int(i)], 1280))
        assert torch.equal(clip.pixel_values[k], resize_frame(every[int(i)], 384))
    assert clip.frames.shape[1:] == (720, 1280, 3) if "odd" not in name else (719, 1280, 3)
