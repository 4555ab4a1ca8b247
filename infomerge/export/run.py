"""``export(options) -> Path``: build a validated artifact directory for one backbone.

Writes ``<output>/manifest.json``, ``vision.onnx`` (+ ``.data`` above 2 GB), ``image_newline.npy``
and, as the options ask, the compression graph, the fused graph, the plugin graph, TensorRT
engines and the LLM.

Guarantees: bad options (unknown backbone or method, retention outside (0, 1], frames < 2, an
existing output without ``force``, a missing model path or video) fail before any file is
written; the artifact is built in a hidden temporary sibling directory and renamed into place at
the end (:func:`infomerge.artifacts.atomic.atomic_directory`), so a failed or interrupted run
leaves nothing behind, and ``force`` replaces the old directory only once the new one is complete.

Concurrency: an exclusive lock (``flock`` on ``.<name>.lock`` beside the output, removed by its
holder when done) makes two
exports to one output safe. Without ``force`` the lock is held for the whole export, so a second
export to the same output fails at once (:class:`~infomerge.errors.OutputBusyError`) and the
existence check and the final rename are one step. With ``force`` the work runs unlocked and the
lock is taken (waiting) only for the replacement: the export that finishes last wins, whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from infomerge.artifacts.manifest import new_manifest, write_manifest
from infomerge.backbones.registry import get_backbone
from infomerge.errors import OutputBusyError
from infomerge.export.compress_step import COMPRESS_STEPS
from infomerge.export.context import ExportContext, Step
from infomerge.export.engine_step import ENGINE_CHECK_STEPS, ENGINE_STEPS, MERGE_PLUGIN_STEPS
from infomerge.export.graphs import OPSET
from infomerge.export.llm_step import LLM_STEPS
from infomerge.export.options import ExportOptions, UsageError
from infomerge.export.vision_step import VISION_STEPS
from infomerge.interrupts import raise_if_signalled
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


def lock_path(output: Path) -> Path:
    """The lock file of an output directory: ``<parent>/.<name>.lock`` (exists while held)."""
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(output: Path, *, wait: bool):
    """Hold the exclusive lock of ``output``.

    Args:
        output: the artifact directory.
        wait: wait for another holder (``force``: the replacement step) instead of failing.

    Raises:
        OutputBusyError: ``wait`` is False and another process holds the lock.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(output)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"{output}: another infomerge-export is writing it now (lock {path} held); wait "
                "for it to finish, or choose another --output"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the previous holder may have removed the file meanwhile: lock the current one
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still held: a waiter that gets this inode retries
        os.close(fd)


def export(options: ExportOptions, console=None) -> Path:
    """Run the export described by ``options``; return the artifact directory.

    Raises:
        InfomergeError: bad options (before any file is written) or a failed step (nothing left).
        OutputBusyError: another export holds the output's lock (without ``force``).
    """
    from rich.console import Console

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
            "pool": bb.pool,
            "image_size": bb.image_size,
            "patch": bb.patch,
            "tokens_per_frame": bb.tokens_per_frame,
            "vision_hidden": bb.vision_hidden,
            "text_hidden": bb.text_hidden,
            **bb.family_spec.manifest_geometry(bb),  # Qwen2.5-VL: frame size, temporal patch, groups
        },
        frames=o.frames,
        precision=o.precision,
        opset=OPSET,
        method=o.method if o.compress else None,
        retention=o.retention,
    )
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not o.force:  # the whole export: the existence check and the rename are one step
            stack.enter_context(output_lock(output, wait=False))
            if output.exists():
                raise UsageError(f"output directory {output} already exists; pass --force to replace it")
        _build(o, bb, steps, output, manifest, console, t_start, stack)
    console.print(
        f"[bold green]Artifacts written to {output}[/bold green] "
        f"({manifest['export']['seconds']:.1f} s, peak RSS {manifest['export']['peak_rss_mb']:.0f} MB)"
    )
    return output


def _build(o, bb, steps, output: Path, manifest: dict, console, t_start: float, stack) -> None:
    """Run the steps into a temporary directory and rename it onto ``output``."""
    from infomerge.artifacts.atomic import atomic_directory

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
            raise_if_signalled()  # a signal whose exception a finalizer swallowed
            t0 = time.perf_counter()
            with console.status(f"[{i}/{len(steps)}] {step.name}..."):
                step.run(ctx)
            timings[step.name] = round(time.perf_counter() - t0, 3)
            peaks[step.name] = _peak_rss_mb()  # process peak so far: where it jumps, that step
            console.print(f"[green]✓[/green] [{i}/{len(steps)}] {step.name} ({timings[step.name]:.1f} s)")
        raise_if_signalled()
        manifest["export"] = {
            "seconds": round(time.perf_counter() - t_start, 3),
            "step_seconds": timings,
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_mb_after_step": peaks,
        }
        write_manifest(work, manifest)
        if o.force:  # only the replacement is serialised: the last to finish wins
            stack.enter_context(output_lock(output, wait=True))


__all__ = ["PROG", "build_steps", "export"]
