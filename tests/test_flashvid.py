"""FlashVID (infomerge.compress.flashvid) against independent computations.

- a plain-Python loop implementation of the whole vision-side method (DySeg, ADTS, TSTM with
  trees found by following parent links to their roots, DPC-kNN by its definitions), with the
  reference's cluster counts (ceil) and the fixed-budget graph's (largest remainder);
- brute force: DPC-kNN on separated clusters finds one centre per cluster and its members; the
  ADTS greedy on separated clusters reaches the brute-force max-min optimum's clusters;
- hand computations (DySeg cuts, the budgets at 32 x 196);
- the shape-static graph in ONNX Runtime on a video other than the tracing one.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from _static_graph import FORBIDDEN as STATIC_FORBIDDEN
from _static_graph import export_static_graph

from infomerge.compress.flashvid import (
    FixedBudgetFlashVID,
    FlashVIDConfig,
    adts,
    dpc_knn_frame,
    dyseg,
    flashvid,
    reference,
)
from infomerge.compress.methods import get_method
from infomerge.errors import BudgetError

FORBIDDEN = STATIC_FORBIDDEN | {"TopK"}


# ---- the loop implementation ---------------------------------------------------------------------
def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def _cos(a, b) -> float:
    return _dot(a, b) / (max(math.sqrt(_dot(a, a)), 1e-12) * max(math.sqrt(_dot(b, b)), 1e-12))


def _mean(rows):
    return [sum(col) / len(rows) for col in zip(*rows)]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _root(key, seg, merged, parent):
    """Follow the parent links of a merged token to its tree's root (frame, position)."""
    while key in merged:
        key = (seg[seg.index(key[0]) - 1], parent[key])
    return key


def loop_flashvid(video, att, cfg: FlashVIDConfig, split: str = "ceil", log: dict | None = None):
    """Plain-Python FlashVID. ``split``: "ceil" (c_t = ceil(m_t n_s F / M), the reference) or
    "lr" (largest remainder of n_s F over the segment's frames, the fixed-budget graph).
    Returns (sorted kept flat indices, their tokens)."""
    L, N, D = len(video), len(video[0]), len(video[0][0])
    T = min(N, max(1, math.ceil(N * cfg.retention * cfg.vision_expansion)))
    na = min(T, math.ceil(T * cfg.alpha))
    ns = T - na
    # 1. DySeg
    fm = [_mean(video[t]) for t in range(L)]
    s = [_cos(fm[t], fm[t + 1]) for t in range(L - 1)]
    cuts = {t for t in range(L - 1) if s[t] < cfg.segment_threshold}
    need = min(cfg.min_segments - 1, L - 1) - len(cuts)
    cuts |= {t for _, t in sorted((s[t], t) for t in range(L - 1) if t not in cuts)[: max(0, need)]}
    segments, cur = [], [0]
    for t in range(1, L):
        if t - 1 in cuts:
            segments.append(cur)
            cur = []
        cur.append(t)
    segments.append(cur)
    kept = {}
    for seg in segments:
        F = len(seg)
        segmean = _mean([fm[t] for t in seg])
        # 2. ADTS
        sel = {}
        for t in seg:
            w = [att[t][j] * _dot(video[t][j], segmean) for j in range(N)]
            dm = [[(1 - _cos(video[t][i], video[t][j])) * w[j] for j in range(N)] for i in range(N)]
            second = [sorted(dm[i][j] for i in range(N))[min(1, N - 1)] for j in range(N)]
            S = [max(range(N), key=lambda j: (second[j], -j))] if na else []
            while len(S) < na:
                S.append(
                    max((j for j in range(N) if j not in S), key=lambda j: (min(dm[q][j] for q in S), -j))
                )
            sel[t] = set(S)
            for p in S:
                kept[t * N + p] = video[t][p]
        # 3. TSTM
        msim, parent = {}, {}
        for k, t in enumerate(seg):
            for i in range(N):
                if k == 0:
                    msim[t, i] = -1.0
                    continue
                prev = seg[k - 1]
                sims = [
                    (-1.0 if (i in sel[t] or j in sel[prev]) else _cos(video[t][i], video[prev][j]), j)
                    for j in range(N)
                ]
                msim[t, i], parent[t, i] = max(sims, key=lambda sj: (sj[0], -sj[1]))
        merged = {key for key, v in msim.items() if v > cfg.temporal_threshold} if F > 1 else set()
        if F > 1 and F * N - len(merged) < T * F:
            k = F * N - T * F
            soft = max(sorted(msim.values(), reverse=True)[k - 1], -1 + 1e-6) if k else math.inf
            merged = {key for key, v in msim.items() if v > soft}
            if log is not None:
                log["fallback"] = log.get("fallback", 0) + 1

        trees = defaultdict(list)
        for t in seg:
            for i in range(N):
                if i not in sel[t]:
                    trees[_root((t, i), seg, merged, parent)].append(video[t][i])
        roots = {t: [i for i in range(N) if (t, i) not in merged and i not in sel[t]] for t in seg}
        M = sum(len(r) for r in roots.values())
        if ns == 0 or M == 0:
            continue
        lr = {}
        if split == "lr":
            base = {t: len(roots[t]) * ns * F // M for t in seg}
            rem = {t: len(roots[t]) * ns * F % M for t in seg}
            up = sorted(seg, key=lambda t: (-rem[t], t))[: ns * F - sum(base.values())]
            lr = {t: base[t] + (t in up) for t in seg}
        # 4. DPC-kNN per frame
        for t in seg:
            R, m = roots[t], len(roots[t])
            if m == 0:
                continue
            c = lr[t] if split == "lr" else (m if M <= ns * F else _ceil_div(m * ns * F, M))
            if c == 0:  # "lr" only: a share below 1 rounded down, the frame's roots are dropped
                continue
            kk = min(_ceil_div(m * ns * F, M), cfg.knn)
            V = [_mean(trees[t, i]) for i in R]
            d = [[math.dist(V[i], V[j]) / math.sqrt(D) for j in range(m)] for i in range(m)]
            rho = [math.exp(-sum(x * x for x in sorted(d[i])[:kk]) / kk) for i in range(m)]
            dmax = max(max(row) for row in d)
            delta = [
                min(
                    [d[i][j] for j in range(m) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)],
                    default=dmax,
                )
                for i in range(m)
            ]
            C = sorted(sorted(range(m), key=lambda i: (-rho[i] * delta[i], i))[:c])
            join = {i: i if i in C else min(C, key=lambda j: (d[i][j], j)) for i in range(m)}
            for j in C:
                kept[t * N + R[j]] = _mean([V[i] for i in range(m) if join[i] == j])
    index = sorted(kept)
    return index, [kept[q] for q in index]


def _video(frames, n, d, seed, noise):
    gen = torch.Generator().manual_seed(seed)
    walk = torch.cumsum(torch.randn(frames, 1, d, generator=gen, dtype=torch.float64), 0) * 0.3
    h = torch.randn(1, n, d, generator=gen, dtype=torch.float64) + walk + 1.5  # a shared offset
    h = h + noise * torch.randn(frames, n, d, generator=gen, dtype=torch.float64)
    a = torch.softmax(torch.randn(frames, n, generator=gen, dtype=torch.float64), -1)
    return h, a, torch.randn(frames, 3, generator=gen)


CASES = [
    # (L, N, D), noise, config overrides: few segments so that TSTM trees span frames
    ((6, 16, 4), 0.05, {"min_segments": 2}),
    ((7, 14, 5), 0.3, {"min_segments": 2}),
    ((9, 12, 4), 0.15, {"min_segments": 3}),
    ((5, 16, 3), 0.02, {"min_segments": 1, "segment_threshold": -1.0}),
    ((10, 10, 4), 0.3, {}),
    ((1, 15, 4), 0.3, {}),
]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("r", [0.2, 0.35, 0.6, 1.0])
def test_reference_and_static_match_the_loop(seed, case, r):
    (L, N, D), noise, extra = CASES[case]
    h, a, g = _video(L, N, D, seed, noise)
    cfg = FlashVIDConfig(r, **extra)
    want, want_tok = loop_flashvid(h.tolist(), a.tolist(), cfg, "ceil")
    ref = reference(h, a, g, cfg)
    assert ref.index.tolist() == want
    assert torch.allclose(ref.tokens, torch.tensor(want_tok, dtype=torch.float64), atol=1e-9)
    comp = FixedBudgetFlashVID(cfg, L, N, D)
    lr, lr_tok = loop_flashvid(h.tolist(), a.tolist(), cfg, "lr")
    tokens, index = comp(h.float(), a.float(), g)
    assert index.tolist() == lr and len(lr) == comp.budget == cfg.total_budget(L, N)
    assert torch.allclose(tokens, torch.tensor(lr_tok, dtype=torch.float32), atol=1e-5)
    assert set(lr) <= set(want)  # largest remainder gives each frame the floor or the ceil


def test_both_tstm_paths_are_exercised():
    # slow drift (noise 0.05), 6 x 16 tokens: at r = 0.6 (T = 10) fewer than T F tokens stay roots
    # under the 0.8 threshold and the rank fallback decides; at r = 0.35 the threshold alone does
    h, a, _ = _video(6, 16, 4, 0, 0.05)
    for r, fallback in ((0.6, True), (0.35, False)):
        log: dict = {}
        loop_flashvid(h.tolist(), a.tolist(), FlashVIDConfig(r, min_segments=2), "ceil", log)
        assert bool(log.get("fallback")) == fallback


def test_invariants_and_determinism():
    h, a, g = _video(12, 16, 6, 3, 0.1)
    cfg = FlashVIDConfig(0.25, min_segments=3)
    ref, again = reference(h, a, g, cfg), reference(h, a, g, cfg)
    assert torch.equal(ref.index, again.index) and torch.equal(ref.tokens, again.tokens)
    n_a, n_s = cfg.per_frame(16)
    B = cfg.total_budget(12, 16)
    assert B <= ref.index.numel() <= B + 12 - 1
    assert (
        bool((ref.index[1:] > ref.index[:-1]).all()) and 0 <= int(ref.index[0]) and int(ref.index[-1]) < 192
    )
    assert ref.selected.sum(1).tolist() == [n_a] * 12 and sum(ref.segments) == 12
    assert not (ref.selected & ref.roots).any() and not (ref.centres & ~ref.roots).any()
    flat = h.reshape(192, 6)
    sel = ref.selected.reshape(-1)[ref.index]
    assert torch.equal(ref.tokens[sel], flat[ref.index[sel]])  # ADTS tokens are unmodified rows
    comp = FixedBudgetFlashVID(cfg, 12, 16, 6)
    t1, i1 = comp(h.float(), a.float(), g)
    t2, i2 = comp(h.float(), a.float(), g)
    assert torch.equal(i1, i2) and torch.equal(t1, t2) and i1.numel() == B
    assert bool((i1[1:] > i1[:-1]).all())


# ---- brute force on the sub-steps ----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_dpc_knn_finds_separated_clusters(seed):
    gen = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(3, 5, dtype=torch.float64)
    sizes = [4, 3, 5]
    v = torch.cat(
        [
            centres[k] + 0.1 * torch.randn(s, 5, generator=gen, dtype=torch.float64)
            for k, s in enumerate(sizes)
        ]
    )
    perm = torch.randperm(12, generator=gen)
    v = v[perm]
    label = torch.tensor([k for k, s in enumerate(sizes) for _ in range(s)])[perm]
    cen, join = dpc_knn_frame(v, 3, 7)
    assert sorted(label[cen].tolist()) == [0, 1, 2]  # one centre per cluster
    assert torch.equal(label[join], label)  # every token joins its own cluster's centre
    # the centres are the brute-force top-3 of rho * delta (definitions evaluated per token)
    d = [[math.dist(p, q) / math.sqrt(5) for q in v.tolist()] for p in v.tolist()]
    rho = [math.exp(-sum(x * x for x in sorted(row)[:3]) / 3) for row in d]
    delta = [
        min([d[i][j] for j in range(12) if rho[j] > rho[i]], default=max(map(max, d))) for i in range(12)
    ]
    best = sorted(range(12), key=lambda i: -rho[i] * delta[i])[:3]
    assert cen.tolist() == sorted(best)


@pytest.mark.parametrize("seed", range(3))
def test_adts_greedy_hits_the_brute_force_max_min_clusters(seed):
    # one frame, 4 separated directions x 3 noisy tokens, a positive calibration (uniform attention,
    # tokens with positive relevance): the max-min 4-subset of D takes one token per direction
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.eye(4, dtype=torch.float64) + 0.5
    x = (
        dirs.repeat_interleave(3, 0) + 0.02 * torch.randn(12, 4, generator=gen, dtype=torch.float64)
    ).unsqueeze(0)
    a = torch.full((1, 12), 1 / 12, dtype=torch.float64)
    picks = adts(x, a, 4)[0].tolist()
    w = (a[0] * (x[0] @ x[0].mean(0))).tolist()
    xs = x[0].tolist()

    def value(subset):  # min over ordered pairs of the calibrated distance D(i, j) = d(i, j) w_j
        return min((1 - _cos(xs[i], xs[j])) * w[j] for i, j in itertools.permutations(subset, 2))

    best = max(itertools.combinations(range(12), 4), key=value)
    assert sorted(p // 3 for p in picks) == sorted(q // 3 for q in best) == [0, 1, 2, 3]
    assert value(picks) >= 0.5 * value(best)


def test_dyseg_by_hand():
    f = torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0, 1], [0.02, 1], [1, 1]], dtype=torch.float64)
    # cos: ~1, 0.01, 1, ~1, 0.72 -> cuts after 1 (0.01) and 4 (0.72 < 0.9)
    assert dyseg(f, 0.9, 1) == [2, 3, 1]
    assert dyseg(f, 0.9, 3) == [2, 3, 1]
    # one more segment: the lowest uncut similarity is the 3 -> 4 transition (cos(e2, e2 + .02 e1))
    assert dyseg(f, 0.9, 4) == [2, 2, 1, 1]
    assert dyseg(f, 0.9, 99) == [1] * 6  # at most L segments
    assert dyseg(f[:1], 0.9, 8) == [1]


def test_budgets_by_hand_at_32x196():
    # T = ceil(196 r), n_a = ceil(0.7 T): 10 (7+3), 20 (14+6), 30 (21+9), 49 (35+14)
    for r, (na, ns) in ((0.05, (7, 3)), (0.10, (14, 6)), (0.15, (21, 9)), (0.25, (35, 14))):
        assert FlashVIDConfig(r).per_frame(196) == (na, ns)
        assert get_method("flashvid").budget(r, 32, 196) == 32 * (na + ns)
    assert FlashVIDConfig(0.10, expansion=1.25).per_frame(196) == (18, 7)  # official e: T = 25


def test_errors_and_attention_argument():
    with pytest.raises(BudgetError):
        FlashVIDConfig(0.0)
    with pytest.raises(BudgetError):
        FlashVIDConfig(0.5, alpha=1.5)
    h, a, g = _video(4, 6, 3, 0, 0.3)
    with pytest.raises(ValueError):
        reference(h, a[:, :5], g, FlashVIDConfig(0.5))
    with pytest.raises(ValueError):
        FixedBudgetFlashVID(FlashVIDConfig(0.5), 4, 6, 3)(torch.zeros(4, 6, 4), a.float(), g)
    other = torch.rand(4, 6, dtype=torch.float64)
    cfg = FlashVIDConfig(0.5, min_segments=2)
    got = reference(h, a, g, cfg, attention=other)
    assert torch.equal(got.index, flashvid(h, other, cfg).index)
    want, _ = loop_flashvid(h.tolist(), other.tolist(), cfg, "lr")
    assert FixedBudgetFlashVID(cfg, 4, 6, 3)(h.float(), a.float(), g, other.float())[1].tolist() == want


# ---- ONNX Runtime on another video -----------------------------------------------------------------
@pytest.fixture(scope="module")
def videos():
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4"), video_features("tiny", "bikes.mp4")


def test_onnx_graph_is_static_and_correct_on_another_video(videos, tmp_path):
    (h1, a1, g1), (h2, a2, g2) = videos
    comp = FixedBudgetFlashVID(FlashVIDConfig(0.15), *h1.shape).eval()
    _, sess = export_static_graph(comp, (h1, a1, g1), tmp_path / "compress.onnx", FORBIDDEN)
    with torch.no_grad():
        eager1, eager2 = comp(h1, a1, g1), comp(h2, a2, g2)
    assert not torch.equal(eager1[1], eager2[1])
    assert eager2[1].numel() == comp.budget and bool((eager2[1][1:] > eager2[1][:-1]).all())
    for (h, a, g), (tok, idx) in (((h2, a2, g2), eager2), ((h1, a1, g1), eager1)):
        got_tok, got_idx = sess.run(None, {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()})
        assert got_idx.dtype == np.int64 and np.array_equal(got_idx, idx.numpy())
        assert np.abs(got_tok - tok.numpy()).max() <= 1e-4 * max(1.0, float(tok.abs().max()))
