"""How the ``ort`` backends open their sessions: the per-request graphs (vision, compression) without
ONNX Runtime's CPU memory arena, which would keep a request's activations for the session's lifetime
(3.3 GiB for the ov-0.5b fp16 vision graph on the CPU provider, docs/jetson.md); other sessions keep
ONNX Runtime's default."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import torch
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


def _fp16_matmul_graph(path, w: np.ndarray) -> str:
    """y = float32(float16(x) @ W) with an fp16 weight W (in, out): the shape of the exported fp16
    vision graph's linears, whose weights the CPU provider has to cast to fp32."""
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [2, w.shape[0]])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, w.shape[1]]) for n in ("H", "A", "g")]
    nodes = [
        helper.make_node("Cast", ["pixel_values"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["x16", "W"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["H"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["H"], ["A"]),
        helper.make_node("Identity", ["H"], ["g"]),
    ]
    init = [onnx.numpy_helper.from_array(w.astype(np.float16), "W")]
    model = helper.make_model(helper.make_graph(nodes, "fp16", [x], outs, init),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_fp16_vision_graph_on_the_cpu_casts_weights_as_it_runs(tmp_path):
    """fp16 graph on the CPU provider: "extended" level, priority order (no fp32 copy of every weight
    kept beside the fp16 one); the result is the same matrix product, checked against numpy."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    np.save(tmp_path / "image_newline.npy", np.zeros(4, np.float32))
    graph = _fp16_matmul_graph(tmp_path / "vision.onnx", w)
    lean = OrtVision(graph, tmp_path / "image_newline.npy", fp16=True)
    plain = OrtVision(graph, tmp_path / "image_newline.npy")
    opts = lean.session.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert opts.execution_order == ort.ExecutionOrder.PRIORITY_BASED
    assert opts.enable_cpu_mem_arena is False
    plain_level = plain.session.get_session_options().graph_optimization_level
    assert plain_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    x = rng.standard_normal((2, 8)).astype(np.float32)
    # independent: the fp16-rounded operands multiplied in float64
    want = x.astype(np.float16).astype(np.float64) @ w.astype(np.float16).astype(np.float64)
    got_lean = lean(torch.from_numpy(x)).H.numpy()
    got_plain = plain(torch.from_numpy(x)).H.numpy()
    np.testing.assert_allclose(got_lean, want, rtol=2e-3, atol=2e-3)  # output rounded to fp16
    np.testing.assert_array_equal(got_lean, got_plain)


def test_the_vision_factory_reads_the_precision_from_the_manifest(tmp_path):
    import onnxruntime as ort

    from infomerge.backbones.registry import get_backbone
    from infomerge.runtime.backends.base import BackendSource
    from infomerge.runtime.backends.ort import vision

    w = np.ones((8, 4), np.float32)
    _fp16_matmul_graph(tmp_path / "vision.onnx", w)
    np.save(tmp_path / "image_newline.npy", np.zeros(4, np.float32))
    for precision, level in (("fp16", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
                             ("fp32", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        manifest = {"graphs": {"vision": {"precision": precision}}}
        source = BackendSource(backbone=get_backbone("tiny"), artifacts=tmp_path, manifest=manifest)
        assert vision(source).session.get_session_options().graph_optimization_level == level
