"""DivPrune (infomerge.compress.divprune) against independent computations.

- a plain-Python loop implementation of the greedy max-min selection (Alg. 1, eqs. 5-6);
- a brute-force max-min search over every K-subset on small clustered cases;
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

from infomerge.compress.divprune import DivPruneConfig, FixedBudgetDivPrune, reference
from infomerge.compress.methods import get_method
from infomerge.errors import BudgetError

FORBIDDEN = STATIC_FORBIDDEN | {"TopK"}


def _cos_dist(a, b) -> float:
    na = math.sqrt(sum(v * v for v in a)) or 1e-12
    nb = math.sqrt(sum(v * v for v in b)) or 1e-12
    return 1.0 - sum(x * y for x, y in zip(a, b)) / (na * nb)


def loop_divprune(rows: list[list[float]], k: int) -> list[int]:
    """Greedy max-min in plain Python: the most isolated row first, then the row farthest from
    the selected set; ties to the lower index. Returns the selection order."""
    m = len(rows)
    d = [[_cos_dist(rows[i], rows[j]) for j in range(m)] for i in range(m)]
    nearest = [min(d[j][i] for j in range(m) if j != i) for i in range(m)]
    order = [max(range(m), key=lambda i: (nearest[i], -i))]
    while len(order) < k:
        rest = [i for i in range(m) if i not in order]
        order.append(max(rest, key=lambda i: (min(d[s][i] for s in order), -i)))
    return order


def _video(frames, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(frames, n, d, generator=gen, dtype=torch.float64)
    return h, torch.rand(frames, n, generator=gen, dtype=torch.float64), torch.randn(frames, 3, generator=gen)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("r", [0.1, 0.25, 0.5])
def test_reference_and_static_match_the_loop(seed, r):
    h, a, g = _video(3, 8, 5, seed)
    cfg = DivPruneConfig(r)
    k = cfg.total_budget(3, 8)
    order = loop_divprune(h.reshape(24, 5).tolist(), k)
    ref = reference(h, a, g, cfg)
    assert ref.order.tolist() == order
    assert ref.index.tolist() == sorted(order)
    assert torch.equal(ref.tokens, h.reshape(24, 5)[sorted(order)])
    tokens, index = FixedBudgetDivPrune(cfg, 3, 8, 5)(h.float(), a.float(), g.float())
    assert index.tolist() == sorted(order)
    assert torch.equal(tokens, h.float().reshape(24, 5)[sorted(order)])


def _min_pairwise(rows, subset) -> float:
    return min(_cos_dist(rows[i], rows[j]) for i, j in itertools.combinations(subset, 2))


@pytest.mark.parametrize("seed", range(3))
def test_greedy_finds_the_brute_force_max_min_set_on_separated_clusters(seed):
    # 4 well-separated directions in 4-D, 3 noisy tokens around each: the max-min 4-subset takes
    # one token per cluster; brute force over all C(12, 4) = 495 subsets finds its value
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(4, dtype=torch.float64)
    rows = centres.repeat_interleave(3, 0) + 0.05 * torch.randn(12, 4, generator=gen, dtype=torch.float64)
    best = max(itertools.combinations(range(12), 4), key=lambda s: _min_pairwise(rows.tolist(), s))
    h = rows.reshape(2, 6, 4)
    cfg = DivPruneConfig(4 / 12)
    got = reference(h, torch.zeros(2, 6), torch.zeros(2, 1), cfg).index.tolist()
    assert sorted({i // 3 for i in got}) == [0, 1, 2, 3]  # one per cluster, as the optimum
    assert _min_pairwise(rows.tolist(), got) >= 0.5 * _min_pairwise(rows.tolist(), best)
    assert {i // 3 for i in best} == {0, 1, 2, 3}
    _, index = FixedBudgetDivPrune(cfg, 2, 6, 4)(h.float(), torch.zeros(2, 6), torch.zeros(2, 1))
    assert index.tolist() == got


def test_first_pick_is_the_brute_force_most_isolated_token():
    rows = [[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.05], [-0.98, 0.0]]
    nearest = [min(_cos_dist(rows[i], rows[j]) for j in range(5) if j != i) for i in range(5)]
    h = torch.tensor(rows, dtype=torch.float64).reshape(1, 5, 2)
    ref = reference(h, torch.zeros(1, 5), torch.zeros(1, 1), DivPruneConfig(0.2))
    assert ref.order.tolist() == [int(np.argmax(nearest))] == [2]


def test_duplicates_are_never_selected_twice_and_budget_is_exact():
    h = torch.ones(2, 4, 3)  # every token identical: all distances 0
    h[1, 3] = torch.tensor([1.0, -1.0, 0.0])
    cfg = DivPruneConfig(0.5)
    ref = reference(h, torch.zeros(2, 4), torch.zeros(2, 1), cfg)
    assert ref.index.tolist() == [0, 1, 2, 7]  # the odd token, then the lowest indices
    _, index = FixedBudgetDivPrune(cfg, 2, 4, 3)(h, torch.zeros(2, 4), torch.zeros(2, 1))
    assert index.tolist() == [0, 1, 2, 7]


def test_budget_rounding_and_errors():
    assert [DivPruneConfig(r).total_budget(32, 196) for r in (0.05, 0.1, 0.15, 0.25)] == [314, 627, 941, 1568]
    with pytest.raises(BudgetError, match="retention"):
        DivPruneConfig(0.0)
    with pytest.raises(BudgetError, match="keeps no token"):
        DivPruneConfig(0.01).total_budget(2, 4)
    with pytest.raises(ValueError, match="NaN"):
        reference(
            torch.full((2, 4, 3), float("nan")), torch.zeros(2, 4), torch.zeros(2, 1), DivPruneConfig(0.5)
        )
    with pytest.raises(ValueError, match="expected H"):
        reference(torch.zeros(8, 3), torch.zeros(2, 4), torch.zeros(2, 1), DivPruneConfig(0.5))
    assert get_method("divprune").fixed_budget is FixedBudgetDivPrune


@pytest.fixture(scope="module")
def videos():
    from infomerge.bench.studies.agreement import video_features

    return video_features("tiny", "bigbuckbunny.mp4"), video_features("tiny", "bikes.mp4")


def test_onnx_graph_is_static_and_correct_on_another_video(videos, tmp_path):

    (h1, a1, g1), (h2, a2, g2) = videos
    comp = FixedBudgetDivPrune(DivPruneConfig(0.1), *h1.shape).eval()
    path = tmp_path / "compress.onnx"
    ops, sess = export_static_graph(comp, (h1, a1, g1), path, FORBIDDEN)
    with torch.no_grad():
        eager1, eager2 = comp(h1, a1, g1), comp(h2, a2, g2)
    assert not torch.equal(eager1[1], eager2[1])
    for (h, a, g), (tok, idx) in (((h2, a2, g2), eager2), ((h1, a1, g1), eager1)):
        got_tok, got_idx = sess.run(None, {"H": h.numpy(), "A": a.numpy(), "g": g.numpy()})
        assert got_idx.dtype == np.int64 and np.array_equal(got_idx, idx.numpy())
        assert np.array_equal(got_tok, tok.numpy())  # pure gathers: bit-exact
