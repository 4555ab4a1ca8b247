"""A second, independent InfoMerge written as plain Python loops over floats (numpy only for the
singular values), straight from InfoMerge (arXiv 2606.02161, docs/algorithm.md). Slow; for small
inputs in tests only.
It shares no code with ``infomerge.compress``: budgets, ties, TFD, CABA, selection, density,
hard mask and merge are all re-derived here."""

from __future__ import annotations

import math
import statistics

import numpy as np

_EPS = 1e-9


def cos(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def dist(a, b) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))) / math.sqrt(len(a))


def budgets_per_frame(r: float, d: float, n: int, frames: int, rule: str) -> tuple[int, float]:
    """(T_s, B_DTM) by the spec's step 2."""
    if rule == "paper":
        return math.floor((1 - d) * r * n + _EPS), d * r * frames * n
    big_r = math.floor(n * r + _EPS)
    t_s = big_r - math.floor(big_r * d + _EPS)
    return t_s, float((big_r - t_s) * frames)


def segments(g, c: int, tau: float) -> list[tuple[int, int]]:
    frames = len(g)
    if frames < c:
        return [(l, l + 1) for l in range(frames)]
    t = [cos(g[l], g[l + 1]) for l in range(frames - 1)]
    cuts = set(sorted(range(frames - 1), key=lambda l: (t[l], l))[: c - 1]) | {
        l for l in range(frames - 1) if t[l] < tau
    }
    out, start = [], 0
    for l in sorted(cuts):
        out.append((start, l + 1))
        start = l + 1
    return out + [(start, frames)]


def tfd(seg) -> list[float]:
    t, n = len(seg), len(seg[0])
    out = []
    for p in range(n):
        f = [[cos(seg[l][p], seg[m][p]) for m in range(t)] for l in range(t)]
        out.append(sum(abs(f[l + 1][m] - f[l][m]) for l in range(t - 1) for m in range(t)) / ((t - 1) * t))
    return out


def adjacent(seg, window: int) -> list[float]:
    t, n = len(seg), len(seg[0])
    pairs = [l for l in range(t - 1) if l // window == (l + 1) // window]
    return [statistics.fmean(1 - cos(seg[l][p], seg[l + 1][p]) for l in pairs) for p in range(n)]


def entropy(rows) -> float:
    x = np.asarray(rows, dtype=np.float64)
    r = min(x.shape)
    if r < 2:
        return 0.0
    sv2 = np.linalg.svd(x, compute_uv=False) ** 2
    if sv2.sum() <= 0:
        return 0.0
    pi = sv2 / sv2.sum()
    pi = pi[pi > 0]
    return float(-(pi * np.log(pi)).sum() / math.log(r))


def mean_vec(rows):
    return [statistics.fmean(col) for col in zip(*rows)]


def zs(v):
    mu, sd = statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0
    return [(a - mu) / (sd + 1e-6) for a in v]


def loop_reference(h, a, g, cfg) -> dict:
    """h: L x N x D nested lists, a: L x N, g: L x G; cfg: an InfoMergeConfig (fields only)."""
    frames, n = len(h), len(h[0])
    t_s, b_dtm = budgets_per_frame(cfg.retention, cfg.context_share, n, frames, cfg.budget_rule)
    segs = segments(g, cfg.min_segments, cfg.seg_threshold)
    lengths = [e - s for s, e in segs]

    # step 3
    n_static = math.floor(cfg.rho * n + _EPS) if cfg.tfd else 0
    static = []
    for s, e in segs:
        if n_static and e - s > 1:
            sc = tfd(h[s:e]) if cfg.static_estimator == "tfd" else adjacent(h[s:e], cfg.adjacent_window)
            static.append(set(sorted(range(n), key=lambda p: (sc[p], p))[:n_static]))
        else:
            static.append(set())

    # step 4
    if cfg.caba:
        video_mean = mean_vec([tok for fr in h for tok in fr])
        u = [1 - cos(mean_vec([tok for fr in h[s:e] for tok in fr]), video_mean) for s, e in segs]
        ent = [entropy([tok for fr in h[s:e] for tok in fr]) for s, e in segs]
        m = [cfg.alpha * x + cfg.beta * y for x, y in zip(zs(u), zs(ent))]
        w = [tk / (1 + math.exp(-cfg.tau * mk)) for mk, tk in zip(m, lengths)]
    else:
        w = [float(tk) for tk in lengths]
    budgets = [max(1, round(b_dtm * wk / math.fsum(w))) for wk in w]

    kept = {}  # flat index -> token
    salient_all, replaced_all, anchors_all = [], [], []
    for k, (s, e) in enumerate(segs):
        t = e - s
        seg = [[list(tok) for tok in fr] for fr in h[s:e]]
        orig_mean = {p: mean_vec([h[r][p] for r in range(s, e)]) for p in range(n)}
        history, sal = set(), []
        for l in range(t):
            std = statistics.pstdev(a[s + l])
            sc = [
                a[s + l][p] - (cfg.lam * std if (p in static[k] and p in history) else 0.0) for p in range(n)
            ]
            chosen = sorted(range(n), key=lambda p: (-sc[p], p))[:t_s]
            sal.append(set(chosen))
            hits = set(chosen) & static[k]
            history |= hits
            for p in hits:
                for r in range(l, t):
                    seg[r][p] = list(orig_mean[p])
        for r in range(t):
            replaced_all += [(s + r) * n + p for p in history_at(sal, static[k], r)]

        a_frames = sorted(range(t - 1, -1, -cfg.anchor_interval))
        per = budgets[k] // len(a_frames)
        chosen_static, frame_anchors = set(), []
        for f in a_frames:
            cand = [p for p in range(n) if p not in sal[f]]
            score = density(seg[f], cand, cfg.knn, cfg.density_ties)
            free = [p for p in cand if not (p in static[k] and p in chosen_static)]
            picked = sorted(free, key=lambda p: (-score[p], p))[: min(per, len(free))]
            chosen_static |= set(picked) & static[k]
            frame_anchors.append(sorted(f * n + p for p in picked))

        members = [f * n + p for f in range(t) for p in range(n) if p not in sal[f]]
        for pool in frame_anchors:  # every anchor frame merges ALL candidates of the segment
            groups = {q: [] for q in pool}
            for i in members:
                if i in groups:
                    continue
                xi = seg[i // n][i % n]
                best, best_q = -math.inf, None
                for q in pool:  # ascending: the lower index wins ties
                    c = cos(xi, seg[q // n][q % n])
                    if c > best:
                        best, best_q = c, q
                if best_q is not None:
                    groups[best_q].append(i)
            for q in pool:
                anchor = seg[q // n][q % n]
                cnt = len(groups[q])
                mean = [
                    (anchor[j] + sum(seg[i // n][i % n][j] for i in groups[q])) / (cnt + 1)
                    for j in range(len(anchor))
                ]
                wq = max(1 / (cnt + 1), cfg.anchor_weight)
                kept[s * n + q] = [wq * x + (1 - wq) * y for x, y in zip(anchor, mean)]
                anchors_all.append(s * n + q)
        for f in range(t):
            for p in sal[f]:
                kept[(s + f) * n + p] = seg[f][p]
                salient_all.append((s + f) * n + p)

    index = sorted(kept)
    return {
        "index": index,
        "tokens": [kept[i] for i in index],
        "segments": segs,
        "budgets": budgets,
        "static": static,
        "salient": sorted(salient_all),
        "anchors": sorted(anchors_all),
        "replaced": sorted(replaced_all),
    }


def history_at(sal, static, r) -> set:
    """Static positions selected in frames 0..r of the segment (replaced at frame r)."""
    out = set()
    for l in range(r + 1):
        out |= sal[l] & static
    return out


def density(frame, cand, knn, ties="index") -> dict:
    """DPC-kNN rho * delta per candidate; ties "index" (lower index denser) or "strict" (FastVID)."""
    rho = {}
    for i in cand:
        ds = sorted(dist(frame[i], frame[j]) for j in cand)[: min(knn, len(cand))]
        rho[i] = math.exp(-sum(v * v for v in ds) / len(ds))
    max_d = max((dist(frame[i], frame[j]) for i in cand for j in cand), default=0.0)
    out = {}
    for i in cand:
        denser = [j for j in cand if rho[j] > rho[i] or (ties == "index" and rho[j] == rho[i] and j < i)]
        out[i] = rho[i] * min((dist(frame[i], frame[j]) for j in denser), default=max_d)
    return out
