"""InfoMerge static graph at ultra-low retention: an anchor frame with 0 anchors must not send its
segment's candidates to another segment's anchors.

Found at r = 0.01 on 8 random frames (every frame its own segment, several frames with budget 0):
the rank-0 merge took every candidate whose segment *had* a rank-0 anchor frame as a member, also
when that frame got no anchor, so those candidates were merged into other frames' anchors (a merged
token off by 9.2 from its within-segment merge). The merge is recomputed here with a loop over the
segments and anchor frames, from the static module's own decisions.
"""

from __future__ import annotations

import pytest
import torch

from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor


def loop_merge(H, dec, mu, p):
    """{flat anchor index: merged token} by the definition: per segment, per anchor frame (the last,
    then every p-th backwards), every candidate of the segment joins this frame's nearest anchor
    (cosine, ties to the lower index); merged = w a + (1 - w) mean(a, assigned), w = max(1/(n+1), mu)."""
    L, N, D = H.shape
    out = {}
    cand = ~dec.salient
    for start, end in dec.segments():
        members = [(l, q) for l in range(start, end) for q in range(N) if bool(cand[l, q])]
        for f in range(end - 1, start - 1, -p):
            anchors = [q for q in range(N) if bool(dec.anchors[f, q])]
            if not anchors:
                continue
            groups = {a: [] for a in anchors}
            for l, q in members:
                if l == f and q in groups:
                    continue
                x = H[l, q].double()
                cos = [float(x @ H[f, a].double() / (x.norm() * H[f, a].double().norm())) for a in anchors]
                best = max(range(len(anchors)), key=lambda i: (cos[i], -i))
                groups[anchors[best]].append(x)
            for a, xs in groups.items():
                anchor = H[f, a].double()
                n = len(xs)
                mean = (anchor + sum(xs, torch.zeros(D, dtype=torch.float64))) / (n + 1)
                w = max(1.0 / (n + 1), mu)
                out[f * N + a] = w * anchor + (1 - w) * mean
    return out


@pytest.mark.parametrize("tfd", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_zero_anchor_frame_keeps_its_candidates_out_of_other_segments(seed, tfd):
    g = torch.Generator().manual_seed(seed)
    L, N, D = 8, 196, 32
    H, A, gf = (
        torch.randn(L, N, D, generator=g),
        torch.rand(L, N, generator=g),
        torch.randn(L, 16, generator=g),
    )
    cfg = InfoMergeConfig.paper(0.01, tfd=tfd)
    dec = FixedBudgetCompressor(cfg, L, N, D).decisions(H, A, gf)
    # 8 frames, at least 8 segments: single frames, so no static replacement and merges are of H
    assert len(dec.segments()) == L
    assert int((dec.frame_budget == 0).sum()) > 0 and int(dec.anchors.sum()) > 0  # the low-retention case
    expect = loop_merge(H, dec, cfg.anchor_weight, cfg.anchor_interval)
    assert len(expect) == int(dec.anchors.sum())
    pos = {int(i): k for k, i in enumerate(dec.index.tolist())}
    for flat, tok in expect.items():
        torch.testing.assert_close(dec.tokens[pos[flat]].double(), tok, rtol=1e-5, atol=1e-5)
