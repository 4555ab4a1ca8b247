"""The one ONNX Runtime session loader of the toolkit.

Runtime backends (vision, compression, LLM), export validation, the Polygraphy comparison and the
benchmark all open their sessions here, so execution providers, graph-optimization levels,
threads and error messages are the same everywhere.

Optimization levels: ``"all"`` (ONNX Runtime's fusions and layout rewrites; what the runtime uses
for fp32 graphs and on CUDA), ``"extended"`` (the fusions without the layout level; the runtime's
fp16 graphs on the CPU provider), ``"basic"`` (constant folding only; export validation, where it
keeps memory low) and ``"off"`` (no rewrite at all: the CPU optimizer may drop fp16 roundings
between joined graphs, see ``vision_compress.onnx``). The CPU provider has no fp16 kernels for most
nodes and inserts Casts around them; with ``"all"`` it folds the Casts of the weights into fp32
copies and keeps the fp16 originals too (ov-0.5b fp16 vision graph: 2.4 GiB resident against 0.9 GiB
with ``"extended"`` or ``"basic"``), while below ``"all"`` each weight is cast when its node runs.

Execution order: ``"default"`` (ONNX Runtime's topological order) or ``"priority"``
(``ExecutionOrder.PRIORITY_BASED``). With the weight Casts left in the graph, the default order runs
them all first and holds every fp32 copy at once (ov-0.5b vision run: 5.4 GiB peak); the priority
order runs each just before its node (4.1 GiB; docs/jetson.md, "Memory for 8 GB boards").
"""

from __future__ import annotations

import os
from pathlib import Path

from infomerge.engines.threads import ORT_SPINNING, intra_op_threads
from infomerge.errors import ArtifactError, BackendUnavailableError

OPTIMIZATION_LEVELS = ("all", "extended", "basic", "off")
EXECUTION_ORDERS = ("default", "priority")
#: ``RunOptions`` entry: after the run, return the CPU arena's unused chunks to the system
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed: `pip install onnxruntime` (or 'infomerge[gpu]' for CUDA)"
        ) from None
    return onnxruntime


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for ``device`` ("cpu" or "cuda[:i]").

    Raises:
        BackendUnavailableError: CUDA asked for but the installed onnxruntime has no CUDA EP.
    """
    ort = _onnxruntime()
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                "the installed onnxruntime has no CUDAExecutionProvider; install the GPU build: "
                "`pip uninstall -y onnxruntime && pip install 'infomerge[gpu]'`"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(
    path: str | os.PathLike,
    device: str = "cpu",
    *,
    optimization: str = "all",
    threads: int | None = None,
    arena: bool = True,
    spinning: bool | None = None,
    order: str = "default",
):
    """An ``onnxruntime.InferenceSession`` of the graph at ``path``.

    Args:
        path: the ``.onnx`` file (its ``.onnx.data`` beside it, when it has one).
        device: "cpu" or "cuda[:i]" (CUDA execution provider, CPU fallback).
        optimization: one of :data:`OPTIMIZATION_LEVELS` (see the module docstring).
        threads: intra-op threads (None or 0: the toolkit's policy,
            :func:`infomerge.engines.threads.intra_op_threads`: one per core, or ``--threads``).
        arena: the CPU memory arena (off: one run's activations are freed as it goes).
        spinning: whether idle intra-op threads spin (``session.intra_op.allow_spinning``);
            None: the toolkit's policy, :data:`infomerge.engines.threads.ORT_SPINNING`.
        order: one of :data:`EXECUTION_ORDERS` (see the module docstring).

    Raises:
        ArtifactError: the graph is missing or ONNX Runtime cannot load it.
        BackendUnavailableError: onnxruntime, or its CUDA provider, is not installed.
        ValueError: an unknown optimization level or execution order.
    """
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {OPTIMIZATION_LEVELS}, got {optimization!r}")
    if order not in EXECUTION_ORDERS:
        raise ValueError(f"order must be one of {EXECUTION_ORDERS}, got {order!r}")
    ort = _onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; export it with `infomerge-export` (see docs/export.md)")
    providers = providers_for(device)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = bool(arena)
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if order == "priority":
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.intra_op_num_threads = int(threads) if threads else intra_op_threads()
    spin = ORT_SPINNING if spinning is None else bool(spinning)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
        if "onnxruntime" not in type(exc).__module__:
            raise
        raise ArtifactError(
            f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            "re-export it"
        ) from None


def run_options(shrink_arena: bool = False):
    """``onnxruntime.RunOptions`` for ``session.run``.

    Args:
        shrink_arena: at the end of the run, release the CPU arena's chunks that no tensor holds any
            more (:data:`ARENA_SHRINKAGE` = ``"cpu:0"``): the run reuses its activations' memory
            through the arena, and nothing of it is kept between runs.

    Raises:
        BackendUnavailableError: onnxruntime is not installed.
    """
    ort = _onnxruntime()
    options = ort.RunOptions()
    if shrink_arena:
        options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
    return options


__all__ = [
    "ARENA_SHRINKAGE",
    "EXECUTION_ORDERS",
    "OPTIMIZATION_LEVELS",
    "ort_session",
    "providers_for",
    "run_options",
]
