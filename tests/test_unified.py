"""Unified compressor (arXiv 2603.21957): each step against a hand computation or a loop written here.

The loops below are written from the method's description (docs/compression.md, "Unified"), in
float64 Python, independently of ``infomerge.compress.unified`` / ``dpc_knn`` / ``unified_static``.
"""

from __future__ import annotations

import math

import pytest
import torch

from infomerge.compress.dpc_knn import dpc_knn
from infomerge.compress.methods import get_method, method_names
from infomerge.compress.unified import UnifiedConfig, reference, select_pool
from infomerge.compress.unified_static import FixedBudgetUnified, greedy_rounds
from infomerge.errors import BudgetError


# ---- independent loop implementations ---------------------------------------------------------
def loop_greedy(H, s, budget, tau):
    """Visit by (-s, flat index); admit c iff every cosine to the pool is < tau; stop at budget."""
    x = [[float(v) for v in row] for row in H.reshape(-1, H.shape[-1]).tolist()]
    score = [float(v) for v in s.reshape(-1).tolist()]
    norm = [math.sqrt(sum(v * v for v in row)) for row in x]
    order = sorted(range(len(x)), key=lambda i: (-score[i], i))
    pool = []
    for c in order:
        if len(pool) == budget:
            break
        cos = [sum(a * b for a, b in zip(x[c], x[p])) / (norm[c] * norm[p]) for p in pool]
        if all(v < tau for v in cos):
            pool.append(c)
    return pool


def loop_dpc(x, n_centres, knn=7):
    """Brute-force DPC-kNN: (rho, delta, centres ascending, nearest) as Python lists."""
    pts = [[float(v) for v in row] for row in x.tolist()]
    m, d = len(pts), len(pts[0])
    dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(p, q))) / math.sqrt(d) for q in pts] for p in pts]
    k = min(knn, m)
    rho = [math.exp(-sum(sorted(v * v for v in row)[:k]) / k) for row in dist]
    delta = []
    for i in range(m):
        denser = [j for j in range(m) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta.append(min(dist[i][j] for j in denser) if denser else max(dist[i]))
    gamma = [r * dl for r, dl in zip(rho, delta)]
    centres = sorted(sorted(range(m), key=lambda i: (-gamma[i], i))[:n_centres])
    nearest = [i if i in centres else min(centres, key=lambda c: (dist[i][c], c)) for i in range(m)]
    return rho, delta, centres, nearest


def clustered(L, N, D, protos=6, noise=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(protos, D, generator=g)
    H = p[torch.randint(0, protos, (L, N), generator=g)] + noise * torch.randn(L, N, D, generator=g)
    A = torch.rand(L, N, generator=g)
    return H, A, torch.randn(L, 3, generator=g)


# ---- budgets --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "r,b,b_sel,n_clu",
    [
        (0.01, 63, 44, 19),
        (0.02, 125, 87, 38),
        (0.05, 314, 220, 94),
        (0.10, 627, 439, 188),
        (0.15, 941, 659, 282),
        (0.20, 1254, 878, 376),
    ],
)
def test_budget_table(r, b, b_sel, n_clu):
    cfg = UnifiedConfig.paper(r)
    assert cfg.total_budget(32, 196) == b
    assert cfg.selection_budget(32, 196) == b_sel and cfg.cluster_budget(32, 196) == n_clu


def test_bad_retention_is_refused_clearly():
    with pytest.raises(BudgetError, match="keeps no token"):
        UnifiedConfig.paper(1e-5).total_budget(32, 196)
    with pytest.raises(BudgetError, match=r"\(0, 1\]"):
        UnifiedConfig.paper(1.5)


def test_the_two_percent_loop_covers_every_method():
    assert {"infomerge", "fastvid", "unified", "divprune"} <= set(method_names())


@pytest.mark.parametrize("name", method_names())
def test_every_method_accepts_or_refuses_two_percent(name):
    """r = 0.02 at the 7B grid (budget) and, run for real, on an 8 x 196 video: the reference and the
    fixed-budget module both keep tokens, the static one exactly B sorted unique indices. A refusal
    must be a BudgetError that says why (it names the retention)."""
    m = get_method(name)
    try:
        b = m.budget(0.02, 32, 196)
    except BudgetError as e:
        assert "0.02" in str(e) or "retention" in str(e), (name, str(e))
        return
    assert 1 <= b <= 32 * 196, (name, b)
    H, A, g = clustered(8, 196, 16, seed=3)
    cfg = m.config(0.02)
    B = cfg.total_budget(8, 196)
    ref = m.reference(H, A, g, cfg)
    assert 1 <= ref.index.numel() <= 8 * 196 and ref.tokens.shape == (ref.index.numel(), 16)
    assert torch.all(ref.index[1:] > ref.index[:-1]) and torch.isfinite(ref.tokens).all()
    if m.fixed_budget is None:
        assert m.not_exportable
        return
    with torch.no_grad():
        tokens, index = m.fixed_budget(cfg, 8, 196, 16).eval()(H, A, g)
    assert index.shape == (B,) and tokens.shape == (B, 16) and torch.isfinite(tokens).all()
    assert torch.all(index[1:] > index[:-1]) and 0 <= int(index[0]) and int(index[-1]) < 8 * 196


@pytest.mark.parametrize("name", method_names())
def test_no_method_keeps_nothing_silently(name):
    """r = 1e-5 of 32 x 196 tokens: a method either refuses it with an error naming the retention
    (InfoMerge, FastVID, Unified, DivPrune round to 0 tokens) or keeps at least one token (DyCoke and
    VisionZip round up to one per budget unit); none returns an empty budget."""
    import re

    try:
        budget = get_method(name).budget(1e-5, 32, 196)
    except BudgetError as exc:
        assert re.search(r"(?i)retention.*keeps no token", str(exc)), str(exc)
    else:
        assert budget >= 1


# ---- step 2: the greedy pool -----------------------------------------------------------------
def test_hand_computed_case():
    """4 tokens in 2-D, B = 3 (r = 0.75): B_sel = 2, n_clu0 = round(0.9) = 1.

    order 0, 1, 2, 3 (scores .4 .3 .2 .1); 0 admitted; cos(1, 0) = 0.995 >= 0.7 rejected;
    cos(2, 0) = 0 admitted -> pool full. Recycle {1, 3}: both have the same density (k = 2), so 1
    is denser (lower index), both deltas are d(1, 3); equal gamma -> centre 1; merged = mean(h1, h3).
    """
    H = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 1.0]]])
    A = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    out = reference(H, A, None, UnifiedConfig(retention=0.75))
    assert out.pool.tolist() == [0, 2]
    assert out.index.tolist() == [0, 1, 2]
    assert out.centres.tolist() == [1]
    torch.testing.assert_close(out.tokens, torch.tensor([[1.0, 0.0], [1.0, 0.55], [0.0, 1.0]]))
    assert out.assignment.tolist() == [0, 1, 2, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("r", [0.02, 0.1, 0.3])
def test_pool_equals_loop_greedy(seed, r):
    H, A, g = clustered(8, 49, 16, seed=seed)
    cfg = UnifiedConfig.paper(r)
    out = reference(H, A, g, cfg)
    expect = loop_greedy(H, A, cfg.selection_budget(8, 49), cfg.tau)
    assert out.pool.tolist() == expect
    assert (
        select_pool(
            torch.nn.functional.normalize(H.reshape(-1, 16), dim=-1), A.reshape(-1), len(expect) + 5, 0.7
        )[: len(expect)].tolist()
        == expect[: len(expect)]
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_pool_never_holds_two_tokens_above_tau(seed):
    H, A, g = clustered(8, 49, 16, protos=3, noise=0.3, seed=seed)
    out = reference(H, A, g, UnifiedConfig.paper(0.3))
    hn = torch.nn.functional.normalize(H.reshape(-1, 16).double(), dim=-1)[out.pool]
    cos = hn @ hn.t() - 2.0 * torch.eye(len(out.pool), dtype=torch.float64)
    assert float(cos.max()) < 0.7
    # maximal: the order ran out (n_clu > n_clu0), so every other token conflicts with the pool
    assert out.pool.numel() < UnifiedConfig.paper(0.3).selection_budget(8, 49)
    others = torch.nn.functional.normalize(H.reshape(-1, 16).double(), dim=-1)[~out.selected]
    assert bool(((others @ hn.t()).max(1).values >= 0.7).all())


def test_shortfall_goes_to_clusters():
    """Identical directions: the pool holds one token; the other B - 1 are clusters."""
    H = torch.ones(2, 10, 4) * torch.arange(1, 21, dtype=torch.float32).reshape(2, 10, 1)
    A = torch.rand(2, 10)
    out = reference(H, A, None, UnifiedConfig(retention=0.3))  # B = 6
    assert out.pool.numel() == 1 and out.centres.numel() == 5 and out.kept == 6


# ---- step 3: DPC-kNN ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("m,knn,n", [(12, 7, 3), (9, 3, 4), (5, 7, 2)])
def test_dpc_knn_against_brute_force(seed, m, knn, n):
    x = torch.randn(m, 4, generator=torch.Generator().manual_seed(seed))
    rho, delta, centres, nearest = loop_dpc(x, n, knn)
    cl = dpc_knn(x, n, knn)
    torch.testing.assert_close(cl.rho, torch.tensor(rho, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cl.delta, torch.tensor(delta, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    assert cl.centres.tolist() == centres
    assert cl.nearest.tolist() == nearest


# ---- step 4: output invariants and merged tokens -------------------------------------------
@pytest.mark.parametrize("merge", ["mean", "beta"])
def test_output_invariants_and_merged_tokens(merge):
    H, A, g = clustered(8, 49, 16, seed=5)
    cfg = UnifiedConfig(retention=0.1, merge=merge)
    out = reference(H, A, g, cfg)
    B = cfg.total_budget(8, 49)
    idx = out.index
    assert idx.dtype == torch.int64 and idx.numel() == B == out.tokens.shape[0]
    assert bool((idx[1:] > idx[:-1]).all()) and 0 <= int(idx[0]) and int(idx[-1]) < 8 * 49
    flat = H.reshape(-1, 16)
    for k, i in enumerate(idx.tolist()):
        members = [j for j in range(8 * 49) if int(out.assignment[j]) == i]
        if bool(out.selected[i]):
            assert members == [i]
            assert torch.equal(out.tokens[k], flat[i])
        else:
            assert i in members  # a centre is its own member, at its own index
            if merge == "mean":
                expect = flat[members].double().mean(0)
            else:
                rest = [j for j in members if j != i]
                expect = (
                    0.6 * flat[i].double() + 0.4 * flat[rest].double().mean(0) if rest else flat[i].double()
                )
            torch.testing.assert_close(out.tokens[k].double(), expect, rtol=1e-5, atol=1e-5)
    # every token is kept, merged or (never here) dropped
    assert int((out.assignment >= 0).sum()) == 8 * 49


def test_deterministic():
    H, A, g = clustered(8, 49, 16, seed=7)
    cfg = UnifiedConfig.paper(0.05)
    a, b = reference(H, A, g, cfg), reference(H.clone(), A.clone(), g, cfg)
    assert torch.equal(a.index, b.index) and torch.equal(a.tokens, b.tokens)
    s1, s2 = FixedBudgetUnified(cfg, 8, 49, 16)(H, A, g), FixedBudgetUnified(cfg, 8, 49, 16)(H, A, g)
    assert torch.equal(s1[0], s2[0]) and torch.equal(s1[1], s2[1])


def test_registered():
    m = get_method("unified")
    assert m.fixed_budget is not None and m.config(0.02).total_budget(32, 196) == 125


# ---- the static variant ----------------------------------------------------------------------
def loop_mis_after_rounds(conflict, rounds):
    """Sequential simulation of the round rule, element by element (state read at round start)."""
    m = len(conflict)
    state = [0] * m  # 0 undecided, 1 accepted, 2 rejected
    for _ in range(rounds):
        new = list(state)
        for i in range(m):
            if state[i]:
                continue
            preds = [j for j in range(m) if conflict[i][j]]
            if any(state[j] == 1 for j in preds):
                new[i] = 2
            elif all(state[j] == 2 for j in preds):
                new[i] = 1
        state = new
    return state


@pytest.mark.parametrize("rounds", [1, 2, 3, 8])
def test_greedy_rounds_against_loop(rounds):
    g = torch.Generator().manual_seed(rounds)
    m = 24
    c = (torch.rand(m, m, generator=g) < 0.3).tril(-1).float()  # j < i conflicts
    acc, rej, _ = greedy_rounds(c, rounds)
    state = loop_mis_after_rounds(c.tolist(), rounds)
    assert acc.tolist() == [1.0 if s == 1 else 0.0 for s in state]
    assert rej.tolist() == [1.0 if s == 2 else 0.0 for s in state]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("r,merge", [(0.02, "mean"), (0.1, "mean"), (0.3, "mean"), (0.1, "beta")])
def test_static_equals_reference(seed, r, merge):
    H, A, g = clustered(8, 49, 32, protos=5, noise=0.6, seed=seed)
    cfg = UnifiedConfig(retention=r, merge=merge)
    ref = reference(H, A, g, cfg)
    dec = FixedBudgetUnified(cfg, 8, 49, 32).decisions(H, A, g)
    assert bool(dec.exact)
    assert torch.equal(dec.index, ref.index)
    assert torch.equal(dec.selected, ref.selected)
    torch.testing.assert_close(dec.tokens, ref.tokens, rtol=0, atol=3e-6 * float(ref.tokens.abs().max()))


def test_static_reports_inexact_with_too_few_rounds():
    """A chain of conflicts needs one round per link: with R = 1 the graph says it is not exact."""
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.28, 0.96], [-0.352, 0.936]])  # each cos(i, i+1) = 0.8
    H = torch.cat([x, -x]).reshape(1, 8, 2)  # the second half conflicts with nothing of the first
    A = torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    cfg = UnifiedConfig(retention=1.0, cluster_ratio=0.0, rounds=1)
    dec = FixedBudgetUnified(cfg, 1, 8, 2).decisions(H, A, None)
    assert not bool(dec.exact)
    cfg4 = UnifiedConfig(retention=1.0, cluster_ratio=0.0, rounds=4)
    dec4 = FixedBudgetUnified(cfg4, 1, 8, 2).decisions(H, A, None)
    assert bool(dec4.exact) and dec4.selected.tolist() == [True, False, True, False] * 2
