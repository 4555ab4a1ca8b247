"""compress.onnx: forbidden ops absent, and correct for a video other than the tracing one.

The graph is exported with one real video's features (bigbuckbunny through the tiny encoder) and
run in ONNX Runtime on another's (bikes): indices must equal the eager module's, tokens agree to
fp32 rounding. The two videos' eager outputs differ, so a graph that had frozen the tracing
video's decisions (a ``.item()``, ``.tolist()`` or Python ``if`` turned into a constant) would
fail the comparison.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor

FORBIDDEN = {"NonZero", "Unique", "Loop", "If", "Scan", "Einsum", "ScatterND"}
TOPK_LIMIT = 3840


@pytest.fixture(scope="module")
def videos():
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4"), video_features("tiny", "bikes.mp4")


def _constant_value(model: onnx.ModelProto, name: str):
    for t in model.graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return onnx.numpy_helper.to_array(n.attribute[0].t)
    return None


def export(comp: FixedBudgetCompressor, feats, path) -> onnx.ModelProto:
    torch.onnx.export(
        comp,
        tuple(feats),
        str(path),
        input_names=["H", "A", "g"],
        output_names=["tokens", "index"],
        opset_version=17,
        dynamo=False,
    )
    return onnx.load(str(path))


@pytest.mark.parametrize("preset", ["infomerge", "fastvid"])
def test_onnx_graph_is_static_and_correct_on_another_video(preset, videos, tmp_path):
    import onnxruntime as ort

    cfg = InfoMergeConfig.paper(0.15) if preset == "infomerge" else InfoMergeConfig.fastvid(0.15)
    (h1, a1, g1), (h2, a2, g2) = videos
    comp = FixedBudgetCompressor(cfg, *h1.shape).eval()
    model = export(comp, (h1, a1, g1), tmp_path / "compress.onnx")

    # forbidden ops: none, and the only TopK has a constant k <= 3840
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN, ops & FORBIDDEN
    for n in model.graph.node:
        if n.op_type == "TopK":
            k = _constant_value(model, n.input[1])
            assert k is not None and int(k.max()) <= TOPK_LIMIT
        if n.op_type in ("ScatterElements", "ScatterND"):
            assert all(a.name != "reduction" or a.s in (b"", b"none") for a in n.attribute)
    assert [i.name for i in model.graph.input] == ["H", "A", "g"]
    assert [o.name for o in model.graph.output] == ["tokens", "index"]

    sess = ort.InferenceSession(str(tmp_path / "compress.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        eager1 = comp(h1, a1, g1)
        eager2 = comp(h2, a2, g2)
    # a graph replaying the tracing video's decisions would return eager1's indices on video 2
    assert not torch.equal(eager1[1], eager2[1])
    for (h, a, g), (tok, idx) in (((h2, a2, g2), eager2), ((h1, a1, g1), eager1)):
        got_tok, got_idx = sess.run(None, {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()})
        assert got_idx.dtype == np.int64 and np.array_equal(got_idx, idx.numpy())
        np.testing.assert_allclose(got_tok, tok.numpy(), rtol=0, atol=1e-5 * float(tok.abs().max()))


def test_exact_richness_mode_exports_with_a_fourth_input(videos, tmp_path):
    import onnxruntime as ort

    (h1, a1, g1), (h2, a2, g2) = videos
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.05), *h1.shape, richness="input").eval()
    r1, r2 = comp.exact_richness(h1, g1), comp.exact_richness(h2, g2)
    path = tmp_path / "compress_exact.onnx"
    torch.onnx.export(
        comp,
        (h1, a1, g1, r1),
        str(path),
        input_names=["H", "A", "g", "richness"],
        output_names=["tokens", "index"],
        opset_version=17,
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tok, idx = sess.run(None, {"H": h2.numpy(), "A": a2.numpy(), "g": g2.numpy(), "richness": r2.numpy()})
    with torch.no_grad():
        etok, eidx = comp(h2, a2, g2, r2)
    assert np.array_equal(idx, eidx.numpy())
    np.testing.assert_allclose(tok, etok.numpy(), rtol=0, atol=1e-5 * float(etok.abs().max()))


def test_cli_writes_and_validates_compress_graphs(tmp_path):
    """``infomerge-export --method fastvid --retention 0.1 --fused`` on the tiny backbone."""
    import json

    from infomerge.export.cli import main

    out = tmp_path / "art"
    assert (
        main(
            [
                "--backbone",
                "tiny",
                "--method",
                "fastvid",
                "--retention",
                "0.1",
                "--fused",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    comp = manifest["graphs"]["compress"]
    assert comp["tokens_kept"] == 608 and comp["method"] == "fastvid"
    assert comp["validation"]["ok"] and comp["validation"]["outputs"]["index"]["max_abs_diff"] == 0
    assert comp["inputs"]["H"]["shape"] == [32, 196, 64] and comp["outputs"]["index"]["dtype"] == "int64"
    fused = manifest["graphs"]["vision_compress"]
    assert fused["validation"]["ok"] and list(fused["inputs"]) == ["pixel_values"]
    assert (out / "compress.onnx").is_file() and (out / "vision_compress.onnx").is_file()


def test_density_scores_are_bit_identical_in_onnx_runtime(videos, tmp_path):
    """The anchor ranking's input (the density score) must not depend on the backend's MatMul,
    ReduceSum, Exp or Sqrt kernels: ORT, with and without graph optimizations, gives eager's bits."""
    import onnxruntime as ort

    from infomerge.compress.fixed_budget import rank_desc

    (h1, a1, _), (h2, a2, _) = videos
    comp = FixedBudgetCompressor(InfoMergeConfig.fastvid(0.15), *h1.shape).eval()

    class Density(torch.nn.Module):
        def forward(self, H, A):
            cpos = comp._candidate_positions(~(rank_desc(A) < comp.salient_count))
            L, N, D = comp.frames, comp.n, comp.hidden
            rows = (cpos + torch.arange(L).unsqueeze(1) * N).reshape(-1)
            return comp._density(H, H.reshape(L * N, D).index_select(0, rows).reshape(L, -1, D), cpos)

    mod, path = Density(), tmp_path / "density.onnx"
    torch.onnx.export(mod, (h1, a1), str(path), input_names=["H", "A"], opset_version=17, dynamo=False)
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for h, a in ((h2, a2), (h1, a1)):
            (got,) = sess.run(None, {"H": h.numpy(), "A": a.numpy()})
            with torch.no_grad():
                assert np.array_equal(got, mod(h, a).numpy())
