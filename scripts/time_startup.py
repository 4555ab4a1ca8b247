"""Start-up of the default demo (``infomerge-run`` with no arguments) for one or more source trees.

Not a test: prints the figures of docs/runtime.md, "Load and start-up"::

    PYTHONPATH=. python scripts/time_startup.py --rounds 3 /work/main .

Each round runs ``python -m infomerge.runtime.cli --json OUT`` once per tree (interleaved), with
that tree on ``PYTHONPATH``, and reads from the JSON the request's own time (``total_ms``) and the
``load`` stage. Start-up is the wall time of the process minus the request: interpreter start,
imports, argument and prompt checks, model loading, and the exit. Each round also times the floor
no tree can go below with the torch LLM: a process that only imports torch and transformers'
tokenizer and Qwen2 modules.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _once(tree: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "infomerge.runtime.cli", "--json", str(out)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - t0
    t = json.loads(out.read_text())["timings"]
    return {
        "wall_s": wall,
        "startup_s": wall - t["total_ms"] / 1000.0,
        "load_s": t["stages_ms"]["load"] / 1000.0,
        "ttft_s": t["ttft_ms"] / 1000.0,
    }


FLOOR = "import torch; from transformers import AutoTokenizer, Qwen2ForCausalLM"


def _floor() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs="+", type=Path, help="source trees (each holds infomerge/)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rows: dict[Path, list[dict]] = {t: [] for t in args.trees}
    loads, floor = [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            for t in args.trees:
                rows[t].append(_once(t, Path(d) / f"{r}.json"))
                loads.append(os.getloadavg()[0])
            floor.append(_floor())
    print(f"1-min load average {min(loads):.1f}-{max(loads):.1f}; medians of {args.rounds} runs")
    print("| tree | wall (s) | start-up (s) | load stage (s) | TTFT (s) |")
    print("|---|---|---|---|---|")
    for t, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        cells = " | ".join(f"{med[k]:.2f}" for k in ("wall_s", "startup_s", "load_s", "ttft_s"))
        print(f"| {t} | {cells} |")
    print(f"| `python -c '{FLOOR}'` | {statistics.median(floor):.2f} | | | |")


if __name__ == "__main__":
    main()
