"""DyCoke TTM (infomerge.compress.dycoke) against independent computations.

- a plain-Python loop implementation (cosine per token against the comparison frame, per-frame
  least-similar selection);
- hand computations (a 4-frame case where comparing the 4th frame with the 1st instead of the 3rd
  changes the answer; a frozen video where every score ties; the per-frame quotas at 32 x 196);
- the shape-static graph in ONNX Runtime on a video other than the tracing one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _static_graph import FORBIDDEN as STATIC_FORBIDDEN
from _static_graph import export_static_graph

from infomerge.compress.dycoke import DyCokeConfig, FixedBudgetDyCoke, reference
from infomerge.compress.methods import get_method
from infomerge.errors import BudgetError

FORBIDDEN = STATIC_FORBIDDEN | {"TopK"}


def _cos(a, b) -> float:
    if a == b:
        return 1.0  # identical tokens tie exactly (a 1-frame video compares frame 0 with itself)
    na = math.sqrt(sum(v * v for v in a))
    nb = math.sqrt(sum(v * v for v in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def loop_dycoke(video: list[list[list[float]]], quota: list[int]) -> list[int]:
    """Frame t compares with: t-1 when t % 4 in (1, 3), t-2 when t % 4 == 2, t-4 when t % 4 == 0
    (t > 0), frame 1 for frame 0; keeps its quota[t] least cosine-similar positions."""
    L, N = len(video), len(video[0])
    kept = []
    for t in range(L):
        if t == 0:
            c = 1 if L > 1 else 0
        else:
            c = {0: t - 4, 1: t - 1, 2: t - 2, 3: t - 1}[t % 4]
        sims = [(_cos(video[t][p], video[c][p]), p) for p in range(N)]
        kept += [t * N + p for _, p in sorted(sims)[: quota[t]]]
    return sorted(kept)


def _video(frames, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(frames, n, d, generator=gen, dtype=torch.float64)
    return h, torch.rand(frames, n, generator=gen, dtype=torch.float64), torch.randn(frames, 3, generator=gen)


def test_quotas_by_hand_at_32x196():
    # B = round(r 6272); frame 0 whole; 7 window starts share B - 196; 24 other frames share the rest
    q = DyCokeConfig(0.15).quotas(32, 196)  # 941 - 196 = 745 = 7 * 106 + 3
    assert q[0] == 196 and [q[t] for t in range(4, 32, 4)] == [107, 107, 107, 106, 106, 106, 106]
    assert sum(q) == 941 and all(q[t] == 0 for t in range(32) if t % 4)
    q = DyCokeConfig(0.25).quotas(32, 196)  # exactly every 4th frame
    assert q == [196 if t % 4 == 0 else 0 for t in range(32)]
    q = DyCokeConfig(0.5).quotas(32, 196)  # 3136 - 8 * 196 = 1568 = 24 * 65 + 8
    assert [q[t] for t in range(32) if t % 4] == [66] * 8 + [65] * 16
    assert DyCokeConfig(0.05).quotas(32, 196)[:5] == [196, 0, 0, 0, 17]  # 314-196 = 118 = 7*16+6


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", [(9, 7, 5), (4, 6, 3), (1, 5, 4), (13, 4, 6)])
@pytest.mark.parametrize("r", [0.05, 0.2, 0.3, 0.6, 1.0])
def test_reference_and_static_match_the_loop(seed, shape, r):
    h, a, g = _video(*shape, seed)
    L, N, D = shape
    cfg = DyCokeConfig(r)
    q = cfg.quotas(L, N)
    assert sum(q) == cfg.total_budget(L, N) == max(1, round(r * L * N))
    want = loop_dycoke(h.tolist(), q)
    ref = reference(h, a, g, cfg)
    assert ref.index.tolist() == want
    assert torch.equal(ref.tokens, h.reshape(L * N, D)[want])
    comp = FixedBudgetDyCoke(cfg, L, N, D)
    tokens, index = comp(h.float(), a.float(), g)
    assert comp.budget == len(want) and index.tolist() == want
    assert torch.equal(tokens, h.float().reshape(L * N, D)[want])


def _hand_video():
    f0 = [[1, 0], [0, 1], [1, 1]]
    f1 = [[1, 0], [1, 1], [-1, 1]]  # vs f0: cos 1, 1/sqrt2, 0 -> keeps p2
    f2 = [[0, 1], [0, 2], [1, 1]]  # vs f0: cos 0, 1, 1 -> keeps p0
    f3 = [[0, 1], [1, 0], [1, 1]]  # vs f2: 1, 0, 1 -> keeps p1 (vs f0 it would be p0)
    return torch.tensor([f0, f1, f2, f3], dtype=torch.float64)


def test_hand_computed_four_frame_window():
    h = _hand_video()
    a, g = torch.rand(4, 3), torch.randn(4, 2)
    cfg = DyCokeConfig(0.5)  # B = 6: frame 0 whole, one token per later frame
    assert cfg.quotas(4, 3) == [3, 1, 1, 1]
    expected = [0, 1, 2, 3 + 2, 6 + 0, 9 + 1]
    assert reference(h, a, g, cfg).index.tolist() == expected
    assert FixedBudgetDyCoke(cfg, 4, 3, 2)(h.float(), a, g)[1].tolist() == expected


def test_frozen_video_ties_keep_the_lowest_positions():
    frame = torch.randn(5, 7, dtype=torch.float64)
    h = frame.expand(8, 5, 7).clone()  # every later token equals its comparison token: cos 1
    a, g = torch.rand(8, 5), torch.randn(8, 2)
    cfg = DyCokeConfig(0.5)  # B = 20: frames 0, 4 whole (10), 6 others share 10 -> 2,2,2,2,1,1
    q = cfg.quotas(8, 5)
    assert q == [5, 2, 2, 2, 5, 2, 1, 1]
    expected = sorted(t * 5 + p for t in range(8) for p in range(q[t]))
    assert reference(h, a, g, cfg).index.tolist() == expected
    assert FixedBudgetDyCoke(cfg, 8, 5, 7)(h.float(), a, g)[1].tolist() == expected


def test_budget_errors_and_registry():
    with pytest.raises(BudgetError):
        DyCokeConfig(0.0)
    with pytest.raises(BudgetError):
        DyCokeConfig(1.5)
    m = get_method("dycoke")
    assert m.budget(0.15, 32, 196) == 941
    assert DyCokeConfig(0.001).total_budget(2, 3) == 1
    with pytest.raises(ValueError):
        FixedBudgetDyCoke(DyCokeConfig(0.5), 4, 3, 2)(
            torch.zeros(4, 3, 3), torch.zeros(4, 3), torch.zeros(4, 2)
        )
    assert m.config(0.15).to_dict() == {"retention": 0.15, "window": 4}


@pytest.fixture(scope="module")
def videos():
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4"), video_features("tiny", "bikes.mp4")


@pytest.mark.parametrize("r", [0.15, 0.5])
def test_onnx_graph_is_static_and_correct_on_another_video(videos, tmp_path, r):

    (h1, a1, g1), (h2, a2, g2) = videos
    comp = FixedBudgetDyCoke(DyCokeConfig(r), *h1.shape).eval()
    path = tmp_path / "compress.onnx"
    ops, sess = export_static_graph(comp, (h1, a1, g1), path, FORBIDDEN)
    assert not ops & {"MatMul", "Sqrt", "Exp"}  # scores from fixed-order elementwise sums
    with torch.no_grad():
        eager1, eager2 = comp(h1, a1, g1), comp(h2, a2, g2)
    assert not torch.equal(eager1[1], eager2[1])
    assert eager2[1].numel() == comp.budget and bool((eager2[1][1:] > eager2[1][:-1]).all())
    for (h, a, g), (tok, idx) in (((h2, a2, g2), eager2), ((h1, a1, g1), eager1)):
        got_tok, got_idx = sess.run(None, {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()})
        assert got_idx.dtype == np.int64 and np.array_equal(got_idx, idx.numpy())
        assert np.array_equal(got_tok, tok.numpy())  # pure gathers: bit-exact
