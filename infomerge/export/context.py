"""The shared state of one ``infomerge-export`` run, and the :class:`Step` type.

``infomerge-export`` is a sequence of steps (:func:`infomerge.export.run.build_steps`); each is a
function ``run(ctx: ExportContext) -> None`` that writes its files under ``ctx.work`` (the
temporary directory that becomes the output at the end) and describes them in ``ctx.manifest``
(its own section: ``graphs``, ``arrays``, ``engines``, ``llm``). ``manifest.json`` with the sha256
of every file is written after the last step, so a step does no hashing.

To add a step: define ``MY_STEPS = [Step("name", fn)]`` in your module and append it in
``build_steps``; ``when(options)`` decides from the :class:`~infomerge.export.options.ExportOptions`
whether it runs. Steps read typed fields (``ctx.options.retention``), never a parsed command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infomerge.backbones.registry import Backbone
from infomerge.export.options import ExportOptions


@dataclass(frozen=True)
class Step:
    """One export step.

    Attributes:
        name: shown in the progress lines ("export vision.onnx").
        run: ``run(ctx)``; raises an :class:`~infomerge.errors.InfomergeError` on bad input.
        when: ``when(options)`` -> whether the step runs in this export (default: always).
    """

    name: str
    run: Callable[[ExportContext], None]
    when: Callable[[ExportOptions], bool] = field(default=lambda options: True)


@dataclass
class ExportContext:
    """What the steps of one export share.

    Attributes:
        options: the :class:`ExportOptions` of this run (defaults resolved).
        backbone: the :class:`Backbone` being exported.
        output: the final artifact directory (does not exist until the end of the run).
        work: the temporary directory the steps write into; renamed to ``output`` at the end.
        frames: F, frames per video of every graph.
        precision: ``"fp16"`` or ``"fp32"`` (``--fp16``).
        manifest: the manifest being built (see :mod:`infomerge.artifacts.manifest`).
        console: the ``rich`` console for progress and validation printouts.
        video: the real video used for validation.
        pixel_values: (F, 3, 384, 384) float32 preprocessed frames of ``video`` (validation input).
        encoder: the fp32 (or, after the export step, fp16) :class:`VisionEncoder`; None once freed.
        reference: fp32 PyTorch outputs on ``pixel_values``: ``H`` (F, 196, D), ``A`` (F, 196),
            ``g`` (F, G), all float32 torch tensors, then the export's optional vision outputs
            (``options.vision_outputs``: ``attention`` (F, 196), ``keys`` (F, 196, head_dim)).
            Use them to validate graphs that consume them.
        image_newline: (D,) float32 numpy array.
        compressor: the eager fixed-budget compressor that ``compress.onnx`` was traced from.
        merge_impl: the merge callable the compressor uses (None: the method's default).
    """

    options: ExportOptions
    backbone: Backbone
    output: Path
    work: Path
    frames: int
    precision: str
    manifest: dict
    console: Any
    video: Path | None = None
    pixel_values: Any = None
    encoder: Any = None
    reference: dict = field(default_factory=dict)
    image_newline: Any = None
    compressor: Any = None
    merge_impl: Callable | None = None

    def path(self, relative: str) -> Path:
        """A path inside the artifact being built (``ctx.work / relative``), parent created."""
        p = self.work / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def record_validation(self, graph: str, report, atol, reference: str, **extra) -> None:
        """Store a :class:`~infomerge.export.validate.ValidationReport` in the manifest under
        ``graphs[graph]["validation"]`` (with the video, tolerances and what the reference was),
        then raise its :class:`~infomerge.errors.ValidationError` if a check failed.
        """
        self.manifest["graphs"][graph]["validation"] = {
            **report.as_dict(),
            "video": str(self.video),
            "atol": atol,
            "reference": reference,
            **extra,
        }
        report.raise_for_failures()

    def atol(self, default: float) -> float:
        """A validation tolerance base: ``--atol`` when given, else ``default``."""
        given = self.options.atol
        return float(given) if given is not None else float(default)


__all__ = ["ExportContext", "Step"]
