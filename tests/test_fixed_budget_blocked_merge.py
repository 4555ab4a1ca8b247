"""The fixed-budget graph's default merge (one similarity and one summing matmul for every anchor
rank, per-frame windows of slots) against the per-rank form through ``merge_to_anchors``, the
merge contract the reference uses, on layouts that stress the windows: long segments (many
ranks), single frames, and high retention (frame budgets near the N - T_s cap)."""

from __future__ import annotations

import pytest
import torch

from infomerge.bench.studies.reference_timing import synthetic_inputs
from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor
from infomerge.compress.merge import merge_to_anchors

N = 196
LAYOUTS = {
    "even": [5] * 8,  # 40 frames, 8 segments, 2 anchor frames each
    "long": [1] * 7 + [17],  # one 17-frame segment: 5 anchor ranks
    "single": [1] * 8,  # every frame its own segment
}


@pytest.mark.parametrize(
    "layout, make, r, scope",
    [
        ("even", InfoMergeConfig.paper, 0.15, "anchor_frame"),
        ("long", InfoMergeConfig.paper, 0.15, "anchor_frame"),
        ("long", InfoMergeConfig.paper, 0.6, "anchor_frame"),
        ("long", InfoMergeConfig.fastvid, 0.05, "anchor_frame"),
        ("long", InfoMergeConfig.paper, 0.15, "segment"),
        ("single", InfoMergeConfig.paper, 0.6, "anchor_frame"),
    ],
)
def test_blocked_merge_equals_per_rank_merge(layout, make, r, scope):
    lengths = LAYOUTS[layout]
    frames = sum(lengths)
    h, a, g = synthetic_inputs(lengths, N, 32, global_dim=48)
    cfg = make(r)
    blocked = FixedBudgetCompressor(cfg, frames, N, 32, merge_scope=scope)
    per_rank = FixedBudgetCompressor(cfg, frames, N, 32, merge_scope=scope, merge_impl=merge_to_anchors)
    d = blocked.decisions(h, a, g)
    assert d.segments() == [(sum(lengths[:k]), sum(lengths[: k + 1])) for k in range(len(lengths))]
    t_b, i_b = blocked(h, a, g)
    t_p, i_p = per_rank(h, a, g)
    assert torch.equal(i_b, i_p)
    scale = float(t_p.abs().max())
    assert torch.allclose(t_b, t_p, atol=1e-5 * scale, rtol=0), float((t_b - t_p).abs().max())
    anchors = d.anchors.reshape(-1)[i_b]
    assert bool(anchors.any())  # the comparison covers merged tokens
    # the windows are never narrower than a frame's anchors
    if scope == "anchor_frame":
        per_frame = d.anchors.sum(1)
        widest = max(blocked.window_slots)
        assert int(per_frame.max()) <= widest
