"""InfoMerge step functions, each against an independent computation (plain loops, math.*, numpy
SVD, or numbers worked out by hand in the comments). Spec: InfoMerge (arXiv 2606.02161,
docs/algorithm.md) steps 1-6."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from infomerge.compress.caba import (
    allocate_budgets,
    caba_weights,
    segment_richness,
    segment_uniqueness,
    spectral_entropy,
)
from infomerge.compress.density import anchor_frames, density_scores, pairwise_distances, select_anchors
from infomerge.compress.segmentation import boundary_mask, segment_frames, segments_from_boundaries
from infomerge.compress.selection import apply_static_replacement, select_salient
from infomerge.compress.tfd import adjacent_scores, static_candidates, tfd_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cos(a, b) -> float:
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- step 1: segmentation ---------------------------------------------------------------------
def _g_from_cosines(cosines: list[float]) -> torch.Tensor:
    """Unit 2-D vectors whose consecutive cosines are exactly ``cosines`` (cumulative angles)."""
    angles = [0.0]
    for c in cosines:
        angles.append(angles[-1] + math.acos(c))
    return torch.tensor([[math.cos(t), math.sin(t)] for t in angles], dtype=torch.float64)


def test_segmentation_smallest_and_threshold():
    # 12 frames, c = 4, tau = 0.9. Cosines: three low ones (0.5, 0.6, 0.7 at l = 2, 5, 9), one just
    # under the threshold (0.89 at l = 7), the rest high. c - 1 = 3 smallest -> {2, 5, 9};
    # threshold adds 7 (and the three are under it anyway).
    cos = [0.99, 0.98, 0.5, 0.97, 0.99, 0.6, 0.95, 0.89, 0.99, 0.7, 0.96]
    g = _g_from_cosines(cos)
    segs = segment_frames(g, min_segments=4, threshold=0.9)
    assert segs == [(0, 3), (3, 6), (6, 8), (8, 10), (10, 12)]
    # raising c to 6 adds the next two smallest (0.89 at l=7 already in; then 0.95 at l=6)
    segs6 = segment_frames(g, min_segments=6, threshold=0.9)
    assert segs6 == [(0, 3), (3, 6), (6, 7), (7, 8), (8, 10), (10, 12)]


def test_segmentation_at_least_c_segments_when_all_similar():
    # every cosine above the threshold: exactly c segments from the c - 1 smallest
    cos = [0.999, 0.95, 0.998, 0.96, 0.997, 0.93, 0.999, 0.94, 0.999]
    segs = segment_frames(_g_from_cosines(cos), min_segments=3, threshold=0.9)
    # two smallest: 0.93 (l=5), 0.94 (l=7)
    assert segs == [(0, 6), (6, 8), (8, 10)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segmentation_threshold_is_strict(dtype):
    # t == tau is not a boundary, t just below is (c = 1: no forced boundary)
    sim = torch.tensor([0.95, 0.9, 0.95, 0.8999, 0.95], dtype=dtype)
    cut = boundary_mask(sim, min_segments=1, threshold=0.9)
    assert cut.tolist() == [False, False, False, True, False]
    assert segments_from_boundaries(cut) == [(0, 4), (4, 6)]


def test_segmentation_ties_lower_index_first():
    # all cosines equal (identical frames): the c - 1 "smallest" are the first c - 1 transitions
    g = torch.ones(10, 4)
    assert segment_frames(g, min_segments=4, threshold=0.9) == [(0, 1), (1, 2), (2, 3), (3, 10)]


@pytest.mark.parametrize("frames", [1, 2, 7, 8])
def test_segmentation_fewer_frames_than_c(frames):
    g = _rand(frames, 16, seed=frames)
    segs = segment_frames(g, min_segments=8, threshold=0.9)
    # L < c: every frame its own segment [D]; L == c: the c - 1 smallest are all transitions
    assert segs == [(l, l + 1) for l in range(frames)]


def test_segmentation_covers_all_frames_in_order():
    g = _rand(32, 8, seed=3)
    segs = segment_frames(g, 8, 0.9)
    assert segs[0][0] == 0 and segs[-1][1] == 32 and len(segs) >= 8
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(segs, segs[1:]))


# ---- step 3: TFD and the adjacent estimator ---------------------------------------------------
def _tfd_loop(h: torch.Tensor) -> list[float]:
    t, n, _ = h.shape
    out = []
    for p in range(n):
        f = [[_cos(h[l, p], h[m, p]) for m in range(t)] for l in range(t)]
        total = sum(abs(f[l + 1][m] - f[l][m]) for l in range(t - 1) for m in range(t))
        out.append(total / ((t - 1) * t))
    return out


@pytest.mark.parametrize("t", [2, 3, 6])
def test_tfd_against_double_loop(t):
    h = _rand(t, 7, 5, seed=t)
    got = tfd_scores(h)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(_tfd_loop(h), abs=1e-12)
    got32 = tfd_scores(h.float())
    assert got32.dtype == torch.float32
    assert got32.double().tolist() == pytest.approx(_tfd_loop(h), abs=1e-5)


def test_tfd_two_frames_is_one_minus_cos():
    h = _rand(2, 5, 4, seed=9)
    assert tfd_scores(h).tolist() == pytest.approx([1 - _cos(h[0, p], h[1, p]) for p in range(5)], abs=1e-12)


def test_tfd_single_frame_and_static_positions():
    assert tfd_scores(_rand(1, 4, 3)).tolist() == [0.0] * 4
    # positions 1 and 3 do not change over time: TFD 0, the two smallest
    h = _rand(5, 6, 8, seed=4)
    h[:, 1] = h[0, 1]
    h[:, 3] = 2.5 * h[0, 3]  # scaled: same direction, still static for cosines
    s = tfd_scores(h)
    assert s[1] == pytest.approx(0, abs=1e-12) and s[3] == pytest.approx(0, abs=1e-12)
    assert static_candidates(s, 2).nonzero().squeeze(-1).tolist() == [1, 3]


def test_static_candidates_ties_lower_index():
    s = torch.tensor([0.3, 0.1, 0.2, 0.1, 0.1, 0.5])
    assert static_candidates(s, 2).nonzero().squeeze(-1).tolist() == [1, 3]
    assert static_candidates(s, 0).sum() == 0


def _adjacent_loop(h: torch.Tensor, window: int) -> list[float]:
    t, n, _ = h.shape
    out = []
    for p in range(n):
        diffs = [1 - _cos(h[l, p], h[l + 1, p]) for l in range(t - 1) if l // window == (l + 1) // window]
        out.append(sum(diffs) / len(diffs))
    return out


@pytest.mark.parametrize("t", [2, 4, 5, 9])
def test_adjacent_difference_against_loop(t):
    h = _rand(t, 6, 5, seed=20 + t)
    assert adjacent_scores(h, 4).tolist() == pytest.approx(_adjacent_loop(h, 4), abs=1e-12)
    if t == 2:  # equals TFD for two frames
        assert adjacent_scores(h, 4).tolist() == pytest.approx(tfd_scores(h).tolist(), abs=1e-12)


# ---- step 4: CABA ------------------------------------------------------------------------------
def test_caba_hand_computed_small_case():
    # L = 3, N = 2, D = 2. Segment 0 = frame 0 with tokens [1,0], [0,1]: singular values 1, 1 ->
    # e_0 = log 2 / log 2 = 1. Segment 1 = frames 1, 2, every token [2,0]: rank 1 -> e_1 = 0.
    # Means: seg0 [.5,.5], seg1 [2,0], video [9/6, 1/6].
    # u_0 = 1 - (.75 + 1/12) / (sqrt(.5) * sqrt(2.25 + 1/36)) = 0.2191312...
    # u_1 = 1 - 1.5 / sqrt(2.25 + 1/36)                      = 0.0061162...
    # z-scores over two values are +-d/(d + 1e-6), d = half the gap: z(u) = +-0.99999061,
    # z(e) = +-0.99999800; m = 0.9 z(u) + 0.1 z(e) = +-0.99999135.
    # tau = 1.2: w_0 = sigmoid(1.19998962) * 1 = 0.76852294, w_1 = sigmoid(-1.19998962) * 2 = 0.46295412
    # B_DTM = 10: B_0 = round(6.2407...) = 6, B_1 = round(3.7593...) = 4.
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [2.0, 0.0]], [[2.0, 0.0], [2.0, 0.0]]])
    segments = [(0, 1), (1, 3)]
    u = segment_uniqueness(h, segments).double()
    e = segment_richness(h, segments).double()
    assert u.tolist() == pytest.approx([0.2191312, 0.0061162], abs=1e-6)
    assert e.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    w = caba_weights(u, e, [1, 2], tau=1.2, alpha=0.9, beta=0.1)
    assert w.tolist() == pytest.approx([0.76852294, 0.46295412], abs=1e-6)
    assert allocate_budgets(w, 10.0) == [6, 4]
    # CABA off: proportional to T_k: round(10/3) = 3, round(20/3) = 7
    assert allocate_budgets([1, 2], 10.0) == [3, 7]


def test_caba_budgets_against_numpy_svd():
    # random tokens, segments of 1, 2 and 3 frames with N = 3, D = 5: both Gram branches
    # (T N = 3 <= D uses X X^T; 6, 9 > D use X^T X)
    h = _rand(6, 3, 5, seed=11)
    segments = [(0, 1), (1, 3), (3, 6)]
    x = h.numpy()
    video_mean = x.reshape(-1, 5).mean(0)
    u_ref, e_ref = [], []
    for s, t in segments:
        seg = x[s:t].reshape(-1, 5)
        m = seg.mean(0)
        u_ref.append(1 - float(m @ video_mean) / (np.linalg.norm(m) * np.linalg.norm(video_mean)))
        sv = np.linalg.svd(seg, compute_uv=False)
        pi = sv**2 / (sv**2).sum()
        e_ref.append(float(-(pi * np.log(pi)).sum() / math.log(min(seg.shape))))

    def z(v):
        mu, sd = statistics.fmean(v), statistics.pstdev(v)
        return [(a - mu) / (sd + 1e-6) for a in v]

    lengths = [t - s for s, t in segments]
    m = [0.9 * a + 0.1 * b for a, b in zip(z(u_ref), z(e_ref))]
    w_ref = [1 / (1 + math.exp(-2.0 * mk)) * tk for mk, tk in zip(m, lengths)]
    b_ref = [max(1, round(125.44 * wk / sum(w_ref))) for wk in w_ref]

    u = segment_uniqueness(h.float(), segments).double()  # fp32 as the reference computes
    e = segment_richness(h.float(), segments).double()
    assert u.tolist() == pytest.approx(u_ref, abs=1e-5)
    assert e.tolist() == pytest.approx(e_ref, abs=1e-5)
    assert allocate_budgets(caba_weights(u, e, lengths, 2.0, 0.9, 0.1), 125.44) == b_ref


def test_spectral_entropy_edge_cases():
    assert float(spectral_entropy(torch.zeros(4, 3))) == 0.0
    assert float(spectral_entropy(torch.ones(1, 8))) == 0.0  # R = 1
    # orthogonal rows of equal norm: flat spectrum -> 1
    assert float(spectral_entropy(3.0 * torch.eye(4))) == pytest.approx(1.0, abs=1e-6)


def test_budgets_at_least_one():
    # a segment with a tiny weight still gets one token
    assert allocate_budgets([1e-9, 1.0, 1.0], 4.0) == [1, 2, 2]


# ---- step 5: selection ------------------------------------------------------------------------
def test_selection_penalty_and_history_against_hand_computation():
    # N = 5, T_s = 2, S = {0, 3}, lambda = 1.
    a = torch.tensor(
        [
            [0.50, 0.20, 0.10, 0.15, 0.05],  # frame 0: top-2 = {0, 1}; 0 is static -> P = {0}
            [0.40, 0.30, 0.05, 0.20, 0.05],  # frame 1: std .13784, s_0 = .26216 > s_3 = .2: top-2 {1, 0}
            [0.30, 0.25, 0.05, 0.35, 0.05],  # frame 2: std .12649, s_0 = .17351: top-2 {3, 1}; P = {0, 3}
            [
                0.30,
                0.10,
                0.25,
                0.32,
                0.03,
            ],  # frame 3: std .11472, s_0 = .18528, s_3 = .20528, s_2 = .25: {2, 3}
        ],
        dtype=torch.float64,
    )
    static = torch.tensor([True, False, False, True, False])
    for row in a:  # the population std used above
        assert float(row.std(correction=0)) == pytest.approx(statistics.pstdev(row.tolist()))
    salient, replaced = select_salient(a, static, 2, 1.0)
    got = [row.nonzero().squeeze(-1).tolist() for row in salient]
    assert got == [[0, 1], [0, 1], [1, 3], [2, 3]]
    rep = [row.nonzero().squeeze(-1).tolist() for row in replaced]
    # 0 replaced from frame 0 on, 3 from frame 2 on
    assert rep == [[0], [0], [0, 3], [0, 3]]
    h = _rand(4, 5, 3, seed=5)
    hs = apply_static_replacement(h, replaced)
    assert torch.equal(hs[:, 0], h[:, 0].mean(0).expand(4, 3))
    assert torch.equal(hs[:2, 3], h[:2, 3]) and torch.equal(hs[2:, 3], h[:, 3].mean(0).expand(2, 3))
    assert torch.equal(hs[:, [1, 2, 4]], h[:, [1, 2, 4]])


def test_selection_ties_lower_index():
    a = torch.tensor([[0.2, 0.3, 0.3, 0.3, 0.1]])
    salient, _ = select_salient(a, torch.zeros(5, dtype=torch.bool), 2, 12.0)
    assert salient[0].nonzero().squeeze(-1).tolist() == [1, 2]


# ---- step 6: density, anchor frames, anchors --------------------------------------------------
def _density_loop(x: torch.Tensor, valid: list[bool], knn: int) -> list[float]:
    idx = [i for i, v in enumerate(valid) if v]
    d = x.shape[1]

    def dist(i, j):
        return math.sqrt(sum((float(x[i, c]) - float(x[j, c])) ** 2 for c in range(d))) / math.sqrt(d)

    rho = {}
    for i in idx:
        ds = sorted(dist(i, j) for j in idx)[: min(knn, len(idx))]
        rho[i] = math.exp(-sum(v * v for v in ds) / len(ds))
    max_d = max(dist(i, j) for i in idx for j in idx)
    out = [float("-inf")] * x.shape[0]
    for i in idx:
        denser = [j for j in idx if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta = min((dist(i, j) for j in denser), default=max_d)
        out[i] = rho[i] * delta
    return out


def test_density_scores_against_loop():
    x = _rand(9, 4, seed=7)
    valid = [True, False, True, True, True, False, True, True, True]
    got = density_scores(x, 4, valid=torch.tensor(valid))
    ref = _density_loop(x, valid, 4)
    for gv, rv in zip(got.tolist(), ref):
        assert gv == pytest.approx(rv, rel=1e-10) if math.isfinite(rv) else gv == rv
    # compacting the candidates gives the same scores (the reference's masked form is exact)
    compact = density_scores(x[torch.tensor(valid)], 4)
    assert torch.equal(compact, got[torch.tensor(valid)])


def test_density_ties_lower_index_is_denser():
    # tokens 1 and 3 identical: equal density; 1 counts as denser than 3, so 3's delta is 0
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    s = density_scores(x, 2)
    assert s[3] == 0.0 and s[1] > 0
    s32 = density_scores(x.float(), 2)
    assert s32[3] == 0.0 and s32[1] > 0
    assert s.tolist() == pytest.approx(_density_loop(x, [True] * 5, 2), rel=1e-12)


def test_pairwise_distance_forms_agree():
    x = _rand(6, 300, seed=8, dtype=torch.float32) * 10
    direct = torch.tensor(
        [[math.dist(a.tolist(), b.tolist()) for b in x.double()] for a in x.double()], dtype=torch.float64
    )
    exact = pairwise_distances(x)
    assert exact.dtype == torch.float32
    assert torch.equal(exact.diagonal(), torch.zeros(6))
    torch.testing.assert_close(exact.double(), direct, atol=1e-4, rtol=1e-6)
    # the fp32 norm form (export) is close off the diagonal; its diagonal is sqrt(rounding noise)
    off = ~torch.eye(6, dtype=torch.bool)
    fast = pairwise_distances(x, exact=False).double()
    torch.testing.assert_close(fast[off], direct[off], atol=1e-2, rtol=1e-4)


@pytest.mark.parametrize(
    ("length", "frames"), [(1, [0]), (4, [3]), (5, [0, 4]), (6, [1, 5]), (9, [0, 4, 8]), (12, [3, 7, 11])]
)
def test_anchor_frames_last_then_every_p_backwards(length, frames):
    assert anchor_frames(length, 4) == frames
    assert len(anchor_frames(length, 4)) == math.ceil(length / 4)


def test_select_anchors_budget_cap_mask_and_ties():
    s = torch.tensor([0.5, float("-inf"), 0.9, 0.5, 0.7, 0.5])
    assert select_anchors(s, 3).tolist() == [0, 2, 4]  # 0.5 tie: lowest index 0
    blocked = torch.tensor([False, False, True, False, False, False])
    assert select_anchors(s, 3, blocked).tolist() == [0, 3, 4]
    # budget capped at the unmasked candidates (5 finite, 1 blocked -> 4)
    assert select_anchors(s, 10, blocked).tolist() == [0, 3, 4, 5]
