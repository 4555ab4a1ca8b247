"""The C allocator's setting for decoding frames above 1080p: large buffers go back to the system.

Why: glibc's ``malloc`` serves a request of at least its *mmap threshold* (128 KiB at start) with
a private ``mmap`` that ``free`` unmaps at once; smaller ones come from its heaps, which give
memory back only from their top. The threshold is *dynamic*: freeing an mmapped block raises it
to that block's size (up to 32 MiB on 64-bit). Reading a 4K or 8K video frees many such blocks
(FFmpeg's planes, the RGB frame, the float32 strips of the resize), so after the first frame all
of them (up to 32 MiB) come from the heaps, where the small frames kept between them (display
copies, pixel values) pin the freed space: peak RSS grew by 13 MiB (4K) to 18 MiB (8K) per
sampled frame on top of the 4.5 MiB kept (docs/video.md). Fixing the threshold with
``mallopt(M_MMAP_THRESHOLD, ...)`` (glibc ``malloc(3)``/``mallopt(3)``; the same as the
environment variable ``MALLOC_MMAP_THRESHOLD_``) turns the dynamic adjustment off, so transient
blocks of that size or more are unmapped when freed.

The setting is process-wide; it is applied once, only when a frame above 1080p is about to be
decoded, only on glibc (a no-op elsewhere: musl and macOS allocators return large blocks anyway),
and not when the user has chosen a value through ``MALLOC_MMAP_THRESHOLD_``.
"""

from __future__ import annotations

import ctypes
import os
import threading

# glibc malloc.h: int mallopt(int param, int value)
M_MMAP_THRESHOLD = -3
# blocks of at least this many bytes are mmapped (and unmapped when freed): above the frames kept
# per sample (a 1280x720 RGB display copy is 2.6 MiB, a 384x384 float32 pixel-value frame
# 1.7 MiB), below every per-frame transient of a 4K source (an 8 MiB luma plane, a 24 MiB RGB
# frame, 10-11 MiB float32 strips)
MMAP_THRESHOLD_BYTES = 4 << 20
ENV_VAR = "MALLOC_MMAP_THRESHOLD_"

_lock = threading.Lock()
_state: dict[str, bool | None] = {"applied": None}  # None: not tried yet


def _glibc():
    """The process's C library when it is glibc (it exports ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES`, once per process.

    Called by :func:`~infomerge.video.read_video` before it decodes frames above 1080p. Later
    calls return the first call's result without calling ``mallopt`` again. Thread-safe.

    Returns:
        True when the threshold is set (now or by an earlier call); False when nothing was
        changed: not glibc, ``mallopt`` refused, or ``MALLOC_MMAP_THRESHOLD_`` is set in the
        environment (the user's value stands).

    Source: glibc ``mallopt(3)``, ``M_MMAP_THRESHOLD`` (fixing it disables the dynamic threshold).
    """
    with _lock:
        if _state["applied"] is None:
            libc = None if os.environ.get(ENV_VAR) else _glibc()
            ok = False
            if libc is not None:
                ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            _state["applied"] = ok
        return bool(_state["applied"])
