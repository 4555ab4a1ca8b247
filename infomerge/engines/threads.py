"""Intra-op threads of torch and ONNX Runtime: one policy for ``infomerge-run``, ``-bench``, ``-export``.

The policy (measured in ``docs/runtime.md``, "Threads"):

- **count**: one thread per core this process may use, :func:`default_threads` (the CPUs of its
  affinity mask, at most the machine's physical cores and the cgroup's CPU quota), never more;
- **waiting**: ``OMP_WAIT_POLICY=PASSIVE`` (set by ``infomerge/__init__.py`` unless the environment
  sets it): OpenMP threads sleep between parallel regions instead of spinning on cores other
  processes need (on 2 busy cores a 0.37 s compression took 6.5 s with 2 spinning threads, 0.44 s
  with 2 passive ones). OpenMP reads it once, when torch loads it, so it cannot be changed later.
  ONNX Runtime's own pool does not spin either (:data:`ORT_SPINNING`).

:func:`apply_threads` sets torch's intra-op threads and the count every later
:func:`infomerge.engines.ort.ort_session` gives ONNX Runtime (``intra_op_num_threads``).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

_threads: int | None = None  # set by apply_threads; None: default_threads()

#: whether ONNX Runtime's idle intra-op threads spin (its own pool, not OpenMP): off, measured
#: 10-17% faster on a shared 2-core machine (docs/runtime.md, "Threads")
ORT_SPINNING = False


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup v2 CPU quota in whole CPUs (``cpu.max`` "quota period", rounded up), else None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def default_threads() -> int:
    """Threads that do not oversubscribe this process's cores (>= 1).

    The CPUs of the affinity mask (``os.sched_getaffinity``; ``os.cpu_count`` where it does not
    exist), at most the physical cores (``psutil.cpu_count(logical=False)``: two hyper-threads of
    one core share its FMA units) and the cgroup v2 CPU quota.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    import psutil

    physical = psutil.cpu_count(logical=False)
    quota = _cgroup_cpus()
    return max(1, min(n, physical or n, quota or n))


def threads_arg(text: str) -> int:
    """argparse ``type=`` of ``--threads``: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"must be >= 1, got {n} (default: {default_threads()}, one per core)"
        )
    return n


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` on a command (run, bench, export): the same flag and help everywhere."""
    parser.add_argument(
        "--threads",
        type=threads_arg,
        default=None,
        metavar="N",
        help=f"intra-op threads of torch and ONNX Runtime (default {default_threads()}: one per core this "
        "process may use; more oversubscribes the cores)",
    )


def apply_threads(threads: int | None = None) -> int:
    """Use ``threads`` intra-op threads in torch and in every ONNX Runtime session opened after.

    Args:
        threads: >= 1, or None for :func:`default_threads`.

    Returns:
        the count applied.

    Raises:
        ValueError: ``threads`` < 1.
    """
    global _threads
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)
    _threads = n
    return n


def intra_op_threads() -> int:
    """The count :func:`apply_threads` set, else :func:`default_threads` (ONNX Runtime sessions)."""
    return _threads if _threads is not None else default_threads()


__all__ = [
    "ORT_SPINNING",
    "add_threads_argument",
    "apply_threads",
    "default_threads",
    "intra_op_threads",
    "threads_arg",
]
