"""Measurement for runtime, bench and export: one stage vocabulary, clocks, peak memory, statistics.

Stage vocabulary (:data:`STAGES`): ``load``, ``video_decode`` (decode the video file and preprocess
the frames), ``video_decode_wait``, ``vision``, ``compress``, ``assemble``, ``prefill``,
``token_decode`` (LLM generation after prefill). TTFT is the time from the request's start to the
first generated token.

Clocks: ``time.perf_counter`` wall time on the CPU. On a CUDA device through PyTorch, a request's
stage (:class:`StageClock`) synchronises the device before it ends; a benchmark measurement
(:func:`measure`) records CUDA events on the current stream around each call
(``torch.cuda.Event(enable_timing=True)``), synchronised after each run, so a run's time is GPU time
from the first kernel launch to the last kernel's end plus the host work in between. ONNX Runtime
``run`` and TensorRT ``execute_v2`` are synchronous and measured correctly by both clocks.

Peak memory:

- process: peak resident set size (:func:`peak_rss_bytes`, ``getrusage`` ``ru_maxrss``, since the
  process started); over a block, :class:`RssPeak` (Linux: the kernel's high-water mark ``VmHWM``
  reset through ``/proc/self/clear_refs`` and read after, exact and free; elsewhere ``psutil``
  sampling every 2 ms);
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (PyTorch's allocator
  only; memory that ONNX Runtime or TensorRT allocate themselves is not in it).

Statistics (:func:`summarize`): median, p90 (numpy's linear interpolation), mean, population std,
min, max, in milliseconds.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# ---- the stage vocabulary and one request's timings -----------------------------------------
# The stage vocabulary of runtime, bench and export, in pipeline order, with table labels.
# ``video_decode`` is decoding the video file (and SigLIP preprocessing); ``token_decode`` is the
# LLM's token-by-token generation after prefill. The two are never called plain "decode".
STAGES = {
    "load": "load models",
    "video_decode": "video decode + preprocess",
    "video_decode_wait": "  waited for video decode",
    "vision": "vision encoder",
    "compress": "compression",
    "assemble": "embedding assembly",
    "prefill": "LLM prefill",
    "token_decode": "LLM token decode",
}


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (0 where unknown)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    except (ImportError, OSError):
        return 0


def peak_cuda_bytes() -> int | None:
    """``torch.cuda.max_memory_allocated()`` in bytes, or None without CUDA."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


@dataclass
class Timings:
    """Per-stage wall times (milliseconds) and counts of one request.

    Attributes:
        stages_ms: stage key (see :data:`STAGES`) -> milliseconds. ``video_decode`` is the background
            thread's own time; ``video_decode_wait`` the part of it the request waited for.
        ttft_ms: time to first token: from the start of the request (decode included, model
            loading not) to the first generated token.
        total_ms: the whole request (model loading not included).
        new_tokens: generated tokens (EOS included when produced).
        decode_tokens_per_s: tokens per second of the decode loop, counting the tokens after the
            first (the first comes from prefill): ``(new_tokens - 1) / token_decode``.
        prompt_tokens: tokens prefilled (text + kept video tokens + newline).
        video_tokens: kept video tokens incl. the newline; ``uncompressed_video_tokens`` F*N + 1.
        next_position: RoPE position of the first generated token (the uncompressed prompt length).
        peak_rss_mb, peak_cuda_mb: peak memory (see the module docstring).
    """

    stages_ms: dict[str, float] = field(default_factory=dict)
    ttft_ms: float | None = None
    total_ms: float | None = None
    new_tokens: int = 0
    decode_tokens_per_s: float | None = None
    prompt_tokens: int = 0
    video_tokens: int = 0
    uncompressed_video_tokens: int = 0
    next_position: int = 0
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def finish(self) -> None:
        """Fill the derived fields: decode tokens/s and peak memory."""
        gen = self.stages_ms.get("token_decode")
        if gen and self.new_tokens > 1:
            self.decode_tokens_per_s = (self.new_tokens - 1) / (gen / 1000.0)
        self.peak_rss_mb = peak_rss_bytes() / 2**20
        cuda = peak_cuda_bytes()
        self.peak_cuda_mb = None if cuda is None else cuda / 2**20

    def table(self, title: str = "infomerge-run timings"):
        """A ``rich.table.Table`` of the stages, TTFT, decode speed, token counts and peak memory."""
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        t.add_column("stage")
        t.add_column("time", justify="right")
        for key, label in STAGES.items():
            if key in self.stages_ms:
                t.add_row(label, f"{self.stages_ms[key]:.1f} ms")
        t.add_section()
        if self.ttft_ms is not None:
            t.add_row("time to first token", f"{self.ttft_ms:.1f} ms")
        if self.total_ms is not None:
            t.add_row("request total", f"{self.total_ms:.1f} ms")
        tps = "n/a" if self.decode_tokens_per_s is None else f"{self.decode_tokens_per_s:.1f} tok/s"
        t.add_row(f"decode speed ({self.new_tokens} new tokens)", tps)
        t.add_section()
        t.add_row(
            "prompt tokens (video kept / uncompressed)",
            f"{self.prompt_tokens} ({self.video_tokens} / {self.uncompressed_video_tokens})",
        )
        if self.peak_rss_mb is not None:
            t.add_row("peak memory (RSS)", f"{self.peak_rss_mb:.0f} MiB")
        if self.peak_cuda_mb is not None:
            t.add_row("peak CUDA memory (torch)", f"{self.peak_cuda_mb:.0f} MiB")
        return t


class StageClock:
    """Records stage durations into a :class:`Timings`.

    Usage: ``with clock.stage("vision"): ...``; ``cuda=True`` synchronises the device before each
    stage ends.
    """

    def __init__(self, timings: Timings, cuda: bool = False):
        self.timings = timings
        self.cuda = cuda
        self.start = time.perf_counter()

    def elapsed_ms(self) -> float:
        """Milliseconds since the clock was created (the request start)."""
        return (time.perf_counter() - self.start) * 1000.0

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.cuda)
            self.timings.stages_ms[name] = (
                self.timings.stages_ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
            )


# ---- benchmark measurements ------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    """Summary of a list of run times, all in milliseconds.

    Attributes:
        median_ms: the median (mean of the two middle values for an even count).
        p90_ms: the 90th percentile, linear interpolation between order statistics (numpy's
            default "linear" method: rank ``0.9 * (n - 1)``).
        mean_ms, std_ms: mean and population standard deviation.
        min_ms, max_ms: extremes.
        runs: number of timed runs.
        samples_ms: every timed run, in order.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int
    samples_ms: tuple[float, ...] = field(repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        return d


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Median, p90, mean, std, min and max of run times in milliseconds.

    Raises:
        ValueError: no samples, or a sample that is negative or not finite.
    """
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        raise ValueError("summarize: no samples")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"summarize: samples must be finite and >= 0, got {a.tolist()}")
    return Stats(
        median_ms=float(np.median(a)),
        p90_ms=float(np.percentile(a, 90)),
        mean_ms=float(a.mean()),
        std_ms=float(a.std()),
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        runs=int(a.size),
        samples_ms=tuple(float(x) for x in a),
    )


@dataclass
class Measurement:
    """One timed callable.

    Attributes:
        stats: run-time statistics (ms).
        peak_memory_bytes: peak memory during the timed runs (see module doc), or None when unknown.
        memory_kind: "rss" (CPU process peak RSS), "cuda" (torch max_memory_allocated) or "none".
        output: the value returned by the last run (for cross-checking backends).
    """

    stats: Stats
    peak_memory_bytes: int | None
    memory_kind: str
    output: Any = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            **self.stats.to_dict(),
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_kind": self.memory_kind,
        }


# ---- memory probes ----------------------------------------------------------------------------
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            m = _HWM.search(fh.read())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RssPeak:
    """Peak RSS of this process over a ``with`` block (VmHWM reset on Linux, psutil sampling elsewhere)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._exact = False

    def __enter__(self):
        self._exact = _reset_hwm() and _read_hwm() is not None
        if not self._exact:
            import psutil

            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(self.interval_s):
                    self.peak = max(self.peak or 0, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._exact:
            self.peak = _read_hwm()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            import psutil

            self.peak = max(self.peak or 0, psutil.Process().memory_info().rss)
        return False


def current_rss() -> int:
    """The process's resident set size now, in bytes (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


# ---- clocks -----------------------------------------------------------------------------------
def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def _time_cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def _time_cuda(fn: Callable[[], Any]) -> tuple[float, Any]:
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)), out


def measure(
    fn: Callable[[], Any],
    runs: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    setup: Callable[[], None] | None = None,
) -> Measurement:
    """Time ``fn()``: ``warmup`` untimed calls, then ``runs`` timed calls; peak memory beside.

    Args:
        fn: the work to time, called with no argument; its last return value is kept.
        runs: N timed runs (>= 1).
        warmup: W warm-up runs (>= 0), not timed, not in the memory peak.
        device: "cpu" (perf_counter, peak RSS) or "cuda[:i]" (CUDA events, torch peak allocation).
        setup: called untimed before every run (warm-up and timed), e.g. to reset a KV cache.

    Returns:
        :class:`Measurement` with times in ms.

    Raises:
        ValueError: ``runs < 1`` or ``warmup < 0``; whatever ``fn`` raises.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    cuda = _is_cuda(device)
    clock = _time_cuda if cuda else _time_cpu
    if cuda:
        import torch

        torch.cuda.synchronize()
    out = None
    for _ in range(warmup):
        if setup is not None:
            setup()
        out = fn()
    samples: list[float] = []
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(runs):
            if setup is not None:
                setup()
            ms, out = clock(fn)
            samples.append(ms)
        peak, kind = int(torch.cuda.max_memory_allocated()), "cuda"
    else:
        with RssPeak() as probe:
            for _ in range(runs):
                if setup is not None:
                    setup()
                ms, out = clock(fn)
                samples.append(ms)
        peak, kind = probe.peak, "rss"
    return Measurement(summarize(samples), peak, kind if peak is not None else "none", out)


def speedup(baseline_ms: float | None, ms: float | None) -> float | None:
    """``baseline_ms / ms``, or None when either is missing or ``ms`` is not positive."""
    if baseline_ms is None or ms is None or not ms > 0 or not math.isfinite(baseline_ms):
        return None
    return float(baseline_ms) / float(ms)


__all__ = [
    "STAGES",
    "Measurement",
    "RssPeak",
    "StageClock",
    "Stats",
    "Timings",
    "current_rss",
    "measure",
    "peak_cuda_bytes",
    "peak_rss_bytes",
    "speedup",
    "summarize",
]
