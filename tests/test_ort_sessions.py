"""How the ``ort`` backends open their sessions: the per-request graphs (vision, compression) without
ONNX Runtime's CPU memory arena, which would keep a request's activations for the session's lifetime
(3.3 GiB for the ov-0.5b fp16 vision graph on the CPU provider, docs/jetson.md); other sessions keep
ONNX Runtime's default."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from infomerge.engines.ort import ort_session
from infomerge.runtime.backends.ort import OrtCompressor, OrtVision


def _graph(path, inputs, outputs) -> str:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in outputs]
    nodes = [helper.make_node("Identity", [inputs[0]], [n]) for n in outputs]
    graph = helper.make_graph(nodes, "g", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_vision_and_compress_sessions_run_without_the_cpu_arena(tmp_path):
    np.save(tmp_path / "image_newline.npy", np.zeros(4, np.float32))
    vision = OrtVision(_graph(tmp_path / "vision.onnx", ["pixel_values"], ["H", "A", "g"]),
                       tmp_path / "image_newline.npy")
    compress = OrtCompressor(_graph(tmp_path / "compress.onnx", ["H"], ["tokens", "index"]))
    assert vision.session.get_session_options().enable_cpu_mem_arena is False
    assert compress.session.get_session_options().enable_cpu_mem_arena is False


def test_other_sessions_keep_the_arena(tmp_path):
    """The LLM's session (many small runs per request) and every other caller keep ONNX Runtime's
    default, the arena on."""
    sess = ort_session(_graph(tmp_path / "g.onnx", ["x"], ["y"]))
    assert sess.get_session_options().enable_cpu_mem_arena is True
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(sess.run(["y"], {"x": x})[0], x)
