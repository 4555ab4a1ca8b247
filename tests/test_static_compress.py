"""The shape-static compressor (infomerge.compress.fixed_budget) in eager mode.

Independent checks: ranks and largest remainder against plain Python, B against the spec's
numbers, segmentation / static candidates / kept indices against the paper-exact reference on real
video features, the richness estimate against an eigenvalue computation.
"""

from __future__ import annotations

import math

import pytest
import torch

from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor, largest_remainder, rank_asc, rank_desc
from infomerge.compress.merge import merge_to_anchors
from infomerge.compress.richness import renyi2_richness, segment_richness_exact, sketch_basis
from infomerge.errors import BudgetError

L, N = 32, 196


def synthetic(d: int = 32, seed: int = 0, frames: int = L):
    from infomerge.export.graphs import synthetic_features

    return synthetic_features(frames, N, d, 48, torch.float32, seed=seed)


@pytest.fixture(scope="module")
def tiny_video():
    """(H, A, g) of bigbuckbunny through the embedded tiny encoder (real frames)."""
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4")


# ---- building blocks ----------------------------------------------------------------------------
def test_rank_desc_breaks_ties_by_lower_index():
    x = torch.tensor([1.0, 3.0, 3.0, 2.0, float("-inf"), 3.0, float("-inf")])
    expected = sorted(range(len(x)), key=lambda i: (-float(x[i]), i))
    ranks = rank_desc(x).tolist()
    assert [expected.index(i) for i in range(len(x))] == ranks
    asc = sorted(range(len(x)), key=lambda i: (float(x[i]), i))
    assert [asc.index(i) for i in range(len(x))] == rank_asc(x).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_largest_remainder_matches_python(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(12, generator=gen)
    valid = torch.rand(12, generator=gen) > 0.3
    total = 97
    w = torch.where(valid, w, torch.zeros_like(w))
    share = total * w / w.sum()
    got = largest_remainder(share, total, valid)
    # plain Python largest remainder (ties: lower index)
    floors = [math.floor(s) if v else 0 for s, v in zip(share.tolist(), valid.tolist())]
    order = sorted((i for i in range(12) if valid[i]), key=lambda i: (-(share[i].item() - floors[i]), i))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    assert got.tolist() == floors and int(got.sum()) == total


# ---- budgets and output invariants --------------------------------------------------------------
@pytest.mark.parametrize(
    "make,r,budget",
    [
        (InfoMergeConfig.paper, 0.15, 920),
        (InfoMergeConfig.paper, 0.10, 603),
        (InfoMergeConfig.paper, 0.05, 285),
        (InfoMergeConfig.fastvid, 0.15, 928),
        (InfoMergeConfig.fastvid, 0.10, 608),
        (InfoMergeConfig.fastvid, 0.05, 288),
        (InfoMergeConfig.paper, 0.25, None),
        (InfoMergeConfig.fastvid, 0.25, None),
    ],
)
def test_exact_budget_and_index_invariants(make, r, budget):
    cfg = make(r)
    H, A, g = synthetic()
    comp = FixedBudgetCompressor(cfg, L, N, H.shape[-1])
    d = comp.decisions(H, A, g)
    b = cfg.total_budget(L, N)
    assert budget is None or b == budget
    assert d.tokens.shape == (b, H.shape[-1]) and d.index.shape == (b,) and d.index.dtype == torch.int64
    assert bool((d.index[1:] > d.index[:-1]).all()) and 0 <= int(d.index[0]) and int(d.index[-1]) < L * N
    ts = cfg.salient_per_frame(N)
    assert d.salient.sum(1).tolist() == [ts] * L
    assert not bool((d.salient & d.anchors).any()) and not bool((d.filled & (d.salient | d.anchors)).any())
    kept = (d.salient | d.anchors | d.filled).reshape(-1).nonzero().squeeze(1)
    assert torch.equal(kept, d.index)
    assert int(d.segment_budget.sum()) == b - L * ts  # largest remainder: sums to round(B_DTM) / C*L
    assert int(d.frame_budget.sum()) == b - L * ts  # anchor-frame remainders kept
    nonempty = d.segment_budget[: len(d.segments())]
    assert bool((nonempty >= 1).all())


def test_full_retention_keeps_every_token_through_the_fill():
    H, A, g = synthetic()
    d = FixedBudgetCompressor(InfoMergeConfig.fastvid(1.0), L, N, H.shape[-1]).decisions(H, A, g)
    assert torch.equal(d.index, torch.arange(L * N))
    assert int(d.filled.sum()) > 0  # frame budgets above the candidates were filled, not dropped


def test_deterministic_and_dtype():
    H, A, g = synthetic(seed=3)
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.15), L, N, H.shape[-1])
    t1, i1 = comp(H, A, g)
    t2, i2 = comp(H, A, g)
    assert torch.equal(t1, t2) and torch.equal(i1, i2)
    h16 = H.half()
    t16, i16 = comp(h16, A, g)
    t32, i32 = comp(h16.float(), A, g)
    assert t16.dtype == torch.float16 and torch.equal(i16, i32)
    assert torch.allclose(t16.float(), t32, atol=2e-3 * float(t32.abs().max()))


def test_bad_input_errors():
    with pytest.raises(BudgetError):
        FixedBudgetCompressor(InfoMergeConfig.paper(0.001), 4, 4, 8)
    with pytest.raises(ValueError, match="richness"):
        FixedBudgetCompressor(InfoMergeConfig.paper(0.15), L, N, 8, richness="svd")
    with pytest.raises(ValueError, match="merge_scope"):
        FixedBudgetCompressor(InfoMergeConfig.paper(0.15), L, N, 8, merge_scope="video")
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.15), L, N, 32)
    H, A, g = synthetic()
    with pytest.raises(ValueError, match="got H"):
        comp(H[:, :100], A, g)
    with pytest.raises(ValueError, match="richness"):
        FixedBudgetCompressor(InfoMergeConfig.paper(0.15), L, N, 32, richness="input")(H, A, g)


# ---- merge routing ------------------------------------------------------------------------------
def test_all_merging_goes_through_merge_impl():
    calls = []

    def spy(x, member, anchor_index, anchor_valid, mu):
        calls.append(anchor_index.shape[-1])
        return merge_to_anchors(x, member, anchor_index, anchor_valid, mu)

    def unmerged(x, member, anchor_index, anchor_valid, mu):  # anchors returned as they are
        return torch.gather(x, -2, anchor_index.unsqueeze(-1).expand(*anchor_index.shape, x.shape[-1]))

    H, A, g = synthetic(seed=1)
    cfg = InfoMergeConfig.fastvid(0.15)
    base = FixedBudgetCompressor(cfg, L, N, H.shape[-1])
    t0, i0 = base(H, A, g)
    t1, i1 = FixedBudgetCompressor(cfg, L, N, H.shape[-1], merge_impl=spy)(H, A, g)
    # the per-rank merge contract: the same assignments; sums in another order (the default form
    # sums candidates only, in one matmul), so equal to fp32 rounding
    assert torch.equal(i0, i1)
    assert torch.allclose(t0, t1, atol=1e-6 * float(t1.abs().max()), rtol=0), float((t0 - t1).abs().max())
    assert calls == [k for k in base.rank_slots if k > 0] and len(calls) == math.ceil(L / cfg.anchor_interval)
    d = base.decisions(H, A, g)
    t2, i2 = FixedBudgetCompressor(cfg, L, N, H.shape[-1], merge_impl=unmerged)(H, A, g)
    anchor_out = d.anchors.reshape(-1)[i2]
    assert torch.equal(t2, H.reshape(-1, H.shape[-1])[i2])  # FastVID: no replacement, so H itself
    assert not torch.allclose(t0[anchor_out], t2[anchor_out])  # the merge changed every anchor row
    assert torch.equal(t0[~anchor_out], t2[~anchor_out])


# ---- against the paper-exact reference on real video --------------------------------------------
def test_segments_static_candidates_and_kept_indices_match_reference(tiny_video):
    from infomerge.compress.reference import reference

    H, A, g = tiny_video
    for cfg in (InfoMergeConfig.paper(0.15), InfoMergeConfig.fastvid(0.15)):
        ref = reference(H, A, g, cfg)
        d = FixedBudgetCompressor(cfg, L, N, H.shape[-1]).decisions(H, A, g)
        assert d.segments() == ref.segments
        assert torch.equal(d.static[: len(ref.segments)], ref.static)
        kept = set(d.index.tolist())
        share = sum(int(i) in kept for i in ref.index.tolist()) / ref.index.numel()
        assert share >= 0.99, (cfg.budget_rule, share)
        if not cfg.caba:  # FastVID: B_k = C T_k in both; the static variant only adds remainders
            assert d.segment_budget[: len(ref.budgets)].tolist() == ref.budgets
            assert share == 1.0


def test_fewer_frames_than_min_segments_are_single_segments():
    H, A, g = synthetic(frames=4)
    d = FixedBudgetCompressor(InfoMergeConfig.paper(0.15), 4, N, H.shape[-1]).decisions(H, A, g)
    assert d.segments() == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert not bool(d.static.any())  # single-frame segments have no static candidates


# ---- richness --------------------------------------------------------------------------------------
def _renyi2_by_eigenvalues(x: torch.Tensor) -> float:
    lam = torch.linalg.eigvalsh((x.T @ x).double()).clamp_min(0)
    pi = lam / lam.sum()
    return float(-torch.log((pi * pi).sum()) / math.log(min(x.shape)))


def test_richness_estimate_is_renyi2_entropy_when_d_is_small(tiny_video):
    H, _, _ = tiny_video
    assert sketch_basis(H.shape[-1]) is None  # D = 64 <= 256: no projection
    bounds = [(0, 5), (5, 6), (6, 32)]
    onehot = torch.zeros(L, L)
    for k, (s, e) in enumerate(bounds):
        onehot[k, s:e] = 1
    est = renyi2_richness(H, onehot, onehot.sum(1), None)
    for k, (s, e) in enumerate(bounds):
        assert est[k].item() == pytest.approx(
            _renyi2_by_eigenvalues(H[s:e].reshape(-1, H.shape[-1])), rel=1e-4
        )
    assert est[len(bounds) :].abs().sum() == 0


def test_richness_input_mode_uses_the_given_entropy(tiny_video):
    H, A, g = tiny_video
    cfg = InfoMergeConfig.paper(0.15)
    est = FixedBudgetCompressor(cfg, L, N, H.shape[-1]).decisions(H, A, g)
    comp = FixedBudgetCompressor(cfg, L, N, H.shape[-1], richness="input")
    rich = comp.exact_richness(H, g)
    assert torch.allclose(rich, segment_richness_exact(H, est.segments(), L))
    exact = comp.decisions(H, A, g, rich)
    assert torch.allclose(exact.richness, rich)
    assert int(exact.segment_budget.sum()) == int(est.segment_budget.sum())
    assert (exact.segment_budget - est.segment_budget).abs().max() <= 2


# ---- FastVID's strict "denser" rule on tied densities -------------------------------------------
def _tied_frame():
    """One frame of N = 10 one-dimensional tokens: positions 5..9 salient (attention 1), the
    candidates 0..4 at values 0, 0, 4, 4.5, 9 (two tied pairs)."""
    h = torch.tensor([0.0, 0.0, 4.0, 4.5, 9.0, 100.0, 101.0, 102.0, 103.0, 104.0]).reshape(1, 10, 1)
    a = torch.tensor([[0.0] * 5 + [1.0] * 5])
    g = torch.ones(1, 4)
    return h, a, g


# Hand computation, k_nn = 2 (self + nearest), dist = |x_i - x_j| (D = 1), fastvid rule at r = 0.8:
# R = int(10 * 0.8) = 8, C = int(8 * 0.4) = 3 anchors, T_s = 5 salient.
#   m:   tokens 0, 1: (0 + 0) / 2 = 0;  tokens 2, 3: (0 + 0.5^2) / 2 = 0.125;  token 4: 4.5^2 / 2.
#   rho = exp(-m): 1, 1, 0.8825, 0.8825, ~4e-5.
# FastVID (strict >): 0 and 1 tie at the top -> both delta = max distance 9 -> score 9, 9;
#   2: denser {0, 1} -> delta 4 -> 3.53;  3: denser {0, 1} (2 is tied, not denser) -> 4.5 -> 3.97;
#   4: ~0.  Top 3: {0, 1, 3}.
# Total order (lower index denser on a tie): 0 -> 9;  1 -> 0 (token 0);  2 -> 4 -> 3.53;
#   3 -> 0.5 (token 2) -> 0.44;  4: ~0.  Top 3: {0, 2, 3}.
_FASTVID_KEPT = [0, 1, 3, 5, 6, 7, 8, 9]
_TOTAL_ORDER_KEPT = [0, 2, 3, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("ties, expected", [("strict", _FASTVID_KEPT), ("index", _TOTAL_ORDER_KEPT)])
def test_tied_densities_follow_the_preset_rule(ties, expected):
    from infomerge.compress.reference import reference

    h, a, g = _tied_frame()
    cfg = InfoMergeConfig.fastvid(0.8, knn=2, density_ties=ties)
    assert cfg.total_budget(1, 10) == 8
    assert reference(h, a, g, cfg).index.tolist() == expected
    _, index = FixedBudgetCompressor(cfg, 1, 10, 1)(h, a, g)
    assert index.tolist() == expected


def test_presets_tie_rules():
    assert InfoMergeConfig.fastvid(0.1).density_ties == "strict"
    assert InfoMergeConfig.paper(0.1).density_ties == "index"
    with pytest.raises(BudgetError, match="density_ties"):
        InfoMergeConfig.paper(0.1, density_ties="random")
