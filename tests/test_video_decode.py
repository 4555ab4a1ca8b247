"""The PyAV reader against an independent oracle: a plain sequential decode of every frame.

Crafted files (made with the ffmpeg command-line tool, skipped where it is absent) cover what
breaks naive seeking: B-frames, an MP4 edit list, open GOPs, MPEG-TS, a raw H.264 stream (no
timestamps: sequential fallback), variable frame rate. Then each kind of bad input, URLs served
from 127.0.0.1, live windows, per-frame resizing and cancellation.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import subprocess
import threading
import warnings

import av
import numpy as np
import pytest
import torch
from PIL import Image

from infomerge.errors import (
    BackendUnavailableError,
    CorruptVideoError,
    DecodeCancelledError,
    NotAVideoError,
    NoVideoStreamError,
    StillImageError,
    TruncatedVideoError,
    UnsupportedCodecError,
    VideoNotFoundError,
    VideoSourceError,
)
from infomerge.video import SAMPLE_VIDEOS, preprocess, read_video, sample_video

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command-line tool")


def _ffmpeg(*args):
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    subprocess.run(cmd, check=True)


def _src(size="160x120", rate=25):
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """name -> path of the crafted files (made once per test module, ~2 s)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg command-line tool")
    d = tmp_path_factory.mktemp("crafted")
    x264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    _ffmpeg(*_src(), "-t", 4, *x264, "-bf", 3, "-g", 12, d / "bframes.mp4")
    # stream copy from 1.3 s: the cut falls inside a GOP, so the muxer writes an edit list and the
    # demuxer flags the preroll packets as discard
    _ffmpeg("-ss", 1.3, "-i", d / "bframes.mp4", "-c", "copy", d / "editlist.mp4")
    open_gop = "open-gop=1:keyint=20:min-keyint=20:bframes=3:scenecut=0"
    _ffmpeg(*_src(), "-t", 4, *x264, "-x264-params", open_gop, d / "opengop.mp4")
    _ffmpeg("-i", d / "opengop.mp4", "-c", "copy", d / "opengop.ts")
    _ffmpeg(*_src(), "-t", 4, *x264, "-bf", 3, "-g", 12, "-f", "matroska", d / "bframes.mkv")
    _ffmpeg("-i", d / "bframes.mp4", "-c", "copy", "-bsf:v", "h264_mp4toannexb", d / "raw.h264")
    # variable frame rate: 25 fps for 40 frames, then 5 fps (pts in the input's 1/25 s ticks)
    _ffmpeg(*_src(), "-t", 4, "-vf", "setpts='if(lt(N,40),N,40+(N-40)*5)'", "-fps_mode", "passthrough",
            *x264, "-bf", 2, d / "vfr.mkv")
    # the same in float seconds: rounding to Matroska's milliseconds gives two frames one pts,
    # so frames cannot be addressed by pts: sequential fallback
    seconds = "setpts='if(lt(N,40),N*0.04,1.6+(N-40)*0.2)/TB'"
    _ffmpeg(*_src(), "-t", 4, "-vf", seconds, "-fps_mode", "passthrough", *x264, "-bf", 2,
            d / "duplicate_pts.mkv")
    # moov atom first, so a truncated copy still opens
    _ffmpeg(*_src("320x240"), "-t", 4, *x264, "-movflags", "+faststart", d / "faststart.mp4")
    data = (d / "faststart.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440", "-t", 1, "-c:a", "aac", d / "audio.m4a")
    _ffmpeg(*_src(), "-frames:v", 1, d / "still.png")
    _ffmpeg(*_src(), "-frames:v", 1, d / "still.jpg")
    # a Matroska file whose codec ID no decoder knows (patched in place, same length)
    _ffmpeg(*_src(), "-t", 1, *x264, d / "h264.mkv")
    raw = (d / "h264.mkv").read_bytes()
    assert raw.count(b"V_MPEG4/ISO/AVC") == 1
    (d / "unknown_codec.mkv").write_bytes(raw.replace(b"V_MPEG4/ISO/AVC", b"V_NOSUCH/CODEC1"))
    return {p.name: p for p in d.iterdir()}


def oracle(path):
    """Every frame of ``path`` by a plain sequential decode: (frames RGB list, times in seconds)."""
    with av.open(str(path)) as c:
        frames, times = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time) if f.time is not None else np.nan)
    t = np.asarray(times)
    return frames, t - t[0]


def assert_same_frames(clip, every, times=None):
    for k, (frame, i) in enumerate(zip(clip.frames, clip.indices)):
        np.testing.assert_array_equal(frame, every[int(i)], err_msg=f"sampled frame {k} (index {i})")
    if times is not None:
        np.testing.assert_allclose(clip.timestamps, times[clip.indices], atol=1e-9)


def expected_indices(total, frames):
    return [int(np.floor(k * (total - 1) / (frames - 1))) if frames > 1 else 0 for k in range(frames)]


# ---- exact frames -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLE_VIDEOS)
@pytest.mark.parametrize("frames", [8, 32])
def test_bundled_videos_seek_equals_sequential(name, frames):
    every, times = oracle(sample_video(name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bundled files are clean: no note, no fallback
        clip = read_video(sample_video(name), frames)
    assert clip.method == "seek" and clip.total_frames == len(every)
    assert clip.indices.tolist() == expected_indices(len(every), frames)
    assert_same_frames(clip, every, times)


@pytest.mark.parametrize(
    "name, method",
    [("bframes.mp4", "seek"), ("editlist.mp4", "seek"), ("opengop.mp4", "seek"), ("opengop.ts", "seek"),
     ("bframes.mkv", "seek"), ("vfr.mkv", "seek"), ("raw.h264", "sequential"),
     ("duplicate_pts.mkv", "sequential")],
)
@pytest.mark.parametrize("frames", [7, 32])
def test_crafted_files_equal_sequential_decode(crafted, name, method, frames):
    every, times = oracle(crafted[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = read_video(crafted[name], frames)
    assert clip.method == method
    assert clip.total_frames == len(every)
    assert clip.indices.tolist() == expected_indices(len(every), frames)
    assert_same_frames(clip, every, None if method == "sequential" else times)


def test_non_reference_frames_are_skipped_on_the_way(crafted, monkeypatch):
    """Between a keyframe and a sampled frame only frames others refer to are decoded: with x264's
    3 B-frames and b-pyramid about half the frames are non-reference, so far fewer frames come out
    of the decoder than with skipping off, and the sampled frames stay those of the oracle."""
    import infomerge.video.decode as dec

    delivered = []
    decode, init = dec._Cursor._decode, dec._Cursor.__init__

    def counting(self, first, packets):
        for frame in decode(self, first, packets):
            delivered.append(frame.pts)
            yield frame

    def read(skip):
        delivered.clear()
        def without(self, container, stream, keys, cancel, wanted=None):
            init(self, container, stream, keys, cancel, wanted if skip else None)

        monkeypatch.setattr(dec._Cursor, "__init__", without)
        return read_video(crafted["bframes.mp4"], 7), len(delivered)

    monkeypatch.setattr(dec._Cursor, "_decode", counting)
    (clip, skipped), (full, unskipped) = read(True), read(False)
    assert clip.method == full.method == "seek"
    assert skipped < 0.75 * unskipped, (skipped, unskipped)
    every, times = oracle(crafted["bframes.mp4"])
    assert_same_frames(clip, every, times)


def test_edit_list_hides_preroll(crafted):
    """The edit-list file holds more packets than frames shown; the count is of frames shown."""
    with av.open(str(crafted["editlist.mp4"])) as c:
        packets = sum(1 for p in c.demux(video=0) if p.size)
    every, _ = oracle(crafted["editlist.mp4"])
    assert packets > len(every)  # the crafting did produce discarded preroll
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_video(crafted["editlist.mp4"], 5).total_frames == len(every)


def test_time_sampling_on_variable_frame_rate(crafted):
    every, times = oracle(crafted["vfr.mkv"])
    assert np.diff(times).max() > 3 * np.diff(times).min()  # really variable
    clip = read_video(crafted["vfr.mkv"], 9, sampling="time")
    instants = np.linspace(0, times[-1], 9)
    # brute force: the frame on screen at each instant is the last one that started before it
    want = [max(i for i, t in enumerate(times) if t <= s + 1e-12) for s in instants]
    assert clip.indices.tolist() == want
    assert_same_frames(clip, every, times)
    # by index, the slow tail (5 fps) gets fewer samples than by time
    by_index = read_video(crafted["vfr.mkv"], 9)
    assert (by_index.timestamps > 1.6).sum() < (clip.timestamps > 1.6).sum()


def test_window_samples_the_last_seconds(crafted):
    every, times = oracle(crafted["bframes.mp4"])
    clip = read_video(crafted["bframes.mp4"], 6, window=1.0)
    first = min(i for i, t in enumerate(times) if t >= times[-1] - 1.0)
    assert clip.indices.tolist() == [first + i for i in expected_indices(len(every) - first, 6)]
    assert_same_frames(clip, every, times)


def test_live_reading_samples_the_window_read(crafted):
    every, times = oracle(crafted["bframes.mp4"])
    clip = read_video(crafted["bframes.mp4"], 5, live=True, window=2.0)
    assert clip.live and clip.method == "live" and clip.window == 2.0
    want = [max(i for i, t in enumerate(times) if t <= s + 1e-9) for s in np.linspace(0, 2.0, 5)]
    assert clip.indices.tolist() == want
    assert_same_frames(clip, every, times)
    assert "most recent 2 s" in clip.warnings[0]


# ---- resizing as decoded ------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLE_VIDEOS)
def test_resize_as_decoded_equals_batch_preprocess_and_pil(name):
    full = read_video(sample_video(name), 4)
    lean = read_video(sample_video(name), 4, size=384)
    assert lean.pixel_values.shape == (4, 3, 384, 384) and lean.pixel_values.dtype == torch.float32
    torch.testing.assert_close(lean.pixel_values, preprocess(full.frames), atol=1e-6, rtol=0)
    if full.frames.shape[1] < 384 and full.frames.shape[2] < 384:
        return  # upscaling (carphone, 176x144): torch's and PIL's bicubic differ by up to ~4.4 levels
    for i in range(4):  # the same tolerance against PIL as tests/test_video.py
        pil = np.asarray(Image.fromarray(full.frames[i]).resize((384, 384), Image.BICUBIC), dtype=np.float32)
        diff = np.abs(lean.pixel_values[i].permute(1, 2, 0).numpy() - (pil / 255.0 - 0.5) / 0.5)
        assert diff.max() < 4 / 127.5 and diff.mean() < 0.5 / 127.5
    assert max(lean.frames.shape[1:3]) <= 1280


# ---- bad input ----------------------------------------------------------------------------------
def test_audio_only(crafted):
    with pytest.raises(NoVideoStreamError, match="audio only") as err:
        read_video(crafted["audio.m4a"])
    assert isinstance(err.value, NotAVideoError)


@pytest.mark.parametrize("name", ["still.png", "still.jpg"])
def test_still_image_refused(crafted, name):
    with pytest.raises(StillImageError, match="still image") as err:
        read_video(crafted[name])
    assert "ffmpeg -loop 1" in str(err.value)


def test_unknown_codec_named(crafted):
    with pytest.raises(UnsupportedCodecError, match="unsupported video codec") as err:
        read_video(crafted["unknown_codec.mkv"])
    assert "pip install -U av" in str(err.value)


def test_codec_without_decoder_names_it_and_the_fix(crafted, monkeypatch):
    """PyAV's wheel decodes AV1; pretend it does not, to check what the user would read."""
    import infomerge.video.source as source

    av1 = crafted["bframes.mp4"].with_name("av1.mkv")
    try:
        _ffmpeg(*_src("64x48"), "-t", 0.4, "-c:v", "libaom-av1", "-cpu-used", 8, av1)
    except subprocess.CalledProcessError:
        pytest.skip("this ffmpeg has no AV1 encoder")
    every, _ = oracle(av1)
    assert_same_frames(read_video(av1, 3), every)  # AV1 itself decodes
    monkeypatch.setattr(source, "_has_decoder", lambda codec: codec != "av1")
    with pytest.raises(UnsupportedCodecError, match="'av1'") as err:
        read_video(av1)
    assert "AV1" in str(err.value) and "pip install -U av" in str(err.value)


def test_truncated_says_so_and_counts(crafted):
    every, _ = oracle(crafted["faststart.mp4"])
    msg = r"truncated: the file ends after \d+ of the 100 frames"
    with pytest.raises(TruncatedVideoError, match=msg) as err:
        read_video(crafted["truncated.mp4"])
    assert isinstance(err.value, CorruptVideoError)
    held = int(str(err.value).split("ends after ")[1].split()[0])
    assert 0 < held < len(every)


def test_ffmpeg_noise_stays_quiet(crafted, capfd):
    with pytest.raises(TruncatedVideoError):
        read_video(crafted["truncated.mp4"])
    data = bytearray(sample_video().read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 4 : mdat + 4 + 1_000_000] = bytes(1_000_000)
    blank = crafted["truncated.mp4"].with_name("blank.mp4")
    blank.write_bytes(bytes(data))
    with pytest.raises(Exception):  # noqa: B017 - NoDecodableFrameError, tested in test_video.py
        read_video(blank)
    assert capfd.readouterr().err == ""


def test_camera_that_is_not_there():
    with pytest.raises(VideoNotFoundError, match="/dev/video97"):
        read_video("97")


def test_bad_arguments_fail_before_decoding():
    with pytest.raises(ValueError, match="sampling"):
        read_video(sample_video(), 4, sampling="random")
    with pytest.raises(ValueError, match="window"):
        read_video(sample_video(), 4, window=0)
    with pytest.raises(VideoSourceError, match="scheme"):
        read_video("gopher://example.org/x.mp4")


def test_decode_device_cuda_unavailable_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the NVDEC path is exercised on hardware, not here")
    with pytest.raises(BackendUnavailableError, match="--decode-device cuda") as err:
        read_video(sample_video(), 4, decode_device="cuda")
    assert "--decode-device cpu" in str(err.value)


def test_cancel_stops_decoding():
    stop = threading.Event()
    stop.set()
    with pytest.raises(DecodeCancelledError):
        read_video(sample_video(), 4, cancel=stop)


# ---- URLs ---------------------------------------------------------------------------------------
def _serve(tmp_path, handler_class):
    handler = functools.partial(handler_class, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def http_root(tmp_path):
    """(base URL, directory) of an http.server with range requests on 127.0.0.1, in a thread."""
    server, base = _serve(tmp_path, _QuietHandler)
    yield base, tmp_path
    server.shutdown()
    server.server_close()


def test_http_without_ranges_fails_clearly_or_streams(tmp_path, crafted):
    """Plain http.server ignores Range: an MP4 indexed at its end cannot be read (clear error);
    one with the index first (faststart) streams, decoded sequentially."""
    server, base = _serve(tmp_path, _NoRangeHandler)
    try:
        shutil.copy(sample_video("carphone_pristine.mp4"), tmp_path / "moov_last.mp4")
        shutil.copy(crafted["faststart.mp4"], tmp_path / "faststart.mp4")
        with pytest.raises(VideoSourceError) as err:
            read_video(f"{base}/moov_last.mp4", 4)
        assert f"{base}/moov_last.mp4" in str(err.value) and "range" in str(err.value).lower()
        every, _ = oracle(crafted["faststart.mp4"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clip = read_video(f"{base}/faststart.mp4", 5)
        assert clip.indices.tolist() == expected_indices(len(every), 5)
        assert_same_frames(clip, every)
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """http.server's file handler, plus single-range requests (``Range: bytes=a-b``), which every
    production server answers and which an MP4 with its index at the end needs."""

    def log_message(self, *args):
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not rng.startswith("bytes=") or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        a, _, b = rng[len("bytes="):].partition("-")
        start, end = int(a or 0), min(int(b) if b else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return None
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data)


class _NoRangeHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("name", ["carphone_pristine.mp4", "bigbuckbunny.mp4"])
def test_http_url_equals_local_file(http_root, name):
    base, root = http_root
    shutil.copy(sample_video(name), root / name)
    every, times = oracle(sample_video(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = read_video(f"{base}/{name}", 6)
    assert clip.path == f"{base}/{name}" and not clip.live
    assert clip.indices.tolist() == expected_indices(len(every), 6)
    assert_same_frames(clip, every, times)


def test_http_404_names_url_and_reason(http_root):
    base, _ = http_root
    url = f"{base}/no/such%20video.mp4?x=1&y=2"
    with pytest.raises(VideoSourceError) as err:
        read_video(url)
    assert url in str(err.value) and "404" in str(err.value)


def test_unreachable_url_names_reason():
    url = "http://127.0.0.1:9/clip.mp4"  # discard port: nothing listens
    with pytest.raises(VideoSourceError) as err:
        read_video(url)
    assert url in str(err.value) and "refused" in str(err.value).lower()
