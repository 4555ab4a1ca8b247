"""The plain-torch Qwen2 decoder against transformers' own forward (the reference it reimplements).

- logits equal ``Qwen2ForCausalLM``'s full forward (no cache) at gapped RoPE positions, for a
  prompt on an empty cache (``is_causal``), decode steps (one row) and a chunk after cached rows
  (the explicit mask), with grouped-query attention (4 query heads, 2 KV heads);
- a cache reserved too small grows and changes nothing;
- M-RoPE: equal to transformers' Qwen2.5-VL text model with (3, 1, T) positions whose rows differ;
- ``to_transformers`` holds the same tensors (no copy) and computes the same logits;
- configs the decoder does not cover are named and loaded with transformers' model instead;
- the torch LLM of a run imports none of transformers' modelling (the start-up saving).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infomerge.backbones.qwen2_decoder import build_decoder, unsupported
from infomerge.backbones.tiny import build_tiny_checkpoint

TOL = 2e-6  # fp32; the random models' logits are O(0.1)


#: the small text-model sizes both transformers references are built with
SIZES = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def _qwen2_config(**extra):
    from transformers import Qwen2Config

    return Qwen2Config(
        **SIZES,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        **extra,
    )


def _hf_qwen2(config, seed=0):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # biases and norms away from their 0 / 1 initialisation
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_logits(model, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """transformers' full forward, no cache; the all-ones mask says one sequence (without it,
    transformers 5 reads gaps in ``position_ids`` as packed sequences and masks across them)."""
    mask = torch.ones(pos.shape[-2:], dtype=torch.long)
    return model(inputs_embeds=x, position_ids=pos, attention_mask=mask, use_cache=False).logits


def _positions(t: int, seed=1) -> torch.Tensor:
    """(1, t) increasing positions with gaps, like a compressed video's."""
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randint(1, 5, (1, t), generator=g), dim=1)


@torch.no_grad()
def test_logits_equal_transformers_forward_prompt_steps_and_chunk():
    hf = _hf_qwen2(_qwen2_config())
    ours = build_decoder(hf.config, hf.state_dict())
    x = torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(2))
    pos = _positions(12)
    want = _hf_logits(hf, x, pos)  # (1, 12, V)

    cache = ours.new_cache(capacity=12)
    prompt = ours(x[:, :7], pos[:, :7], cache, logits_to_keep=0)  # empty cache: is_causal
    step = ours(x[:, 7:8], pos[:, 7:8], cache)  # one row
    chunk = ours(x[:, 8:], pos[:, 8:], cache, logits_to_keep=0)  # 4 rows after 8 cached: mask
    assert cache.filled == 12
    torch.testing.assert_close(prompt, want[:, :7], atol=TOL, rtol=0)
    torch.testing.assert_close(step, want[:, 7:8], atol=TOL, rtol=0)
    torch.testing.assert_close(chunk, want[:, 8:], atol=TOL, rtol=0)
    assert (want[:, 8:] - want[:, 8:].roll(1, dims=1)).abs().max() > 100 * TOL  # rows differ


@torch.no_grad()
def test_a_small_cache_grows_and_tied_embeddings_share_the_tensor():
    hf = _hf_qwen2(_qwen2_config())
    hf.config.tie_word_embeddings = True
    hf.tie_weights()
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    ours = build_decoder(hf.config, state)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    x, pos = torch.randn(1, 9, 32), _positions(9, seed=3)
    want = _hf_logits(hf, x, pos)
    cache = ours.new_cache(capacity=2)
    got = [ours(x[:, :5], pos[:, :5], cache)] + [
        ours(x[:, i : i + 1], pos[:, i : i + 1], cache) for i in range(5, 9)
    ]
    assert cache.capacity >= 9 and cache.filled == 9
    torch.testing.assert_close(torch.cat(got, 1), want[:, [4, 5, 6, 7, 8]], atol=TOL, rtol=0)


@torch.no_grad()
def test_mrope_equals_transformers_qwen2_5_vl_text_model():
    from transformers import Qwen2_5_VLConfig

    from infomerge.backbones.qwen_text import QwenTextLM

    config = Qwen2_5_VLConfig(
        text_config=dict(
            **SIZES,
            rope_theta=100.0,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
        )
    ).text_config
    torch.manual_seed(0)
    hf = QwenTextLM(config).eval()
    ours = build_decoder(config, hf.state_dict())
    assert ours.shape.mrope_section == (1, 1, 2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 10, 32, generator=g)
    pos = torch.stack([_positions(10, seed=s) for s in (5, 6, 7)])  # (3, 1, 10): t, h, w differ
    want = hf(inputs_embeds=x, position_ids=pos, logits_to_keep=0).logits
    cache = ours.new_cache(10)
    got = torch.cat(
        [ours(x[:, :6], pos[..., :6], cache, 0)]
        + [ours(x[:, i : i + 1], pos[..., i : i + 1], cache) for i in range(6, 10)],
        1,
    )
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    same_rows = hf(inputs_embeds=x, position_ids=pos[:1].expand(3, -1, -1), logits_to_keep=0).logits
    assert (same_rows - want).abs().max() > 10 * TOL  # the three rows matter


@torch.no_grad()
def test_to_transformers_holds_the_same_tensors():
    hf = _hf_qwen2(_qwen2_config())
    ours = build_decoder(hf.config, hf.state_dict())
    back = ours.to_transformers()
    assert type(back).__name__ == "Qwen2ForCausalLM"
    for name, p in back.named_parameters():
        assert p.data_ptr() == dict(ours.named_parameters())[name].data_ptr(), name
    x, pos = torch.randn(1, 6, 32), _positions(6)
    torch.testing.assert_close(
        _hf_logits(back, x, pos),
        _hf_logits(hf, x, pos),
        atol=0,
        rtol=0,
    )


def test_configs_it_does_not_cover_are_named_and_use_transformers(tmp_path):
    from transformers import Qwen2Config

    from infomerge.backbones.qwen2_decoder import decoder_shape

    assert unsupported(_qwen2_config()) is None
    assert unsupported(_qwen2_config(hidden_act="gelu")) == "hidden_act 'gelu'"
    assert "sliding" in unsupported(
        _qwen2_config(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    )
    linear = Qwen2Config(rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert unsupported(linear) == "rope type 'linear'"
    with pytest.raises(ValueError, match="does not cover rope type 'linear'"):
        decoder_shape(linear)


_IMPORTS_OF_A_RUN = """
import json, sys
from infomerge.runtime.llm_torch import TorchLLM
import torch
llm = TorchLLM.from_checkpoint(sys.argv[1], [0])
llm.prefill(torch.zeros(1, 3, 64), torch.arange(3)[None], 4)
llm.step(5, 3)
print(json.dumps([type(llm.model).__name__] + sorted(sys.modules)))
"""


def test_a_run_imports_none_of_transformers_modelling():
    # built here: on a fresh machine building the cached checkpoint imports transformers' modelling
    checkpoint = build_tiny_checkpoint()
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS_OF_A_RUN, str(checkpoint)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    kind, *modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert kind == "Qwen2Decoder"
    heavy = [  # transformers' model classes and what their modules import (docs/runtime.md)
        m
        for m in modules
        if m.startswith("transformers.models.")
        and ".modeling_" in m
        and ".auto." not in m
        or m in ("transformers.modeling_utils", "transformers.modeling_layers", "transformers.masking_utils")
        or m.split(".")[0] in ("sympy", "triton")
        or m.startswith(("torch._dynamo", "torch.distributed.tensor", "scipy.optimize"))
    ]
    assert heavy == []
