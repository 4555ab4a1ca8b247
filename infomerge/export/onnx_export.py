"""Export a torch module to a static-shape ONNX graph (TorchScript exporter, opset 17).

The project-wide convention: ``torch.onnx.export(..., dynamo=False, opset_version=17)``.
:func:`export_onnx` adds two things to it:

- **tracing on fewer frames.** Tracing runs the model once; a full-size fp16 tower on 32 frames
  takes many minutes on a CPU without fp16 arithmetic. A module whose frame axis is never
  reshaped into anything else (every reshape keeps it as ``-1``) can be traced on 1 frame with
  that axis marked dynamic, and the final graph is then pinned to F frames: the input and output
  dims are set and ONNX shape inference makes every intermediate shape static. Validation on F
  real frames (:mod:`infomerge.export.validate`) proves the pinned graph computes the function.
- **external data.** A graph whose weights pass 2 GB (the protobuf limit) is saved with its
  tensors in one ``<name>.onnx.data`` file beside it; smaller ones are a single file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

OPSET = 17
# Protobuf's hard limit is 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_900_000_000

_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 16: "bfloat16"}


def onnx_dtype_name(elem_type: int) -> str:
    """ONNX TensorProto element type -> numpy-style name (``1`` -> ``"float32"``)."""
    return _ONNX_DTYPES.get(elem_type, str(elem_type))


def graph_io(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, dict]]:
    """({input: {"shape", "dtype"}}, {output: ...}) of an ONNX file (weights not loaded)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def spec(v):
        t = v.type.tensor_type
        return {
            "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim],
            "dtype": onnx_dtype_name(t.elem_type),
        }

    return {v.name: spec(v) for v in m.graph.input}, {v.name: spec(v) for v in m.graph.output}


def export_onnx(
    module: torch.nn.Module,
    args: tuple,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    frames: int | Mapping[str, int] | None = None,
    opset: int = OPSET,
) -> Path:
    """Export ``module(*args)`` to ``path`` with static shapes.

    Args:
        module: the model (put in eval mode here).
        args: example inputs, as ``module(*args)`` takes them.
        path: the ``.onnx`` file to write (its ``.onnx.data`` beside it when > 2 GB).
        input_names, output_names: graph input / output names, in order.
        frames: None: the graph has exactly the shapes of ``args``. An int F: ``args`` were made
            with fewer frames on axis 0 of every input and output (the module must keep that axis
            as ``-1`` in reshapes); the graph is traced with that axis dynamic and then pinned to F.
            A mapping ``{name: size}``: axis 0 of each named input / output pinned to its own size
            (Qwen2.5-VL: ``pixel_values`` to F frames, the features to L = F / 2 groups).
        opset: ONNX opset (17).

    Returns:
        ``path``.
    """
    import onnx

    path = Path(path)
    module.eval()
    dynamic_axes = None
    if frames is not None:
        sizes = (
            dict(frames)
            if isinstance(frames, Mapping)
            else dict.fromkeys([*input_names, *output_names], frames)
        )
        one = len(set(sizes.values())) == 1  # one symbol per distinct size
        dynamic_axes = {n: {0: "frames" if one else f"frames_{sizes[n]}"} for n in sizes}
    scratch = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=path.parent))
    try:
        raw = scratch / path.name
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is the project's choice: silence its deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                args,
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        model = onnx.load(str(raw), load_external_data=True)
        dedupe_constants(model)
        if frames is not None:
            _pin_frames(model, sizes)
        save_onnx(model, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def dedupe_constants(model, min_bytes: int = 1024) -> int:
    """Keep one ``Constant`` node per distinct large tensor (dtype, dims, bytes): the TorchScript
    exporter writes a module buffer used in every block (Qwen2.5-VL's window mask and rotary
    tables) once per use. Later uses read the first node's output. Returns the nodes removed.

    Only top-level ``Constant`` nodes of at least ``min_bytes`` whose output is not a graph output
    are merged; the graph computes the same function.
    """
    import hashlib

    outputs = {o.name for o in model.graph.output}
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name == "value" and len(attr.t.raw_data) >= min_bytes:
            t = attr.t
            key = (t.data_type, tuple(t.dims), hashlib.sha256(t.raw_data).digest())
            if key in first and node.output[0] not in outputs:
                rename[node.output[0]] = first[key]
                continue
            first.setdefault(key, node.output[0])
        keep.append(node)
    if rename:
        for node in keep:
            node.input[:] = [rename.get(i, i) for i in node.input]
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return len(rename)


def _pin_frames(model, sizes: dict[str, int]) -> None:
    """Set axis 0 of every graph input and output to its size in ``sizes``; re-infer all shapes
    statically."""
    import onnx

    for v in [*model.graph.input, *model.graph.output]:
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = sizes[v.name]
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(
        _inference_skeleton(model), check_type=True, strict_mode=True, data_prop=True
    )
    model.graph.value_info.extend(inferred.graph.value_info)
    for v in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise RuntimeError(
                f"ONNX export: {v.name} has a non-static shape after pinning axis 0 to {sizes}"
            )
    # the exporter may name an output's inner dim symbolically (a MatMul's): take the inferred dims
    for out, got in zip(model.graph.output, inferred.graph.output):
        out.type.tensor_type.shape.CopyFrom(got.type.tensor_type.shape)


def _inference_skeleton(model):
    """``model`` without the data of its big initializers (dims and types kept): enough for shape
    inference, and far below the 2 GB protobuf limit whatever the weights weigh."""
    import onnx

    g = model.graph
    inits = [
        t if _tensor_bytes(t) <= 65536 else onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type)
        for t in g.initializer
    ]
    graph = onnx.helper.make_graph(list(g.node), g.name, list(g.input), list(g.output), initializer=inits)
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def save_onnx(model, path: str | os.PathLike) -> Path:
    """Save ``model`` to ``path``; weights to ``<name>.data`` beside it when the file would pass 2 GB."""
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    size = sum(_tensor_bytes(t) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def _tensor_bytes(t) -> int:
    if t.HasField("raw_data") or t.raw_data:
        return len(t.raw_data)
    if t.data_location == 1:  # EXTERNAL
        return next((int(e.value) for e in t.external_data if e.key == "length"), 0)
    return t.ByteSize()


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The files of an ONNX graph: the ``.onnx`` and its ``.onnx.data`` when present."""
    p = Path(path)
    data = p.with_name(p.name + ".data")
    return [p, data] if data.exists() else [p]


__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "OPSET",
    "dedupe_constants",
    "export_onnx",
    "graph_io",
    "onnx_dtype_name",
    "onnx_files",
    "save_onnx",
]
