"""HoliTom's inner-LLM merge (``Qwen2Model_holitom``) in the torch LLM backend, against Hugging Face.

The reference is written here, apart from ``infomerge.compress.unified_inner``: a plain Hugging
Face eager forward (``output_attentions``, ``output_hidden_states``), the LAST row's head-mean
attention of layer K-1 over the video rows, the official order of operations as loops (top
``round(|V| / 2)`` by attention in attention order, each other token into its most cosine-similar
kept token in sequence order, ``(kept + v) / 2``), and the layers from K run by a Hugging Face model
holding only those layers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_unified_inner import _prompt, _random_qwen2, _tail

from infomerge.compress.holitom import HoliTomConfig
from infomerge.compress.unified_inner import InnerMerge, inner_keep
from infomerge.runtime.llm_torch import TorchLLM


def _holitom_reference(ref, x, pos, span, layer, keep):
    """Returns (kept rows, states entering layer K)."""
    out = ref(inputs_embeds=x, position_ids=pos, output_attentions=True, output_hidden_states=True)
    s0, s1 = span
    last = out.attentions[layer - 1][0].mean(0)[-1]  # (T,) head mean, last row
    h = out.hidden_states[layer][0].clone()  # states leaving layer K-1
    att = [float(last[s0 + v]) for v in range(s1 - s0)]
    top = sorted(range(s1 - s0), key=lambda v: -att[v])[:keep]  # attention order (official topk)
    cos = torch.nn.functional.cosine_similarity
    sims = {v: [float(cos(h[s0 + v], h[s0 + k], dim=0)) for k in top] for v in range(s1 - s0) if v not in top}
    for v in sorted(sims):  # sequence order; similarities of the unmerged states
        k = top[sims[v].index(max(sims[v]))]
        h[s0 + k] = (h[s0 + k] + h[s0 + v]) / 2
    rows = list(range(s0)) + sorted(s0 + k for k in top) + list(range(s1, x.shape[1]))
    return rows, h[rows]


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
    x, pos, span, _ = _prompt(64, seed=7)
    keep = inner_keep(span[1] - span[0])
    llm = TorchLLM(model, eos_token_ids=[0])
    merge = InnerMerge(span[0], span[1], x.shape[1] - 1, layer, keep, HoliTomConfig.inner_lambda)
    logits = llm.prefill(x, pos, 64, visual=merge)
    rows, states = _holitom_reference(ref, x, pos, span, layer, keep)
    assert llm.last_merge["rows"].tolist() == rows
    want = _tail(ref, layer)(inputs_embeds=states[None], position_ids=pos[:, rows]).logits[0, -1]
    assert torch.allclose(torch.from_numpy(logits), want, atol=1e-4, rtol=1e-4)
    # Unified's importance (T = every text row, lambda 0.5) keeps another set: the test can fail
    other = TorchLLM(model, eos_token_ids=[0])
    other.prefill(x, pos, 64, visual=InnerMerge(span[0], span[1], span[1] + 1, layer, keep, 0.5))
    assert other.last_merge["rows"].tolist() != rows


def test_config_switch_and_pipeline(capsys):
    from infomerge.runtime.backends import VideoTokens
    from infomerge.runtime.pipeline import Pipeline

    cfg = HoliTomConfig(0.15)
    assert cfg.inner_merge and cfg.inner_layer == 18 and cfg.inner_ratio == 0.5
    assert cfg.inner_lambda == 0.0 and cfg.inner_queries == "last"
    pipe = Pipeline.from_backbone("tiny", method="holitom", retention=0.15)
    g = torch.Generator().manual_seed(0)
    index = torch.sort(torch.randperm(32 * 196, generator=g)[:96]).values
    asm = pipe.assemble(VideoTokens(tokens=torch.randn(96, 64, generator=g), index=index))
    inner = pipe.inner_merge(asm)
    assert (inner.start, inner.stop, inner.layer, inner.keep) == (*asm.video_span, 1, 48)
    assert inner.queries == asm.length - 1 and inner.lam == 0.0
    pipe.prefill(asm, 2)
    assert pipe.llm._cache.layers[1].keys.shape[-2] == asm.length - 48
    off = copy.copy(pipe)
    off.config = HoliTomConfig(0.15, inner_merge=False)  # "HoliTom (w/o M)"
    assert off.inner_merge(asm) is None
