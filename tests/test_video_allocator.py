"""glibc's mmap threshold, fixed once before frames above 1080p are decoded.

The effect is checked in a fresh interpreter through glibc's own accounting (``mallinfo2``'s
count of mmapped blocks), independently of the module; the once-only and opt-out rules with a
fake C library; the trigger with a real file above 1080p and one below.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import infomerge.video.allocator as allocator
import infomerge.video.decode as decode
from infomerge.video import read_video, sample_video

ALLOCATOR_PY = Path(allocator.__file__)


def _is_glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version") and hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _is_glibc(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_threshold_sends_freed_blocks_back_to_the_system():
    """A 6 MiB block freed once raises glibc's dynamic threshold, so the next one comes from the
    heap (no new mmapped block); after ``return_large_buffers`` it is mmapped again."""
    code = textwrap.dedent(f"""
        import ctypes, importlib.util, os
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        class Info(ctypes.Structure):
            names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
            _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)
        libc.mallinfo2.restype = Info
        def mmapped_while_held(n):
            p = libc.malloc(n); h = libc.mallinfo2().hblks; libc.free(p); return h
        base = libc.mallinfo2().hblks
        first = mmapped_while_held(6 << 20) - base    # above the initial 128 KiB: mmapped
        second = mmapped_while_held(6 << 20) - base   # threshold raised by the free: heap
        spec = importlib.util.spec_from_file_location("allocator", {str(ALLOCATOR_PY)!r})
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        ok = mod.return_large_buffers()
        third = mmapped_while_held(6 << 20) - base
        small = mmapped_while_held(1 << 20) - base    # below the fixed 4 MiB: heap
        print(first, second, ok, third, small, mod.return_large_buffers())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0", "True", "1", "0", "True"]


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fresh(monkeypatch):
    """The module as if never called, with a fake glibc; returns the fake."""
    fake = _FakeLibc()
    monkeypatch.setitem(allocator._state, "applied", None)
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return fake


def test_applied_once(fresh):
    assert allocator.return_large_buffers() is True
    assert allocator.return_large_buffers() is True
    assert fresh.calls == [(-3, 4 * 1024 * 1024)]  # M_MMAP_THRESHOLD from glibc's malloc.h


def test_user_setting_and_other_libcs_left_alone(fresh, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert allocator.return_large_buffers() is False
    assert fresh.calls == []
    monkeypatch.setitem(allocator._state, "applied", None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # musl, macOS, Windows
    assert allocator.return_large_buffers() is False


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command-line tool")
def test_set_only_for_frames_above_1080p(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(decode, "return_large_buffers", lambda: calls.append(1) or True)
    read_video(sample_video("bigbuckbunny.mp4"), 2)
    assert calls == []
    big = tmp_path / "big.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=2048x1152:rate=5", "-frames:v", "2", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", str(big)], check=True)
    clip = read_video(big, 2, size=64)
    assert calls and clip.pixel_values.shape == (2, 3, 64, 64)
