"""``export(options) -> Path``: build a validated artifact directory for one backbone.

Writes ``<output>/manifest.json``, ``vision.onnx`` (+ ``.data`` above 2 GB), ``image_newline.npy``
and, as the options ask, the compression graph, the fused graph, the plugin graph, TensorRT
engines and the LLM.

Guarantees: bad options (unknown backbone or method, retention outside (0, 1], frames < 2, an
existing output without ``force``, a missing model path or video) fail before any file is
written; the artifact is built in a hidden temporary sibling directory and renamed into place at
the end (:func:`infomerge.artifacts.atomic.atomic_directory`), so a failed or interrupted run
leaves nothing behind, and ``force`` replaces the old directory only once the new one is complete.
"""

from __future__ import annotations

import time
from pathlib import Path

from infomerge.artifacts.manifest import new_manifest, write_manifest
from infomerge.backbones.registry import get_backbone
from infomerge.export.compress_step import COMPRESS_STEPS
from infomerge.export.context import ExportContext, Step
from infomerge.export.engine_step import ENGINE_CHECK_STEPS, ENGINE_STEPS, MERGE_PLUGIN_STEPS
from infomerge.export.graphs import OPSET
from infomerge.export.llm_step import LLM_STEPS
from infomerge.export.options import ExportOptions
from infomerge.export.vision_step import VISION_STEPS
from infomerge.timing import peak_rss_bytes

PROG = "infomerge-export"


def build_steps(options: ExportOptions) -> list[Step]:
    """The steps of this export, in order."""
    steps: list[Step] = [
        *ENGINE_CHECK_STEPS,
        *VISION_STEPS,
        *COMPRESS_STEPS,
        *MERGE_PLUGIN_STEPS,
        *LLM_STEPS,
        *ENGINE_STEPS,
    ]
    return [s for s in steps if s.when(options)]


def _peak_rss_mb() -> float:
    return round(peak_rss_bytes() / 2**20, 1)


def export(options: ExportOptions, console=None) -> Path:
    """Run the export described by ``options``; return the artifact directory.

    Raises:
        InfomergeError: bad options (before any file is written) or a failed step (nothing left).
    """
    from rich.console import Console

    from infomerge.artifacts.atomic import atomic_directory

    console = console or Console()
    o = options.resolved()  # every cheap check, before any work
    bb = get_backbone(o.backbone)
    steps = build_steps(o)
    output = Path(o.output).resolve()
    manifest = new_manifest(
        command=o.command,
        backbone={
            "name": bb.name,
            "hf_id": bb.hf_id,
            "siglip_head_id": bb.siglip_head_id,
            "frames": bb.frames,
            "newline": bb.newline,
            "image_size": bb.image_size,
            "patch": bb.patch,
            "tokens_per_frame": bb.tokens_per_frame,
            "vision_hidden": bb.vision_hidden,
            "text_hidden": bb.text_hidden,
        },
        frames=o.frames,
        precision=o.precision,
        opset=OPSET,
        method=o.method if o.compress else None,
        retention=o.retention,
    )
    t_start = time.perf_counter()
    with atomic_directory(output, replace=o.force) as work:
        ctx = ExportContext(
            options=o,
            backbone=bb,
            output=output,
            work=work,
            frames=o.frames,
            precision=o.precision,
            manifest=manifest,
            console=console,
            video=Path(o.video),
        )
        console.print(f"[bold]{PROG}[/bold] {bb.name} -> {output} ({o.frames} frames, {o.precision})")
        timings, peaks = {}, {}
        for i, step in enumerate(steps, 1):
            t0 = time.perf_counter()
            with console.status(f"[{i}/{len(steps)}] {step.name}..."):
                step.run(ctx)
            timings[step.name] = round(time.perf_counter() - t0, 3)
            peaks[step.name] = _peak_rss_mb()  # process peak so far: where it jumps, that step
            console.print(f"[green]✓[/green] [{i}/{len(steps)}] {step.name} ({timings[step.name]:.1f} s)")
        manifest["export"] = {
            "seconds": round(time.perf_counter() - t_start, 3),
            "step_seconds": timings,
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_mb_after_step": peaks,
        }
        write_manifest(work, manifest)
    console.print(
        f"[bold green]Artifacts written to {output}[/bold green] "
        f"({manifest['export']['seconds']:.1f} s, peak RSS {manifest['export']['peak_rss_mb']:.0f} MB)"
    )
    return output


__all__ = ["PROG", "build_steps", "export"]
