"""The fixed-budget graph's cheaper forms (issue 20 item 5) against independent computations.

- the static replacement on the |S| static positions against a per-token loop of segment means;
- the exact pair distances (eager, in place, in blocks) against ``exact_arith.pair_sq_dist`` (the
  same additions in the same order: equal bits) and against float64;
- the density step's exact Gram distances (``exact_arith.gram_sq_dist``): the power-of-two exponent
  against ``torch.frexp``, the distances against float64 differences, the same bits whatever the
  summation order (columns permuted, frames one at a time) and in ONNX Runtime; the fixed-budget
  density scores against a float64 loop of the DPC-kNN definition;
- the whole compressor at several L against the per-rank ``merge_to_anchors`` form (the merge
  contract the reference uses) on random segment layouts;
- one small ONNX export of a long-segment layout: ORT's indices equal eager's, tokens within
  ``1e-5 x peak``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infomerge.bench.studies.reference_timing import synthetic_inputs
from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.exact_arith import (
    _row_block_sq_dist,
    exact_bits,
    gram_sq_dist,
    pair_sq_dist,
    pow2_exponent,
    row_sq_dist,
)
from infomerge.compress.fixed_budget import FixedBudgetCompressor, rank_desc
from infomerge.compress.merge import merge_to_anchors

N = 196


def _random_layout(frames: int, seed: int) -> list[int]:
    """8 segment lengths summing to ``frames`` (each >= 1), drawn at random."""
    gen = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(frames - 1, generator=gen)[:7].add(1).tolist())
    bounds = [0, *cuts, frames]
    return [b - a for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("frames, seed", [(12, 0), (21, 1), (40, 2)])
def test_static_replacement_equals_a_loop_of_segment_means(frames, seed):
    lengths = _random_layout(frames, seed)
    h, a, g = synthetic_inputs(lengths, N, 24, global_dim=48, seed=seed)
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.15), frames, N, 24)
    d = comp.decisions(h, a, g)
    assert d.segments() == [(sum(lengths[:k]), sum(lengths[: k + 1])) for k in range(len(lengths))]
    seg = d.segment.tolist()
    same = torch.tensor([[float(seg[i] == seg[j]) for j in range(frames)] for i in range(frames)])
    static = d.static[d.segment]  # (L, N) S of each frame's segment
    gen = torch.Generator().manual_seed(seed)
    replaced = static & (torch.rand(frames, N, generator=gen) < 0.5)
    got = comp._replace_static(h, replaced, static, same / same.sum(1, keepdim=True))
    want = h.clone()
    for l in range(frames):
        members = [m for m in range(frames) if seg[m] == seg[l]]
        for p in replaced[l].nonzero().flatten().tolist():
            want[l, p] = sum(h[m, p].double() for m in members).float() / len(members)
    untouched = ~replaced
    assert torch.equal(got[untouched], h[untouched])
    assert torch.allclose(got, want, atol=1e-6, rtol=0), float((got - want).abs().max())
    assert bool(replaced.any())


@pytest.mark.parametrize("rows, width, partners", [(300, 37, 9), (129, 896, 4), (64, 1000, 1)])
def test_exact_pair_distances_equal_the_pairwise_form(rows, width, partners):
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(rows, width, generator=gen) * 3.0 + 1.0
    cols = torch.randint(0, rows, (rows, partners), generator=gen)
    got = row_sq_dist(x, cols, width)  # eager: in place, blocks of rows
    flat_rows = torch.arange(rows).repeat_interleave(partners)
    want = pair_sq_dist(x, flat_rows, cols.reshape(-1), width).reshape(rows, partners)
    assert torch.equal(got, want)
    assert torch.equal(_row_block_sq_dist(x, x, cols, width), want)  # the traced form (one block)
    exact = ((x.double().unsqueeze(1) - x.double()[cols]) ** 2).sum(-1)
    assert torch.allclose(got.double(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("rows, width, partners", [(1100, 600, 4), (700, 37, 9)])
def test_traced_exact_pair_distances_in_unrolled_blocks_equal_the_pairwise_form(rows, width, partners):
    """The traced graph's form (row blocks unrolled at trace time, the last one partial) against
    ``exact_arith.pair_sq_dist``: equal bits."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, width, generator=gen) * 3.0 + 1.0
    cols = torch.randint(0, rows, (rows, partners), generator=gen)
    flat_rows = torch.arange(rows).repeat_interleave(partners)
    want = pair_sq_dist(x, flat_rows, cols.reshape(-1), width).reshape(rows, partners)
    traced = torch.jit.trace(lambda a, b: row_sq_dist(a, b, width, (rows, partners)), (x, cols))
    blocks = sum(1 for n in traced.graph.nodes() if n.kind() == "aten::index_select")
    assert blocks > -(-width // 512)  # more than one block of rows
    assert torch.equal(traced(x, cols), want)


def test_pow2_exponent_against_frexp():
    gen = torch.Generator().manual_seed(0)
    m = torch.cat([torch.rand(500, generator=gen) * 10.0 ** torch.randint(-12, 12, (500,), generator=gen),
                   torch.tensor([0.5, 1.0, 2.0, 3.0, 2.0**-64, 2.0**63])])
    _, exp = torch.frexp(m)  # m = mantissa 2^exp, mantissa in [0.5, 1): 2^(exp - 1) <= m < 2^exp
    assert torch.equal(pow2_exponent(m), exp.to(torch.int64))
    assert pow2_exponent(torch.tensor([0.0, 2.0**-70, 2.0**70])).tolist() == [-64, -64, 64]
    assert [exact_bits(w) for w in (1, 24, 896, 3584, 8192)] == [24, 24, 21, 20, 20]


@pytest.mark.parametrize("width", [24, 896])
def test_gram_distances_are_exact_in_any_summation_order(width):
    """Gram distances of rows at very different scales: within the grid's rounding of float64
    differences, exactly 0 on the diagonal and between equal rows, and the same bits with the
    columns permuted (another summation order) or the frames computed one at a time."""
    gen = torch.Generator().manual_seed(width)
    scale = 10.0 ** torch.randint(-6, 6, (3, 40, 1), generator=gen).float()
    x = torch.randn(3, 40, width, generator=gen) * scale
    x[1, 7] = x[1, 3]  # equal rows
    got = gram_sq_dist(x, width)
    assert got.dtype == torch.float64
    want = ((x.double().unsqueeze(-2) - x.double().unsqueeze(-3)) ** 2).sum(-1)
    # each coordinate moves by at most half a step 2^(e - b) <= 2^(1 - b) max|x_i|
    step = 2.0 ** (1 - exact_bits(width)) * x.double().abs().amax(-1)
    bound = (want.sqrt() + width**0.5 * (step.unsqueeze(-1) + step.unsqueeze(-2))) * width**0.5 * (
        step.unsqueeze(-1) + step.unsqueeze(-2)
    ) + 1e-15 * want
    assert bool(((got - want).abs() <= bound).all())
    assert bool((got.diagonal(dim1=-2, dim2=-1) == 0).all()) and float(got[1, 7, 3]) == 0.0
    perm = torch.randperm(width, generator=gen)
    assert torch.equal(gram_sq_dist(x[..., perm], width), got)
    assert torch.equal(torch.stack([gram_sq_dist(x[i], width) for i in range(3)]), got)


def test_gram_distances_are_bit_identical_in_onnx_runtime(tmp_path):
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(3)
    scale = 10.0 ** torch.randint(-4, 4, (4, 60, 1), generator=gen).float()
    x = torch.randn(4, 60, 300, generator=gen) * scale

    class Gram(torch.nn.Module):
        def forward(self, x):
            return gram_sq_dist(x, 300)

    path = tmp_path / "gram.onnx"
    torch.onnx.export(Gram(), (x,), str(path), input_names=["x"], opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for xx in (x, x.flip(1) * 3.0):
        (got,) = sess.run(None, {"x": xx.numpy()})
        assert np.array_equal(got, gram_sq_dist(xx, 300).numpy())


def _density_loop(x: torch.Tensor, knn: int, ties: str) -> list[float]:
    """The DPC-kNN score ``(rho delta)^2 / rho_max^2`` of one frame's candidates, float64 loops
    over differences (``rho = exp(-mean of the k smallest d^2)``, ``d^2 = |x_i - x_j|^2 / D``)."""
    c, d = x.shape
    xd = x.double()
    d2 = [[float(((xd[i] - xd[j]) ** 2).sum()) / d for j in range(c)] for i in range(c)]
    m = [sum(sorted(row)[:knn]) / knn for row in d2]
    dmax = max(max(row) for row in d2)
    out = []
    for i in range(c):
        denser = [j for j in range(c) if m[j] < m[i] or (ties == "index" and m[j] == m[i] and j < i)]
        delta2 = min(d2[i][j] for j in denser) if denser else dmax
        out.append(math.exp(-2.0 * (m[i] - min(m))) * delta2)
    return out


@pytest.mark.parametrize("preset", ["paper", "fastvid"])
def test_density_scores_against_a_float64_loop(preset):
    h, a, g = synthetic_inputs([3, 2], 30, 48, global_dim=48, seed=11)
    comp = FixedBudgetCompressor(getattr(InfoMergeConfig, preset)(0.25), 5, 30, 48)
    cand = ~(rank_desc(a) < comp.salient_count)
    cpos = comp._candidate_positions(cand)
    xs = torch.stack([h[l].index_select(0, cpos[l]) for l in range(5)])
    score = comp._density(h, xs, cpos)
    assert bool(torch.isinf(score[~cand]).all())
    for l in range(5):
        want = _density_loop(xs[l], comp.config.knn, comp.config.density_ties)
        got = score[l].index_select(0, cpos[l]).tolist()
        assert got == pytest.approx(want, rel=2e-5)
        # the anchor order: the same ranking as the loop's (no near-ties in these features)
        order = sorted(range(len(got)), key=lambda i: -got[i])
        assert sorted(range(len(want)), key=lambda i: -want[i]) == order


@pytest.mark.parametrize(
    "frames, seed, scope",
    [(16, 3, "anchor_frame"), (48, 4, "anchor_frame"), (64, 5, "anchor_frame"), (48, 6, "segment")],
)
def test_compressor_equals_the_per_rank_merge_at_several_lengths(frames, seed, scope):
    lengths = _random_layout(frames, seed)
    h, a, g = synthetic_inputs(lengths, N, 24, global_dim=48, seed=seed)
    cfg = InfoMergeConfig.paper(0.15)
    blocked = FixedBudgetCompressor(cfg, frames, N, 24, merge_scope=scope)
    per_rank = FixedBudgetCompressor(cfg, frames, N, 24, merge_scope=scope, merge_impl=merge_to_anchors)
    d = blocked.decisions(h, a, g)
    t_p, i_p = per_rank(h, a, g)
    assert torch.equal(d.index, i_p)
    assert bool(d.anchors.reshape(-1)[i_p].any())
    scale = float(t_p.abs().max())
    assert torch.allclose(d.tokens, t_p, atol=1e-5 * scale, rtol=0), float((d.tokens - t_p).abs().max())


def test_onnx_runtime_matches_eager_on_a_long_segment(tmp_path):
    from tests._static_graph import export_static_graph

    lengths = [1] * 7 + [13]  # one 13-frame segment: 4 anchor ranks, static replacement
    h, a, g = synthetic_inputs(lengths, N, 24, global_dim=48, seed=7)
    comp = FixedBudgetCompressor(InfoMergeConfig.paper(0.25), sum(lengths), N, 24).eval()
    _, sess = export_static_graph(comp, (h, a, g), tmp_path / "compress.onnx")
    h2, a2, g2 = synthetic_inputs(lengths, N, 24, global_dim=48, seed=8)
    for hh, aa, gg in ((h, a, g), (h2, a2, g2)):
        tokens, index = sess.run(None, {"H": hh.numpy(), "A": aa.numpy(), "g": gg.numpy()})
        with torch.no_grad():
            t_e, i_e = comp(hh, aa, gg)
        assert np.array_equal(index, i_e.numpy())
        assert np.abs(tokens - t_e.numpy()).max() <= 1e-5 * float(t_e.abs().max())
