"""The benchmark's result model: one row per (backend, variant, method, retention).

A row holds one :class:`~infomerge.timing.Measurement` per pipeline stage (times in ms, peak
memory in bytes), the end-to-end time to first token, the decode rate, the theoretical prefill
FLOPs and the cross-check against the reference backend. Speedups are filled in afterwards from the
``retention == 1.0`` row of the same backend and variant (same run, same inputs), and from the
Hugging Face row (backend ``hf``: transformers' own model, uncompressed, same frames and prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infomerge.timing import Measurement, speedup

# Pipeline stages in order; the first five add up to the time to first token.
STAGES = ("video_decode", "vision", "compress", "assemble", "prefill", "token_decode")
TTFT_STAGES = STAGES[:5]
STAGE_LABELS = {
    "video_decode": "video decode+preprocess",
    "vision": "vision encoder",
    "compress": "compression",
    "assemble": "embedding assembly",
    "prefill": "LLM prefill",
    "token_decode": "LLM token decode",
}

# row status
OK = "ok"  # measured, outputs agree with the reference
MISMATCH = "mismatch"  # measured, but outputs disagree with the reference beyond tolerance
UNAVAILABLE = "unavailable"  # the backend cannot run here (reason says why)
FAILED = "failed"  # the backend raised while running (reason holds the error)

BASELINE_METHOD = "none"  # the method name of the uncompressed (retention 1.0) rows
HF_BACKEND = "hf"  # the backend name of the Hugging Face baseline row


@dataclass
class Row:
    """One benchmarked configuration.

    Attributes:
        backend: "torch", "ort", "trt", or "hf" (the Hugging Face baseline).
        variant: how the backend ran, e.g. "eager", "cuda-graphs", "compile", "cpu-ep", "cuda-ep", "engines".
        method: "infomerge", "fastvid", or "none" for the uncompressed baseline.
        retention: r in (0, 1]; 1.0 is the baseline; None on the one row of a backend that could
            not run (method "-").
        status: OK, MISMATCH, UNAVAILABLE or FAILED.
        reason: why a row is not OK (None when it is).
        visual_tokens: video tokens that entered the LLM (kept tokens, plus the newline token).
        stages: stage name -> Measurement (see ``STAGES``).
        ttft: the end-to-end time to first token, measured as one call chain (not a sum).
        decode_tokens: tokens generated per decode measurement (for tokens/s).
        flops: "paper_tflops" (nominal round(r*L*N) tokens, the paper's column), "kept_tflops"
            (the tokens actually kept), "dims" (LLM dims used).
        check: cross-check against the reference backend: {"reference", "ok", "details": [...]}.
        prefill_speedup, ttft_speedup: against r = 1.0 of the same backend and variant; filled by
            :func:`fill_speedups`.
        vision_vs_hf, prefill_vs_hf, ttft_vs_hf: speedups against the Hugging Face row (its median
            over this row's; > 1 is faster than Hugging Face); filled by :func:`fill_speedups`.
    """

    backend: str
    variant: str
    method: str
    retention: float | None
    status: str = OK
    reason: str | None = None
    visual_tokens: int | None = None
    stages: dict[str, Measurement] = field(default_factory=dict)
    ttft: Measurement | None = None
    decode_tokens: int | None = None
    flops: dict = field(default_factory=dict)
    check: dict | None = None
    prefill_speedup: float | None = None
    ttft_speedup: float | None = None
    vision_vs_hf: float | None = None
    prefill_vs_hf: float | None = None
    ttft_vs_hf: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend, self.variant)

    @property
    def measured(self) -> bool:
        return self.status in (OK, MISMATCH)

    def median(self, stage: str) -> float | None:
        """Median ms of a stage ("ttft" for the end-to-end figure), None when not measured."""
        m = self.ttft if stage == "ttft" else self.stages.get(stage)
        return m.stats.median_ms if m is not None else None

    def decode_tokens_per_s(self) -> float | None:
        m = self.stages.get("token_decode")
        if m is None or not self.decode_tokens or m.stats.median_ms <= 0:
            return None
        return self.decode_tokens / (m.stats.median_ms / 1e3)

    def peak_memory_bytes(self) -> int | None:
        peaks = [m.peak_memory_bytes for m in [*self.stages.values(), self.ttft] if m and m.peak_memory_bytes]
        return max(peaks) if peaks else None

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "variant": self.variant,
            "method": self.method,
            "retention": self.retention,
            "status": self.status,
            "reason": self.reason,
            "visual_tokens": self.visual_tokens,
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
            "ttft": self.ttft.to_dict() if self.ttft else None,
            "decode_tokens": self.decode_tokens,
            "decode_tokens_per_s": self.decode_tokens_per_s(),
            "peak_memory_bytes": self.peak_memory_bytes(),
            "flops": self.flops,
            "check": self.check,
            "prefill_speedup": self.prefill_speedup,
            "ttft_speedup": self.ttft_speedup,
            "vision_vs_hf": self.vision_vs_hf,
            "prefill_vs_hf": self.prefill_vs_hf,
            "ttft_vs_hf": self.ttft_vs_hf,
        }


def fill_speedups(rows: list[Row]) -> None:
    """Set the speedups of every measured row (``baseline median / row median``; None where there is
    no baseline or no figure):

    - ``prefill_speedup``, ``ttft_speedup``: against the retention-1.0 row of the same backend and
      variant;
    - ``vision_vs_hf``, ``prefill_vs_hf``, ``ttft_vs_hf``: against the measured Hugging Face row
      (backend :data:`HF_BACKEND`).
    """
    base = {r.key: r for r in rows if r.measured and r.retention == 1.0}
    hf = next((r for r in rows if r.measured and r.backend == HF_BACKEND), None)
    for r in rows:
        b = base.get(r.key)
        if b is None or not r.measured:
            r.prefill_speedup = r.ttft_speedup = None
        else:
            r.prefill_speedup = speedup(b.median("prefill"), r.median("prefill"))
            r.ttft_speedup = speedup(b.median("ttft"), r.median("ttft"))
        if hf is None or not r.measured:
            r.vision_vs_hf = r.prefill_vs_hf = r.ttft_vs_hf = None
        else:
            r.vision_vs_hf = speedup(hf.median("vision"), r.median("vision"))
            r.prefill_vs_hf = speedup(hf.median("prefill"), r.median("prefill"))
            r.ttft_vs_hf = speedup(hf.median("ttft"), r.median("ttft"))


__all__ = [
    "BASELINE_METHOD",
    "FAILED",
    "HF_BACKEND",
    "MISMATCH",
    "OK",
    "STAGES",
    "STAGE_LABELS",
    "TTFT_STAGES",
    "UNAVAILABLE",
    "Row",
    "fill_speedups",
]
