"""Engine provenance: the JSON written next to every engine, and the check that refuses a stale one.

An engine is specific to its TensorRT flavour and version, its GPU architecture (compute capability)
and the ONNX it was built from (``docs/tensorrt.md``). Each ``NAME.smXY.engine`` therefore
has a ``NAME.smXY.json`` beside it (:class:`EngineMetadata`); :func:`check_engine` compares it with
the runtime and the source ONNX and raises :class:`~infomerge.errors.EngineMismatchError` with the
command that rebuilds it.

Writes are atomic (temporary file in the same folder, then ``os.replace``); the engine is written
before its JSON, so a JSON always describes a complete engine, and the JSON holds the engine's
sha256, so an engine swapped or truncated afterwards is refused too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from infomerge import __version__
from infomerge.artifacts.atomic import atomic_write_text
from infomerge.artifacts.layout import ENGINES_DIR, normalize_cc, sm_tag
from infomerge.artifacts.manifest import sha256_file
from infomerge.artifacts.onnx_graph import onnx_digest
from infomerge.errors import EngineMismatchError

METADATA_FORMAT = 1


# --- the record ----------------------------------------------------------------------------------
@dataclass
class EngineMetadata:
    """What an engine was built from and for (the JSON beside ``NAME.smXY.engine``).

    Attributes:
        graph: graph name, the ONNX file stem ("vision", "compress", "vision_compress").
        flavour: "trt" or "rtx".
        trt_version: version of the TensorRT that built it.
        compute_capability: target GPU architecture, "major.minor" ("8.6").
        source_onnx: file name of the source ONNX (relative to the engine's artifact dir).
        source_sha256: :func:`onnx_digest` of the source ONNX at build time.
        precision: "fp16" or "fp32": the compute precision (from the ONNX for strongly typed
            networks, from ``BuilderFlag.FP16`` for weakly typed ones).
        strongly_typed: whether the network was strongly typed.
        workspace_bytes: the builder's workspace limit (0 = TensorRT's default).
        timing_cache: file name of the timing cache used, "" where none.
        fp32_layers: layers pinned to fp32 on a weakly typed fp16 build (normalisation, softmax,
            reductions); 0 otherwise.
        engine_file: file name of the engine.
        engine_sha256, engine_bytes: of the serialized engine.
        build_seconds: wall time of ``build_serialized_network``.
        built_at: UTC time, ISO 8601.
        infomerge_version: version of this package.
        inputs, outputs: name -> {"shape": [...], "dtype": "..."} of the network's I/O.
        format: version of this record's layout.
    """

    graph: str
    flavour: str
    trt_version: str
    compute_capability: str
    source_onnx: str
    source_sha256: str
    precision: str
    strongly_typed: bool
    workspace_bytes: int
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    build_seconds: float
    built_at: str
    timing_cache: str = ""
    fp32_layers: int = 0
    infomerge_version: str = __version__
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    format: int = METADATA_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> EngineMetadata:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def read(cls, path: str | os.PathLike) -> EngineMetadata:
        """Read a metadata JSON.

        Raises:
            EngineMismatchError: when the file is missing or unreadable (an engine without
                provenance is treated as stale).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls.from_dict(data)
        except FileNotFoundError:
            raise EngineMismatchError(
                f"{path}: engine metadata missing, so the engine's provenance is unknown; "
                "rebuild the engine (see docs/tensorrt.md)"
            ) from None
        except (ValueError, TypeError) as exc:
            raise EngineMismatchError(
                f"{path}: unreadable engine metadata ({exc}); rebuild the engine"
            ) from None


@dataclass(frozen=True)
class RuntimeInfo:
    """The runtime an engine is about to be loaded into.

    Attributes:
        flavour: "trt" or "rtx".
        trt_version: the installed TensorRT's version.
        compute_capability: the GPU's "major.minor", or None where no GPU is visible (not checked).
    """

    flavour: str
    trt_version: str
    compute_capability: str | None = None


def rebuild_command(
    meta: EngineMetadata,
    engine_path: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    runtime: RuntimeInfo | None = None,
) -> str:
    """The command that rebuilds an engine like ``meta`` for ``runtime`` (for error messages)."""
    out_dir = Path(engine_path).parent if engine_path else Path(ENGINES_DIR)
    src = Path(source) if source else out_dir.parent / meta.source_onnx
    flavour = runtime.flavour if runtime else meta.flavour
    cc = (runtime.compute_capability if runtime else None) or meta.compute_capability
    cc_arg = f" --compute-capability {sm_tag(cc)[2:]}" if flavour == "rtx" else ""
    return f"python -m infomerge.engines.builder {src} --engine {flavour}{cc_arg} --out {out_dir}"


def check_engine(
    meta: EngineMetadata,
    runtime: RuntimeInfo,
    *,
    engine_path: str | os.PathLike | None = None,
    expected_onnx: str | os.PathLike | None = None,
    verify_engine_bytes: bool = True,
) -> None:
    """Refuse an engine whose metadata does not match the runtime, its source ONNX or its own bytes.

    Args:
        meta: the engine's metadata.
        runtime: flavour, version and GPU of the runtime (GPU None = not checked).
        engine_path: the engine file; with ``verify_engine_bytes`` its sha256 is compared.
        expected_onnx: the ONNX the engine must have been built from (None = not checked).

    Raises:
        EngineMismatchError: listing every mismatch and the command that rebuilds the engine.
    """
    problems = []
    if meta.format != METADATA_FORMAT:
        problems.append(f"metadata format {meta.format}, this version reads {METADATA_FORMAT}")
    if meta.flavour != runtime.flavour:
        problems.append(f"built with flavour {meta.flavour!r}, the runtime is {runtime.flavour!r}")
    elif meta.trt_version != runtime.trt_version:
        problems.append(
            f"built with {meta.flavour} {meta.trt_version}, the runtime has {runtime.trt_version} "
            "(engines are specific to the TensorRT version)"
        )
    if (
        runtime.compute_capability is not None
        and normalize_cc(runtime.compute_capability) != meta.compute_capability
    ):
        problems.append(
            f"built for compute capability {meta.compute_capability}, this GPU is "
            f"{normalize_cc(runtime.compute_capability)}"
        )
    if expected_onnx is not None:
        digest = onnx_digest(expected_onnx)
        if digest != meta.source_sha256:
            problems.append(
                f"source ONNX changed: {Path(expected_onnx).name} has sha256 {digest[:12]}..., the engine "
                f"was built from {meta.source_sha256[:12]}..."
            )
    if verify_engine_bytes and engine_path is not None:
        p = Path(engine_path)
        if not p.is_file():
            problems.append(f"engine file {p} is missing")
        elif sha256_file(p) != meta.engine_sha256:
            problems.append(f"engine file {p.name} differs from the one the metadata describes (sha256)")
    if problems:
        where = f"{engine_path}: " if engine_path else ""
        rebuild = rebuild_command(meta, engine_path, expected_onnx, runtime)
        raise EngineMismatchError(f"{where}stale engine: " + "; ".join(problems) + f". Rebuild it: {rebuild}")
