"""The ``ort`` backend: the exported graphs of an artifact directory in ONNX Runtime.

- vision: ``ort/vision.onnx`` when the export wrote it (``vision.onnx`` with ONNX Runtime's
  transformer fusions, validated like it; fp32 exports), else ``vision.onnx`` (input
  ``pixel_values``; outputs ``H``, ``A``, ``g``, then any optional vision outputs it was exported
  with, e.g. ``attention``, ``keys``: ``VisionFeatures.extra``);
- compress: ``compress.onnx`` (inputs ``H``, ``A``, ``g`` and the method's vision outputs, fed by
  name; outputs ``tokens`` (B, D), ``index`` (B,)), the method's fixed-budget graph, checked
  against the requested method and retention;
- LLM: ``llm/`` (onnxruntime-genai's decoder graph with explicit ``position_ids``, KV cache bound
  in place; :class:`~infomerge.runtime.llm_ort.OrtLLM`).

Sessions come from :func:`infomerge.engines.ort.ort_session` (execution provider by device); the
vision and compression sessions with ONNX Runtime's CPU memory arena shrunk after every run, fp16
vision graphs on the CPU provider without the arena and without fp32 copies of their weights
(:func:`request_session`); a fused vision graph runs a few frames per run (:data:`FRAMES_PER_RUN`).
Outputs are host arrays (ONNX Runtime's ``run``), returned as CPU tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from infomerge.artifacts.layout import COMPRESS_ONNX, IMAGE_NEWLINE, LLM_DIR, VISION_ONNX, VISION_ORT_ONNX
from infomerge.engines.ort import ort_session, run_options
from infomerge.errors import ArtifactError, UsageError
from infomerge.runtime.backends.base import (
    BackendSource,
    VideoTokens,
    VisionFeatures,
    dedupe_sorted,
    method_inputs,
)

BASE_OUTPUTS = ("H", "A", "g")


def load_image_newline(path: str | os.PathLike) -> torch.Tensor:
    """``image_newline.npy`` -> (D,) float32 tensor. Raises ArtifactError when missing."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; re-run `infomerge-export` for these artifacts")
    return torch.from_numpy(np.load(path).astype(np.float32))


def request_session(graph: str | os.PathLike, device: str = "cpu", fp16: bool = False):
    """A session for a graph that runs once per request over every frame (vision, compression);
    run it with :func:`request_run_options`.

    - fp32 graphs (and the CUDA provider): ONNX Runtime's CPU memory arena on, shrunk at the end of
      every run (:func:`request_run_options`). Within a run the arena hands each freed activation's
      memory to the next node; without it every large activation is a fresh ``mmap`` whose pages
      fault in again (ov-0.5b vision, 8 frames: 19.3-19.5 s and 3.15 GiB peak RSS without the arena,
      17.4-17.6 s and 2.77 GiB with it and the shrinkage; docs/benchmarks.md, "ONNX Runtime vision
      against Hugging Face"). The shrinkage returns the arena's chunks after each run, so nothing is
      kept between requests (without it the arena keeps the largest run's activations for the
      session's lifetime, growing by powers of two: 3.3 GiB for the ov-0.5b fp16 vision graph at
      32 frames).
    - ``fp16`` graphs on the CPU provider (no fp16 kernels there: every weight is cast to fp32) run
      without the arena, at the ``"extended"`` optimization level in ``"priority"`` order, so each
      weight is cast when its node runs instead of ONNX Runtime keeping fp32 copies of all weights
      beside the fp16 ones: ov-0.5b vision session 0.9 GiB instead of 2.4 GiB, run peak 1.6 GiB
      lower, vision about 10 % slower (:mod:`infomerge.engines.ort`; docs/jetson.md, "Memory for
      8 GB boards").

    The CUDA provider's device arena is a separate setting and stays on.
    """
    if fp16 and not str(device).startswith("cuda"):
        return ort_session(graph, device, arena=False, optimization="extended", order="priority")
    return ort_session(graph, device, arena=True)


def request_run_options(session):
    """``RunOptions`` of a :func:`request_session` run: the CPU arena, where the session has it,
    shrunk when the run ends (ONNX Runtime refuses the shrinkage for a session without an arena)."""
    return run_options(shrink_arena=session.get_session_options().enable_cpu_mem_arena)


#: frames per ``run`` of a vision graph whose frame axis is free: ov-0.5b, 8 frames in one run
#: 17.9 s / 18.4 s, in runs of 2 frames 16.3 s / 17.6 s (two same-process A/Bs; 1 frame per run
#: the same as 2; docs/benchmarks.md, "ONNX Runtime vision against Hugging Face")
FRAMES_PER_RUN = 2


class OrtVision:
    """``vision.onnx`` in ONNX Runtime; ``extra_outputs``: the graph's outputs after H, A, g; ``fp16``:
    the graph holds fp16 weights (the manifest's precision; see :func:`request_session`).

    A graph whose frame axis is free (``ort/vision.onnx``: every frame is encoded on its own) runs
    ``frames_per_run`` frames at a time (:data:`FRAMES_PER_RUN`) and its outputs are concatenated
    along the frame axis; a graph pinned to F frames runs them all at once."""

    name = "ort"

    def __init__(self, graph: str | os.PathLike, image_newline: str | os.PathLike, device: str = "cpu",
                 fp16: bool = False, frames_per_run: int = FRAMES_PER_RUN):
        if int(frames_per_run) < 1:
            raise ValueError(f"frames_per_run must be >= 1, got {frames_per_run}")
        self.session = request_session(graph, device, fp16)
        self.run_options = request_run_options(self.session)
        self.image_newline = load_image_newline(image_newline)
        outputs = [o.name for o in self.session.get_outputs()]
        self.extra_outputs = tuple(k for k in outputs if k not in BASE_OUTPUTS)
        # a graph whose frame axis is free (ort/vision.onnx) takes the distinct frames only
        self.any_frame_count = not isinstance(self.session.get_inputs()[0].shape[0], int)
        self.frames_per_run = int(frames_per_run)

    def __call__(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """pixel_values (F, 3, S, S) -> H (F, N, D), A (F, N), g (F, D) and the extra outputs, float32."""
        names = [*BASE_OUTPUTS, *self.extra_outputs]
        x = pixel_values.float().cpu().numpy()
        step = self.frames_per_run if self.any_frame_count else max(len(x), 1)
        runs = [self.session.run(names, {"pixel_values": x[i:i + step]}, self.run_options)
                for i in range(0, max(len(x), 1), step)]  # fmt: skip
        out = runs[0] if len(runs) == 1 else [np.concatenate(parts) for parts in zip(*runs)]
        h, a, g, *extra = (torch.from_numpy(t).float() for t in out)
        return VisionFeatures(h, a, g, dict(zip(self.extra_outputs, extra)))


class OrtCompressor:
    """``compress.onnx`` in ONNX Runtime (fixed budget; repeated pad indices dropped); its inputs
    are fed by name from H, A, g and the features' ``extra``."""

    name = "ort"

    def __init__(self, graph: str | os.PathLike, device: str = "cpu", method=None):
        self.session = request_session(graph, device)
        self.run_options = request_run_options(self.session)
        self.method = method
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        def as_input(name: str, t: torch.Tensor) -> np.ndarray:
            dtype = np.float16 if self.input_types.get(name) == "tensor(float16)" else np.float32
            return t.detach().cpu().numpy().astype(dtype)

        extra = method_inputs(self.method, f, "this vision backend") if self.method is not None else f.extra
        named = {"H": f.H, "A": f.A, "g": f.g, **extra}
        feeds = {k: as_input(k, named[k]) for k in self.input_types}
        tokens, index = self.session.run(["tokens", "index"], feeds, self.run_options)
        tokens, index = dedupe_sorted(
            torch.from_numpy(tokens).float(), torch.from_numpy(index).to(torch.int64)
        )
        return VideoTokens(tokens, index)


def check_compress_graph(
    root: Path, manifest: dict | None, method: str, retention: float, vision_outputs: tuple[str, ...] = ()
) -> None:
    """The exported compress graph must be for the requested method and retention, and take the
    method's optional vision outputs as inputs (a VisionZip graph exported before they were wired
    has H, A, g only).

    Raises:
        ArtifactError: it was exported for another method or retention, or lacks the method's
            vision-output inputs (says how to re-export).
    """
    if manifest is None:
        from infomerge.artifacts.manifest import load_manifest

        manifest = load_manifest(root)
    entry = manifest.get("graphs", {}).get("compress", {})
    got_method = entry.get("method", manifest.get("method"))
    got_ret = entry.get("retention", manifest.get("retention"))
    if got_method not in (None, method) or (got_ret is not None and abs(float(got_ret) - retention) > 1e-9):
        raise ArtifactError(
            f"{root / COMPRESS_ONNX} was exported for {got_method} at retention {got_ret}, not {method} at "
            f"{retention}; re-export with --method {method} --retention {retention}, "
            "or use --compress-backend torch"
        )
    have = entry.get("inputs")
    missing = [k for k in vision_outputs if have is not None and k not in have]
    if missing:
        raise ArtifactError(
            f"{root / COMPRESS_ONNX} lacks the inputs {', '.join(missing)} that {method} reads (exported "
            f"before they were wired); re-export with --method {method} --retention {retention} --force, "
            "or use --compress-backend torch"
        )


def vision_graph(root: Path) -> Path:
    """The vision graph the ``ort`` backend runs: ``ort/vision.onnx`` (fused) when present, else
    ``vision.onnx``."""
    fused = root / VISION_ORT_ONNX
    return fused if fused.is_file() else root / VISION_ONNX


def vision(source: BackendSource) -> OrtVision:
    root = source.need_artifacts("ort vision")
    graph = vision_graph(root)
    entry = (source.manifest or {}).get("graphs", {}).get("vision", {})
    fp16 = graph == root / VISION_ONNX and entry.get("precision") == "fp16"
    return OrtVision(graph, root / IMAGE_NEWLINE, source.device, fp16=fp16)


def check_graph_budget(compressor: OrtCompressor, source: BackendSource) -> None:
    """The graph's own output shape must be the method's budget at the requested retention.

    The manifest says which retention a graph was exported for; the graph itself carries its
    budget B as the static first dimension of its ``tokens`` output. A manifest edited to another
    retention, or a graph swapped for another, is caught here.

    Raises:
        ArtifactError: the graph keeps another number of tokens than the budget.
    """
    shape = next((o.shape for o in compressor.session.get_outputs() if o.name == "tokens"), None)
    got = shape[0] if shape else None
    r = float(source.config.retention)
    groups = source.backbone.groups_for(source.frames)  # Qwen2.5-VL: F / 2 temporal groups
    want = source.method.budget(r, groups, source.backbone.tokens_per_frame)
    if not isinstance(got, int) or got != want:
        raise ArtifactError(
            f"{source.artifacts / COMPRESS_ONNX} keeps {got} tokens, but {source.method.name} at retention "
            f"{r:g} over {source.frames} frames keeps {want}: the graph and the manifest disagree; "
            f"re-export with --method {source.method.name} --retention {r:g} --force, "
            "or use --compress-backend torch"
        )


def compress(source: BackendSource) -> OrtCompressor:
    root = source.need_artifacts("ort compress")
    m = source.method
    check_compress_graph(root, source.manifest, m.name, float(source.config.retention), m.vision_outputs)
    compressor = OrtCompressor(root / COMPRESS_ONNX, source.device, m)
    check_graph_budget(compressor, source)
    return compressor


def llm(source: BackendSource, eos_token_ids):
    from infomerge.runtime.llm_ort import OrtLLM

    if source.artifacts is None:  # a missing argument: usage (exit 2)
        raise UsageError(
            f"the ort LLM backend reads an exported LLM: export it with `infomerge-export --backbone "
            f"{source.backbone.name} --llm int4 --output DIR` and pass --artifacts DIR"
        )
    llm_dir = source.artifacts / LLM_DIR
    if not llm_dir.is_dir():
        raise ArtifactError(
            f"the ort LLM backend reads <artifacts>/{LLM_DIR}: export it with "
            f"`infomerge-export --backbone {source.backbone.name} --llm int4 --output DIR` "
            "and pass --artifacts DIR"
        )
    return OrtLLM(llm_dir, eos_token_ids, source.device, threads=source.options.get("threads") or 0)


VISION, COMPRESS, LLM = vision, compress, llm
