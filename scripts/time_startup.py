"""Start-up of the default demo (``infomerge-run`` with no arguments) for one or more source trees.

Not a test: prints the figures of docs/runtime.md, "Load and start-up"::

    PYTHONPATH=. python scripts/time_startup.py --rounds 3 /tmp/base .
    PYTHONPATH=. python scripts/time_startup.py --rounds 3 --run-args "--artifacts DIR" .  # ORT LLM

Start-up is what a process does before it can take the request: import the command, check the
arguments and the prompt (tokenizer), apply the threading policy, load the pipeline (tiny: vision
encoder, SigLIP head, LLM, tokenizer). Each round runs it once per tree (interleaved), in a fresh
process with that tree on ``PYTHONPATH``, and records wall time and CPU time (user + system: on a
machine shared with other jobs the wall time mostly measures the others, the CPU time much less).
Each round also times the floor no tree can go below with the torch LLM: a process that only
imports torch and transformers' tokenizer and Qwen2 modules; and, for reference, a bare
``import torch`` and ``infomerge-run --help`` (from the first tree given).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLOOR = "import torch; from transformers import AutoTokenizer, Qwen2ForCausalLM"
#: further reference processes timed each round: (label, python arguments)
REFERENCES = (
    ("`python -c 'import torch'`", ["-c", "import torch"]),
    (f"`python -c '{FLOOR}'`", ["-c", FLOOR]),
    ("`python -m infomerge.runtime.cli --help` (this tree)", ["-m", "infomerge.runtime.cli", "--help"]),
)


def _child(run_args: list[str]) -> dict:
    import resource

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    import infomerge.runtime.cli as cli

    c1 = cpu()
    args = cli.build_parser().parse_args(run_args)
    cli.check_args(args)
    if hasattr(cli, "apply_threads"):
        cli.apply_threads(args.threads)
    cli._build_pipeline(args)
    c2, t2 = cpu(), time.perf_counter()
    return {"wall_s": t2 - t0, "cpu_s": c2 - c0, "import_cpu_s": c1 - c0, "load_cpu_s": c2 - c1}


def _run(code: list[str], tree: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of a child process."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve())
    before = os.times()
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, *code], env=env, cwd=tree, check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs="*", type=Path, help="source trees (each holds infomerge/)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--run-args",
        default="",
        help="infomerge-run arguments of the timed start-up, one string (default: none, the demo)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(shlex.split(args.run_args))))
        return
    rows: dict[Path, list[dict]] = {t: [] for t in args.trees}
    loads, floor = [], []
    for _ in range(args.rounds):
        for t in args.trees:
            wall, cpu, out = _run([str(Path(__file__).resolve()), "--child", "--run-args", args.run_args], t)
            row = json.loads(out.strip().splitlines()[-1])
            row.update(process_wall_s=wall, process_cpu_s=cpu)
            rows[t].append(row)
            loads.append(os.getloadavg()[0])
        floor.append([_run(code, args.trees[0] if "--help" in code else None)[:2] for _, code in REFERENCES])
    print(f"1-min load average {min(loads):.1f}-{max(loads):.1f}; medians of {args.rounds} rounds")
    print("| tree | process wall (s) | process CPU (s) | CLI imports, CPU (s) | checks + load, CPU (s) |")
    print("|---|---|---|---|---|")
    for t, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        cells = " | ".join(
            f"{med[k]:.2f}" for k in ("process_wall_s", "process_cpu_s", "import_cpu_s", "load_cpu_s")
        )
        print(f"| {t} | {cells} |")
    for i, (label, _) in enumerate(REFERENCES):
        fw, fc = (statistics.median(x) for x in zip(*(r[i] for r in floor)))
        print(f"| {label} | {fw:.2f} | {fc:.2f} | | |")


if __name__ == "__main__":
    main()
