"""Stage-by-stage measurement of the runtime's backends on the same inputs.

The stages are the runtime's own (:class:`infomerge.runtime.pipeline.Pipeline`): ``decode`` (video
decode + SigLIP preprocessing), ``encode`` (vision encoder), ``compress``, ``assemble`` (chat
template + splice + RoPE positions), ``prefill``, and one LLM ``step`` per decoded token. Nothing of
the pipeline is reimplemented here: this module builds one pipeline per backend with the public
constructors, one per (method, retention) with ``Pipeline.with_compression``, and times each stage
with :func:`infomerge.timing.measure`.

Same inputs for every backend: the video is decoded once; every vision backend gets the same
``pixel_values``; every compressor gets the reference backend's vision features (H, A, g and the
optional outputs the benchmarked methods read, e.g. VisionZip's ``attention`` and ``keys``: the
vision stage produces their union in its one pass, and the exported ``vision.onnx`` has them); every
LLM gets the reference compressor's kept tokens (so the prefill lengths are equal across
backends). The reference is the first backend that runs (``torch`` when it is requested). Each
stage's output is compared with the reference's (:class:`CrossCheck`); a backend whose outputs
disagree beyond tolerance is marked ``mismatch`` in the table.

The end-to-end time to first token is measured separately, as the request the user runs:
:meth:`Pipeline.generate` with ``max_new_tokens=1`` on the video file, each backend's own chain.

Backends:
- ``torch``: the checkpoint in PyTorch (eager; on CUDA also ``torch.compile``, its own rows);
- ``ort``: ``vision.onnx`` and ``compress.onnx`` graphs and the onnxruntime-genai LLM graph of an
  ``infomerge-export`` directory, on the CUDA execution provider when installed and asked for, else
  the CPU one. Without ``--artifacts``, the benchmark exports what it needs (``--work``);
- ``trt``: the TensorRT engines of that directory. Where TensorRT cannot run (not installed, no
  GPU, TensorRT-RTX on compute capability 8.7 / 9.0, no engines) the backend gets one row with the
  reason;
- ``hf``: the baseline a user has without this toolkit, the checkpoint's own transformers
  ``LlavaOnevisionForConditionalGeneration`` (SDPA, fp32, uncompressed; :mod:`infomerge.bench.hf`):
  one row at r = 1.0, on the same pixel values and prompt ids, its vision features and first-token
  logits cross-checked against the reference backend's uncompressed ones. Every other row's
  speedups are also given against it (:func:`infomerge.bench.results.fill_speedups`).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from infomerge.artifacts.layout import MANIFEST
from infomerge.artifacts.manifest import load_manifest
from infomerge.bench.flops import dims_from_config, nominal_tokens, paper_flops, prefill_flops, tflops
from infomerge.bench.results import BASELINE_METHOD, FAILED, HF_BACKEND, MISMATCH, UNAVAILABLE, Row
from infomerge.engines.builder import local_compute_capability, rtx_capabilities
from infomerge.engines.flavour import load_flavour
from infomerge.errors import ArtifactError, BackendUnavailableError, InfomergeError, UsageError
from infomerge.timing import Measurement, measure, summarize

BACKENDS = ("torch", "ort", "trt", HF_BACKEND)
# torch.compile mode of the "compile" rows per device
TORCH_COMPILE_MODE = {"cpu": None, "cuda": "reduce-overhead"}
# TensorRT-RTX runs on desktop / laptop RTX GPUs only (spec deployment.md); used where the installed
# module does not list its targets
_RTX_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


# ---- tolerances -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerances:
    """When a backend's stage output counts as agreeing with the reference backend's.

    Attributes:
        vision: max |a - b| over max |reference| of H, A and g (fp32 graphs: 1e-3).
        index: least Jaccard overlap of the kept original indices. The exported compressor is the
            fixed-budget variant: it keeps exactly B tokens where the reference keeps B +- a few,
            and its CABA uses an in-graph estimate of the richness (spec "Fixed-budget variant").
        logits: least cosine similarity of the first-token logits; by default
            ``LOGITS_COSINE[precision]`` of the ORT LLM graph: int4 weights move the logits (measured
            against torch fp32: 0.989 on ``tiny``, 0.94-0.97 on ``ov-0.5b`` with random weights,
            whose Gaussian matrices quantize worse than trained ones).
    """

    vision: float = 1e-3
    index: float = 0.85
    logits: float = 0.9


# least first-token logits cosine against torch fp32, per ORT LLM graph precision
LOGITS_COSINE = {"int4": 0.9, "fp32": 0.999}
# max relative |diff| of the hf row's H (bf16 model on a GPU) against the fp32 reference; not
# measured yet (no GPU here): bf16 keeps 8 mantissa bits, 26 layers compound it
HF_BF16_VISION = 5e-2


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape:
        return math.inf
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else 1.0


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa | sb))


@dataclass
class CrossCheck:
    """Stage outputs of one backend against the reference backend's (same inputs)."""

    reference: str
    details: list[dict] = field(default_factory=list)

    def add(self, stage: str, metric: str, value: float, limit: float, higher_is_better: bool) -> None:
        ok = value >= limit if higher_is_better else value <= limit
        self.details.append(
            {"stage": stage, "metric": metric, "value": value, "limit": limit, "ok": bool(ok)}
        )

    @property
    def ok(self) -> bool:
        return all(d["ok"] for d in self.details)

    def failures(self) -> str:
        return "; ".join(
            f"{d['stage']} {d['metric']} {d['value']:.3g} (limit {d['limit']:g})"
            for d in self.details
            if not d["ok"]
        )

    def to_dict(self) -> dict:
        return {"reference": self.reference, "ok": self.ok, "details": self.details}


# ---- what a run needs -------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """Everything one benchmark run is asked to do (the parsed command line).

    Attributes:
        backbone: registry name.
        checkpoint: the checkpoint directory every backend is built from.
        frames: F, frames sampled per video (the backbone's unless reduced for a slow machine).
        fps: Qwen2.5-VL: the video sampled at this rate (Qwen's rule); ``frames`` is then the count
            it gives on ``video`` (None: ``frames`` frames uniform in index).
        retentions: ratios in (0, 1]; 1.0 is the uncompressed baseline (always measured first).
        methods: compressors for the ratios below 1.0.
        backends: any of ``BACKENDS``.
        device: "cpu" or "cuda".
        runs, warmup: N timed runs after W warm-ups, for every stage.
        ttft_runs: timed end-to-end requests per row (0: not measured).
        decode_tokens: tokens per decode measurement.
        video: the video file.
        prompt: the question.
        artifacts: ``infomerge-export`` directory for ort / trt (None: export into ``work``).
        work: folder for exported graphs.
        llm_precision: precision of the ORT LLM graph when the benchmark exports it.
        torch_variants: "eager", "compile".
        tolerances: cross-check limits.
    """

    backbone: str
    checkpoint: Path
    frames: int
    retentions: list[float]
    methods: list[str]
    backends: list[str]
    device: str = "cpu"
    runs: int = 10
    warmup: int = 2
    ttft_runs: int = 10
    decode_tokens: int = 16
    video: Path | None = None
    prompt: str | None = None
    artifacts: Path | None = None
    work: Path | None = None
    llm_precision: str = "int4"
    torch_variants: list[str] = field(default_factory=lambda: ["eager"])
    tolerances: Tolerances = field(default_factory=Tolerances)
    fps: float | None = None

    def cases(self) -> list[tuple[str, float]]:
        """(method, retention) pairs in order: the baseline (``"none"``, 1.0) first."""
        out = [(BASELINE_METHOD, 1.0)] if 1.0 in self.retentions else []
        out += [(m, r) for m in self.methods for r in sorted(self.retentions, reverse=True) if r < 1.0]
        return out


class Unavailable(Exception):
    """A backend that cannot run on this machine; ``str()`` is the reason shown in the table."""


# ---- TensorRT availability --------------------------------------------------------------------
def trt_unavailable_reason(device: str) -> str | None:
    """Why TensorRT engines cannot run here, or None when a flavour and a suitable GPU exist."""
    flavours = {}
    for name in ("trt", "rtx"):
        try:
            flavours[name] = load_flavour(name)
        except BackendUnavailableError:
            pass
    if not flavours:
        return "TensorRT not installed (pip install 'infomerge[trt]', or JetPack's TensorRT on Jetson)"
    cc = local_compute_capability()
    labels = " and ".join(f.label for f in flavours.values())
    if cc is None or not str(device).startswith("cuda"):
        return (
            f"{labels} installed, but no CUDA GPU {'visible' if cc is None else 'selected (--device cpu)'}: "
            "engines cannot run here"
        )
    if "trt" not in flavours and cc not in (rtx_capabilities(flavours["rtx"]) or _RTX_CAPABILITIES):
        return f"TensorRT-RTX cannot run on compute capability {cc} (RTX GPUs only); install full TensorRT"
    return None


# ---- artifacts for the ort / trt backends ------------------------------------------------------
def _compress_key(method: str, retention: float) -> str:
    return f"{method}-r{retention:g}"


def export_artifacts(cfg: BenchConfig, console=None) -> Path:
    """An ``infomerge-export`` directory for ``cfg`` (vision.onnx, compress.onnx, llm/), reused
    when one with a manifest is already in ``cfg.work``. Returns its path.

    Raises:
        InfomergeError: from :func:`infomerge.export.export` (nothing half-written is left).
    """
    engine = None
    if "trt" in cfg.backends and trt_unavailable_reason(cfg.device) is None:
        try:
            engine = load_flavour("trt").name
        except BackendUnavailableError:
            engine = "rtx"
    ep = "cuda" if cfg.device.startswith("cuda") else "cpu"
    extra = _vision_outputs(cfg)  # vision.onnx serves every benchmarked method
    name = f"{cfg.backbone}-f{cfg.frames}-{cfg.llm_precision}-{ep}" + (f"-{engine}" if engine else "")
    name += "".join(f"-{k}" for k in extra)
    out = Path(cfg.work) / name
    if (out / MANIFEST).is_file():
        return out
    method, retention = next(((m, r) for m, r in cfg.cases() if m != BASELINE_METHOD), ("infomerge", 0.15))
    llm = {"llm": cfg.llm_precision, "llm_ep": ep}
    return _export(cfg, out, method, retention, console, engine=engine or "none", vision_outputs=extra, **llm)


def _vision_outputs(cfg: BenchConfig) -> tuple[str, ...]:
    """The union of the benchmarked methods' optional vision outputs (``Method.vision_outputs``):
    the vision stage runs once per backend and serves every case."""
    from infomerge.compress.methods import vision_outputs_of

    return vision_outputs_of(m for m in cfg.methods if m != BASELINE_METHOD)


def compress_artifacts(cfg: BenchConfig, artifacts: Path, method: str, retention: float) -> Path:
    """An artifact directory whose ``compress.onnx`` is for (method, retention): ``artifacts`` when it
    was exported for them, else a compression-only export into ``cfg.work/compress/`` (the fixed-budget
    graph validated on the real video's features, as ``infomerge-export`` does it; its agreement with
    the reference is the benchmark's cross-check).

    Raises:
        InfomergeError: from :func:`infomerge.export.export`.
    """
    entry = load_manifest(artifacts).get("graphs", {}).get("compress")
    if entry and entry.get("method") == method and abs(float(entry.get("retention", -1)) - retention) < 1e-9:
        return artifacts
    out = Path(cfg.work) / "compress" / f"{cfg.backbone}-f{cfg.frames}-{method}-r{retention:g}"
    if (out / MANIFEST).is_file():
        return out
    return _export(cfg, out, method, retention, _quiet_console(), vision=False)


def _export(cfg: BenchConfig, out: Path, method: str, retention: float, console, **options) -> Path:
    """:func:`infomerge.export.export` of ``cfg``'s backbone, checkpoint, frames and video into ``out``."""
    from infomerge.export import ExportOptions, export

    what = "compression graph" if options.get("vision") is False else "artifacts"
    opts = ExportOptions(
        backbone=cfg.backbone,
        model_path=Path(cfg.checkpoint),
        frames=cfg.frames,
        method=method,
        retention=retention,
        output=out,
        video=cfg.video,
        command=f"infomerge-bench ({what} for {cfg.backbone}, {method} r={retention:g})",
        **options,
    )
    return export(opts, console=console)


def _quiet_console():
    from rich.console import Console

    return Console(quiet=True)


# ---- one backend ------------------------------------------------------------------------------
@dataclass
class LoadedBackend:
    """A runtime pipeline of one backend, and how to get the pipeline of a case."""

    name: str
    variant: str
    pipe: object  # infomerge.runtime.pipeline.Pipeline
    pipe_for: Callable[[str, float], object]


def rows_of(name: str) -> tuple[str, str, str]:
    """(vision, compress, llm) backend names of a bench row; no TensorRT LLM: torch's."""
    return {"torch": ("torch",) * 3, "ort": ("ort",) * 3, "trt": ("trt", "trt", "torch")}[name]


def load_backend(cfg: BenchConfig, name: str, variant: str, artifacts: Path | None) -> LoadedBackend:
    """Build the runtime pipeline of backend ``name`` (``variant``: torch "eager" / "compile") through
    :meth:`Pipeline.from_backbone`, and per case :meth:`Pipeline.with_compression`.

    Raises:
        Unavailable: the backend cannot run here (the message is the reason).
        InfomergeError: a broken checkpoint or artifact directory.
    """
    from infomerge.backbones.registry import get_backbone
    from infomerge.runtime.pipeline import Pipeline, check_backbone_support

    try:  # what the backbone cannot run at all (check_backbone_support: backends outside QWEN_BACKENDS)
        check_backbone_support(get_backbone(cfg.backbone), *rows_of(name), None, None, cfg.frames)
    except UsageError as exc:
        raise Unavailable(str(exc)) from None
    if name == "trt":
        reason = trt_unavailable_reason(cfg.device)
        if reason:
            raise Unavailable(reason)
    vision, compress, llm = rows_of(name)
    compile_mode = False
    if variant == "compile":
        # on CUDA "reduce-overhead" also captures CUDA graphs: what an LLM prefill of a few hundred
        # tokens needs, eager PyTorch being launch-bound there (tens of ms on an H100)
        compile_mode = TORCH_COMPILE_MODE["cuda" if cfg.device.startswith("cuda") else "cpu"]
    try:
        pipe = Pipeline.from_backbone(
            cfg.backbone,
            model_path=cfg.checkpoint,
            vision_backend=vision,
            compress_backend="none",  # the compressor is chosen per case
            llm=llm,
            retention=None,
            artifacts=artifacts,
            device=cfg.device,
            frames=cfg.frames,
            compile_mode=compile_mode,
            vision_outputs=_vision_outputs(cfg),
            fps=cfg.fps,
        )
    except BackendUnavailableError as exc:
        raise Unavailable(str(exc)) from None

    def pipe_for(method: str, retention: float):
        if method == BASELINE_METHOD:
            return pipe.with_compression(retention=None, backend="none")
        try:  # a method the backbone's vision stage cannot feed (Qwen2.5-VL: attention-reading ones)
            check_backbone_support(pipe.backbone, None, compress, None, method, retention)
        except UsageError as exc:
            raise Unavailable(str(exc)) from None
        if compress == "torch":
            return pipe.with_compression(method, retention, "torch")
        if compress == "ort":
            graph_dir = compress_artifacts(cfg, artifacts, method, retention)
            return pipe.with_compression(method, retention, "ort", graph_dir)
        entry = load_manifest(artifacts).get("graphs", {}).get("compress")
        if entry is None or (entry.get("method"), float(entry.get("retention", -1))) != (method, retention):
            have = f"{entry.get('method')} at r={entry.get('retention')}" if entry else "no compress graph"
            raise ArtifactError(
                f"{artifacts}: its compress engine is for {have}; TensorRT rows need "
                f"`infomerge-export --method {method} --retention {retention} --engine trt`"
            )
        return pipe.with_compression(method, retention, "trt")

    return LoadedBackend(name, variant if name == "torch" else _variant_of(name, cfg.device), pipe, pipe_for)


def _variant_of(name: str, device: str) -> str:
    """The row's variant label: the ORT execution provider ("cpu-ep" / "cuda-ep") or "engines"."""
    if name == "ort":
        return "cuda-ep" if str(device).startswith("cuda") else "cpu-ep"
    return "engines"


# ---- the measurement --------------------------------------------------------------------------
@dataclass
class Reference:
    """The reference backend's stage outputs: the inputs of the next stage for every backend."""

    name: str | None = None
    features: object = None  # VisionFeatures
    kept: dict = field(default_factory=dict)  # (method, r) -> VideoTokens
    logits: dict = field(default_factory=dict)  # (method, r) -> (V,) ndarray


class StageBench:
    """Runs the measurements of one :class:`BenchConfig`; one call of :meth:`run_backend` per backend.

    Args:
        cfg: the run.
        advance: called with a short text after every measurement (progress display).
    """

    def __init__(self, cfg: BenchConfig, advance: Callable[[str], None] | None = None):
        from infomerge.backbones.registry import get_backbone
        from infomerge.runtime.decode_thread import decode_options, decode_video

        self.cfg = cfg
        self.bb = get_backbone(cfg.backbone)
        self.advance = advance or (lambda text: None)
        self.dims = dims_from_config(self.bb)
        self.ref = Reference()
        how = decode_options(self.bb)  # SigLIP's square resize, or Qwen2.5-VL's fixed-size preprocessing
        if cfg.fps is not None:  # Qwen's frames at that rate: exactly cfg.frames of them (checked)
            how.update(fps=cfg.fps, require_frames=cfg.frames)
        self.decoded = decode_video(cfg.video, cfg.frames, **how)
        self.decode_stage = self._measure(lambda: decode_video(cfg.video, cfg.frames, **how))
        self.advance("decode + preprocess")

    def steps_per_backend(self) -> int:
        """Progress steps of one backend: vision + 5 per case (compress, assemble, prefill, decode, ttft)."""
        return 1 + 5 * len(self.cfg.cases())

    def _measure(self, fn, setup=None, runs=None) -> Measurement:
        return measure(
            fn, runs=runs or self.cfg.runs, warmup=self.cfg.warmup, device=self.cfg.device, setup=setup
        )

    def flops(self, kept: int, retention: float) -> dict:
        """Theoretical prefill FLOPs of the kept visual tokens and of the paper's nominal count."""
        total = self.bb.groups_for(self.cfg.frames) * self.bb.tokens_per_frame  # Qwen: F / 2 groups
        return {
            "formula": "layers * (N d^2 (2 + 2 kv/heads) + 2 N^2 d + 3 N d d_ff), visual tokens (App. A.2)",
            "dims": self.dims.to_dict(),
            "video_tokens": total,
            "kept_tokens": kept,
            "kept_tflops": tflops(prefill_flops(kept, self.dims)),
            "nominal_tokens": nominal_tokens(retention, total),
            "paper_tflops": tflops(paper_flops(retention, self.dims, total)),
        }

    def unavailable_row(self, name: str, variant: str, reason: str, status: str = UNAVAILABLE) -> Row:
        return Row(name, variant, "-", None, status=status, reason=reason)

    def run_backend(self, name: str, variant: str = "eager", artifacts: Path | None = None) -> list[Row]:
        """Measure every case on backend ``name``; returns its rows (one row with the reason when it
        cannot run). Never raises for a backend problem: a failure becomes a ``failed`` row."""
        if name == HF_BACKEND:
            return [self._run_hf()]
        try:
            backend = load_backend(self.cfg, name, variant, artifacts)
        except Unavailable as exc:
            return [self.unavailable_row(name, variant if name == "torch" else "-", str(exc))]
        except (InfomergeError, ImportError, OSError, RuntimeError, ValueError) as exc:
            return [self.unavailable_row(name, variant, f"{type(exc).__name__}: {exc}", FAILED)]
        try:
            return self._measure_backend(backend)
        except (InfomergeError, ImportError, OSError, RuntimeError, ValueError) as exc:
            return [
                self.unavailable_row(backend.name, backend.variant, f"{type(exc).__name__}: {exc}", FAILED)
            ]
        finally:
            backend.pipe.close()
            del backend
            gc.collect()

    def _measure_backend(self, be: LoadedBackend) -> list[Row]:
        """Vision once, then every case; a case that raises becomes a ``failed`` row of its own."""
        cfg, pipe, ref = self.cfg, be.pipe, self.ref
        label = f"{be.name}/{be.variant}"
        vision = self._measure(lambda: pipe.encode(self.decoded.pixel_values))
        self.advance(f"{be.name}: vision encoder")
        if ref.name is None:  # the first backend whose vision ran is the reference
            ref.name, ref.features = label, vision.output
        vision_check = CrossCheck(ref.name)
        if ref.name != label:
            got, want = vision.output, ref.features
            pairs = [(getattr(got, k), getattr(want, k)) for k in ("H", "A", "g")]
            pairs += [(got.extra[k], want.extra[k]) for k in want.extra if k in got.extra]
            worst = max(_rel_diff(a, b) for a, b in pairs)
            names = ", ".join(("H", "A", "g", *want.extra))
            vision_check.add("vision", f"max rel |diff| of {names}", worst, cfg.tolerances.vision, False)
        vision.output = None
        prompt = pipe.prompt_ids(cfg.prompt) if cfg.prompt else pipe.prompt_ids()
        rows = []
        for method, retention in cfg.cases():
            try:
                rows.append(self._measure_case(be, vision, vision_check, prompt, method, retention))
            except Unavailable as exc:
                rows.append(Row(be.name, be.variant, method, retention, status=UNAVAILABLE, reason=str(exc)))
            except (InfomergeError, ImportError, OSError, RuntimeError, ValueError) as exc:
                rows.append(
                    Row(
                        be.name,
                        be.variant,
                        method,
                        retention,
                        status=FAILED,
                        reason=f"{type(exc).__name__}: {exc}",
                    )
                )
        return rows

    def _measure_case(self, be, vision, vision_check, prompt, method: str, retention: float) -> Row:
        """Compression, assembly, prefill, decode and TTFT of one (method, retention) on one backend.

        Inputs are the reference's: its features, and its kept tokens for this case (a backend that
        meets a case the reference could not run provides that case's reference itself).
        """
        cfg, pipe, ref = self.cfg, be.pipe, self.ref
        key = (method, retention)
        is_ref = key not in ref.kept
        check = CrossCheck(ref.name, list(vision_check.details))
        cap = (cfg.warmup + cfg.runs) * cfg.decode_tokens + 1  # KV slots after the prompt: every decode run
        pipe = be.pipe_for(method, retention)
        comp = self._measure(lambda: pipe.compress(ref.features))
        self.advance(f"{be.name}: compress {method} r={retention:g}")
        if is_ref:
            ref.kept[key] = comp.output
        elif method != BASELINE_METHOD:
            jaccard = _jaccard(comp.output.index, ref.kept[key].index)
            check.add("compression", "kept-index Jaccard", jaccard, cfg.tolerances.index, True)
        kept = ref.kept[key]
        asm = self._measure(lambda: pipe.assemble(kept, prompt, self.decoded))
        self.advance(f"{be.name}: assemble")
        assembled = asm.output
        prefill = self._measure(lambda: pipe.prefill(assembled, cap))
        self.advance(f"{be.name}: prefill")
        if is_ref:
            ref.logits[key] = prefill.output
        else:
            cosine = _cosine(prefill.output, ref.logits[key])
            check.add("prefill", "first-token logits cosine", cosine, cfg.tolerances.logits, True)
        # decode continues the KV cache the last prefill left (it reserved ``cap`` slots), run after
        # run: greedy tokens at positions from the uncompressed prompt length on
        state = {"token": int(np.argmax(prefill.output)), "position": assembled.next_position}

        def decode_loop():
            token, position = state["token"], state["position"]
            for _ in range(cfg.decode_tokens):
                token = int(np.argmax(pipe.llm.step(token, position)))
                position += 1
            state.update(token=token, position=position)
            return token

        decode = self._measure(decode_loop)
        self.advance(f"{be.name}: decode")
        ttft = self._ttft(pipe) if cfg.ttft_runs > 0 else None
        self.advance(f"{be.name}: time to first token")
        for m in (comp, asm, prefill, decode):
            m.output = None  # keep no tensors alive past their row
        row = Row(
            be.name,
            be.variant,
            method,
            retention,
            visual_tokens=assembled.video_tokens,
            stages={
                "video_decode": self.decode_stage,
                "vision": vision,
                "compress": comp,
                "assemble": asm,
                "prefill": prefill,
                "token_decode": decode,
            },
            ttft=ttft,
            decode_tokens=cfg.decode_tokens,
            flops=self.flops(int(kept.index.numel()), retention),
            check=None if is_ref and not check.details else check.to_dict(),
        )
        if not check.ok:
            row.status, row.reason = MISMATCH, check.failures()
        return row

    def _run_hf(self) -> Row:
        """The Hugging Face row (r = 1.0, uncompressed), or one ``failed`` row with the reason."""
        from infomerge.bench.hf import HFBaseline

        variant = HFBaseline.variant
        refusal = self.bb.family_spec.hf_baseline_refusal  # Qwen2.5-VL: the row drives LLaVA's classes
        if refusal is not None:
            return self.unavailable_row(HF_BACKEND, variant, refusal)
        try:
            hf = HFBaseline(self.cfg.checkpoint, self.cfg.device, self.cfg.frames, self.bb.tokens_per_frame)
        except (InfomergeError, ImportError, OSError, RuntimeError, ValueError) as exc:
            return self.unavailable_row(HF_BACKEND, variant, f"{type(exc).__name__}: {exc}", FAILED)
        try:
            return self._measure_hf(hf)
        except (InfomergeError, ImportError, OSError, RuntimeError, ValueError) as exc:
            return Row(
                HF_BACKEND,
                variant,
                BASELINE_METHOD,
                1.0,
                status=FAILED,
                reason=f"{type(exc).__name__}: {exc}",
            )
        finally:
            hf.close()
            del hf
            gc.collect()

    def _measure_hf(self, hf) -> Row:
        """Vision, assembly, prefill, decode and TTFT of :class:`~infomerge.bench.hf.HFBaseline`."""
        cfg, ref = self.cfg, self.ref
        key = (BASELINE_METHOD, 1.0)
        pixel_values = self.decoded.pixel_values
        vision = self._measure(lambda: hf.vision(pixel_values))
        self.advance("hf: vision encoder")
        features = vision.output
        prompt = hf.prompt(hf.prompt_ids(cfg.prompt) if cfg.prompt else hf.prompt_ids())
        asm = self._measure(lambda: hf.assemble(prompt, features))
        embeds = asm.output
        prefill = self._measure(lambda: hf.prefill(embeds))
        logits, cache = prefill.output
        self.advance("hf: prefill")
        state = {"token": int(np.argmax(logits))}

        def decode_loop():
            token = state["token"]
            for _ in range(cfg.decode_tokens):
                token = int(hf.step(token, cache).argmax())
            state["token"] = token
            return token

        decode = self._measure(decode_loop)
        self.advance("hf: decode")
        ttft = None
        if cfg.ttft_runs > 0:  # the request returns at its first token: its wall time is the TTFT
            prompt_text = cfg.prompt or _default_prompt()
            ttft = measure(
                lambda: hf.request(cfg.video, prompt_text, self.bb.image_size),
                runs=cfg.ttft_runs,
                warmup=0,
                device=cfg.device,
            )
            ttft.output = None
        self.advance("hf: time to first token")
        check = CrossCheck(ref.name or "-")
        fp32 = hf.model.dtype == torch.float32  # bf16 on a GPU: bf16 roundings, looser limits
        if ref.features is not None:
            h = features[0, :-1].reshape(ref.features.H.shape)  # the newline is the last row
            limit = cfg.tolerances.vision if fp32 else HF_BF16_VISION
            check.add("vision", "max rel |diff| of H", _rel_diff(h, ref.features.H), limit, False)
        if key in ref.logits:
            limit = max(cfg.tolerances.logits, LOGITS_COSINE["fp32"]) if fp32 else cfg.tolerances.logits
            check.add("prefill", "first-token logits cosine", _cosine(logits, ref.logits[key]), limit, True)
        for m in (vision, asm, prefill, decode):
            m.output = None
        row = Row(
            HF_BACKEND,
            hf.variant,
            BASELINE_METHOD,
            1.0,
            visual_tokens=prompt.video_tokens,
            stages={
                "video_decode": self.decode_stage,
                "vision": vision,
                "assemble": asm,
                "prefill": prefill,
                "token_decode": decode,
            },
            ttft=ttft,
            decode_tokens=cfg.decode_tokens,
            flops=self.flops(cfg.frames * self.bb.tokens_per_frame, 1.0),
            check=check.to_dict() if check.details else None,
        )
        if not check.ok:
            row.status, row.reason = MISMATCH, check.failures()
        return row

    def _ttft(self, pipe) -> Measurement:
        """End-to-end requests (video file -> first token) with this backend's own chain."""
        samples: list[float] = []

        def request():
            answer = pipe.generate(self.cfg.video, self.cfg.prompt or _default_prompt(), max_new_tokens=1)
            samples.append(answer.timings.ttft_ms)

        m = measure(request, runs=self.cfg.ttft_runs, warmup=0, device=self.cfg.device)
        return Measurement(summarize(samples), m.peak_memory_bytes, m.memory_kind)


def _default_prompt() -> str:
    from infomerge.runtime.embeddings import DEFAULT_PROMPT

    return DEFAULT_PROMPT


__all__ = [
    "BACKENDS",
    "BenchConfig",
    "CrossCheck",
    "LoadedBackend",
    "StageBench",
    "Tolerances",
    "Unavailable",
    "compress_artifacts",
    "export_artifacts",
    "load_backend",
    "trt_unavailable_reason",
]
