"""Engine provenance: the JSON written next to every engine, and the check that refuses a stale one.

An engine is specific to its TensorRT flavour and version, its GPU architecture (compute capability)
and the ONNX it was built from (``shared/spec/deployment.md``). Each ``NAME.smXY.engine`` therefore
has a ``NAME.smXY.json`` beside it (:class:`EngineMetadata`); :func:`check_engine` compares it with
the runtime and the source ONNX and raises :class:`~infomerge.errors.EngineMismatchError` with the
command that rebuilds it.

Writes are atomic (temporary file in the same folder, then ``os.replace``); the engine is written
before its JSON, so a JSON always describes a complete engine, and the JSON holds the engine's
sha256, so an engine swapped or truncated afterwards is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from infomerge import __version__
from infomerge.errors import ArtifactError, EngineMismatchError, InfomergeError
from infomerge.export.manifest import sha256_file

METADATA_FORMAT = 1


# --- compute capabilities ------------------------------------------------------------------------
class TargetError(InfomergeError, ValueError):
    """A compute capability that is malformed, or that the chosen TensorRT flavour cannot build for."""


def normalize_cc(cc) -> str:
    """A compute capability as "major.minor": 86, "86", "8.6", "sm86", "sm_86", (8, 6) -> "8.6".

    Raises:
        TargetError: for anything else.
    """
    if isinstance(cc, tuple | list) and len(cc) == 2:
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip().lower().removeprefix("sm").removeprefix("_")
    if "." in text:
        major, _, minor = text.partition(".")
        if major.isdigit() and minor.isdigit():
            return f"{int(major)}.{int(minor)}"
    elif text.isdigit() and len(text) in (2, 3):
        return f"{int(text[:-1])}.{int(text[-1])}"
    raise TargetError(f"not a compute capability: {cc!r} (write 86, 8.6 or sm86)")


def parse_compute_capabilities(text: str | None) -> list[str]:
    """``--compute-capability`` "86,89" -> ["8.6", "8.9"] (duplicates dropped, order kept); None/"" -> []."""
    if not text:
        return []
    out: list[str] = []
    for part in str(text).split(","):
        if part.strip():
            cc = normalize_cc(part)
            if cc not in out:
                out.append(cc)
    return out


def sm_tag(cc: str) -> str:
    """ "8.6" -> "sm86" (the tag in engine file names)."""
    return "sm" + normalize_cc(cc).replace(".", "")


def engine_paths(out_dir: str | os.PathLike, graph: str, cc: str) -> tuple[Path, Path]:
    """(engine path, metadata path) of graph ``graph`` built for ``cc``: ``vision.sm86.engine/.json``."""
    base = Path(out_dir) / f"{graph}.{sm_tag(cc)}"
    return base.with_name(base.name + ".engine"), base.with_name(base.name + ".json")


def metadata_path_for(engine_path: str | os.PathLike) -> Path:
    """``X.sm86.engine`` -> ``X.sm86.json``."""
    p = Path(engine_path)
    return p.with_suffix(".json")


# --- ONNX graphs: one inspection, one digest ------------------------------------------------------
#: op types of this project's TensorRT plugins (see infomerge.engines.plugin)
PLUGIN_OPS = frozenset({"MergeToAnchors"})


@dataclass(frozen=True)
class OnnxInfo:
    """What the engine code needs to know of an ONNX graph (read once, weights not loaded).

    Attributes:
        precision: "fp16" when the graph computes in fp16 anywhere (fp16 I/O, weights, casts or
            constants; a ``--fp16`` export with fp32 islands counts), else "fp32".
        plugin_ops: op types only a TensorRT plugin runs (e.g. ``MergeToAnchors``), sorted.
        external_data: the external-data files it references that exist, sorted.
    """

    precision: str
    plugin_ops: tuple[str, ...]
    external_data: tuple[Path, ...]


def inspect_onnx(onnx_path: str | os.PathLike) -> OnnxInfo:
    """Read an ONNX graph's structure (not its external weights) into an :class:`OnnxInfo`.

    Raises:
        ArtifactError: when the file does not exist.
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ArtifactError(f"{path}: ONNX graph not found")
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    fp16 = onnx.TensorProto.FLOAT16
    tensors = list(_all_tensors(g))
    is_fp16 = (
        any(t.data_type == fp16 for t in tensors)
        or any(v.type.tensor_type.elem_type == fp16 for v in [*g.input, *g.output, *g.value_info])
        or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in g.node
        )
    )
    locations = {
        kv.value
        for t in tensors
        if t.data_location == onnx.TensorProto.EXTERNAL
        for kv in t.external_data
        if kv.key == "location"
    }
    return OnnxInfo(
        precision="fp16" if is_fp16 else "fp32",
        plugin_ops=tuple(sorted({n.op_type for n in g.node if n.op_type in PLUGIN_OPS})),
        external_data=tuple(sorted(p for n in locations if (p := path.parent / n).is_file())),
    )


def onnx_digest(onnx_path: str | os.PathLike, info: OnnxInfo | None = None) -> str:
    """sha256 identifying an ONNX graph with its weights.

    A single-file graph: the file's sha256 (the same as the artifact manifest lists). A graph with
    external data: the sha256 of the lines ``NAME:SHA256`` of the ``.onnx`` and of each external-data
    file, so a change in ``model.onnx.data`` changes the digest too.

    Args:
        onnx_path: the graph.
        info: its :func:`inspect_onnx` result when already read.

    Raises:
        ArtifactError: when the file does not exist.
    """
    path = Path(onnx_path)
    info = info or inspect_onnx(path)
    if not info.external_data:
        return sha256_file(path)
    lines = [f"{p.name}:{sha256_file(p)}" for p in (path, *info.external_data)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def atomic_write_bytes(path: str | os.PathLike, data) -> None:
    """Write ``data`` (bytes-like) to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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
    out_dir = Path(engine_path).parent if engine_path else Path("engines")
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
