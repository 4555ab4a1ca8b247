"""``infomerge.export.ort_fusion``: one exported SDPA attention block with non-zero projection biases
(the tiny backbone's random weights have zero biases, so its export cannot show a misplaced bias)
becomes one ``MultiHeadAttention`` whose ``bias`` input carries the q, k, v biases; the fused graph
computes softmax(q k^T / sqrt(hd)) v, written out here in float64."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from infomerge.backbones.vision import _Attention
from infomerge.export.onnx_export import export_onnx

HEADS, DIM, TOKENS, FRAMES = 2, 16, 5, 3


def _reference(attn: _Attention, x: np.ndarray) -> np.ndarray:
    """The block in float64: per head softmax(q k^T * scale) v, then out_proj; x (F, N, C)."""

    def lin(m, t):
        return t @ m.weight.detach().double().numpy().T + m.bias.detach().double().numpy()

    def heads(t):  # (F, N, C) -> (F, heads, N, hd)
        return t.reshape(len(t), TOKENS, HEADS, DIM // HEADS).transpose(0, 2, 1, 3)

    x = x.astype(np.float64)
    q, k, v = heads(lin(attn.q_proj, x)), heads(lin(attn.k_proj, x)), heads(lin(attn.v_proj, x))
    s = q @ k.transpose(0, 1, 3, 2) * attn.scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(len(x), TOKENS, DIM)
    return lin(attn.out_proj, o)


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    torch.manual_seed(0)
    attn = _Attention(DIM, HEADS, TOKENS).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)  # non-zero biases: a bias added to the wrong projection shows
    path = tmp_path_factory.mktemp("fusion") / "attn.onnx"
    x = torch.randn(1, TOKENS, DIM)
    export_onnx(attn, (x,), path, input_names=["x"], output_names=["y"], frames=FRAMES)
    return attn, path


def test_sdpa_block_with_biases_becomes_one_multihead_attention(block, tmp_path):
    import onnxruntime as ort
    from onnxruntime.transformers.onnx_model import OnnxModel

    from infomerge.export.ort_fusion import fuse_sdpa_attention

    attn, path = block
    model = OnnxModel(onnx.load(str(path)))
    adds_before = sum(n.op_type == "Add" for n in model.model.graph.node)
    assert fuse_sdpa_attention(model, HEADS) == 1
    nodes = model.model.graph.node
    (mha,) = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    assert len(mha.input) == 4  # query, key, value, bias
    inits = {i.name: i for i in model.model.graph.initializer}
    bias = onnx.numpy_helper.to_array(inits[mha.input[3]])
    want_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach().numpy()
    np.testing.assert_array_equal(bias, want_bias)
    assert sum(n.op_type == "Add" for n in nodes) == adds_before - 3  # out_proj's bias stays
    assert not any(n.op_type in ("Softmax", "Transpose") for n in nodes)
    fused = tmp_path / "fused.onnx"
    onnx.save(model.model, str(fused))

    x = np.random.default_rng(1).standard_normal((FRAMES, TOKENS, DIM)).astype(np.float32)
    sess = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, _reference(attn, x), rtol=1e-4, atol=1e-4)


def test_a_bias_read_elsewhere_is_left_as_an_add(block):
    """If the q projection's Add output has another consumer, the biases are not folded (the node
    still fuses, with its three plain inputs)."""
    from onnx import helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    from infomerge.export.ort_fusion import fuse_sdpa_attention

    _, path = block
    model = OnnxModel(onnx.load(str(path)))
    q_add = next(n for n in model.model.graph.node if n.op_type == "Add")  # q_proj's bias, first in order
    model.model.graph.node.append(helper.make_node("Identity", [q_add.output[0]], ["q_copy"]))
    model.model.graph.output.append(helper.make_tensor_value_info("q_copy", onnx.TensorProto.FLOAT, None))
    assert fuse_sdpa_attention(model, HEADS) == 1
    (mha,) = [n for n in model.model.graph.node if n.op_type == "MultiHeadAttention"]
    assert len(mha.input) == 3
