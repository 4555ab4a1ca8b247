"""The paper-exact InfoMerge reference end to end (InfoMerge (arXiv 2606.02161, docs/algorithm.md) steps 1-7).

Each test checks against something computed independently: a plain-loop second implementation
(tests/_reference_loops.py), budgets and counts worked out by hand from the spec's rules, or
properties that the spec states outright."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _reference_loops import loop_reference

from infomerge.bench.studies.reference_timing import synthetic_inputs
from infomerge.compress.reference import InfoMergeConfig, reference
from infomerge.errors import BudgetError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


EVEN = [4] * 8  # 8 segments of 4 frames = one anchor frame each, no remainder dropped


def _small_video(lengths, n=12, d=6, seed=0, static_positions=(0, 5, 7)):
    """Small float64 (H, A, g) with known segments, near-static positions that attract attention."""
    gen = torch.Generator().manual_seed(seed)
    frames = sum(lengths)
    h = torch.empty(frames, n, d, dtype=torch.float64)
    g = torch.empty(frames, 8, dtype=torch.float64)
    scale = torch.full((n, 1), 0.8, dtype=torch.float64)
    scale[list(static_positions)] = 0.02
    start = 0
    for length in lengths:
        base = torch.randn(n, d, generator=gen, dtype=torch.float64)
        gb = torch.randn(8, generator=gen, dtype=torch.float64)
        for l in range(start, start + length):
            h[l] = base + scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
            g[l] = gb + 0.05 * torch.randn(8, generator=gen, dtype=torch.float64)
        start += length
    logits = torch.randn(frames, n, generator=gen, dtype=torch.float64)
    logits[:, list(static_positions)] += 1.5
    return h, torch.softmax(logits, -1), g


def _assert_matches_loop(h, a, g, cfg, atol=1e-9):
    out = reference(h, a, g, cfg)
    ref = loop_reference(h.tolist(), a.tolist(), g.tolist(), cfg)
    assert out.segments == ref["segments"]
    assert out.budgets == ref["budgets"]
    assert [set(row.nonzero().squeeze(-1).tolist()) for row in out.static] == ref["static"]
    assert out.salient.tolist() == ref["salient"]
    assert out.anchors.tolist() == ref["anchors"]
    assert out.replaced.tolist() == ref["replaced"]
    assert out.index.tolist() == ref["index"]
    torch.testing.assert_close(
        out.tokens.double(), torch.tensor(ref["tokens"], dtype=torch.float64), atol=atol, rtol=0
    )
    return out


# ---- the whole algorithm against the plain-loop implementation --------------------------------
_SMALL = dict(retention=0.5, rho=0.25, min_segments=3)


@pytest.mark.parametrize(
    "cfg",
    [
        InfoMergeConfig.paper(0.5, **{k: v for k, v in _SMALL.items() if k != "retention"}),
        InfoMergeConfig.paper(0.5, rho=0.25, min_segments=3, static_estimator="adjacent"),
        InfoMergeConfig.paper(0.5, rho=0.25, min_segments=3, caba=False),
        InfoMergeConfig.paper(0.5, rho=0.25, min_segments=3, tfd=False),
        InfoMergeConfig.paper(0.3, rho=0.25, min_segments=3, budget_rule="fastvid", anchor_interval=2),
        InfoMergeConfig.fastvid(0.5, min_segments=3),
    ],
    ids=["paper", "adjacent", "caba-off", "tfd-off", "fastvid-rule-p2", "fastvid-preset"],
)
def test_reference_matches_plain_loop_implementation(cfg):
    # segments of 9, 1 and 6 frames: several anchor frames, a single-frame segment, remainders
    h, a, g = _small_video([9, 1, 6], seed=1)
    out = _assert_matches_loop(h, a, g, cfg)
    assert out.segments == [(0, 9), (9, 10), (10, 16)]
    if cfg.tfd:  # the run exercised the penalty, the replacement and the hard mask
        assert out.replaced.numel() > 0


def test_reference_matches_loop_when_fewer_frames_than_c():
    h, a, g = _small_video([2, 3], seed=2)  # 5 frames < c = 8: every frame its own segment
    cfg = InfoMergeConfig.paper(0.5, rho=0.25)
    out = _assert_matches_loop(h, a, g, cfg)
    assert out.segments == [(l, l + 1) for l in range(5)]
    assert not out.static.any() and out.replaced.numel() == 0


def test_reference_float32_input_matches_loop_within_fp32():
    h, a, g = _small_video([9, 1, 6], seed=3)
    cfg = InfoMergeConfig.paper(0.5, rho=0.25, min_segments=3)
    out = reference(h.float(), a.float(), g.float(), cfg)
    ref = loop_reference(h.tolist(), a.tolist(), g.tolist(), cfg)
    assert out.tokens.dtype == torch.float32
    assert out.index.tolist() == ref["index"] and out.budgets == ref["budgets"]
    torch.testing.assert_close(
        out.tokens.double(), torch.tensor(ref["tokens"], dtype=torch.float64), atol=1e-5, rtol=0
    )


# ---- step 2: budget totals and kept counts at L = 32, N = 196 --------------------------------
# Worked out from the spec's rules (step 2), N = 196, L = 32, d = 0.4, 8 segments of 4 frames
# (one anchor frame each), CABA off so that B_k = max(1, round(B_DTM * 4 / 32)):
#   paper   r=15%: T_s = floor(.6*.15*196) = floor(17.64) = 17; B_DTM = 376.32; B_k = round(47.04) = 47
#           kept = 32*17 + 8*47 = 544 + 376 = 920
#           r=10%: T_s = floor(11.76) = 11; B_DTM = 250.88; B_k = round(31.36) = 31 -> 352 + 248 = 600
#           r= 5%: T_s = floor(5.88) = 5;   B_DTM = 125.44; B_k = round(15.68) = 16 -> 160 + 128 = 288
#   fastvid r=15%: R = int(29.4) = 29, T_s = 29 - int(11.6) = 18, C = 11 -> B_k = 44, kept 32*29 = 928
#           r=10%: R = 19, T_s = 19 - int(7.6) = 12, C = 7  -> B_k = 28, kept 608
#           r= 5%: R = 9,  T_s = 9 - int(3.6) = 6,   C = 3  -> B_k = 12, kept 288
COUNTS = {
    ("paper", 0.15): (17, 47, 920),
    ("paper", 0.10): (11, 31, 600),
    ("paper", 0.05): (5, 16, 288),
    ("fastvid", 0.15): (18, 44, 928),
    ("fastvid", 0.10): (12, 28, 608),
    ("fastvid", 0.05): (6, 12, 288),
}


@pytest.fixture(scope="module")
def even_video():
    return synthetic_inputs(EVEN, tokens=196, dim=24, global_dim=16, seed=5)


@pytest.mark.parametrize(("rule", "r"), list(COUNTS))
def test_kept_counts_follow_the_budget_rules(even_video, rule, r):
    h, a, g = even_video
    t_s, b_k, kept = COUNTS[(rule, r)]
    out = reference(h, a, g, InfoMergeConfig.paper(r, caba=False, budget_rule=rule))
    assert out.segments == [(4 * k, 4 * k + 4) for k in range(8)]
    assert out.salient_per_frame == t_s
    assert [len(p) for p in out.per_frame("salient")] == [t_s] * 32
    assert out.budgets == [b_k] * 8
    assert out.kept == kept
    # one anchor frame per segment (its last frame) holds all of that segment's context tokens
    assert [len(p) for p in out.per_frame("anchors")] == [0, 0, 0, b_k] * 8


@pytest.mark.parametrize(("rule", "r"), list(COUNTS))
def test_kept_counts_with_caba(even_video, rule, r):
    # CABA moves budget between segments; kept = L*T_s + sum B_k (one anchor frame per segment)
    h, a, g = even_video
    t_s, _, _ = COUNTS[(rule, r)]
    out = reference(h, a, g, InfoMergeConfig.paper(r, budget_rule=rule))
    b_dtm = {"paper": 0.4 * r * 32 * 196, "fastvid": (COUNTS[(rule, r)][1] // 4) * 32}[rule]
    assert out.kept == 32 * t_s + sum(out.budgets)
    assert abs(sum(out.budgets) - b_dtm) <= len(out.budgets) / 2 + 1e-9  # one rounding per segment
    assert out.budgets != [out.budgets[0]] * 8  # CABA did redistribute


def test_budget_totals_at_15_percent():
    # the spec's headline numbers: paper T_s = 17 per frame (B_DTM = 376.32); FastVID 18 + 11 per frame
    h, a, g = synthetic_inputs(EVEN, tokens=196, dim=24, global_dim=16, seed=6)
    paper = reference(h, a, g, InfoMergeConfig.paper(0.15))
    assert paper.salient_per_frame == 17 and paper.context_budget == pytest.approx(376.32)
    assert paper.salient.numel() == 32 * 17
    fast = reference(h, a, g, InfoMergeConfig.fastvid(0.15))
    assert fast.salient_per_frame == 18 and fast.context_budget == 352.0
    assert fast.salient.numel() == 32 * 18 and fast.anchors.numel() == 32 * 11


def test_anchor_frame_remainders_are_dropped():
    # segments 9, 5, 3 x 6: anchor frames ceil(T/4) = 3, 2, 1; FastVID budgets B_k = 11 T_k
    lengths = [9, 5, 3, 3, 3, 3, 3, 3]
    h, a, g = synthetic_inputs(lengths, tokens=196, dim=24, global_dim=16, seed=7)
    out = reference(h, a, g, InfoMergeConfig.fastvid(0.15))
    assert [e - s for s, e in out.segments] == lengths
    assert out.budgets == [11 * t for t in lengths]
    expected_context = sum(math.ceil(t / 4) * ((11 * t) // math.ceil(t / 4)) for t in lengths)
    assert expected_context == 99 + 54 + 6 * 33  # 99 // 3 = 33 x 3, 55 // 2 = 27 x 2 (one dropped)
    assert out.kept == 32 * 18 + expected_context
    assert out.anchor_frames[:2] == [[0, 4, 8], [9, 13]]  # segment 2 = frames 9..13


# ---- special inputs --------------------------------------------------------------------------
def test_identical_frames():
    gen = torch.Generator().manual_seed(8)
    frame = torch.randn(196, 32, generator=gen)
    h = frame.expand(32, 196, 32).clone()
    a = torch.softmax(torch.randn(196, generator=gen), -1).expand(32, 196).clone()
    g = torch.randn(16, generator=gen).expand(32, 16).clone()
    out = reference(h, a, g, InfoMergeConfig.paper(0.15))
    # all adjacent cosines tie: the c - 1 = 7 first transitions are the boundaries
    assert out.segments == [(l, l + 1) for l in range(7)] + [(7, 32)]
    # TFD is 0 everywhere in the 25-frame segment: ties -> the floor(.09*196) = 17 lowest positions
    assert out.static[7].nonzero().squeeze(-1).tolist() == list(range(17))
    assert not out.static[:7].any()
    # salient tokens (replaced ones are means of identical tokens) equal the frame's tokens
    sal = out.is_salient
    torch.testing.assert_close(out.tokens[sal], frame[out.index[sal] % 196])
    # hard mask: no static position is an anchor in two anchor frames of the long segment
    anchors = out.anchors[out.anchors >= 7 * 196]
    static_anchor_pos = [int(p) for p in anchors % 196 if bool(out.static[7][p])]
    assert len(static_anchor_pos) == len(set(static_anchor_pos))
    assert out.anchor_frames[7] == [7 + f for f in (0, 4, 8, 12, 16, 20, 24)]


def test_single_frame_segments_merge_within_their_frame():
    # 6 frames < c: single-frame segments. Frame l lives in its own block of dimensions, so any
    # cross-frame merge would leak non-zeros into another block.
    gen = torch.Generator().manual_seed(9)
    frames, n, block = 6, 40, 4
    h = torch.zeros(frames, n, frames * block, dtype=torch.float64)
    for l in range(frames):
        h[l, :, l * block : (l + 1) * block] = torch.randn(n, block, generator=gen, dtype=torch.float64)
    a = torch.softmax(torch.randn(frames, n, generator=gen, dtype=torch.float64), -1)
    g = torch.randn(frames, 8, generator=gen, dtype=torch.float64)
    cfg = InfoMergeConfig.paper(0.3)
    out = _assert_matches_loop(h, a, g, cfg)
    assert out.segments == [(l, l + 1) for l in range(frames)]
    assert not out.static.any() and out.replaced.numel() == 0
    for tok, idx in zip(out.tokens, out.index):
        l = int(idx) // n
        outside = torch.cat([tok[: l * block], tok[(l + 1) * block :]])
        assert torch.count_nonzero(outside) == 0


def test_multi_frame_segment_merges_across_its_frames():
    # one 4-frame segment with a single anchor frame (its last): tokens of frames 0-2 must be
    # merged into frame 3's anchors (FastVID scope), visible in the frame-0 block.
    gen = torch.Generator().manual_seed(10)
    n, block = 30, 3
    h = torch.zeros(4, n, 4 * block, dtype=torch.float64)
    base = torch.randn(n, block, generator=gen, dtype=torch.float64)
    for l in range(4):
        h[l, :, l * block : (l + 1) * block] = base + 0.1 * torch.randn(
            n, block, generator=gen, dtype=torch.float64
        )
        h[l, :, :block] += base  # a shared component so that cosines across frames are positive
    a = torch.softmax(torch.randn(4, n, generator=gen, dtype=torch.float64), -1)
    g = torch.ones(4, 8, dtype=torch.float64)
    cfg = InfoMergeConfig.paper(0.3, min_segments=1, tfd=False)
    out = _assert_matches_loop(h, a, g, cfg)
    assert out.segments == [(0, 4)] and out.anchor_frames == [[3]]
    merged = out.tokens[~out.is_salient]
    from_other_frames = merged[:, block : 3 * block].abs().sum(-1) > 0  # frames 1, 2 contributed
    assert int(from_other_frames.sum()) >= len(merged) // 2


def test_static_replacement_semantics():
    # one segment of 4 frames, N = 6; positions 0 and 1 are static (constant direction) and
    # position 0 has the highest attention in frame 0, position 1 in frame 2.
    gen = torch.Generator().manual_seed(11)
    h = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64)
    h[:, 0] = h[0, 0] * torch.tensor([1.0, 1.5, 2.0, 2.5], dtype=torch.float64).unsqueeze(-1)
    h[:, 1] = h[0, 1] * torch.tensor([3.0, 1.0, 2.0, 1.0], dtype=torch.float64).unsqueeze(-1)
    a = torch.tensor(
        [
            [0.60, 0.10, 0.10, 0.10, 0.05, 0.05],
            [0.40, 0.05, 0.30, 0.05, 0.15, 0.05],
            [0.05, 0.50, 0.05, 0.10, 0.20, 0.10],
            [0.30, 0.25, 0.15, 0.10, 0.10, 0.10],
        ],
        dtype=torch.float64,
    )
    g = torch.ones(4, 3, dtype=torch.float64)
    # T_s = floor(.6 * .5 * 6) = 1; floor(.34 * 6) = 2 static candidates (TFD 0 for positions 0, 1)
    cfg = InfoMergeConfig.paper(0.5, rho=0.34, min_segments=1)
    out = _assert_matches_loop(h, a, g, cfg)
    assert out.static[0].nonzero().squeeze(-1).tolist() == [0, 1]
    # frame 0 picks 0 (static: replaced from frame 0 on); frame 1: 0 is penalised by 12 std -> 2;
    # frame 2 picks 1 (static: replaced from frame 2 on); frame 3: 0 and 1 penalised -> 2
    assert [p.tolist() for p in out.per_frame("salient")] == [[0], [2], [1], [2]]
    assert out.replaced.tolist() == [0, 6, 12, 13, 18, 19]  # (r, 0) for r >= 0, (r, 1) for r >= 2
    mean0, mean1 = h[:, 0].mean(0), h[:, 1].mean(0)
    torch.testing.assert_close(out.tokens[out.index.tolist().index(0)], mean0)
    torch.testing.assert_close(out.tokens[out.index.tolist().index(13)], mean1)
    torch.testing.assert_close(out.tokens[out.index.tolist().index(8)], h[1, 2])  # not static: as is


@pytest.mark.parametrize(("mu", "expected"), [(0.6, [0.402, 0.5]), (0.2, [-0.12125, 0.9375])])
def test_merge_weight(mu, expected):
    # L = 1, N = 5, D = 2. r = 0.4, d = 0.5: T_s = floor(.5*.4*5) = 1, B_DTM = 1 -> one anchor.
    # Token 0 (attention .9) is salient. Candidates 1-4; token 1 = [1,0] is the densest with the
    # largest score (token 4 is a far outlier), so it is the anchor, and tokens 2, 3, 4 are
    # assigned to it: n = 3, mean = (x1 + x2 + x3 + x4) / 4 = [-0.495, 1.25].
    # mu = .6: w = max(1/4, .6) = .6  -> .6 [1,0] + .4 [-.495, 1.25]   = [0.402, 0.5]
    # mu = .2: w = max(1/4, .2) = .25 -> .25 [1,0] + .75 [-.495, 1.25] = [-0.12125, 0.9375]
    h = torch.tensor(
        [[[10.0, 0.0], [1.0, 0.0], [1.01, 0.01], [1.01, -0.01], [-5.0, 5.0]]], dtype=torch.float64
    )
    a = torch.tensor([[0.9, 0.025, 0.025, 0.025, 0.025]], dtype=torch.float64)
    g = torch.ones(1, 2, dtype=torch.float64)
    out = reference(h, a, g, InfoMergeConfig.paper(0.4, context_share=0.5, anchor_weight=mu))
    assert out.index.tolist() == [0, 1] and out.anchors.tolist() == [1]
    torch.testing.assert_close(out.tokens[1], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.tokens[0], h[0, 0])


# ---- invariants, determinism, precision, presets ---------------------------------------------
@pytest.fixture(scope="module")
def video64():
    return synthetic_inputs(
        [5, 3, 4, 6, 2, 4, 4, 4], tokens=196, dim=48, global_dim=16, seed=12, dtype=torch.float64
    )


def test_index_invariants(video64):
    h, a, g = video64
    for cfg in (InfoMergeConfig.paper(0.15), InfoMergeConfig.fastvid(0.10), InfoMergeConfig.paper(0.05)):
        out = reference(h.float(), a.float(), g.float(), cfg)
        idx = out.index
        assert idx.dtype == torch.int64 and idx.dim() == 1 and idx.numel() == out.tokens.shape[0]
        assert torch.equal(idx, torch.unique(idx))  # unique and sorted
        assert int(idx.min()) >= 0 and int(idx.max()) < 32 * 196
        assert torch.equal(torch.cat([out.salient, out.anchors]).sort().values, idx)
        assert not torch.isin(out.salient, out.anchors).any()
        assert out.tokens.shape[1] == h.shape[2] and out.tokens.dtype == torch.float32


def test_determinism_bit_identical(video64):
    h, a, g = (t.float() for t in video64)
    first = reference(h, a, g, InfoMergeConfig.paper(0.15))
    second = reference(h.clone(), a.clone(), g.clone(), InfoMergeConfig.paper(0.15))
    assert torch.equal(first.index, second.index)
    assert torch.equal(first.tokens, second.tokens)
    assert first.budgets == second.budgets and first.segments == second.segments
    assert torch.equal(first.caba.w, second.caba.w)


def test_float64_and_float32_agree(video64):
    h, a, g = video64
    cfg = InfoMergeConfig.paper(0.15)
    out64 = reference(h, a, g, cfg)
    out32 = reference(h.float(), a.float(), g.float(), cfg)
    assert out64.tokens.dtype == torch.float64 and out32.tokens.dtype == torch.float32
    assert out64.segments == out32.segments and out64.budgets == out32.budgets
    assert torch.equal(out64.static, out32.static)
    assert torch.equal(out64.index, out32.index)
    torch.testing.assert_close(out32.tokens.double(), out64.tokens, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out32.caba.e, out64.caba.e, atol=1e-5, rtol=0)


def test_half_precision_input_keeps_its_dtype(video64):
    h, a, g = video64
    out = reference(h.half(), a.float(), g.float(), InfoMergeConfig.paper(0.15))
    assert out.tokens.dtype == torch.float16
    sal = out.is_salient & ~torch.isin(out.index, out.replaced)
    assert torch.equal(out.tokens[sal], h.half().reshape(-1, h.shape[2])[out.index[sal]])  # bit-exact copies


def test_fastvid_preset_is_tfd_off_caba_off_fastvid_rule(video64):
    h, a, g = video64
    preset = InfoMergeConfig.fastvid(0.15)
    manual = InfoMergeConfig.paper(0.15).with_(
        tfd=False, caba=False, budget_rule="fastvid", density_ties="strict"
    )
    assert preset == manual
    x, y = reference(h, a, g, preset), reference(h, a, g, manual)
    assert torch.equal(x.index, y.index) and torch.equal(x.tokens, y.tokens)
    assert not x.static.any() and x.replaced.numel() == 0 and x.caba is None
    assert x.budgets == [11 * (e - s) for s, e in x.segments]


def test_reexported_config_is_the_contract():
    from infomerge.compress.config import InfoMergeConfig as Contract

    assert InfoMergeConfig is Contract


def test_bad_inputs_raise():
    h, a, g = synthetic_inputs([1, 1], tokens=8, dim=4, global_dim=3)
    with pytest.raises(ValueError, match="A must be"):
        reference(h, a[:, :5], g)
    with pytest.raises(ValueError, match="g must be"):
        reference(h, a, g[:1])
    with pytest.raises(ValueError, match="H must be"):
        reference(h[0], a, g)
    bad = h.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reference(bad, a, g)
    with pytest.raises(BudgetError):  # r = 5% of 8 tokens keeps nothing under the fastvid rule
        reference(h, a, g, InfoMergeConfig.fastvid(0.05))


# ---- real video through a stand-in vision encoder --------------------------------------------
def _stand_in_encoder(frames: torch.Tensor, dim: int = 128, width: int = 96, heads: int = 4):
    """A fixed random SigLIP-shaped encoder with the real geometry: 14-px patches of a 384 image
    -> 27 x 27 grid (729 patches); a MAP-like probe's softmax attention (head-averaged) gives A,
    its attention-pooled feature gives g; a 2-layer GELU projector and bilinear 27x27 -> 14x14
    pooling (align_corners=False, as LLaVA-OneVision) give H."""
    gen = torch.Generator().manual_seed(1234)
    frames_n = frames.shape[0]
    patches = F.unfold(frames, kernel_size=14, stride=14).transpose(1, 2)  # (L, 729, 588)
    assert patches.shape[1] == 27 * 27
    w_in = torch.randn(588, width, generator=gen) / math.sqrt(588)
    feat = F.gelu(patches @ w_in)  # (L, 729, width)
    feat = F.layer_norm(feat, (width,))
    probe = torch.randn(heads, width // heads, generator=gen)
    w_k = torch.randn(width, width, generator=gen) / math.sqrt(width)
    keys = (feat @ w_k).view(frames_n, 729, heads, width // heads)
    attn = torch.softmax(torch.einsum("lnhc,hc->lhn", keys, probe) / math.sqrt(width // heads), dim=-1)
    g = torch.einsum("lhn,lnc->lc", attn, feat) / heads
    attn = attn.mean(1).view(frames_n, 1, 27, 27)
    a = F.interpolate(attn, size=(14, 14), mode="bilinear", align_corners=False).view(frames_n, 196)
    w1 = torch.randn(width, dim, generator=gen) / math.sqrt(width)
    w2 = torch.randn(dim, dim, generator=gen) / math.sqrt(dim)
    proj = F.gelu(feat @ w1) @ w2  # (L, 729, dim)
    grid = proj.transpose(1, 2).reshape(frames_n, dim, 27, 27)
    h = F.interpolate(grid, size=(14, 14), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    return h.contiguous(), a, g


@pytest.fixture(scope="module")
def bunny_features():
    from infomerge.video import load_frames, sample_video

    frames = load_frames(sample_video("bigbuckbunny.mp4"), 32)
    assert frames.shape == (32, 3, 384, 384)
    with torch.no_grad():
        return _stand_in_encoder(frames)


@pytest.mark.parametrize(
    ("rule", "r"), [("paper", 0.15), ("paper", 0.10), ("paper", 0.05), ("fastvid", 0.15)]
)
def test_real_video_kept_counts(bunny_features, rule, r):
    h, a, g = bunny_features
    assert h.shape == (32, 196, 128) and a.shape == (32, 196) and g.shape == (32, 96)
    cfg = InfoMergeConfig.paper(r) if rule == "paper" else InfoMergeConfig.fastvid(r)
    out = reference(h, a, g, cfg)
    t_s = COUNTS[(rule, r)][0]
    assert len(out.segments) >= 8
    assert [len(p) for p in out.per_frame("salient")] == [t_s] * 32
    # kept = L T_s + sum_k a_k (B_k // a_k), a_k = ceil(T_k / 4) anchor frames, as long as no frame
    # budget exceeds its unmasked candidates (N - T_s - |S_k| is a lower bound on them)
    expected = 32 * t_s
    for (s, e), b_k, static in zip(out.segments, out.budgets, out.static):
        a_k = math.ceil((e - s) / 4)
        assert b_k // a_k <= 196 - t_s - int(static.sum())
        expected += a_k * (b_k // a_k)
    assert out.kept == expected
    if rule == "fastvid":
        assert out.budgets == [11 * (e - s) for s, e in out.segments]
    else:
        assert abs(sum(out.budgets) - 0.4 * r * 32 * 196) <= len(out.segments) / 2 + 1e-9
        assert out.static[[e - s > 1 for s, e in out.segments]].sum(1).tolist() == [
            math.floor(cfg.rho * 196 + 1e-9)
        ] * sum(e - s > 1 for s, e in out.segments)
    assert torch.isfinite(out.tokens).all()
