"""Backend comparison with Polygraphy: ORT runners here; TensorRT reported as unavailable with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from infomerge.engines import compare
from infomerge.engines.builder import build_engine
from infomerge.errors import ArtifactError


def two_output_graph(path):
    """x (2, 8) -> (Softmax(x W), x * 2): two outputs, so agreement is reported per output."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, (8, 4), rng.standard_normal((8, 4)).astype(np.float32).tobytes(), raw=True
    )
    two = helper.make_tensor("two", TensorProto.FLOAT, (), [2.0])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Softmax", ["mm"], ["probs"], axis=-1),
        helper.make_node("Mul", ["x", "two"], ["scaled"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 8))],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, (2, 4)),
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, (2, 8)),
        ],
        initializer=[w, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def graph(tmp_path):
    return two_output_graph(tmp_path / "vision.onnx")


def test_ort_runners_agree_per_output(graph):
    report = compare.compare_backends(
        graph, backends=("ort", "ort-noopt"), atol=1e-6, rtol=1e-6, iterations=2
    )
    assert report.runners == ["onnxruntime", "onnxruntime-noopt"]
    assert [o.output for o in report.outputs] == ["probs", "scaled"]
    assert all(o.passed and o.max_abs <= 1e-6 for o in report.outputs)
    assert report.outputs[0].shape == (2, 4)
    table = report.format()
    assert "probs" in table and "scaled" in table and "overall: PASS" in table


def test_tensorrt_is_reported_unavailable_with_its_reason(graph):
    # no engine at all
    report = compare.compare_backends(graph, backends=("ort", "trt"))
    assert report.runners == ["onnxruntime"]
    assert "no vision engine" in report.unavailable["tensorrt"]
    assert "nothing to compare" in report.format()
    # a valid engine beside the graph: its metadata is checked, then the missing GPU is the reason
    build_engine(graph, engine="rtx", compute_capabilities="86", log=lambda s: None)
    report = compare.compare_backends(graph, backends=("ort", "ort-noopt", "trt"))
    assert "metadata checked" in report.unavailable["tensorrt"]
    assert "no CUDA GPU" in report.unavailable["tensorrt"]
    assert report.passed and len(report.outputs) == 2


def test_given_inputs_and_a_failing_comparison(graph, tmp_path):
    feed = tmp_path / "feed.npz"
    np.savez(feed, x=np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8))
    report = compare.compare_backends(graph, backends=("ort", "ort-noopt"), inputs=feed)
    assert report.passed
    # a mismatch is FAIL, output by output
    report.outputs[1].passed = False
    assert "FAIL" in report.format().splitlines()[-2] and "overall: FAIL" in report.format()


def test_cli(graph, capsys):
    assert compare.main([str(graph), "--backends", "ort,ort-noopt,trt"]) == 0
    out = capsys.readouterr().out
    assert "unavailable  tensorrt" in out and "onnxruntime-noopt" in out and "PASS" in out
    assert compare.main([str(graph), "--backends", "ort,cuda"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    with pytest.raises(ArtifactError):
        compare.compare_backends(graph.with_name("missing.onnx"))
