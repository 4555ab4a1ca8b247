"""HoliTom (infomerge.compress.holitom) against independent computations.

- the DP segmentation against an exhaustive search over every segmentation (small L), and a
  hand-computed tie;
- DPC-kNN (HoliTom's form: the densest token's delta is the matrix max) against brute force;
- a plain-Python loop implementation of the whole outer stage (flags, DP, window means, clusters,
  attention selection), against the reference and the fixed-budget module's selected set;
- index invariants, determinism, the budgets at 32 x 196;
- the shape-static graph in ONNX Runtime on a video other than the tracing one.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from _static_graph import FORBIDDEN as STATIC_FORBIDDEN
from _static_graph import export_static_graph

from infomerge.compress.dpc_knn import dpc_knn
from infomerge.compress.holitom import (
    FixedBudgetHoliTom,
    HoliTomConfig,
    kept_count,
    reference,
    removable,
    segment,
)
from infomerge.compress.methods import get_method
from infomerge.errors import BudgetError

FORBIDDEN = STATIC_FORBIDDEN | {"TopK"}


# ---- plain-Python helpers --------------------------------------------------------------------------
def _cos(u, v) -> float:
    nu = math.sqrt(sum(x * x for x in u)) or 1e-12
    nv = math.sqrt(sum(x * x for x in v)) or 1e-12
    return sum(x * y for x, y in zip(u, v)) / (nu * nv)


def _removable(flags, s, e) -> int:
    """(e - s) * #positions static in every adjacent pair of [s, e]."""
    n = len(flags[0]) if flags else 0
    return (e - s) * sum(all(flags[t][p] for t in range(s, e)) for p in range(n))


def _segmentations(L, max_window):
    """Every split of 0..L-1 into consecutive windows of length <= max_window."""
    for cuts in itertools.product((0, 1), repeat=L - 1):
        bounds = [0] + [t + 1 for t, c in enumerate(cuts) if c] + [L]
        windows = [(bounds[k], bounds[k + 1] - 1) for k in range(len(bounds) - 1)]
        if all(e - s + 1 <= max_window for s, e in windows):
            yield windows


def loop_dp(flags, L, max_window):
    """The official DP as nested loops: singleton first, longer windows only if strictly better."""
    dp, prev = [], []
    for i in range(L):
        best, where = (dp[i - 1] if i else 0), i
        for w in range(2, min(i + 1, max_window) + 1):
            s = i - w + 1
            v = (dp[s - 1] if s else 0) + _removable(flags, s, i)
            if v > best:
                best, where = v, s
        dp.append(best)
        prev.append(where)
    out, i = [], L - 1
    while i >= 0:
        out.insert(0, (prev[i], i))
        i = prev[i] - 1
    return out, dp[-1]


def brute_dpc(x, n_centres, knn):
    """HoliTom's DPC-kNN on a list of vectors: (centres ascending, nearest centre of each token)."""
    m, d = len(x), len(x[0])
    dist = [
        [math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j]))) / math.sqrt(d) for j in range(m)]
        for i in range(m)
    ]
    k = min(knn, m)
    rho = [math.exp(-sum(sorted(v * v for v in dist[i])[:k]) / k) for i in range(m)]
    dmax = max(max(row) for row in dist)
    delta = []
    for i in range(m):
        denser = [dist[i][j] for j in range(m) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta.append(min(denser) if denser else dmax)
    gamma = [rho[i] * delta[i] for i in range(m)]
    centres = sorted(sorted(range(m), key=lambda i: (-gamma[i], i))[:n_centres])
    nearest = [i if i in centres else min(centres, key=lambda c: (dist[i][c], c)) for i in range(m)]
    return centres, nearest


def loop_holitom(h, a, r, tau, beta=0.6, knn=7, max_window=None):
    """The whole outer stage on nested lists; returns {flat index: token list}."""
    L, N, D = len(h), len(h[0]), len(h[0][0])
    flags = [[_cos(h[t][p], h[t + 1][p]) > tau for p in range(N)] for t in range(L - 1)]
    windows, removed = loop_dp(flags, L, max_window or L) if L > 1 else ([(0, 0)], 0)
    ratio = min(r / ((L * N - removed) / (L * N)), 1.0)
    kept = {}
    for s, e in windows:
        static = [p for p in range(N) if e > s and all(flags[t][p] for t in range(s, e))]
        means = [[sum(h[t][p][c] for t in range(s, e + 1)) / (e - s + 1) for c in range(D)] for p in static]
        n_c = round(len(static) * ratio)
        if n_c:
            centres, nearest = brute_dpc(means, n_c, min(knn, n_c))
            for c in centres:
                members = [i for i in range(len(static)) if nearest[i] == c and i != c]
                tok = means[c]
                if members:
                    mean = [sum(means[i][k] for i in members) / len(members) for k in range(D)]
                    tok = [beta * u + (1 - beta) * v for u, v in zip(means[c], mean)]
                kept[s * N + static[c]] = tok
        dynamic = [p for p in range(N) if p not in static]
        q = math.ceil(len(dynamic) * ratio - 1e-4)
        for t in range(s, e + 1):
            for p in sorted(dynamic, key=lambda p: (-a[t][p], p))[:q]:
                kept[t * N + p] = list(h[t][p])
    return kept, windows, removed


def _video(L, N, D, seed, scenes=3, noise=0.15):
    """Scenes of a shared background with moving positions: static windows exist."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.empty(L, N, D, dtype=torch.float64)
    cut = sorted(torch.randperm(L - 1, generator=gen)[: scenes - 1].add(1).tolist()) if L > 1 else []
    bounds = [0, *cut, L]
    for s, e in zip(bounds[:-1], bounds[1:]):
        bg = torch.randn(N, D, generator=gen, dtype=torch.float64)
        h[s:e] = bg + noise * torch.randn(e - s, N, D, generator=gen, dtype=torch.float64)
        moving = torch.rand(N, generator=gen) < 0.4
        h[s:e, moving] = torch.randn(e - s, int(moving.sum()), D, generator=gen, dtype=torch.float64)
    a = torch.rand(L, N, generator=gen, dtype=torch.float64)
    return h, a, torch.randn(L, 3, generator=gen)


# ---- the DP segmentation -------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("L", [1, 2, 5, 7])
@pytest.mark.parametrize("max_window", [2, 3, None])
def test_segmentation_is_the_exhaustive_optimum(seed, L, max_window):
    gen = torch.Generator().manual_seed(seed)
    flags = torch.rand(max(L - 1, 0), 4, generator=gen) < 0.7
    fl = flags.tolist()
    mw = max_window or L
    best = max(sum(_removable(fl, s, e) for s, e in w) for w in _segmentations(L, mw))
    windows, removed = segment(removable(flags), mw) if L > 1 else ([(0, 0)], 0)
    assert removed == best
    assert sum(_removable(fl, s, e) for s, e in windows) == best
    assert windows[0][0] == 0 and windows[-1][1] == L - 1
    assert all(e - s + 1 <= mw for s, e in windows)
    assert all(b[0] == a[1] + 1 for a, b in zip(windows, windows[1:]))
    assert (windows, removed) == loop_dp(fl, L, mw)


def test_segmentation_tie_keeps_the_singleton():
    # N = 1, every pair static, windows of <= 2 frames: (0,1)+(2) and (0)+(1,2) both remove 1;
    # the official DP keeps the singleton at frame 2 (a window only when STRICTLY better)
    flags = torch.tensor([[True], [True]])
    assert removable(flags).tolist() == [[0, 1, 2], [0, 0, 1], [0, 0, 0]]
    assert segment(removable(flags), 2) == ([(0, 1), (2, 2)], 1)
    assert segment(removable(flags), 3) == ([(0, 2)], 2)


# ---- DPC-kNN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("m, n_c", [(9, 3), (12, 5), (6, 6), (7, 1)])
def test_dpc_knn_global_matches_brute_force(seed, m, n_c):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 5, generator=gen, dtype=torch.float64)
    x[: m // 2] += 3.0  # two groups
    centres, nearest = brute_dpc(x.tolist(), n_c, min(7, n_c))
    cl = dpc_knn(x, n_c, knn=min(7, n_c), densest="global")
    assert cl.centres.tolist() == centres and cl.nearest.tolist() == nearest
    # the fixed-budget module's per-row form on the same tokens (one row, all candidates)
    comp = FixedBudgetHoliTom(HoliTomConfig(0.5), 1, m, 5)
    cen, _ = comp._clusters(x.float().unsqueeze(0), torch.ones(1, m, dtype=torch.bool), torch.tensor([n_c]))
    assert torch.arange(m)[cen[0]].tolist() == centres


def test_dpc_knn_densest_row_and_global_differ_by_hand():
    # 1-D points 0, 1, 10 (D = 1): k = 1 -> every rho = 1, denser = lower index; token 0 is densest
    x = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    assert dpc_knn(x, 1, knn=1, densest="row").delta.tolist() == [10.0, 1.0, 9.0]
    assert dpc_knn(x, 1, knn=1, densest="global").delta.tolist() == [10.0, 1.0, 9.0]
    x = torch.tensor([[1.0], [0.0], [10.0]], dtype=torch.float64)  # densest (index 0) row max 9
    assert dpc_knn(x, 1, knn=1, densest="row").delta.tolist() == [9.0, 1.0, 9.0]
    assert dpc_knn(x, 1, knn=1, densest="global").delta.tolist() == [10.0, 1.0, 9.0]
    with pytest.raises(ValueError):
        dpc_knn(x, 1, densest="col")


# ---- the whole outer stage --------------------------------------------------------------------------
CASES = [(6, 10, 4), (9, 12, 5), (1, 10, 3), (4, 7, 6)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("r", [0.1, 0.25, 0.5])
def test_reference_and_static_match_the_loop(seed, shape, r):
    h, a, g = _video(*shape, seed)
    L, N, D = shape
    cfg = HoliTomConfig(r, tau=0.8)
    want, windows, removed = loop_holitom(h.tolist(), a.tolist(), r, 0.8)
    index = sorted(want)
    ref = reference(h, a, g, cfg)
    assert (ref.windows, ref.removed) == (windows, removed)
    assert ref.index.tolist() == index
    assert torch.allclose(ref.tokens, torch.tensor([want[i] for i in index], dtype=torch.float64), atol=1e-12)
    comp = FixedBudgetHoliTom(cfg, L, N, D)
    dec = comp.decisions(h.float(), a.float(), g)
    assert dec.windows() == windows and int(dec.removed) == removed
    assert torch.arange(L * N)[dec.selected.reshape(-1)].tolist() == index
    # exactly B, sorted, unique; every reference token the static module keeps has its value
    assert dec.index.numel() == comp.budget == L * math.ceil(r * N - 1e-4)
    assert bool((dec.index[1:] > dec.index[:-1]).all())
    shared = [k for k, i in enumerate(dec.index.tolist()) if i in want]
    assert len(shared) == min(comp.budget, len(index))  # trimmed or filled, never a swap
    got = dec.tokens[shared]
    exp = torch.tensor([want[i] for i in dec.index[shared].tolist()], dtype=torch.float32)
    assert torch.allclose(got, exp, atol=1e-5)
    extra = [k for k, i in enumerate(dec.index.tolist()) if i not in want]  # fill: raw tokens
    assert torch.equal(dec.tokens[extra], h.float().reshape(L * N, D)[dec.index[extra]])


def test_windows_exist_in_the_test_videos():
    h, a, g = _video(9, 12, 5, 0)
    ref = reference(h, a, g, HoliTomConfig(0.25, tau=0.8))
    assert any(e > s for s, e in ref.windows) and ref.removed > 0 and bool(ref.centres.any())


def test_deterministic_and_invariants():
    h, a, g = _video(8, 16, 6, 3)
    cfg = HoliTomConfig(0.15, tau=0.8)
    r1, r2 = reference(h, a, g, cfg), reference(h.clone(), a.clone(), g, cfg)
    assert torch.equal(r1.index, r2.index) and torch.equal(r1.tokens, r2.tokens)
    assert bool((r1.index[1:] > r1.index[:-1]).all()) and 0 <= int(r1.index[0]) and int(r1.index[-1]) < 8 * 16
    comp = FixedBudgetHoliTom(cfg, 8, 16, 6)
    t1, i1 = comp(h.float(), a.float(), g)
    t2, i2 = comp(h.float(), a.float(), g)
    assert torch.equal(i1, i2) and torch.equal(t1, t2) and i1.dtype == torch.int64
    assert i1.unique().numel() == i1.numel() == comp.budget


def test_frozen_video_is_one_window():
    frame = torch.randn(6, 4, dtype=torch.float64)
    h = frame.expand(5, 6, 4).clone()
    a, g = torch.rand(5, 6, dtype=torch.float64), torch.randn(5, 2)
    ref = reference(h, a, g, HoliTomConfig(0.5))
    # R* = 4 * 6, r' = min(0.5 / (6 / 30), 1) = 1: every static token is its own cluster in frame 0
    assert ref.windows == [(0, 4)] and ref.removed == 24 and ref.ratio == 1.0
    assert ref.index.tolist() == list(range(6)) and torch.allclose(ref.tokens, frame)
    dec = FixedBudgetHoliTom(HoliTomConfig(0.5), 5, 6, 4).decisions(h.float(), a.float(), g)
    assert dec.selected.reshape(-1)[:6].all() and int(dec.selected.sum()) == 6
    assert dec.index.numel() == 15  # B = 5 ceil(3): filled with unkept tokens


def test_config_budgets_and_errors():
    assert [HoliTomConfig(r).tau for r in (0.05, 0.10, 0.15, 0.25)] == [0.65, 0.65, 0.80, 0.80]
    budgets = [get_method("holitom").budget(r, 32, 196) for r in (0.05, 0.10, 0.15, 0.25)]
    assert budgets == [320, 640, 960, 1568]
    assert kept_count(20, 0.15) == 3  # the official math.ceil(20 * 0.15) gives 4 (float rounding)
    assert kept_count(0, 0.5) == 0 and kept_count(196, 0.15) == 30
    for bad in (
        {"retention": 0.0},
        {"retention": 1.5},
        {"retention": 0.1, "beta": 2.0},
        {"retention": 0.1, "knn": 0},
    ):
        with pytest.raises(BudgetError):
            HoliTomConfig(**bad)
    h, a, g = _video(3, 4, 2, 0)
    with pytest.raises(ValueError):
        reference(h, a[:, :2], g, HoliTomConfig(0.5))
    with pytest.raises(ValueError):
        FixedBudgetHoliTom(HoliTomConfig(0.5), 3, 4, 3)(h.float(), a.float(), g)


def test_explicit_attention_replaces_A():
    h, a, g = _video(6, 10, 4, 1)
    other = torch.rand(6, 10, dtype=torch.float64)
    cfg = HoliTomConfig(0.25, tau=0.8)
    want, _, _ = loop_holitom(h.tolist(), other.tolist(), 0.25, 0.8)
    assert reference(h, a, g, cfg, attention=other).index.tolist() == sorted(want)
    dec = FixedBudgetHoliTom(cfg, 6, 10, 4).decisions(h.float(), a.float(), g, other.float())
    assert torch.arange(60)[dec.selected.reshape(-1)].tolist() == sorted(want)


# ---- ONNX Runtime on another video ----------------------------------------------------------------
@pytest.fixture(scope="module")
def videos():
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4"), video_features("tiny", "bikes.mp4")


@pytest.mark.parametrize("r", [0.1, 0.25])
def test_onnx_graph_is_static_and_correct_on_another_video(videos, tmp_path, r):
    (h1, a1, g1), (h2, a2, g2) = videos
    comp = FixedBudgetHoliTom(HoliTomConfig(r), *h1.shape).eval()
    ops, sess = export_static_graph(comp, (h1, a1, g1), tmp_path / "compress.onnx", FORBIDDEN)
    with torch.no_grad():
        eager1, eager2 = comp.decisions(h1, a1, g1), comp.decisions(h2, a2, g2)
    assert not torch.equal(eager1.index, eager2.index)
    for (h, a, g), dec in (((h2, a2, g2), eager2), ((h1, a1, g1), eager1)):
        got_tok, got_idx = sess.run(None, {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()})
        assert got_idx.dtype == np.int64 and np.array_equal(got_idx, dec.index.numpy())
        peak = float(dec.tokens.abs().max())
        assert np.abs(got_tok - dec.tokens.numpy()).max() <= 1e-4 * peak
