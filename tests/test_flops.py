"""Prefill FLOPs calculator against the InfoMerge paper (App. A.2, Table 1)."""

from __future__ import annotations

import pytest

from infomerge.bench.flops import (
    PAPER_VIDEO_TOKENS,
    QWEN2_0_5B,
    QWEN2_7B,
    LLMDims,
    dims_for_backbone,
    dims_from_config,
    layer_flops,
    nominal_tokens,
    paper_flops,
    prefill_flops,
    tflops,
)
from infomerge.compress.config import InfoMergeConfig
from infomerge.errors import BudgetError


def test_full_video_is_48_82_tflops():
    assert PAPER_VIDEO_TOKENS == 6272
    assert round(tflops(prefill_flops(6272)), 2) == 48.82


@pytest.mark.parametrize(
    ("retention", "tokens", "paper"), [(0.15, 941, 6.32), (0.10, 627, 4.17), (0.05, 314, 2.07)]
)
def test_table1_values_from_nominal_token_counts(retention, tokens, paper):
    assert nominal_tokens(retention) == tokens
    assert round(tflops(paper_flops(retention)), 2) == paper
    assert round(tflops(prefill_flops(tokens)), 2) == paper


@pytest.mark.parametrize("retention", [0.15, 0.10, 0.05])
def test_fixed_budgets_do_not_reproduce_table1(retention):
    """The per-frame-rounded budgets (920 / 603 / 285, fastvid 928 / 608 / 288) give lower FLOPs
    than the paper prints: the paper counts round(r * 6272) tokens."""
    for rule in ("paper", "fastvid"):
        b = InfoMergeConfig.paper(retention, budget_rule=rule).total_budget(32, 196)
        assert b < nominal_tokens(retention)
        assert round(tflops(prefill_flops(b)), 2) < round(tflops(paper_flops(retention)), 2)


def test_formula_by_hand():
    dims = LLMDims(layers=3, hidden=8, ffn=16, heads=4, kv_heads=2)
    n = 5
    per_layer = n * 8 * 8 * (2 + 2 * 2 / 4) + 2 * n * n * 8 + 3 * n * 8 * 16
    assert layer_flops(n, dims) == per_layer
    assert prefill_flops(n, dims) == 3 * per_layer
    assert prefill_flops(0, dims) == 0


def test_dims_from_registry_and_configs():
    assert dims_for_backbone("ov-7b") == QWEN2_7B
    assert dims_for_backbone("llava-video-7b") == QWEN2_7B
    assert dims_for_backbone("ov-0.5b") == QWEN2_0_5B
    hf = {
        "text_config": {
            "num_hidden_layers": 28,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
        }
    }
    assert dims_from_config(hf) == QWEN2_7B
    with pytest.raises(ValueError, match="lacks"):
        dims_from_config({"hidden_size": 8})


def test_bad_input():
    with pytest.raises(BudgetError):
        nominal_tokens(0.0)
    with pytest.raises(BudgetError):
        nominal_tokens(1.5)
    with pytest.raises(ValueError):
        layer_flops(-1)
    with pytest.raises(ValueError):
        LLMDims(layers=0, hidden=8, ffn=8, heads=1, kv_heads=1)


def test_vision_flops_and_the_ttft_bound_by_hand():
    """SigLIP so400m (729 patches of 14 px, width 1152, MLP 4304, 26 layers) + projector into
    Qwen2-0.5B (896): by hand, then the ov-0.5b bound at 32 frames, r = 0.15 (docs/benchmarks.md)."""
    from infomerge.backbones.registry import get_backbone
    from infomerge.bench.flops import ttft_flops_bound, vision_flops

    bb = get_backbone("ov-0.5b")
    per_layer = 729 * 1152**2 * 4 + 2 * 729**2 * 1152 + 2 * 729 * 1152 * 4304
    per_frame = 26 * per_layer + 729 * 3 * 14 * 14 * 1152 + 729 * (1152 * 896 + 896 * 896)
    assert vision_flops(32, bb) == pytest.approx(32 * per_frame, rel=1e-12)
    assert vision_flops(0, bb) == 0
    full, kept = prefill_flops(32 * 196, QWEN2_0_5B), prefill_flops(941, QWEN2_0_5B)  # round(0.15 * 6272)
    bound = (32 * per_frame + full) / (32 * per_frame + kept)
    assert ttft_flops_bound(0.15, 32, bb) == pytest.approx(bound, rel=1e-12)
    assert round(bound, 2) == 1.33
    with pytest.raises(ValueError):
        vision_flops(-1, bb)
