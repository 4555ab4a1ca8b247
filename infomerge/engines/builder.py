"""Build TensorRT / TensorRT-RTX engines from exported ONNX graphs: one code path for every flavour.

    python -m infomerge.engines.builder artifacts/tiny --engine rtx --compute-capability 86,89
    python -m infomerge.engines.builder artifacts/tiny/vision.onnx --engine trt --workspace 2048

What differs between flavours is read off :class:`~infomerge.engines.flavour.Flavour`:

- TensorRT 10.x (JetPack 6): weakly typed network; ``precision="fp16"`` sets ``BuilderFlag.FP16``
  and pins normalisation, softmax and reduction layers to fp32 (``PREFER_PRECISION_CONSTRAINTS``),
  the fp32 islands the FP16 SigLIP needs (TensorRT issues #4373, #2564).
- TensorRT 11.x and TensorRT-RTX: strongly typed; the ONNX's own dtypes decide (export with
  ``--fp16`` for an fp16 engine; the exporter keeps its fp32 islands).
- Full TensorRT builds for the GPU it runs on and keeps a timing cache (``timing.cache`` beside the
  engines, reused by later builds); TensorRT-RTX builds ahead of time, without a GPU, for each
  ``--compute-capability``, and has no timing cache.

Every engine is written atomically as ``OUT/NAME.smXY.engine`` next to ``OUT/NAME.smXY.json``
(:class:`~infomerge.engines.metadata.EngineMetadata`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from infomerge.artifacts.atomic import atomic_write_bytes
from infomerge.artifacts.layout import (
    ENGINES_DIR,
    TIMING_CACHE,
    engine_paths,
    normalize_cc,
    parse_compute_capabilities,
)
from infomerge.artifacts.onnx_graph import inspect_onnx, onnx_digest
from infomerge.engines.flavour import Flavour, load_flavour
from infomerge.engines.metadata import EngineMetadata
from infomerge.errors import ArtifactError, BackendUnavailableError, TargetError

#: default ``--workspace`` in MiB (bounded, so 8 GB Jetson boards can build)
DEFAULT_WORKSPACE_MIB = 1024
TIMING_CACHE_NAME = TIMING_CACHE


@dataclass
class EngineRecord:
    """One built engine: where it is and what it is."""

    engine_path: Path
    metadata_path: Path
    metadata: EngineMetadata

    def manifest_entry(self, root: str | os.PathLike | None = None) -> dict:
        """A JSON-able record for the artifact manifest; paths relative to ``root`` when given."""

        def rel(p: Path) -> str:
            if root is None:
                return str(p)
            try:
                return str(Path(p).resolve().relative_to(Path(root).resolve()))
            except ValueError:
                return str(p)

        m = self.metadata
        return {
            "graph": m.graph,
            "engine": rel(self.engine_path),
            "metadata": rel(self.metadata_path),
            "flavour": m.flavour,
            "trt_version": m.trt_version,
            "compute_capability": m.compute_capability,
            "precision": m.precision,
            "strongly_typed": m.strongly_typed,
            "source_onnx": m.source_onnx,
            "source_sha256": m.source_sha256,
            "engine_sha256": m.engine_sha256,
            "engine_bytes": m.engine_bytes,
            "workspace_bytes": m.workspace_bytes,
            "build_seconds": m.build_seconds,
        }


# --- targets -------------------------------------------------------------------------------------
def local_compute_capability() -> str | None:
    """Compute capability of the visible CUDA GPU ("8.7"), or None where none is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            return normalize_cc(torch.cuda.get_device_capability(0))
    except Exception:  # noqa: BLE001 - a broken CUDA setup counts as "no GPU"
        return None
    return None


def resolve_targets(flavour: Flavour, requested: Iterable[str], device_cc: str | None) -> list[str]:
    """The compute capabilities to build for.

    TensorRT-RTX: the requested ones, else the local GPU's. Full TensorRT: the local GPU's (it
    cannot build for another architecture); a request for another one is refused.

    Raises:
        TargetError: a request full TensorRT cannot meet, an architecture TensorRT-RTX does not know,
            or a TensorRT-RTX build with neither a request nor a GPU.
        BackendUnavailableError: full TensorRT without a visible GPU.
    """
    requested = [normalize_cc(c) for c in requested]
    if flavour.ahead_of_time:
        targets = requested or ([device_cc] if device_cc else [])
        if not targets:
            raise TargetError(
                "TensorRT-RTX builds ahead of time for chosen GPUs and no GPU is visible here: "
                "give --compute-capability, e.g. 86,89 (RTX 30xx, RTX 40xx)"
            )
        known = rtx_capabilities(flavour)
        for cc in targets:
            if known and cc not in known:
                raise TargetError(
                    f"{flavour.label} cannot target compute capability {cc}; it knows {', '.join(known)}"
                    + (" (Jetson Orin is 8.7: build there with --engine trt)" if cc == "8.7" else "")
                )
        return targets
    if device_cc is None:
        raise BackendUnavailableError(
            f"{flavour.label} builds engines on the GPU that will run them, and no CUDA GPU is visible "
            "here; build on the target (Jetson: --engine trt there), or ahead of time with --engine rtx"
        )
    device_cc = normalize_cc(device_cc)
    others = [c for c in requested if c != device_cc]
    if others:
        raise TargetError(
            f"{flavour.label} only builds for this GPU (compute capability {device_cc}), not for "
            f"{', '.join(others)}; use --engine rtx for ahead-of-time builds"
        )
    return [device_cc]


def rtx_capabilities(flavour: Flavour) -> list[str]:
    enum = getattr(flavour.module, "ComputeCapability", None)
    members = getattr(enum, "__members__", {}) if enum is not None else {}
    out = []
    for name in members:
        if name.startswith("SM") and name[2:].isdigit():
            out.append(normalize_cc(name[2:]))
    return out


# --- building ------------------------------------------------------------------------------------
def _make_logger(trt):
    """A TensorRT logger that keeps warnings and errors for our messages (falls back to trt.Logger)."""
    try:

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: list[str] = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    self.messages.append(str(msg))

        return _Logger()
    except Exception:  # noqa: BLE001 - fakes and exotic bindings
        return trt.Logger(trt.Logger.WARNING)


def _pin_fp32_islands(trt, network) -> int:
    """On a weakly typed fp16 build, ask for fp32 in normalisation, softmax and reduction layers."""
    kinds = {
        getattr(trt.LayerType, n) for n in ("NORMALIZATION", "SOFTMAX", "REDUCE") if hasattr(trt.LayerType, n)
    }
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def _io(network) -> tuple[dict, dict]:
    def desc(t):
        return {"shape": [int(d) for d in t.shape], "dtype": str(t.dtype).split(".")[-1].lower()}

    inputs = {network.get_input(i).name: desc(network.get_input(i)) for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name: desc(network.get_output(i)) for i in range(network.num_outputs)}
    return inputs, outputs


def _parse(flavour: Flavour, onnx_path: Path, plugin_ops: tuple[str, ...], logger):
    trt = flavour.module
    builder = trt.Builder(logger)
    flags = 0
    if flavour.name == "trt" and flavour.strongly_typed:
        # TensorRT 11.x is always strongly typed and ignores the flag; set it where it exists
        flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
        if flag is not None:
            flags = 1 << int(flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        hint = ""
        if plugin_ops:
            hint = (
                f" The graph holds the TensorRT plugin op(s) {', '.join(plugin_ops)}: register them first "
                "(infomerge.engines.plugin.register_plugin, full TensorRT >= 10.6 only) or export "
                "without --merge-plugin."
            )
        raise ArtifactError(
            f"{onnx_path}: {flavour.label} could not parse the graph: {'; '.join(errors)}.{hint}"
        )
    return builder, network, parser


def build_engine(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    engine: str = "rtx",
    compute_capabilities: Iterable[str] | str | None = None,
    precision: str | None = None,
    workspace_mib: int | None = DEFAULT_WORKSPACE_MIB,
    timing_cache: str | os.PathLike | None = None,
    graph: str | None = None,
    flavour: Flavour | None = None,
    device_cc: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[EngineRecord]:
    """Build the engine(s) of one ONNX graph, one per target compute capability.

    Args:
        onnx_path: the source graph (external data beside it is found by the parser).
        out_dir: where ``NAME.smXY.engine`` and ``.json`` go; default ``engines/`` beside the ONNX.
        engine: "trt" or "rtx" (ignored when ``flavour`` is given).
        compute_capabilities: "86,89", ["8.6"], ... TensorRT-RTX targets (default: the local GPU);
            full TensorRT only builds for the local GPU.
        precision: "fp16" / "fp32" / None. None = what the ONNX holds. Strongly typed flavours
            refuse a precision the ONNX does not hold; TensorRT 10.x makes fp16 with the builder flag.
        workspace_mib: the builder's workspace limit in MiB (None or 0 = TensorRT's default).
        timing_cache: timing-cache file (full TensorRT only); default ``OUT/timing.cache``.
        graph: graph name for the file names; default the ONNX stem.
        flavour: an already loaded :class:`Flavour` (tests pass fakes).
        device_cc: the local GPU's compute capability; default detected with torch.
        log: progress lines (default: print to stderr).

    Returns:
        one :class:`EngineRecord` per target.

    Raises:
        ArtifactError: missing ONNX, a graph the parser rejects, a precision the ONNX does not hold
            on a strongly typed flavour, or a failed build (with TensorRT's errors).
        BackendUnavailableError: the flavour is not installed (names the pip extra), or full
            TensorRT without a GPU.
        TargetError: bad or unbuildable compute capabilities.
        ValueError: bad precision.
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path}: ONNX graph not found; export it first (infomerge-export)")
    if precision not in (None, "fp16", "fp32"):
        raise ValueError(f"precision must be 'fp16', 'fp32' or None, got {precision!r}")
    flavour = flavour or load_flavour(engine)
    if isinstance(compute_capabilities, str):
        compute_capabilities = parse_compute_capabilities(compute_capabilities)
    if device_cc is None and not flavour.ahead_of_time:
        device_cc = local_compute_capability()
    targets = resolve_targets(flavour, compute_capabilities or [], device_cc)
    out_dir = Path(out_dir) if out_dir is not None else onnx_path.parent / ENGINES_DIR
    graph = graph or onnx_path.stem

    info = inspect_onnx(onnx_path)
    onnx_prec = info.precision
    if flavour.strongly_typed:
        if precision is not None and precision != onnx_prec:
            raise ArtifactError(
                f"{onnx_path}: {flavour.label} builds strongly typed networks, so the ONNX decides the "
                f"precision, and this graph is {onnx_prec}; export it "
                f"{'with' if precision == 'fp16' else 'without'} "
                f"--fp16 for an {precision} engine"
            )
        effective = onnx_prec
    else:
        effective = precision or onnx_prec
    source_sha = onnx_digest(onnx_path, info)

    trt = flavour.module
    logger = _make_logger(trt)
    builder, network, _parser = _parse(flavour, onnx_path, info.plugin_ops, logger)
    inputs, outputs = _io(network)
    dynamic = [n for n, d in inputs.items() if any(s < 0 for s in d["shape"])]
    if dynamic:
        raise ArtifactError(
            f"{onnx_path}: inputs {', '.join(dynamic)} have dynamic dimensions; export static shapes "
            "(the exporter's graphs are shape-static)"
        )
    fp32_layers = (
        _pin_fp32_islands(trt, network) if (flavour.fp16_builder_flag and effective == "fp16") else 0
    )

    cache_path = None
    cache = None
    if flavour.timing_cache:
        cache_path = Path(timing_cache) if timing_cache else out_dir / TIMING_CACHE_NAME

    records = []
    for cc in targets:
        config = builder.create_builder_config()
        workspace_bytes = int(workspace_mib or 0) * (1 << 20)
        if workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        if flavour.fp16_builder_flag and effective == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
            if fp32_layers:
                config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        if cache_path is not None:
            blob = cache_path.read_bytes() if cache_path.is_file() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
        if flavour.ahead_of_time:
            config.num_compute_capabilities = 1
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), 0)

        log(f"[engines] building {graph} for sm{cc.replace('.', '')} with {flavour.label} ({effective}) ...")
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if serialized is None:
            detail = "; ".join(getattr(logger, "messages", [])[-5:]) or "no message"
            raise ArtifactError(
                f"{onnx_path}: {flavour.label} failed to build an engine for compute capability {cc}: "
                f"{detail}"
                + (f" (workspace limit {workspace_mib} MiB: raise --workspace)" if workspace_mib else "")
            )
        data = memoryview(serialized)
        engine_path, meta_path = engine_paths(out_dir, graph, cc)
        atomic_write_bytes(engine_path, data)
        if cache is not None and cache_path is not None:
            atomic_write_bytes(cache_path, memoryview(cache.serialize()))
        meta = EngineMetadata(
            graph=graph,
            flavour=flavour.name,
            trt_version=flavour.version,
            compute_capability=cc,
            source_onnx=_relative_source(onnx_path, out_dir),
            source_sha256=source_sha,
            precision=effective,
            strongly_typed=flavour.strongly_typed,
            workspace_bytes=workspace_bytes,
            timing_cache=cache_path.name if cache_path is not None else "",
            fp32_layers=fp32_layers,
            engine_file=engine_path.name,
            engine_sha256=hashlib.sha256(data).hexdigest(),
            engine_bytes=data.nbytes,
            build_seconds=round(seconds, 3),
            built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            inputs=inputs,
            outputs=outputs,
        )
        meta.write(meta_path)
        log(f"[engines] wrote {engine_path} ({data.nbytes / 1e6:.1f} MB, {seconds:.1f} s)")
        records.append(EngineRecord(engine_path, meta_path, meta))
    return records


def _relative_source(onnx_path: Path, out_dir: Path) -> str:
    """The source ONNX as seen from the engine's artifact dir (the parent of ``engines/``)."""
    try:
        return str(onnx_path.resolve().relative_to(out_dir.resolve().parent))
    except ValueError:
        return onnx_path.name


def artifact_graphs(artifact_dir: str | os.PathLike) -> list[Path]:
    """The ONNX graphs of an artifact dir that get engines: its top-level ``*.onnx``, sorted."""
    return sorted(Path(artifact_dir).glob("*.onnx"))


def build_engines(
    artifact_dir: str | os.PathLike,
    *,
    engine: str = "rtx",
    compute_capabilities: Iterable[str] | str | None = None,
    workspace_mib: int | None = DEFAULT_WORKSPACE_MIB,
    graphs: Iterable[str | os.PathLike] | None = None,
    out_dir: str | os.PathLike | None = None,
    precision: str | None = None,
    flavour: Flavour | None = None,
    log: Callable[[str], None] | None = None,
) -> list[EngineRecord]:
    """Build engines for every graph of an artifact dir (vision, compress, vision_compress, ...).

    Args:
        artifact_dir: the exporter's output folder.
        graphs: ONNX files to build (default :func:`artifact_graphs`).
        out_dir: engine folder (default ``ARTIFACT_DIR/engines``).
        others: as :func:`build_engine`.

    Returns:
        all :class:`EngineRecord`, graph by graph, target by target.

    Raises:
        ArtifactError: an artifact dir without ONNX graphs, or any error of :func:`build_engine`.
    """
    artifact_dir = Path(artifact_dir)
    paths = [Path(g) for g in graphs] if graphs is not None else artifact_graphs(artifact_dir)
    if not paths:
        raise ArtifactError(
            f"{artifact_dir}: no ONNX graph to build an engine from; run infomerge-export first"
        )
    flavour = flavour or load_flavour(engine)
    out_dir = Path(out_dir) if out_dir is not None else artifact_dir / ENGINES_DIR
    records: list[EngineRecord] = []
    for p in paths:
        records += build_engine(
            p,
            out_dir,
            compute_capabilities=compute_capabilities,
            precision=precision,
            workspace_mib=workspace_mib,
            flavour=flavour,
            log=log,
        )
    return records


def main(argv: list[str] | None = None) -> int:
    """``python -m infomerge.engines.builder SOURCE [--engine rtx] [--compute-capability 86,89]``."""
    ap = argparse.ArgumentParser(
        prog="python -m infomerge.engines.builder",
        description="Build TensorRT / TensorRT-RTX engines (with metadata) from exported ONNX graphs.",
    )
    ap.add_argument("source", help="an ONNX graph, or an artifact dir (every top-level *.onnx)")
    ap.add_argument("--engine", choices=["trt", "rtx"], default="rtx")
    ap.add_argument("--compute-capability", default="", help="TensorRT-RTX targets, e.g. 86,89")
    ap.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MIB, help="workspace limit, MiB")
    ap.add_argument("--precision", choices=["fp16", "fp32"], default=None)
    ap.add_argument("--out", default=None, help="engine folder (default: engines/ beside the graphs)")
    args = ap.parse_args(argv)
    src = Path(args.source)
    kwargs = dict(
        engine=args.engine,
        compute_capabilities=args.compute_capability,
        workspace_mib=args.workspace,
        precision=args.precision,
    )
    try:
        if src.is_dir():
            records = build_engines(src, out_dir=args.out, **kwargs)
        else:
            records = build_engine(src, args.out, **kwargs)
    except (ArtifactError, BackendUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in records:
        m = r.metadata
        print(
            f"{r.engine_path}\t{m.compute_capability}\t{m.precision}\t{m.engine_bytes}\t{m.build_seconds:.1f}s"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
