"""The int4 LLM graph's weights put back into the torch text model, for the agreement tests of
tests/test_llm_ort.py (LLaVA's Qwen2) and tests/test_llm_ort_qwen.py (Qwen2.5-VL's M-RoPE text
model): an independent reading of onnxruntime-genai's ``MatMulNBits`` packing (4-bit codes, two
per byte, low nibble first, default zero point 8, one fp scale per block of ``block_size``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_dequantized(model: torch.nn.Module, graph_dir: Path, layers: int) -> torch.nn.Module:
    """``model`` with every ``MatMulNBits`` weight of ``graph_dir/model.onnx`` replaced by its
    dequantized value ``w = (q - 8) * scale``; asserts the graph has ``7 layers + 1`` of them (the
    seven projections of every layer and the LM head)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(graph_dir / "model.onnx"))
    inits = {i.name: i for i in graph.graph.initializer}
    replaced = 0
    for node in graph.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
        assert bits == 4 and len([i for i in node.input if i]) == 3  # symmetric: default zero point 8
        packed = numpy_helper.to_array(inits[node.input[1]]).reshape(n, -1)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, -1)
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :k].astype(np.float32)
        w = (q - 8.0) * np.repeat(scales, block, axis=1)[:, :k]
        path = node.name.strip("/").replace("/MatMul_Q4", "")  # model/layers.0/attn/q_proj | lm_head
        target = (
            model.lm_head
            if path == "lm_head"
            else model.get_submodule(path.replace("/", ".").replace(".attn.", ".self_attn."))
        )
        assert tuple(target.weight.shape) == (n, k)
        target.weight.data = torch.from_numpy(w)
        replaced += 1
    assert replaced == layers * 7 + 1  # 7 matmuls per layer, and the LM head
    return model
