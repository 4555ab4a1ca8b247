"""One inspection of an ONNX graph: its inputs and outputs, precision, plugin and custom ops,
external data files, and a digest that covers the weights.

The graph's structure is read without its external weights (``load_external_data=False``), so
inspecting a 1.7 GB vision graph costs a few MB. Export (manifest entries), the engine builder
(precision, plugin ops, provenance digest) and the Jetson ``trtexec`` lines all read graphs here,
so they share one fp16 rule.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from infomerge.artifacts.manifest import sha256_file
from infomerge.errors import ArtifactError

#: op types of this project's TensorRT plugins (see infomerge.engines.plugin)
PLUGIN_OPS = frozenset({"MergeToAnchors"})
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 16: "bfloat16"}


def onnx_dtype_name(elem_type: int) -> str:
    """ONNX TensorProto element type -> numpy-style name (``1`` -> ``"float32"``)."""
    return _DTYPES.get(elem_type, str(elem_type))


@dataclass(frozen=True)
class OnnxInfo:
    """What the toolkit needs to know of an ONNX graph (read once, weights not loaded).

    Attributes:
        inputs: {name: {"shape": [int | symbolic name], "dtype": "float32" | ...}} of the graph
            inputs that are not initializers, in graph order.
        outputs: the same for the graph outputs.
        precision: "fp16" when the graph computes in fp16 anywhere (fp16 I/O, weights, casts or
            constants; a ``--fp16`` export with fp32 islands counts), else "fp32".
        plugin_ops: op types only a TensorRT plugin of this project runs, sorted.
        custom_ops: op types outside the standard ONNX domains (plugin ops included), sorted.
        external_data: the external-data files it references that exist, sorted.
    """

    inputs: dict
    outputs: dict
    precision: str
    plugin_ops: tuple[str, ...]
    custom_ops: tuple[str, ...]
    external_data: tuple[Path, ...]

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"


def _spec(v) -> dict:
    t = v.type.tensor_type
    return {
        "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim],
        "dtype": onnx_dtype_name(t.elem_type),
    }


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


def inspect_onnx(onnx_path: str | os.PathLike) -> OnnxInfo:
    """Read an ONNX graph's structure (not its external weights) into an :class:`OnnxInfo`.

    Raises:
        ArtifactError: the file does not exist or is not an ONNX model.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(onnx_path)
    if not path.is_file():
        raise ArtifactError(f"{path}: ONNX graph not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc}); re-export it") from None
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
    init_names = {t.name for t in g.initializer}
    return OnnxInfo(
        inputs={v.name: _spec(v) for v in g.input if v.name not in init_names},
        outputs={v.name: _spec(v) for v in g.output},
        precision="fp16" if is_fp16 else "fp32",
        plugin_ops=tuple(sorted({n.op_type for n in g.node if n.op_type in PLUGIN_OPS})),
        custom_ops=tuple(sorted({n.op_type for n in g.node if n.domain not in STANDARD_DOMAINS})),
        external_data=tuple(sorted(p for n in locations if (p := path.parent / n).is_file())),
    )


def graph_io(onnx_path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, dict]]:
    """({input: {"shape", "dtype"}}, {output: ...}) of an ONNX file (weights not loaded).

    Raises:
        ArtifactError: see :func:`inspect_onnx`.
    """
    info = inspect_onnx(onnx_path)
    return info.inputs, info.outputs


def onnx_files(onnx_path: str | os.PathLike) -> list[Path]:
    """The files of an ONNX graph as the exporter writes it: the ``.onnx`` and its ``.onnx.data``."""
    p = Path(onnx_path)
    data = p.with_name(p.name + ".data")
    return [p, data] if data.exists() else [p]


def onnx_digest(onnx_path: str | os.PathLike, info: OnnxInfo | None = None) -> str:
    """sha256 identifying an ONNX graph with its weights.

    A single-file graph: the file's sha256 (the same as the artifact manifest lists). A graph with
    external data: the sha256 of the lines ``NAME:SHA256`` of the ``.onnx`` and of each external-data
    file, so a change in ``model.onnx.data`` changes the digest too.

    Raises:
        ArtifactError: the file does not exist.
    """
    path = Path(onnx_path)
    info = info or inspect_onnx(path)
    if not info.external_data:
        return sha256_file(path)
    lines = [f"{p.name}:{sha256_file(p)}" for p in (path, *info.external_data)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


__all__ = [
    "PLUGIN_OPS",
    "STANDARD_DOMAINS",
    "OnnxInfo",
    "graph_io",
    "inspect_onnx",
    "onnx_digest",
    "onnx_dtype_name",
    "onnx_files",
]
