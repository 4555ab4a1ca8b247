"""``infomerge-run``'s video options, and Ctrl-C while the background decoder runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from infomerge.runtime.cli import build_parser, main


def test_window_and_sampling_flags_parse():
    args = build_parser().parse_args(["--window", "10s", "--sampling", "time", "--decode-device", "cuda"])
    assert args.window == 10.0 and args.sampling == "time" and args.decode_device == "cuda"
    assert build_parser().parse_args(["--window", "1.5m"]).window == 90.0
    assert build_parser().parse_args([]).sampling == "index"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--window", "soon"])


def test_decode_device_cuda_fails_clearly_before_models_load(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    t0 = time.perf_counter()
    # a missing hardware decoder is the environment (exit 1, as a missing TensorRT), not usage (2)
    assert main(["--decode-device", "cuda", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert "--decode-device cuda" in err and "--decode-device cpu" in err
    assert time.perf_counter() - t0 < 5  # raised by the decoder thread before any model loads


@pytest.fixture
def stalled_url():
    """An http URL whose server accepts the connection and never answers: the decoder thread
    blocks in FFmpeg's read, the worst case for Ctrl-C."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    connected = threading.Event()
    held = []

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/clip.mp4", connected
    srv.close()
    for c in held:
        c.close()


def test_ctrl_c_while_decoder_blocks_exits_130_within_a_second(stalled_url):
    url, connected = stalled_url
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "infomerge.runtime.cli", "--video", url, "--max-new-tokens", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert connected.wait(120), "the decoder never connected"
        time.sleep(0.5)  # past raise_early: the main thread is loading models, the decoder is blocked
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.perf_counter() - t0
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["infomerge-run: interrupted"], err
    assert elapsed < 1.0, f"took {elapsed:.2f} s to exit"


def test_json_reports_each_frames_real_timestamp(tmp_path, capsys):
    """``--json`` records how the frames were sampled and each one's presentation time, checked
    against a plain PyAV decode of every frame and a brute-force time sampling."""
    import json

    import av

    from infomerge.video import sample_video

    out = tmp_path / "run.json"
    assert main(["--sampling", "time", "--max-new-tokens", "1", "--json", str(out)]) == 0
    video = json.loads(out.read_text())["video"]
    with av.open(str(sample_video())) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    times = [t - times[0] for t in times]
    n = video["frames"]
    instants = [times[-1] * k / (n - 1) for k in range(n)]
    want = [max(i for i, t in enumerate(times) if t <= s + 1e-9) for s in instants]
    assert video["frame_indices"] == want
    assert video["timestamps_s"] == pytest.approx([times[i] for i in want], abs=1e-9)
    how = (video["sampling"], video["live"], video["window_s"], video["read_by"])
    assert how == ("time", False, None, "seek")
    assert "uniform in time" in capsys.readouterr().out


def test_exit_cancels_and_joins_running_decodes(monkeypatch):
    """The interpreter-exit hook stops a decode still running (its daemon thread must not be left
    inside native code while the process finalizes: SIGABRT instead of the exit status)."""
    from infomerge.runtime import decode_thread

    entered = threading.Event()

    def endless(video, frames, size, cancel, **options):
        entered.set()
        while not cancel.wait(0.01):  # a decoder that stops only when cancelled
            pass
        raise RuntimeError("cancelled")

    monkeypatch.setattr(decode_thread, "decode_video", endless)
    job = decode_thread.DecodeJob("unused.mp4", 4)
    assert entered.wait(5) and not job.done()
    decode_thread._stop_live_jobs(timeout=5.0)
    assert job.done()
