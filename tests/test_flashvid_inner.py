"""FlashVID's inner-LLM stage (FastV pruning, official ``fastv_prune``) in the torch LLM backend.

The references are written here, apart from ``infomerge.compress.unified_inner``: a plain Hugging
Face eager forward (``output_attentions``, ``output_hidden_states``), the LAST row's head-mean
attention of layer K-1 over the video rows as a loop over heads, the top ``ceil(0.3 |V|)`` by a
Python sort (ties to the lower index), the other video rows dropped (no merge) with the kept rows'
original positions, and the layers from K run by a Hugging Face model holding only those layers.
One test recomputes that attention from the layer's weights by hand (RoPE written out).
"""

from __future__ import annotations

import copy
import json
import math
import types

import pytest
import torch
from test_unified_inner import _prompt, _random_qwen2, _tail

from infomerge.compress.flashvid import FlashVIDConfig
from infomerge.compress.unified_inner import InnerMerge, inner_keep, top_kept
from infomerge.errors import BudgetError, UsageError
from infomerge.runtime.llm_torch import TorchLLM


def _last_row_attention(out, layer: int, span) -> list[float]:
    """Head mean of layer ``layer``'s attention from the last row to each video row (a loop)."""
    att = out.attentions[layer][0]  # (H, T, T)
    s0, s1 = span
    heads = att.shape[0]
    return [sum(float(att[h, -1, s0 + v]) for h in range(heads)) / heads for v in range(s1 - s0)]


def _fastv_reference(ref, x, pos, span, layer, keep):
    """Returns (kept rows, states entering layer K, the attention ranked)."""
    out = ref(inputs_embeds=x, position_ids=pos, output_attentions=True, output_hidden_states=True)
    s0, s1 = span
    att = _last_row_attention(out, layer - 1, span)
    top = sorted(range(s1 - s0), key=lambda v: (-att[v], v))[:keep]
    rows = list(range(s0)) + sorted(s0 + v for v in top) + list(range(s1, x.shape[1]))
    return rows, out.hidden_states[layer][0][rows], att


def _fastv(span, layer, keep, queries):
    return InnerMerge(span[0], span[1], queries, layer, keep, FlashVIDConfig.inner_lambda, prune=True)


@pytest.fixture(scope="module")
def setup(one_torch_thread):
    model = _random_qwen2()
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return model, ref


@pytest.mark.parametrize("layer", [1, 3])
@torch.no_grad()
def test_prefill_matches_hf_with_the_same_decisions(setup, layer):
    model, ref = setup
    x, pos, span, _ = _prompt(64, seed=11)
    n_v = span[1] - span[0]
    keep = inner_keep(n_v, 0.3, "ceil")
    assert keep == math.ceil(0.3 * n_v) == 6
    llm = TorchLLM(model, eos_token_ids=[0])
    logits = llm.prefill(x, pos, 64, visual=_fastv(span, layer, keep, x.shape[1] - 1))
    rows, states, att = _fastv_reference(ref, x, pos, span, layer, keep)
    assert llm.last_merge["rows"].tolist() == rows
    assert llm.last_merge["target"] is None  # pruned, not merged
    assert torch.allclose(llm.last_merge["score"], torch.tensor(att), atol=1e-6)
    want = _tail(ref, layer)(inputs_embeds=states[None], position_ids=pos[:, rows]).logits[0, -1]
    assert torch.allclose(torch.from_numpy(logits), want, atol=1e-4, rtol=1e-4)
    # the loop over an eager-attention model (explicit causal mask) agrees with SDPA's is_causal
    eager = TorchLLM(ref, eos_token_ids=[0]).prefill(
        x, pos, 64, visual=_fastv(span, layer, keep, x.shape[1] - 1)
    )
    assert torch.allclose(torch.from_numpy(eager), want, atol=1e-4, rtol=1e-4)
    # the test can fail: the plain prefill and HoliTom's merge (same kept set) answer otherwise
    plain = TorchLLM(model, eos_token_ids=[0]).prefill(x, pos, 64)
    assert not torch.allclose(torch.from_numpy(plain), want, atol=1e-3)
    merged = TorchLLM(model, eos_token_ids=[0])
    m_logits = merged.prefill(
        x, pos, 64, visual=InnerMerge(span[0], span[1], x.shape[1] - 1, layer, keep, 0.0)
    )
    assert merged.last_merge["rows"].tolist() == rows
    assert not torch.allclose(torch.from_numpy(m_logits), want, atol=1e-3)


@torch.no_grad()
def test_index_invariants_and_cache(setup):
    model, _ = setup
    x, pos, span, _ = _prompt(64, seed=13)
    s0, s1 = span
    keep = inner_keep(s1 - s0, 0.3, "ceil")
    for layer in (1, 2, 3):
        llm = TorchLLM(model, eos_token_ids=[0])
        llm.prefill(x, pos, 64, visual=_fastv(span, layer, keep, x.shape[1] - 1))
        rows = llm.last_merge["rows"].tolist()
        kept = llm.last_merge["kept"].tolist()
        assert rows == sorted(set(rows))  # ascending, unique
        assert [r for r in rows if not s0 <= r < s1] == [*range(s0), *range(s1, x.shape[1])]  # text, newline
        assert [r - s0 for r in rows if s0 <= r < s1] == kept and len(kept) == keep
        assert all(0 <= k < s1 - s0 for k in kept)
        lengths = [llm._cache.layers[i].keys.shape[-2] for i in range(4)]
        assert lengths == [x.shape[1]] * layer + [x.shape[1] - (s1 - s0 - keep)] * (4 - layer)


@torch.no_grad()
def test_decode_after_pruning_matches_hf_without_cache(setup):
    """Steps after the pruned prefill = HF recomputation: every row below K, the kept rows from K,
    positions continuing from the uncompressed length (the pruned rows' positions are not reused)."""
    model, ref = setup
    layer = 2
    x, pos, span, next_pos = _prompt(64, seed=17)
    keep = inner_keep(span[1] - span[0], 0.3, "ceil")
    llm = TorchLLM(model, eos_token_ids=[0])
    llm.prefill(x, pos, 64, visual=_fastv(span, layer, keep, x.shape[1] - 1))
    rows, states, _ = _fastv_reference(ref, x, pos, span, layer, keep)
    tail = _tail(ref, layer)
    new = [3, 44]
    for i, tok in enumerate(new):
        got = torch.from_numpy(llm.step(tok, next_pos + i))
        emb = ref.get_input_embeddings()(torch.tensor([new[: i + 1]]))
        full_pos = torch.cat([pos, torch.arange(next_pos, next_pos + i + 1)[None]], dim=1)
        out = ref(inputs_embeds=torch.cat([x, emb], dim=1), position_ids=full_pos, output_hidden_states=True)
        h = out.hidden_states[layer][0]
        seq = torch.cat([states, h[x.shape[1] :]])[None]
        tail_pos = torch.cat([pos[:, rows], full_pos[:, x.shape[1] :]], dim=1)
        want = tail(inputs_embeds=seq, position_ids=tail_pos).logits[0, -1]
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), i


def _rope(v: torch.Tensor, p: int, theta: float) -> torch.Tensor:
    """RoPE of one (d,) vector at position p, written out: pairs (i, i + d/2) rotated by p theta^(-2i/d)."""
    d = v.shape[0]
    out = v.clone()
    for i in range(d // 2):
        a = p * theta ** (-2.0 * i / d)
        c, s = math.cos(a), math.sin(a)
        out[i] = v[i] * c - v[i + d // 2] * s
        out[i + d // 2] = v[i + d // 2] * c + v[i] * s
    return out


@torch.no_grad()
def test_decision_against_attention_by_hand(setup):
    """The ranking attention = a hand computation from layer K-1's weights: RMSNorm, q of the last
    row and k of every row (biases), RoPE at the gapped positions, per-head softmax, head mean."""
    model, ref = setup
    layer = 2
    x, pos, span, _ = _prompt(64, seed=19)
    s0, s1 = span
    keep = inner_keep(s1 - s0, 0.3, "ceil")
    llm = TorchLLM(model, eos_token_ids=[0])
    llm.prefill(x, pos, 64, visual=_fastv(span, layer, keep, x.shape[1] - 1))
    h_in = ref(inputs_embeds=x, position_ids=pos, output_hidden_states=True).hidden_states[layer - 1][0]
    block = model.model.layers[layer - 1]
    eps = model.config.rms_norm_eps
    hn = h_in / torch.sqrt((h_in * h_in).mean(-1, keepdim=True) + eps) * block.input_layernorm.weight
    att = block.self_attn
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    d = model.config.hidden_size // heads
    rope = getattr(model.config, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(model.config, "rope_theta", 10000.0)))
    q = att.q_proj(hn[-1]).view(heads, d)
    k = att.k_proj(hn).view(-1, kv_heads, d)
    t_len, last = x.shape[1], int(pos[0, -1])
    mean = torch.zeros(t_len)
    for hd in range(heads):
        qh = _rope(q[hd], last, theta)
        kh = torch.stack(
            [_rope(k[t, hd // (heads // kv_heads)], int(pos[0, t]), theta) for t in range(t_len)]
        )
        mean += torch.softmax(kh @ qh / math.sqrt(d), dim=0) / heads
    score = mean[s0:s1]
    assert torch.allclose(llm.last_merge["score"], score, atol=1e-5)
    hand = sorted(sorted(range(s1 - s0), key=lambda v: (-float(score[v]), v))[:keep])
    assert llm.last_merge["kept"].tolist() == hand


def test_top_kept_and_ceil_by_hand():
    score = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.5, 0.0])
    assert top_kept(score, 2).tolist() == [1, 2]  # three tied at 0.5: the lower indices
    assert top_kept(score, 4).tolist() == [1, 2, 3, 4]
    assert [inner_keep(n, 0.3, "ceil") for n in (1, 3, 10, 11, 125, 1230)] == [1, 1, 3, 4, 38, 369]
    assert inner_keep(125, 0.3) == 38 and inner_keep(11, 0.3) == 3  # round: 3.3 -> 3
    with pytest.raises(ValueError, match="rounding"):
        inner_keep(10, 0.3, "floor")


def test_config_defaults_expansion_and_retention():
    off = FlashVIDConfig(0.25)
    assert not off.inner_merge and off.vision_expansion == 1.0 and off.per_frame(196) == (35, 14)
    on = FlashVIDConfig(0.25, inner_merge=True)
    assert (on.inner_layer, on.inner_ratio, on.vision_expansion) == (20, 0.3, 1.25)
    assert on.per_frame(196) == (44, 18)  # T = ceil(196 x 0.25 x 1.25) = 62, the official vision side
    assert on.to_dict()["expansion"] == 1.25 and on.needs_inner_stage and not off.needs_inner_stage
    assert (on.inner_lambda, on.inner_queries, on.inner_rounding) == (0.0, "last", "ceil") and on.inner_prune
    # layer-averaged retention on the 28-layer Qwen2-7B: 20 layers see L T, 8 see ceil(0.3 L T)
    L, T = 32, sum(on.per_frame(196))
    avg = (20 * L * T + 8 * math.ceil(0.3 * L * T)) / 28 / (L * 196)
    assert abs(avg - 0.25) < 0.005, avg
    assert FlashVIDConfig(0.10, expansion=1.25).per_frame(196) == (18, 7)  # explicit e still honoured
    with pytest.raises(BudgetError, match="inner_layer"):
        FlashVIDConfig(0.25, inner_layer=0)
    with pytest.raises(BudgetError, match="inner_ratio"):
        FlashVIDConfig(0.25, inner_ratio=0.0)


def test_pipeline_switch_on_tiny():
    """tiny (2 layers): K clamps to 1, the last row ranks, ceil(0.3 |V|) rows stay; off by default."""
    from infomerge.runtime.backends import VideoTokens
    from infomerge.runtime.pipeline import Pipeline

    pipe = Pipeline.from_backbone("tiny", method="flashvid", retention=0.15, inner_merge=True)
    assert pipe.config.inner_merge and pipe.config.vision_expansion == 1.25 and pipe.info["inner_layer"] == 1
    g = torch.Generator().manual_seed(0)
    index = torch.sort(torch.randperm(32 * 196, generator=g)[:121]).values
    asm = pipe.assemble(VideoTokens(tokens=torch.randn(121, 64, generator=g), index=index))
    inner = pipe.inner_merge(asm)
    assert (inner.start, inner.stop) == asm.video_span and inner.stop - inner.start == 121
    # ceil(0.3 x 121) = ceil(36.3) = 37 (round would give 36)
    assert (inner.layer, inner.keep, inner.queries, inner.lam) == (1, 37, asm.length - 1, 0.0) and inner.prune
    pipe.prefill(asm, 2)
    assert pipe.llm._cache.layers[0].keys.shape[-2] == asm.length
    assert pipe.llm._cache.layers[1].keys.shape[-2] == asm.length - (121 - 37)
    assert pipe.llm.last_merge["target"] is None
    off = pipe.with_compression("flashvid", 0.15)
    assert not off.config.inner_merge and off.config.vision_expansion == 1.0 and off.inner_merge(asm) is None
    assert "inner_layer" not in off.info
    ort = copy.copy(pipe)
    ort.llm = types.SimpleNamespace(name="ort")
    with pytest.raises(UsageError, match="ort LLM is one graph"):
        ort.with_compression("flashvid", 0.15, inner_merge=True)


def test_refusals_before_loading():
    from infomerge.backbones.registry import get_backbone
    from infomerge.runtime.pipeline import Pipeline, check_inner_stage, make_config

    with pytest.raises(UsageError, match="ort LLM is one graph"):
        Pipeline.from_backbone("tiny", method="flashvid", llm="ort", inner_merge=True)
    with pytest.raises(UsageError, match="compress graph"):
        Pipeline.from_backbone("tiny", method="flashvid", compress_backend="ort", inner_merge=True)
    with pytest.raises(UsageError, match="no inner-LLM stage.*flashvid"):
        Pipeline.from_backbone("tiny", method="divprune", inner_merge=True)
    grid = next(b for b in ("tiny-video", "llava-video-7b") if get_backbone(b).newline == "grid")
    with pytest.raises(UsageError, match="grid"):
        check_inner_stage(
            make_config("flashvid", 0.15, True), "flashvid", "torch", "torch", get_backbone(grid)
        )
    # the others keep their note-and-outer-stage behaviour; FlashVID off needs nothing
    check_inner_stage(make_config("holitom", 0.15, True), "holitom", "ort", "ort", get_backbone("tiny"))
    check_inner_stage(make_config("flashvid", 0.15), "flashvid", "ort", "ort", get_backbone("tiny"))


def test_cli_flashvid_inner_on_and_refusals(tmp_path, capsys):
    from infomerge.runtime.cli import main

    out = tmp_path / "run.json"
    args = ["--method", "flashvid", "--retention", "0.15", "--frames", "8", "--max-new-tokens", "2"]
    rc = main([*args, "--llm", "torch", "--inner-merge", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "inner-LLM stage before layer 1" in captured.out
    record = json.loads(out.read_text())
    assert record["pipeline"]["method"] == "flashvid" and record["pipeline"]["inner_layer"] == 1
    # the vision side keeps about 8 x ceil(196 x 0.15 x 1.25) = 296 tokens (reference: a few more)
    assert 296 <= record["timings"]["video_tokens"] - 1 <= 296 + 8
    assert main([*args, "--llm", "ort", "--inner-merge"]) == 2
    assert "--llm torch" in capsys.readouterr().err
    assert main([*args, "--method", "dycoke", "--inner-merge"]) == 2
    assert "no inner-LLM stage" in capsys.readouterr().err
    assert main(["--artifacts", str(tmp_path), "--inner-merge"]) == 2
    assert "--backbone runs" in capsys.readouterr().err


def test_pipeline_switch_on_tiny_qwen():
    """Qwen2.5-VL (no newline, 3-row M-RoPE positions) is not refused: the stage keeps ceil(0.3 V)
    video rows, the top-k of the recorded score (ties to the lower row), and every later layer's
    cache holds only the kept rows."""
    from infomerge.backbones.registry import get_backbone
    from infomerge.runtime.backends import VideoTokens
    from infomerge.runtime.pipeline import Pipeline, check_inner_stage, make_config

    qwen = get_backbone("tiny-qwen")
    check_inner_stage(make_config("flashvid", 0.15, True), "flashvid", "torch", "torch", qwen)
    pipe = Pipeline.from_backbone("tiny-qwen", method="flashvid", retention=0.15, inner_merge=True)
    bb = pipe.backbone
    total = bb.groups_for(bb.frames) * bb.tokens_per_frame
    g = torch.Generator().manual_seed(1)
    v = 40
    index = torch.sort(torch.randperm(total, generator=g)[:v]).values
    width = pipe.llm.model.get_input_embeddings().weight.shape[1]
    asm = pipe.assemble(VideoTokens(tokens=torch.randn(v, width, generator=g), index=index))
    assert asm.position_ids.shape[0] == 3  # M-RoPE
    inner = pipe.inner_merge(asm)
    assert inner is not None and inner.prune and inner.stop - inner.start == v
    keep = math.ceil(0.3 * v)
    assert inner.keep == keep
    pipe.prefill(asm, 2)
    rows = pipe.llm.last_merge["rows"]
    kept = pipe.llm.last_merge["kept"]
    assert len(rows) == asm.length - (v - keep) and len(kept) == keep
    assert torch.equal(rows[inner.start : inner.start + keep], inner.start + kept)
    # the ranking score is the last row's head-mean attention over the video rows at layer K-1: the
    # top-k (ties to the lower row) of the score the loop recorded
    score = pipe.llm.last_merge["score"]
    order = sorted(range(v), key=lambda i: (-float(score[i]), i))[:keep]
    assert sorted(order) == kept.tolist()
    assert pipe.llm._cache.layers[-1].keys.shape[-2] == asm.length - (v - keep)
