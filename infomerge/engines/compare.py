"""Backend comparison: the same inputs through ONNX Runtime and TensorRT, per-output agreement.

    python -m infomerge.engines.compare artifacts/tiny/compress.onnx
    python -m infomerge.engines.compare artifacts/tiny/vision.onnx \
        --engine-file artifacts/tiny/engines/vision.sm86.engine
    python -m infomerge.engines.compare artifacts/tiny/compress.onnx --backends ort,ort-noopt \
        --inputs feed.npz

Runners (Polygraphy ``Comparator.run`` / ``Comparator.compare_accuracy``):

- ``ort``: ONNX Runtime, CPU provider, default graph optimisations;
- ``ort-noopt``: ONNX Runtime with every graph optimisation off (a second opinion without a GPU);
- ``trt``: the TensorRT engine built from the graph (``--engine-file``, or the one in
  ``engines/`` beside the graph for this GPU), loaded by
  :func:`infomerge.engines.runner.load_engine_runner` after its metadata is checked. Where it
  cannot run (no TensorRT, no GPU, stale engine) it is reported as unavailable with the reason and
  the comparison goes on with the others.

The first available runner is the reference; every other one is compared with it. Exit status:
0 when every comparison passed (or there was nothing to compare), 1 when one failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infomerge.engines.ort import ort_session
from infomerge.errors import ArtifactError, BackendUnavailableError, InfomergeError

BACKENDS = ("ort", "ort-noopt", "trt")
RUNNER_NAMES = {"ort": "onnxruntime", "ort-noopt": "onnxruntime-noopt", "trt": "tensorrt"}


def _polygraphy():
    try:
        from polygraphy.backend.base import BaseRunner
        from polygraphy.backend.onnxrt import OnnxrtRunner
        from polygraphy.comparator import Comparator, DataLoader, SimpleCompareFunc
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend comparison needs polygraphy ({exc}): pip install 'infomerge[compare]'"
        ) from None
    return BaseRunner, OnnxrtRunner, Comparator, DataLoader, SimpleCompareFunc


def _ort_session(onnx_path: Path, optimize: bool):
    def load():
        return ort_session(onnx_path, "cpu", optimization="all" if optimize else "off")

    return load


def engine_runner_class():
    """A Polygraphy runner over :class:`infomerge.engines.runner.EngineRunner` (any TensorRT flavour)."""
    BaseRunner = _polygraphy()[0]

    class InfomergeTrtRunner(BaseRunner):
        def __init__(self, engine_runner, name="tensorrt"):
            super().__init__(name=name, prefix="infomerge-trt")
            self._runner = engine_runner

        def activate_impl(self):
            pass

        def get_input_metadata_impl(self):
            from polygraphy.common import TensorMetadata

            from infomerge.engines.runner import torch_dtype

            meta = TensorMetadata()
            for name, spec in self._runner.metadata.inputs.items():
                meta.add(
                    name, torch_dtype(spec["dtype"]), tuple(spec["shape"])
                )  # Polygraphy takes torch dtypes
            return meta

        def infer_impl(self, feed_dict):
            import time

            t0 = time.perf_counter()
            out = self._runner(feed_dict)
            self.inference_time = time.perf_counter() - t0
            return OrderedDict((k, v.detach().cpu().numpy()) for k, v in out.items())

        def deactivate_impl(self):
            pass

    return InfomergeTrtRunner


@dataclass
class OutputAgreement:
    """Agreement of one output between the reference runner and another runner."""

    reference: str
    runner: str
    output: str
    shape: tuple
    max_abs: float
    max_rel: float
    mean_abs: float
    passed: bool


@dataclass
class ComparisonReport:
    """What ran, what could not (and why), and per-output agreement."""

    onnx: str
    runners: list[str]
    unavailable: dict[str, str] = field(default_factory=dict)
    outputs: list[OutputAgreement] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def format(self) -> str:
        lines = [f"backend comparison: {self.onnx}  (atol={self.atol:g}, rtol={self.rtol:g})"]
        for name in self.runners:
            lines.append(f"  ran          {name}")
        for name, why in self.unavailable.items():
            lines.append(f"  unavailable  {name}: {why}")
        if not self.outputs:
            lines.append("  nothing to compare: fewer than two runners ran")
            return "\n".join(lines)
        lines.append(
            f"  {'reference':<18} {'runner':<18} {'output':<16} {'shape':<16} "
            f"{'max_abs':>10} {'max_rel':>10} {'mean_abs':>10}  result"
        )
        for o in self.outputs:
            lines.append(
                f"  {o.reference:<18} {o.runner:<18} {o.output:<16} {str(tuple(o.shape)):<16} "
                f"{o.max_abs:>10.3g} {o.max_rel:>10.3g} {o.mean_abs:>10.3g}  {'PASS' if o.passed else 'FAIL'}"
            )
        lines.append(f"  overall: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def make_runners(onnx_path: str | os.PathLike, backends=("ort", "trt"), engine_path=None):
    """Polygraphy runners for ``backends``; returns (runners, {runner name: why unavailable}).

    Raises:
        ValueError: an unknown backend name.
        BackendUnavailableError: polygraphy missing.
    """
    _, OnnxrtRunner, *_ = _polygraphy()
    onnx_path = Path(onnx_path)
    runners, unavailable = [], {}
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
        name = RUNNER_NAMES[b]
        if b in ("ort", "ort-noopt"):
            runners.append(OnnxrtRunner(_ort_session(onnx_path, optimize=(b == "ort")), name=name))
            continue
        try:
            from infomerge.engines.runner import load_engine_runner

            path = Path(engine_path) if engine_path else _default_engine(onnx_path)
            runners.append(
                engine_runner_class()(load_engine_runner(path, expected_onnx=onnx_path), name=name)
            )
        except InfomergeError as exc:  # no TensorRT, no GPU, no engine, stale engine
            unavailable[name] = str(exc)
    return runners, unavailable


def _default_engine(onnx_path: Path) -> Path:
    """The engine beside a graph for this GPU; without a GPU, the first one there (so its metadata is
    still checked and the reason it cannot run is the missing GPU)."""
    from infomerge.artifacts.layout import ENGINES_DIR, find_engine
    from infomerge.engines.builder import local_compute_capability

    try:
        return find_engine(onnx_path.parent, onnx_path.stem, local_compute_capability())
    except ArtifactError:
        found = sorted((onnx_path.parent / ENGINES_DIR).glob(f"{onnx_path.stem}.sm*.engine"))
        if found and local_compute_capability() is None:
            return found[0]
        raise


def _load_inputs(inputs):
    if inputs is None:
        return None
    if isinstance(inputs, str | os.PathLike):
        with np.load(inputs) as data:
            return [{k: data[k] for k in data.files}]
    if isinstance(inputs, dict):
        return [inputs]
    return list(inputs)


def compare_backends(
    onnx_path: str | os.PathLike,
    *,
    backends=("ort", "trt"),
    engine_path: str | os.PathLike | None = None,
    inputs=None,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    seed: int = 0,
    iterations: int = 1,
    verbose: bool = False,
) -> ComparisonReport:
    """Run the same inputs through several backends and measure per-output agreement.

    Args:
        onnx_path: the exported graph.
        backends: names from :data:`BACKENDS`; the first that runs is the reference.
        engine_path: TensorRT engine (default: ``engines/NAME.smXY.engine`` beside the graph).
        inputs: a feed dict, a list of them, or an ``.npz`` path; default random data from
            Polygraphy's ``DataLoader`` (seeded, ``iterations`` feeds).
        atol, rtol: tolerance of Polygraphy's simple comparison (pass if abs <= atol or rel <= rtol
            element-wise).
        verbose: keep Polygraphy's own log (default: errors only).

    Returns:
        a :class:`ComparisonReport` (``.format()`` prints the table).

    Raises:
        ArtifactError: the ONNX file does not exist.
        BackendUnavailableError: polygraphy missing.
        ValueError: unknown backend.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path}: ONNX graph not found")
    _, _, Comparator, DataLoader, SimpleCompareFunc = _polygraphy()
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
    runners, unavailable = make_runners(onnx_path, backends, engine_path)
    report = ComparisonReport(
        onnx=str(onnx_path), runners=[r.name for r in runners], unavailable=unavailable, atol=atol, rtol=rtol
    )
    if not runners:
        return report
    feeds = _load_inputs(inputs)
    loader = feeds if feeds is not None else DataLoader(seed=seed, iterations=iterations)
    results = Comparator.run(runners, data_loader=loader)
    if len(runners) < 2:
        return report
    comparisons = [(0, i) for i in range(1, len(runners))]
    accuracy = Comparator.compare_accuracy(
        results, comparisons=comparisons, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol)
    )
    for (ref_name, other_name), iterations_results in accuracy[0].items():
        ref_outputs = results[ref_name][0]
        for out_name in iterations_results[0]:
            per_iter = [it[out_name] for it in iterations_results]
            report.outputs.append(
                OutputAgreement(
                    reference=ref_name,
                    runner=other_name,
                    output=out_name,
                    shape=tuple(np.asarray(ref_outputs[out_name]).shape),
                    max_abs=max(float(r.max_absdiff) for r in per_iter),
                    max_rel=max(float(r.max_reldiff) for r in per_iter),
                    mean_abs=float(np.mean([float(r.mean_absdiff) for r in per_iter])),
                    passed=all(bool(r) for r in per_iter),
                )
            )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m infomerge.engines.compare",
        description="Run an exported graph through ONNX Runtime and TensorRT (Polygraphy) and print "
        "per-output agreement.",
    )
    ap.add_argument("onnx", help="exported ONNX graph")
    ap.add_argument("--backends", default="ort,trt", help=f"comma list of {', '.join(BACKENDS)}")
    ap.add_argument(
        "--engine-file", default=None, help="TensorRT engine (default: engines/ beside the graph)"
    )
    ap.add_argument("--inputs", default=None, help=".npz with one array per graph input")
    ap.add_argument("--atol", type=float, default=1e-3)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true", help="show Polygraphy's log")
    args = ap.parse_args(argv)
    try:
        report = compare_backends(
            args.onnx,
            backends=[b.strip() for b in args.backends.split(",") if b.strip()],
            engine_path=args.engine_file,
            inputs=args.inputs,
            atol=args.atol,
            rtol=args.rtol,
            seed=args.seed,
            iterations=args.iterations,
            verbose=args.verbose,
        )
    except (InfomergeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.passed else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
