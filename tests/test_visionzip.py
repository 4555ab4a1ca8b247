"""VisionZip (infomerge.compress.visionzip) against independent computations.

- a plain-Python loop implementation of the per-frame dominant / contextual split and merge;
- hand-computed cases (ties, budgets);
- the shape-static graph traced on synthetic features, run in ONNX Runtime on two real videos.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from _static_graph import FORBIDDEN as STATIC_FORBIDDEN
from _static_graph import export_static_graph

from infomerge.compress.methods import get_method
from infomerge.compress.visionzip import FixedBudgetVisionZip, VisionZipConfig, reference, visionzip
from infomerge.errors import BudgetError

FORBIDDEN = STATIC_FORBIDDEN | {"TopK"}


def loop_visionzip(h, a, keys, k):
    """Plain Python, one frame at a time: h, keys are lists [L][N][*], a [L][N]; k tokens per
    frame. Returns (index list, token list)."""
    L, N = len(h), len(h[0])
    d = (k * 54) // 64
    c = k - d
    kept = {}
    for f in range(L):
        ranked = sorted(range(N), key=lambda p: (-a[f][p], p))
        dom = set(ranked[:d])
        rest = [p for p in range(N) if p not in dom]
        step = max(1, len(rest) // c)
        targets = [rest[i] for i in range(0, len(rest), step)][:c]
        others = [p for p in rest if p not in targets]

        def unit(v):
            n = math.sqrt(sum(x * x for x in v)) or 1e-12
            return [x / n for x in v]

        groups = {t: [] for t in targets}
        for p in others:
            sims = [sum(x * y for x, y in zip(unit(keys[f][p]), unit(keys[f][t]))) for t in targets]
            best = max(range(c), key=lambda j: (sims[j], -j))
            groups[targets[best]].append(p)
        for p in dom:
            kept[f * N + p] = list(h[f][p])
        for t, members in groups.items():
            extra = [sum(h[f][m][i] for m in members) / max(1, len(members)) for i in range(len(h[f][t]))]
            kept[f * N + t] = [x + y for x, y in zip(h[f][t], extra)]
    index = sorted(kept)
    return index, [kept[i] for i in index]


def _video(frames, n, d, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(frames, n, d, generator=gen, dtype=dtype)
    return h, torch.rand(frames, n, generator=gen, dtype=dtype), torch.randn(frames, 3, generator=gen)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("r", [0.05, 0.1, 0.15, 0.25, 0.5, 1.0])
def test_reference_and_static_match_the_loop(seed, r):
    h, a, g = _video(3, 40, 6, seed)
    cfg = VisionZipConfig(r)
    k = math.ceil(r * 40 - 1e-9)
    index, tokens = loop_visionzip(h.tolist(), a.tolist(), h.tolist(), k)
    ref = reference(h, a, g, cfg)
    assert ref.index.tolist() == index
    assert torch.allclose(ref.tokens, torch.tensor(tokens, dtype=torch.float64), atol=1e-12)
    comp = FixedBudgetVisionZip(cfg, 3, 40, 6)
    tok, idx = comp(h.float(), a.float(), g)
    assert comp.budget == 3 * k == idx.numel()
    assert idx.tolist() == index
    assert torch.allclose(tok, torch.tensor(tokens, dtype=torch.float32), atol=1e-5)


def test_separate_keys_are_used_for_the_merge():
    h, a, g = _video(2, 30, 4, 7)
    keys = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cfg = VisionZipConfig(0.25)
    index, tokens = loop_visionzip(h.tolist(), a.tolist(), keys.tolist(), 8)
    got = visionzip(h, a, keys, cfg)
    assert got.index.tolist() == index
    assert torch.allclose(got.tokens, torch.tensor(tokens, dtype=torch.float64), atol=1e-12)
    # the registered reference and the static module with the official inputs passed explicitly
    # (A deliberately different from the attention used)
    other = torch.rand(2, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ref = reference(h, other, g, cfg, attention=a, keys=keys)
    assert ref.index.tolist() == index
    tok, idx = FixedBudgetVisionZip(cfg, 2, 30, 4)(h.float(), other.float(), g, a.float(), keys.float())
    assert idx.tolist() == index
    assert torch.allclose(tok, torch.tensor(tokens, dtype=torch.float32), atol=1e-5)
    assert reference(h, other, g, cfg).index.tolist() != index  # the fallback is another set


def test_hand_computed_frame_with_attention_ties():
    # N = 8, r = 0.5: K = 4, d = floor(4 * 54 / 64) = 3, c = 1. Attention ties at 0.5 on tokens
    # 1, 4, 6: the lower indices win, so dominant = {1, 4} plus the top token 7 (0.9).
    a = torch.tensor([[0.1, 0.5, 0.2, 0.0, 0.5, 0.3, 0.5, 0.9]])
    h = torch.arange(8.0).reshape(1, 8, 1) + 1.0  # positive scalars: every cosine = 1 -> j = 0
    ref = reference(h, a, torch.zeros(1, 1), VisionZipConfig(0.5))
    # rest = [0, 2, 3, 5, 6], step = 5 // 1 = 5, target = rest[0] = 0; others 2, 3, 5, 6 merge
    # onto it: h_0 + mean(h_2, h_3, h_5, h_6) = 1 + (3 + 4 + 6 + 7) / 4 = 6
    assert ref.index.tolist() == [0, 1, 4, 7]
    assert ref.tokens.flatten().tolist() == [6.0, 2.0, 5.0, 8.0]
    tok, idx = FixedBudgetVisionZip(VisionZipConfig(0.5), 1, 8, 1)(h, a, torch.zeros(1, 1))
    assert idx.tolist() == [0, 1, 4, 7] and tok.flatten().tolist() == [6.0, 2.0, 5.0, 8.0]


def test_budgets_at_the_studied_retentions_and_errors():
    # N = 196: K = ceil(r N); d = floor(54 K / 64)
    want = {0.05: (8, 2), 0.10: (16, 4), 0.15: (25, 5), 0.25: (41, 8), 1.0: (165, 31)}
    for r, dc in want.items():
        assert VisionZipConfig(r).per_frame(196) == dc
        assert VisionZipConfig(r).total_budget(32, 196) == 32 * sum(dc)
    assert VisionZipConfig(0.001).per_frame(196) == (0, 1)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(BudgetError):
            VisionZipConfig(bad)
    with pytest.raises(ValueError, match="expected H"):
        reference(torch.zeros(8, 3), torch.zeros(2, 4), torch.zeros(2, 1), VisionZipConfig(0.5))
    assert get_method("visionzip").fixed_budget is FixedBudgetVisionZip


@pytest.fixture(scope="module")
def videos():
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4"), video_features("tiny", "bikes.mp4")


def test_onnx_graph_is_static_and_correct_on_other_videos(videos, tmp_path):

    from infomerge.export.graphs import synthetic_features

    (h1, a1, g1), (h2, a2, g2) = videos
    L, N, D = h1.shape
    comp = FixedBudgetVisionZip(VisionZipConfig(0.15), L, N, D).eval()
    trace = synthetic_features(L, N, D, g1.shape[1], torch.float32)
    path = tmp_path / "compress.onnx"
    ops, sess = export_static_graph(comp, trace, path, FORBIDDEN)
    with torch.no_grad():
        eager1, eager2 = comp(h1, a1, g1), comp(h2, a2, g2)
    assert not torch.equal(eager1[1], eager2[1])
    for (h, a, g), (tok, idx) in (((h1, a1, g1), eager1), ((h2, a2, g2), eager2)):
        got_tok, got_idx = sess.run(None, {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()})
        assert got_idx.dtype == np.int64 and np.array_equal(got_idx, idx.numpy())
        peak = float(tok.abs().max())
        assert np.abs(got_tok - tok.numpy()).max() <= 1e-4 * peak
        ref = reference(h.double(), a.double(), g, VisionZipConfig(0.15))
        assert torch.equal(ref.index, idx)


@torch.no_grad()
def test_last_layer_stats_match_hf_attentions_and_keys():
    """The optional encoder outputs VisionZip's official form uses, against transformers' SigLIP
    (eager attention weights of the last layer; its k_proj output captured by a hook)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from infomerge.backbones.tiny import build_tiny_checkpoint
    from infomerge.backbones.vision import VisionEncoder
    from infomerge.video import load_frames, sample_video

    frames = load_frames(sample_video(), frames=3)
    enc = VisionEncoder.from_backbone("tiny")
    got = enc.last_layer_stats(frames)
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(
        build_tiny_checkpoint(), attn_implementation="eager"
    ).eval()
    tower = hf.model.vision_tower
    model = getattr(tower, "vision_model", tower)  # transformers 4 / 5 layouts
    last = model.encoder.layers[-1].self_attn
    seen = {}
    hook = last.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))
    out = tower(frames, output_attentions=True)
    hook.remove()
    att = out.attentions[-1]  # (F, heads, 729, 729)
    heads = att.shape[1]
    received = att.mean(1).mean(1)  # (F, 729): mean over heads, then over queries
    keys = seen["k"].reshape(3, 729, heads, -1).mean(2)  # (F, 729, head_dim)

    def pool(x):  # (F, 729, C) -> (F, 196, C), LLaVA-OneVision's bilinear 27 -> 14
        c = x.shape[-1]
        y = x.transpose(1, 2).reshape(3, c, 27, 27)
        y = torch.nn.functional.interpolate(y, size=(14, 14), mode="bilinear", align_corners=False)
        return y.reshape(3, c, 196).transpose(1, 2)

    torch.testing.assert_close(got["attention"], pool(received[..., None])[..., 0], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(got["keys"], pool(keys), rtol=1e-4, atol=1e-5)
    h, a, g = enc(frames)  # the default outputs are unchanged by the extra call
    assert got["keys"].shape == (3, 196, enc.backbone.vision_hidden // enc.backbone.vision_heads)


@torch.no_grad()
def test_encoder_extra_outputs_in_one_pass_and_static_graph_with_official_inputs(tmp_path):
    """extra_outputs appends the last-layer statistics to (H, A, g) unchanged; the static graph
    traced with them as inputs (synthetic) gives eager's indices in ONNX Runtime on real frames."""
    import onnxruntime as ort

    from infomerge.backbones.vision import VisionEncoder
    from infomerge.video import load_frames, sample_video

    enc = VisionEncoder.from_backbone("tiny").eval()
    px = {v: load_frames(sample_video(v), frames=8) for v in ("bigbuckbunny.mp4", "bikes.mp4")}
    feats = {}
    for v, frames in px.items():
        h, a, g = enc(frames)
        stats = enc.last_layer_stats(frames)
        enc.extra_outputs = ("attention", "keys")
        out = enc(frames)
        enc.extra_outputs = ()
        assert len(out) == 5
        for got, want in zip(out, (h, a, g, stats["attention"], stats["keys"])):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        feats[v] = out
    enc.extra_outputs = ("bogus",)
    with pytest.raises(ValueError, match="unknown vision outputs"):
        enc(px["bikes.mp4"])

    h1 = feats["bigbuckbunny.mp4"][0]
    L, N, D = h1.shape
    dk = feats["bigbuckbunny.mp4"][4].shape[-1]
    comp = FixedBudgetVisionZip(VisionZipConfig(0.25), L, N, D).eval()
    gen = torch.Generator().manual_seed(5)
    trace = (
        torch.randn(L, N, D, generator=gen),
        torch.rand(L, N, generator=gen),
        torch.randn(L, feats["bikes.mp4"][2].shape[-1], generator=gen),
        torch.rand(L, N, generator=gen),
        torch.randn(L, N, dk, generator=gen),
    )
    path = tmp_path / "compress.onnx"
    names = ["H", "A", "g", "attention", "keys"]
    torch.onnx.export(
        comp,
        trace,
        str(path),
        input_names=names,
        output_names=["tokens", "index"],
        opset_version=17,
        dynamo=False,
    )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & FORBIDDEN, ops & FORBIDDEN
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = []
    for out in feats.values():
        tok, idx = comp(*out)
        got_tok, got_idx = sess.run(None, {n: t.numpy() for n, t in zip(names, out)})
        assert np.array_equal(got_idx, idx.numpy())
        assert np.abs(got_tok - tok.numpy()).max() <= 1e-4 * float(tok.abs().max())
        ref = reference(*(t.double() for t in out[:3]), VisionZipConfig(0.25), attention=out[3], keys=out[4])
        assert torch.equal(ref.index, idx)
        results.append(idx)
    assert not torch.equal(*results)
