"""Stage timings of one ``infomerge-run`` request, the rich table and the JSON record.

Clock: ``time.perf_counter`` wall time. When a stage ran on a CUDA device through PyTorch the
stage's end waits for ``torch.cuda.synchronize()`` first, so its time includes the device work.
ONNX Runtime and TensorRT runs are synchronous.

Peak memory: the process's peak resident set size since start (``getrusage`` ``ru_maxrss``: model
loading included), and on CUDA ``torch.cuda.max_memory_allocated`` (PyTorch's allocator only:
memory ONNX Runtime or TensorRT allocate themselves is not in it).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field

# Stage keys in pipeline order, with their table labels.
STAGES = {
    "load": "load models",
    "decode": "decode + preprocess video",
    "decode_wait": "  waited for decode",
    "vision": "vision encoder",
    "compress": "compression",
    "assemble": "embedding assembly",
    "prefill": "LLM prefill",
    "generate": "LLM decode",
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
        stages_ms: stage key (see :data:`STAGES`) -> milliseconds. ``decode`` is the background
            thread's own time; ``decode_wait`` the part of it the request waited for.
        ttft_ms: time to first token: from the start of the request (decode included, model
            loading not) to the first generated token.
        total_ms: the whole request (model loading not included).
        new_tokens: generated tokens (EOS included when produced).
        decode_tokens_per_s: tokens per second of the decode loop, counting the tokens after the
            first (the first comes from prefill): ``(new_tokens - 1) / generate``.
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
        gen = self.stages_ms.get("generate")
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


__all__ = ["STAGES", "StageClock", "Timings", "peak_cuda_bytes", "peak_rss_bytes"]
