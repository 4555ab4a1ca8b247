"""How the ``ort`` backends open and run their sessions: the per-request graphs (vision, compression)
with ONNX Runtime's CPU memory arena shrunk at the end of every run (the arena alone would keep a
request's activations for the session's lifetime: 3.3 GiB for the ov-0.5b fp16 vision graph on the
CPU provider, docs/jetson.md), fp16 graphs on the CPU provider without it; a vision graph with a free
frame axis in runs of a few frames; other sessions keep ONNX Runtime's default."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from onnx import TensorProto, helper

from infomerge.engines.ort import ARENA_SHRINKAGE, ort_session
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


def test_vision_and_compress_sessions_shrink_the_cpu_arena_after_each_run(tmp_path):
    np.save(tmp_path / "image_newline.npy", np.zeros(4, np.float32))
    vision = OrtVision(_graph(tmp_path / "vision.onnx", ["pixel_values"], ["H", "A", "g"]),
                       tmp_path / "image_newline.npy")
    compress = OrtCompressor(_graph(tmp_path / "compress.onnx", ["H"], ["tokens", "index"]))
    for backend in (vision, compress):
        assert backend.session.get_session_options().enable_cpu_mem_arena is True
        assert backend.run_options.get_run_config_entry(ARENA_SHRINKAGE) == "cpu:0"
    x = torch.tensor([1.0, 2.0])
    np.testing.assert_array_equal(vision(x).H.numpy(), x.numpy())  # runs with those options


def _frame_graph(path, frames) -> str:
    """pixel_values (frames, 2) -> H = 2 x, A = x + 1, g = x^2, extra output "keys" = -x; ``frames``
    an int or a symbolic name (free axis)."""
    ins = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [frames, 2])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [frames, 2]) for n in ("H", "A", "g", "keys")]
    two = onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")
    one = onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [
        helper.make_node("Mul", ["pixel_values", "two"], ["H"]),
        helper.make_node("Add", ["pixel_values", "one"], ["A"]),
        helper.make_node("Mul", ["pixel_values", "pixel_values"], ["g"]),
        helper.make_node("Neg", ["pixel_values"], ["keys"]),
    ]
    graph = helper.make_graph(nodes, "frames", ins, outs, [two, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


class _CountingSession:
    """The session with every run's frame count recorded."""

    def __init__(self, session):
        self.session, self.frames = session, []

    def run(self, names, feeds, options=None):
        self.frames.append(len(feeds["pixel_values"]))
        return self.session.run(names, feeds, options)


@pytest.mark.parametrize("frames_per_run, runs", [(2, [2, 2, 1]), (1, [1] * 5), (8, [5])])
def test_a_free_frame_axis_runs_a_few_frames_at_a_time(tmp_path, frames_per_run, runs):
    np.save(tmp_path / "image_newline.npy", np.zeros(4, np.float32))
    vision = OrtVision(_frame_graph(tmp_path / "vision.onnx", "frames"), tmp_path / "image_newline.npy",
                       frames_per_run=frames_per_run)
    assert vision.any_frame_count and vision.extra_outputs == ("keys",)
    vision.session = counting = _CountingSession(vision.session)
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    got = vision(torch.from_numpy(x))
    assert counting.frames == runs
    np.testing.assert_array_equal(got.H.numpy(), 2 * x)
    np.testing.assert_array_equal(got.A.numpy(), x + 1)
    np.testing.assert_array_equal(got.g.numpy(), x * x)
    np.testing.assert_array_equal(got.extra["keys"].numpy(), -x)


def test_a_pinned_frame_axis_runs_all_frames_at_once(tmp_path):
    np.save(tmp_path / "image_newline.npy", np.zeros(4, np.float32))
    graph = _frame_graph(tmp_path / "vision.onnx", 5)
    vision = OrtVision(graph, tmp_path / "image_newline.npy", frames_per_run=2)
    vision.session = counting = _CountingSession(vision.session)
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(vision(torch.from_numpy(x)).H.numpy(), 2 * x)
    assert counting.frames == [5]


def test_frames_per_run_must_be_positive(tmp_path):
    np.save(tmp_path / "image_newline.npy", np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="frames_per_run"):
        OrtVision(_frame_graph(tmp_path / "vision.onnx", "frames"), tmp_path / "image_newline.npy",
                  frames_per_run=0)


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
    with pytest.raises(RuntimeError, match="does not have"):  # no arena, nothing to shrink
        lean.run_options.get_run_config_entry(ARENA_SHRINKAGE)
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
