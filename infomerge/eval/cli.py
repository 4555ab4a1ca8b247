"""``infomerge-eval``: multiple-choice video QA accuracy for several methods and retentions in one run.

Reads a dataset in the VideoMME layout (:mod:`infomerge.eval.dataset`), loads one pipeline
(``--backbone`` or ``--artifacts``), and answers every question with every (method, retention) run
through :meth:`~infomerge.runtime.pipeline.Pipeline.with_compression` views of it, with lmms-eval's
VideoMME prompt and answer extraction (:mod:`infomerge.eval.mcq`). Results go to
``<out>/results.jsonl`` one sample at a time (rerun the same command to continue an interrupted
run); at the end ``summary.json``, ``summary.md``, ``accuracy_vs_retention.png`` and
``accuracy_vs_ttft.png``.

Exit status: 0 done; 1 an unexpected failure (a bug: the traceback is printed); 2 bad input or
environment (dataset, video, option, settings that differ from the results in ``--out``), with the
problem on stderr before any model is loaded where it can be checked; 130 interrupted (SIGINT or
SIGTERM; finished samples are kept).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path

from infomerge.compress.methods import method_names
from infomerge.errors import InfomergeError

DEFAULT_OUT = "eval-out"


def build_parser() -> argparse.ArgumentParser:
    from infomerge.runtime.backends import COMPRESS_BACKENDS, LLM_BACKENDS, VISION_BACKENDS

    p = argparse.ArgumentParser(
        prog="infomerge-eval",
        description="Multiple-choice video QA accuracy (lmms-eval's VideoMME prompt and answer extraction) "
        "for several compression methods and retentions, with 95 %% Wilson intervals, tokens kept and "
        "latency; resumable.",
    )
    p.add_argument(
        "dataset", metavar="DATASET", help="questions: .json, .jsonl or .parquet (schema: docs/evaluation.md)"
    )
    p.add_argument(
        "--video-root",
        metavar="DIR",
        help="folder of relative video paths / videoID files (default: the dataset's folder)",
    )
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--backbone", metavar="NAME", help="backbone name (default: tiny)")
    src.add_argument("--artifacts", metavar="DIR", help="an infomerge-export directory")
    p.add_argument("--model-path", metavar="DIR", help="local checkpoint directory of the backbone")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=method_names(),
        default=["infomerge"],
        metavar="METHOD",
        help=f"compression methods, any of {', '.join(method_names())} (default: infomerge)",
    )
    p.add_argument(
        "--retentions",
        nargs="+",
        type=float,
        default=[0.15],
        metavar="R",
        help="retention ratios in (0, 1]; 1.0 adds one uncompressed run (default: 0.15)",
    )
    p.add_argument(
        "--vision-backend", choices=tuple(VISION_BACKENDS), help="default: torch, or ort with --artifacts"
    )
    p.add_argument(
        "--compress-backend",
        choices=tuple(b for b in COMPRESS_BACKENDS if b != "none"),
        default="torch",
        help="backend of every compressed run (default torch)",
    )
    p.add_argument(
        "--llm", choices=tuple(LLM_BACKENDS), help="default: torch, or ort with --artifacts that hold llm/"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--frames",
        type=int,
        metavar="F",
        help="frames sampled per video (default: the backbone's; not with --artifacts, whose graphs fix it)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=16,
        metavar="N",
        help="generation limit per answer (default 16, lmms-eval's VideoMME setting)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    p.add_argument("--restart", action="store_true", help="discard earlier results in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_args(args) -> None:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.frames is not None and args.artifacts:
        raise ValueError("--frames cannot change an exported directory's frame count; drop --frames")


def settings_of(args, dataset_digest: str) -> dict:
    """What the results in ``--out`` depend on (compared on resume)."""
    return {
        "dataset_sha256": dataset_digest,
        "video_root": str(Path(args.video_root).resolve()) if args.video_root else None,
        "backbone": None if args.artifacts else (args.backbone or "tiny"),
        "artifacts": str(Path(args.artifacts).resolve()) if args.artifacts else None,
        "model_path": args.model_path,
        "vision_backend": args.vision_backend,
        "compress_backend": args.compress_backend,
        "llm": args.llm,
        "device": args.device,
        "frames": args.frames,
        "max_new_tokens": args.max_new_tokens,
    }


def build_pipelines(args, runs) -> dict:
    """Load one pipeline and one :meth:`with_compression` view of it per run (run key -> pipeline).

    Raises:
        InfomergeError: from the pipeline constructors (unknown backbone, missing checkpoint or
            artifacts, unavailable backend, ...).
    """
    from infomerge.runtime.pipeline import Pipeline

    first = next((s for s in runs if s.compressed), runs[0])
    common = {
        "model_path": args.model_path,
        "device": args.device,
        "method": first.method or "infomerge",
        "retention": first.retention,
    }
    if args.artifacts:
        base = Pipeline.from_artifacts(
            args.artifacts,
            vision_backend=args.vision_backend or "ort",
            compress_backend=args.compress_backend,
            llm=args.llm,
            **common,
        )
    else:
        base = Pipeline.from_backbone(
            args.backbone or "tiny",
            vision_backend=args.vision_backend or "torch",
            compress_backend=args.compress_backend,
            llm=args.llm or "torch",
            frames=args.frames,
            **common,
        )
    return {
        s.key: base.with_compression(
            s.method or "infomerge",
            s.retention if s.compressed else None,
            backend=args.compress_backend if s.compressed else "none",
        )
        for s in runs
    }


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args, console) -> int:
    """The command; returns the exit status. See the module docstring."""
    from infomerge.eval.dataset import file_digest, load_dataset
    from infomerge.eval.harness import plan_runs
    from infomerge.eval.report import rich_table, summarize, write_reports
    from infomerge.eval.store import ResultsFile, read_results

    _check_args(args)
    runs = plan_runs(args.methods, args.retentions)
    questions = load_dataset(args.dataset, args.video_root)  # every row and video checked first
    if args.limit:
        questions = questions[: args.limit]
    settings = settings_of(args, file_digest(args.dataset))
    results = ResultsFile(args.out, settings, restart=args.restart)
    done = results.open()
    if results.dropped_partial:
        console.print(
            f"[yellow]dropped a cut-off last line of {results.path} (a hard kill); that sample reruns"
        )
    todo = sum((s.key, q.qid) not in done for s in runs for q in questions)
    total = len(runs) * len(questions)
    interrupted = False
    try:
        if todo:
            console.print(
                f"{len(questions)} questions x {len(runs)} runs: {todo} samples to answer"
                + (f", {total - todo} already in {results.path}" if todo < total else "")
            )
            pipelines = build_pipelines(args, runs)
            _answer_all(questions, runs, pipelines, results, done, args, console, todo)
        else:
            console.print(f"every sample is already in {results.path}; summarising")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results.close()
    wanted = {(s.key, q.qid) for s in runs for q in questions}
    records = [r for r in read_results(args.out) if (r["run"], r["question_id"]) in wanted]
    summary = summarize(records, [s.key for s in runs])
    if interrupted:
        console.print(
            f"[yellow]interrupted: {len(records)} of {len(wanted)} samples are in {results.path}; "
            "run the same command again to continue"
        )
        return 130
    paths = write_reports(args.out, summary, settings)
    console.print(rich_table(summary))
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _answer_all(questions, runs, pipelines, results, done, args, console, todo) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from infomerge.eval.harness import evaluate

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.no_progress,
    ) as bar:
        task = bar.add_task("answering", total=todo)

        def advance(rec):
            bar.update(task, advance=1, description=f"{rec['run']} q{rec['question_id']}")

        evaluate(
            questions, runs, pipelines, results, done, max_new_tokens=args.max_new_tokens, on_sample=advance
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infomerge-eval``. Returns the exit status (0, 1, 2 or 130)."""
    from rich.console import Console

    args = build_parser().parse_args(argv)
    console = Console(stderr=False, highlight=False)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops like Ctrl-C
    try:
        return run(args, console)
    except KeyboardInterrupt:  # before the evaluation loop (loading)
        print("infomerge-eval: interrupted", file=sys.stderr)
        return 130
    except (InfomergeError, ValueError) as exc:
        print(f"infomerge-eval: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # a bug, not bad input
        traceback.print_exc()
        print(
            "infomerge-eval: unexpected failure (the traceback above); finished samples are kept in "
            f"{args.out}",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """Console-script entry point of ``infomerge-eval``: :func:`main`, then
    :func:`~infomerge.interrupts.exit_process` (an interrupted run ends with status 130, never by
    the signal)."""
    from infomerge.interrupts import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()
