"""Shared checks of a fixed-budget compressor's exported graph: export it the project's way and
apply the forbidden-operator rules (no data-dependent shapes, no reduction scatter)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import torch

#: operators a shape-static compression graph must not contain
FORBIDDEN = frozenset({"NonZero", "Unique", "Loop", "If", "Scan", "Einsum", "ScatterND"})


def export_static_graph(module, example, path, forbidden=FORBIDDEN):
    """Export ``module(*example)`` (inputs H, A, g; outputs tokens, index; opset 17, TorchScript
    exporter), assert that no ``forbidden`` op and no reduction scatter is in the graph, and return
    (the set of op types, a CPU ONNX Runtime session)."""
    path = Path(path)
    torch.onnx.export(
        module,
        tuple(example),
        str(path),
        input_names=["H", "A", "g"],
        output_names=["tokens", "index"],
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & set(forbidden), ops & set(forbidden)
    for n in model.graph.node:
        if n.op_type == "ScatterElements":
            assert all(a.name != "reduction" or a.s in (b"", b"none") for a in n.attribute)
    return ops, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
