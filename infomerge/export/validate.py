"""Validate an exported ONNX graph against its PyTorch source, printed as ``optimum-cli export`` does.

:func:`validate_onnx` runs the graph in ONNX Runtime (CPU by default) on the given inputs (the
export command feeds preprocessed frames of a real video) and compares each output with the
reference (the fp32 PyTorch model): shape, max abs diff, cosine similarity, tolerance. A shape
mismatch or a missing / NaN output is always an error; a tolerance miss is an error unless the
caller raised the tolerance (``--atol``).

Tolerance of an output = ``atol * max|reference|``: relative to the output's peak magnitude, so
one ``atol`` means the same for H whatever the projector's scale, and for A (attention weights of
order 1/729).

ONNX Runtime's CPU provider runs fp16 nodes that have no fp16 kernel in fp32 (it inserts Casts),
so a CPU check of an fp16 graph sees fp16 weights and fp16 storage between ops, not every fp16
rounding a GPU would make.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from infomerge.errors import ValidationError


@dataclass
class OutputCheck:
    """One output's comparison.

    Attributes:
        name: graph output name.
        ref_shape, onnx_shape: shapes of the reference and of the graph's output.
        onnx_dtype: the graph output's dtype (e.g. ``"float16"``).
        max_abs: max |onnx - ref| (NaN if shapes differ or values are not finite).
        cosine: cosine similarity of the flattened outputs (in float64).
        tolerance: the tolerance applied (``atol * max|ref|``; ``atol`` if the reference is all 0).
        ok: shape matches, values finite and ``max_abs <= tolerance``.
    """

    name: str
    ref_shape: tuple
    onnx_shape: tuple
    onnx_dtype: str
    max_abs: float
    cosine: float
    tolerance: float
    ok: bool

    @property
    def shape_ok(self) -> bool:
        return tuple(self.ref_shape) == tuple(self.onnx_shape)

    def as_dict(self) -> dict:
        return {
            "shape": list(self.onnx_shape),
            "dtype": self.onnx_dtype,
            "max_abs_diff": _num(self.max_abs),
            "cosine": _num(self.cosine),
            "tolerance": _num(self.tolerance),
            "ok": self.ok,
        }


@dataclass
class ValidationReport:
    """Every output's :class:`OutputCheck`, plus where and how long ONNX Runtime ran."""

    graph: str
    checks: list[OutputCheck]
    provider: str
    onnx_seconds: float
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and all(c.ok for c in self.checks)

    def as_dict(self) -> dict:
        """JSON-ready summary (what the export command stores in the manifest)."""
        return {
            "ok": self.ok,
            "provider": self.provider,
            "onnx_seconds": round(self.onnx_seconds, 3),
            "outputs": {c.name: c.as_dict() for c in self.checks},
        }

    def raise_for_failures(self) -> None:
        """Raise :class:`ValidationError` naming every failed output (shape first, then tolerance)."""
        if self.ok:
            return
        problems = [f"output {m!r} missing from the graph" for m in self.missing]
        for c in self.checks:
            if not c.shape_ok:
                problems.append(f"{c.name}: shape {tuple(c.onnx_shape)} != reference {tuple(c.ref_shape)}")
            elif not c.ok:
                problems.append(
                    f"{c.name}: max abs diff {c.max_abs:.3g} > tolerance {c.tolerance:.3g} "
                    f"(cosine {c.cosine:.6f})"
                )
        raise ValidationError(
            f"{self.graph} does not match the PyTorch model: "
            + "; ".join(problems)
            + ". A tolerance miss can be accepted with a larger --atol; a shape mismatch is a bug."
        )


def _num(x: float):
    return None if x is None or not np.isfinite(x) else float(x)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def compare(name: str, ref, got, atol: float) -> OutputCheck:
    """Compare one output (``ref`` and ``got`` array-likes) with tolerance ``atol * max|ref|``."""
    r = _to_numpy(ref)
    g = _to_numpy(got)
    peak = float(np.max(np.abs(r))) if r.size and np.isfinite(r).all() else 0.0
    tol = float(atol) * (peak if peak > 0 else 1.0)
    if r.shape != g.shape:
        return OutputCheck(name, r.shape, g.shape, str(g.dtype), float("nan"), float("nan"), tol, False)
    r64, g64 = r.astype(np.float64).ravel(), g.astype(np.float64).ravel()
    finite = bool(np.isfinite(g64).all() and np.isfinite(r64).all())
    max_abs = float(np.max(np.abs(g64 - r64))) if (finite and r64.size) else float("nan")
    denom = np.linalg.norm(r64) * np.linalg.norm(g64)
    cos = (
        float(np.dot(r64, g64) / denom)
        if finite and denom > 0
        else (1.0 if finite and max_abs == 0 else float("nan"))
    )
    return OutputCheck(name, r.shape, g.shape, str(g.dtype), max_abs, cos, tol, finite and max_abs <= tol)


def run_onnx(
    onnx_path: str | os.PathLike,
    inputs: Mapping[str, object],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    optimization: str = "basic",
) -> tuple[dict[str, np.ndarray], float, str]:
    """Run a graph once in ONNX Runtime: ({output: array}, seconds of the run, provider used).

    ``optimization``: ``"basic"`` (constant folding only; default), ``"all"`` (ONNX Runtime's
    fusions too) or ``"off"`` (no graph rewrite at all: the CPU optimizer may drop fp16 roundings
    between joined graphs, see ``vision_compress.onnx``). The default keeps memory low: with
    ``"all"`` the CPU provider constant-folds the
    Casts it inserts around fp16 nodes into fp32 copies of every weight at session creation
    (measured on the ov-0.5b fp16 vision graph, 2 frames: 2.9 GB peak against 2.4 GB), and the
    arena is off so one run's activations are freed as it goes.
    """
    from infomerge.engines.ort import ort_session

    device = "cuda" if "CUDAExecutionProvider" in providers else "cpu"
    sess = ort_session(onnx_path, device, optimization=optimization, threads=threads, arena=False)
    feed = {k: np.ascontiguousarray(_to_numpy(v)) for k, v in inputs.items()}
    t0 = time.perf_counter()
    outs = sess.run(None, feed)
    seconds = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]
    provider = sess.get_providers()[0]
    del sess
    return dict(zip(names, outs)), seconds, provider


def validate_onnx(
    onnx_path: str | os.PathLike,
    reference: Callable[..., object] | Mapping[str, object],
    inputs: Mapping[str, object],
    atol: float | Mapping[str, float],
    *,
    output_names: Sequence[str] | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    console=None,
    raise_on_failure: bool = True,
    display_name: str | None = None,
    optimization: str = "basic",
) -> ValidationReport:
    """Run ``onnx_path`` in ONNX Runtime and compare every output with the reference.

    Args:
        onnx_path: the graph.
        reference: the reference outputs, either a mapping {output name: tensor/array} or a
            callable taking the inputs as keyword arguments (torch tensors when torch is
            installed) and returning such a mapping or a tuple in graph-output order.
        inputs: {graph input name: tensor/array}.
        atol: relative tolerance, one float for all outputs or {output name: float} (tolerance =
            atol * max|reference|).
        output_names: the outputs to check (default: all graph outputs).
        providers: ONNX Runtime execution providers.
        console: a ``rich.console.Console`` to print to (default: a new one on stdout).
        raise_on_failure: raise :class:`ValidationError` when a check fails (after printing).
        display_name: how to name the graph in the printout and errors (default: ``onnx_path``).
        optimization: ONNX Runtime graph optimization level, as :func:`run_onnx`.

    Returns:
        The :class:`ValidationReport`.

    Raises:
        ValidationError: a shape mismatch, a missing or non-finite output, or a tolerance miss.
    """
    from rich.console import Console

    console = console or Console()
    shown = display_name or str(onnx_path)

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    note = " (ONNX Runtime graph optimizations off)" if optimization == "off" else ""
    say(f"Validating ONNX model {shown}{note}...")
    got, seconds, provider = run_onnx(onnx_path, inputs, providers, optimization=optimization)
    names = list(output_names) if output_names is not None else list(got)
    if callable(reference):
        import torch

        with torch.no_grad():
            ref = reference(
                **{k: torch.from_numpy(np.ascontiguousarray(_to_numpy(v))) for k, v in inputs.items()}
            )
        if not isinstance(ref, Mapping):
            ref = dict(zip(list(got), ref))
    else:
        ref = reference
    missing = [n for n in names if n not in got]
    if missing:
        say(f"\t-[✗] ONNX model lacks outputs {missing}")
    else:
        say(f"\t-[✓] ONNX model output names match reference model ({', '.join(names)})")
    checks = []
    for name in names:
        if name in missing:
            continue
        tol = atol[name] if isinstance(atol, Mapping) else atol
        c = compare(name, ref[name], got[name], tol)
        checks.append(c)
        say(f'\t- Validating ONNX Model output "{name}":')
        if c.shape_ok:
            say(f"\t\t-[✓] {tuple(c.onnx_shape)} matches {tuple(c.ref_shape)}")
            verdict = "[✓] all values close" if c.ok else "[✗] values not close enough"
            say(
                f"\t\t-{verdict} (tolerance: {c.tolerance:.3g}) max abs diff {c.max_abs:.3g}, "
                f"cosine {c.cosine:.6f}, dtype {c.onnx_dtype}"
            )
        else:
            say(f"\t\t-[✗] shape {tuple(c.onnx_shape)} != reference {tuple(c.ref_shape)}")
    report = ValidationReport(shown, checks, provider, seconds, missing)
    if report.ok:
        say(f"The ONNX export succeeded and validated on {provider} ({seconds:.2f} s).")
    if raise_on_failure:
        report.raise_for_failures()
    return report


__all__ = ["OutputCheck", "ValidationReport", "compare", "run_onnx", "validate_onnx"]
