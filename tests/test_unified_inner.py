"""Unified's inner-LLM merge (arXiv 2603.21957 Eq. 9) in the torch LLM backend, against Hugging Face.

The reference here is written separately from ``infomerge.compress.unified_inner``: plain Hugging
Face forwards with eager attention (``output_attentions``, ``output_hidden_states``), the importance
and the merge as Python loops, the layers above K run by a Hugging Face model holding only those
layers, and decoding recomputed without a cache.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from infomerge.compress.unified import UnifiedConfig
from infomerge.compress.unified_inner import InnerMerge, inner_keep
from infomerge.errors import BudgetError, UsageError
from infomerge.runtime.llm_ort import OrtLLM
from infomerge.runtime.llm_torch import TorchLLM


def _random_qwen2(layers: int = 4, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # biases and norm gains random too
            p.add_(0.05 * torch.randn_like(p))
    return m


def _prompt(d: int, seed: int = 1):
    """(1, T, d) embeddings, positions with gaps like the runtime's, and the video rows [5, 25)."""
    g = torch.Generator().manual_seed(seed)
    t, nv, after, total = 5, 20, 8, 200
    index = torch.sort(torch.randperm(total, generator=g)[:nv]).values
    pos = torch.cat(
        [
            torch.arange(t),
            t + index,
            torch.tensor([t + total]),
            torch.arange(t + total + 1, t + total + 1 + after),
        ]
    )
    x = torch.randn(1, len(pos), d, generator=g)
    x[0, t : t + nv] += (
        2.0 * torch.randn(4, d, generator=g)[torch.randint(0, 4, (nv,), generator=g)]
    )  # clusters
    return x, pos[None], (t, t + nv), t + total + 1 + after


def _reference_merge(ref, x, pos, span, layer, keep, lam):
    """Independent: HF eager forward, importance and merge as loops. Returns (rows, merged states)."""
    out = ref(inputs_embeds=x, position_ids=pos, output_attentions=True, output_hidden_states=True)
    s0, s1 = span
    q0 = s1 + 1  # T: the rows after the newline
    probs = out.attentions[layer - 1][0].mean(0)  # (T, T), head mean of layer K-1
    h = out.hidden_states[layer][0]  # states leaving layer K-1
    n_v = s1 - s0
    a = [max(float(probs[t, s0 + v]) for t in range(q0, x.shape[1])) for v in range(n_v)]
    cos = torch.nn.functional.cosine_similarity
    s = [max(float(cos(h[s0 + v], h[t], dim=0)) for t in range(q0, x.shape[1])) for v in range(n_v)]

    def mm(z):
        lo, hi = min(z), max(z)
        return [0.0] * len(z) if hi <= lo else [(e - lo) / (hi - lo) for e in z]

    imp = [(1 - lam) * p + lam * q for p, q in zip(mm(a), mm(s))]
    ranked = sorted(range(n_v), key=lambda v: (-imp[v], v))
    kept = sorted(ranked[:keep])
    merged = {k: h[s0 + k].clone() for k in kept}
    for v in range(n_v):
        if v in merged:
            continue
        sims = [float(cos(h[s0 + v], h[s0 + k], dim=0)) for k in kept]
        best = kept[sims.index(max(sims))]
        merged[best] = (merged[best] + h[s0 + v]) / 2
    rows = list(range(s0)) + [s0 + k for k in kept] + list(range(s1, x.shape[1]))
    states = torch.stack([merged[r - s0] if s0 <= r < s1 else h[r] for r in rows])
    return rows, states, imp, out


def _tail(ref, layer):
    """A Hugging Face model holding only layers K.. (fed hidden states as inputs_embeds).

    Called with its cache on: without one, transformers reads position-id gaps as packed sequences
    and masks across them (the runtime always passes a cache)."""
    tail = copy.deepcopy(ref)
    tail.model.layers = torch.nn.ModuleList(list(tail.model.layers)[layer:])
    tail.config.num_hidden_layers = len(tail.model.layers)
    for i, block in enumerate(tail.model.layers):  # its own cache numbers them from 0
        block.self_attn.layer_idx = i
    return tail


@pytest.fixture(scope="module")
def setup(one_torch_thread):
    model = _random_qwen2()
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return model, ref


@pytest.mark.parametrize("layer", [1, 2, 3])
@torch.no_grad()
def test_prefill_matches_hf_layers_and_merge(setup, layer):
    model, ref = setup
    llm = TorchLLM(model, eos_token_ids=[0])
    x, pos, span, next_pos = _prompt(64)
    keep = inner_keep(span[1] - span[0])
    logits = llm.prefill(x, pos, 64, visual=InnerMerge(span[0], span[1], span[1] + 1, layer, keep, 0.5))
    rows, states, imp, _ = _reference_merge(ref, x, pos, span, layer, keep, 0.5)
    assert llm.last_merge["rows"].tolist() == rows
    assert torch.allclose(llm.last_merge["score"], torch.tensor(imp), atol=1e-5)
    want = _tail(ref, layer)(inputs_embeds=states[None], position_ids=pos[:, rows]).logits[0, -1]
    assert torch.allclose(torch.from_numpy(logits), want, atol=1e-4, rtol=1e-4)
    # without the merge the answer differs (the test can fail)
    plain = TorchLLM(model, eos_token_ids=[0]).prefill(x, pos, 64)
    assert not torch.allclose(torch.from_numpy(plain), want, atol=1e-3)
    # KV cache: layers 0..K-1 hold every row, K.. the merged rows
    lengths = [llm._cache.layers[i].keys.shape[-2] for i in range(4)]
    assert lengths == [x.shape[1]] * layer + [len(rows)] * (4 - layer)
    assert len(rows) == x.shape[1] - (span[1] - span[0] - keep)


@torch.no_grad()
def test_attention_rows_against_eager(setup):
    """The recomputed rows equal HF eager attention probabilities of layer K-1 (head mean)."""
    model, ref = setup
    llm = TorchLLM(model, eos_token_ids=[0])
    x, pos, span, _ = _prompt(64, seed=3)
    out = ref(inputs_embeds=x, position_ids=pos, output_attentions=True, output_hidden_states=True)
    rows = torch.arange(span[1] + 1, x.shape[1])
    for layer in (0, 2):
        got = llm._attention_rows(layer, out.hidden_states[layer], pos, rows)
        want = out.attentions[layer][0].mean(0)[rows]
        assert torch.allclose(got, want, atol=1e-6), layer
        assert torch.allclose(got.sum(-1), torch.ones(len(rows)), atol=1e-5)


@torch.no_grad()
def test_decode_after_merge_matches_hf_without_cache(setup):
    """Steps after the merged prefill = HF recomputation: all rows below K, merged rows from K."""
    model, ref = setup
    layer = 2
    llm = TorchLLM(model, eos_token_ids=[0])
    x, pos, span, next_pos = _prompt(64, seed=5)
    keep = inner_keep(span[1] - span[0])
    llm.prefill(x, pos, 64, visual=InnerMerge(span[0], span[1], span[1] + 1, layer, keep, 0.5))
    rows, states, _, _ = _reference_merge(ref, x, pos, span, layer, keep, 0.5)
    tail = _tail(ref, layer)
    new = [5, 17, 42]
    for i, tok in enumerate(new):
        got = torch.from_numpy(llm.step(tok, next_pos + i))
        emb = ref.get_input_embeddings()(torch.tensor([new[: i + 1]]))
        full_x = torch.cat([x, emb], dim=1)
        full_pos = torch.cat([pos, torch.arange(next_pos, next_pos + i + 1)[None]], dim=1)
        h = ref(inputs_embeds=full_x, position_ids=full_pos, output_hidden_states=True).hidden_states[layer][
            0
        ]
        seq = torch.cat([states, h[x.shape[1] :]])[None]
        tail_pos = torch.cat([pos[:, rows], full_pos[:, x.shape[1] :]], dim=1)
        want = tail(inputs_embeds=seq, position_ids=tail_pos).logits[0, -1]
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), i
    assert llm._cache.layers[0].keys.shape[-2] == x.shape[1] + len(new)
    assert llm._cache.layers[3].keys.shape[-2] == len(rows) + len(new)


def test_keep_counts_and_config():
    assert [inner_keep(b) for b in (63, 125, 314, 627, 941, 1254)] == [32, 62, 157, 314, 470, 627]
    c = UnifiedConfig.paper(0.02)
    assert c.inner_merge and c.inner_layer == 18 and c.inner_ratio == 0.5 and c.inner_lambda == 0.5
    with pytest.raises(BudgetError):
        UnifiedConfig(inner_layer=0)


def test_bad_layer_refused(setup):
    llm = TorchLLM(setup[0], eos_token_ids=[0])
    x, pos, span, _ = _prompt(64)
    with pytest.raises(ValueError, match="layer"):
        llm.prefill(x, pos, 64, visual=InnerMerge(span[0], span[1], span[1] + 1, 4, 10, 0.5))


def test_ort_llm_refuses_the_inner_merge():
    with pytest.raises(UsageError, match="torch LLM backend"):
        OrtLLM.prefill(object.__new__(OrtLLM), torch.zeros(1, 3, 8), torch.zeros(1, 3), 4, visual=object())


@pytest.fixture(scope="module")
def tiny_pipe():
    from infomerge.runtime.pipeline import Pipeline

    return Pipeline.from_backbone("tiny", method="unified", retention=0.02)


def _tokens(pipe, seed=0):
    from infomerge.runtime.backends import VideoTokens

    g = torch.Generator().manual_seed(seed)
    index = torch.sort(torch.randperm(32 * 196, generator=g)[:125]).values
    return VideoTokens(tokens=torch.randn(125, 64, generator=g), index=index)


def test_pipeline_tiny_switch(tiny_pipe, capsys):
    """tiny (2 layers): K clamps to 1, 62 of 125 kept; inner_merge=False is the plain prefill."""
    pipe = tiny_pipe
    asm = pipe.assemble(_tokens(pipe))
    inner = pipe.inner_merge(asm)
    assert pipe.info["inner_layer"] == 1 and inner.layer == 1 and inner.keep == 62
    assert (inner.start, inner.stop) == asm.video_span and inner.stop - inner.start == 125
    assert int(asm.position_ids[0, inner.stop]) == inner.start + 32 * 196  # the newline's row
    logits = pipe.prefill(asm, 2)
    cache = pipe.llm._cache
    assert cache.layers[0].keys.shape[-2] == asm.length
    assert cache.layers[1].keys.shape[-2] == asm.length - 63
    off = copy.copy(pipe)
    off.config = UnifiedConfig(retention=0.02, inner_merge=False)
    assert off.inner_merge(asm) is None
    plain = off.prefill(asm, 2)
    # the plain prefill runs the plain decoder: one static cache, every layer holds every row
    assert pipe.llm._cache.filled == asm.length and pipe.llm.decoder is not None
    assert not (logits == plain).all()
    # the ort LLM: outer stage only, a printed note
    ort = copy.copy(pipe)
    ort.llm = types.SimpleNamespace(name="ort")
    info = ort._compression_info("unified")
    assert ort.inner_merge(asm) is None and info["inner_layer"] is None
    assert "needs the torch LLM backend" in capsys.readouterr().err
