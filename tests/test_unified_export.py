"""Unified compress.onnx: forbidden ops absent, and correct on videos other than the tracing input.

The fixed-budget module is traced on synthetic features and run in ONNX Runtime on two real
videos' features (bigbuckbunny, bikes through the tiny encoder): indices must equal the eager
module's, tokens agree to fp32 rounding. The two videos' eager outputs differ from each other, so
a graph that had frozen the tracing input's decisions would fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from infomerge.compress.unified import UnifiedConfig
from infomerge.compress.unified_static import FixedBudgetUnified

FORBIDDEN = {"NonZero", "Unique", "Loop", "If", "Scan", "Einsum", "ScatterND", "Sort"}
TOPK_LIMIT = 3840


def _constant(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return onnx.numpy_helper.to_array(n.attribute[0].t)
    return None


@pytest.fixture(scope="module")
def videos():
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4"), video_features("tiny", "bikes.mp4")


def test_unified_onnx_is_static_and_correct_on_real_videos(videos, tmp_path):
    import onnxruntime as ort

    (h1, a1, g1), (h2, a2, g2) = videos
    comp = FixedBudgetUnified(UnifiedConfig.paper(0.02), *h1.shape).eval()
    gen = torch.Generator().manual_seed(0)
    synth = (
        torch.randn(h1.shape, generator=gen),
        torch.rand(a1.shape, generator=gen),
        torch.randn(g1.shape, generator=gen),
    )
    path = tmp_path / "compress.onnx"
    torch.onnx.export(
        comp,
        synth,
        str(path),
        input_names=["H", "A", "g"],
        output_names=["tokens", "index"],
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN, ops & FORBIDDEN
    for n in model.graph.node:
        if n.op_type == "TopK":
            k = _constant(model, n.input[1])
            assert k is not None and int(k.max()) <= TOPK_LIMIT
        if n.op_type.startswith("Scatter"):
            assert all(a.name != "reduction" or a.s in (b"", b"none") for a in n.attribute)
    assert [i.name for i in model.graph.input] == ["H", "A", "g"]
    assert path.stat().st_size < 20e6  # no (M, M) mask folded into an initializer

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        eager = [comp(h, a, g) for h, a, g in ((h1, a1, g1), (h2, a2, g2))]
    assert not torch.equal(eager[0][1], eager[1][1])
    for (h, a, g), (tok, idx) in zip(videos, eager):
        got_tok, got_idx = sess.run(None, {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()})
        assert got_idx.dtype == np.int64 and got_idx.shape == (125,)
        assert np.array_equal(got_idx, idx.numpy())
        np.testing.assert_allclose(got_tok, tok.numpy(), rtol=0, atol=1e-5 * float(tok.abs().max()))
