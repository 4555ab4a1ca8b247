"""Timing harness: median and p90 over N runs after W warm-ups, with peak memory.

Clocks: ``time.perf_counter`` on the CPU; on a CUDA device, CUDA events recorded on the current
stream around the call (``torch.cuda.Event(enable_timing=True)``), synchronised after each run, so
a run's time is GPU time from the first kernel launch to the last kernel's end plus the host work in
between. Calls that are synchronous themselves (ONNX Runtime ``run``, TensorRT ``execute_v2``)
are measured correctly by both clocks.

Peak memory, reported beside every measurement:
- CPU: the process's peak resident set size during the timed runs. On Linux the kernel's
  high-water mark (``VmHWM``) is reset before the runs (``/proc/self/clear_refs``, value 5) and read
  after, which is exact and costs nothing; elsewhere ``psutil`` samples the RSS every 2 ms in a
  background thread.
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (memory that PyTorch's
  allocator handed out; memory that ONNX Runtime or TensorRT allocate themselves is not in it).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


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


class _RssPeak:
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
        with _RssPeak() as probe:
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


__all__ = ["Measurement", "Stats", "current_rss", "measure", "speedup", "summarize"]
