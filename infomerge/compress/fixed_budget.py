"""InfoMerge / FastVID as a fixed-budget, shape-static torch module that exports to ONNX.

Spec: InfoMerge (arXiv 2606.02161; summary in ``docs/algorithm.md`` and ``docs/compression.md``),
"Fixed-budget, shape-static variant" and steps 1-7. The module
returns exactly ``B = config.total_budget(L, N)`` tokens for every input, and its graph has no
data-dependent shape: no NonZero, boolean indexing, Unique, ``.item()``, Python branches on tensor
values, cdist or scatter-reduce, and its TopKs have ``k <= k_nn``. Every Python ``if``/``for``
below depends on the configuration and the static shapes only.

How each data-dependent step becomes static:

- segments: a boolean boundary vector -> segment id per frame (cumsum) -> one-hot (L slots x L
  frames) membership; segment slots past the last segment are empty (length 0).
- top-k with a data-dependent k: a rank per element, ``rank_i = #{j: x_j > x_i} + #{j < i: x_j ==
  x_i}`` (so ties go to the lower index, as the spec requires and ONNX TopK does not promise),
  and ``rank < k`` as a mask.
- the penalty history P and the hard mask: a loop unrolled over the L frames, reset where a
  segment starts.
- merging (default): the merge of every anchor rank j (the j-th anchor frame of a segment counted
  from its end), j = 0 .. ceil(L/p)-1, from ONE (R + 1, L C) cosine matrix of every anchor (at
  most R = the context budget, compacted into R slots, plus a dummy) against every candidate
  (C = N - T_s per frame; salient tokens take no part), slot-major: per rank, each frame reads
  only the window of slots of its segment's rank-j anchor frame (contiguous rows of C) and ArgMax
  picks each candidate's anchor; one ScatterElements writes every (anchor, candidate) assignment
  of every rank into one 0/1 matrix W^T, and one ``W^T x`` matmul sums each anchor's members
  (:meth:`FixedBudgetCompressor._merge_blocked`). Same decisions as
  :func:`~infomerge.compress.merge.merge_to_anchors` per rank (the plain cosine), sums to fp32
  rounding; the matmul work is ``L C R (2 D + 1)`` instead of ``2 LN (D + L) sum K_j``
  (``sum K_j`` is about 4 R at L = 128).
- merging with a ``merge_impl`` (the Triton kernel, the TensorRT plugin): one call per anchor rank
  over the whole video, the rank-j anchors compacted into ``K_j`` slots, segment scope enforced
  by the merge input ``[x, sqrt(2) |x| onehot(segment)]``: cosine then becomes ``(cos + 2 [same
  segment]) / 3``, the same order within a segment and always above any other segment's anchor;
  the extra columns are dropped from the merged tokens (:meth:`FixedBudgetCompressor._merge_per_rank`).
- compaction (anchor slots, the output): a cumsum gives every True entry of a mask its slot and
  every False entry a distinct slot past the end; one plain ScatterElements (distinct indices, no
  reduction) writes the positions, and the first k slots are the sorted positions (:func:`compact`).
  The output is the kept mask (exactly B ones) compacted to B sorted flat indices; tokens by Gather.

Integer-exact counts ([D] for this variant, see docs/compression.md):

- segment budgets: every non-empty segment gets 1 token, the remaining ``R - K`` are split in
  proportion to the shares above one (``max(0, x_k - 1)`` with ``x_k = R w_k / sum w``) by
  largest remainder (ties: lower segment) so they sum to ``R = round(B_DTM)`` (paper) or ``C L``
  (fastvid). When R < L this falls back to plain largest remainder (a segment may get 0).
- anchor frames: ``B_k // n_af`` each, the ``B_k % n_af`` remainder one more to the latest frames.
- a frame budget above its unmasked candidates is capped (as the reference); the shortfall (the
  FastVID preset cannot reach it up to r = 25% on 32 x 196, and no measured run did) is filled
  with the unkept tokens with the best (attention rank within the frame, frame) key, unmerged, so
  the count stays B.
- merge slots ``K_j``: a rank-j anchor frame exists only in segments of more than j*p
  frames (at most ``m_j = L // (j p + 1)`` of them) and gets at most ``ceil(B_k / (j+1))``
  anchors, so rank j holds at most ``(R + m_j j) // (j + 1)`` anchors.

Numerics: everything is computed in fp32 (fp16 inputs are upcast), but for the density step's
distances. The density step is exact across backends (ONNX Runtime gives the eager module's
anchors bit for bit): the squared distances are a float64 Gram of integers on a per-token
power-of-two grid (:func:`~infomerge.compress.exact_arith.gram_sq_dist`: exact in any
accumulation order); "denser" compares ``m = mean kNN d^2``, not ``exp(-m)``; no Exp or Sqrt
kernel is used (see ``_density``). The TFD static candidates (step 3): the matmul form ranks,
and the positions around the ``T_st`` boundary are ranked again on a float64 TFD, where the
backends' summation orders differ by ~1e-16 of the value (see ``_static``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.exact_arith import TRACE_BLOCK, exp_neg, gram_sq_dist
from infomerge.compress.merge import combine_merge
from infomerge.compress.richness import RICHNESS_MODES, renyi2_richness, segment_richness_exact, sketch_basis

MergeImpl = Callable[..., torch.Tensor]

_NEG = float("-inf")
TFD_MARGIN = 4  # static candidates: ranks T_st - 4 .. T_st + 3 of the matmul TFD are ranked exactly
MERGE_SCOPES = ("anchor_frame", "segment")


# ---- static building blocks ---------------------------------------------------------------------
def rank_desc(x: torch.Tensor) -> torch.Tensor:
    """Rank of every entry along the last dim, largest first, ties to the lower index (int64).

    ``rank_i = #{j : x_j > x_i} + #{j < i : x_j == x_i}``; a permutation of 0..M-1 per row.
    ``-inf`` entries rank after every finite one. Costs an (..., M, M) comparison.
    """
    m = x.shape[-1]
    xi, xj = x.unsqueeze(-1), x.unsqueeze(-2)
    idx = torch.arange(m, device=x.device)
    lower = idx.unsqueeze(0) < idx.unsqueeze(1)  # [i, j] = j < i
    before = (xj > xi) | ((xj == xi) & lower)
    return before.to(torch.int64).sum(-1)


def rank_asc(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`rank_desc`, smallest first."""
    return rank_desc(-x)


def largest_remainder(share: torch.Tensor, total: int | torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Integer split of ``total`` over slots with real-valued ``share`` (summing to ``total``).

    floor each share, then give the missing units to the largest remainders (ties: lower slot);
    a float rounding surplus is taken from the smallest remainders. Invalid slots get 0.

    Args:
        share: (K,) float32, >= 0.
        total: the integer the result sums to (a Python int or a 0-dim int64 tensor).
        valid: (K,) bool.

    Returns:
        (K,) int64.
    """
    share = torch.where(valid, share, 0)
    base = torch.floor(share)
    rem = share - base
    base_i = base.to(torch.int64)
    missing = total - base_i.sum()
    up = (rank_desc(torch.where(valid, rem, _NEG)) < missing) & valid
    down = (rank_asc(torch.where(valid & (base_i > 0), rem, float("inf"))) < -missing) & valid
    return base_i + up.to(torch.int64) - down.to(torch.int64)


def compact(mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the first ``k`` True entries of a 1-D mask, in order, with a static ``k``.

    The i-th True entry goes to slot i, every False entry to its own slot past ``k`` (so all
    scatter indices are distinct: a plain ScatterElements, no reduction, no NonZero).

    Args:
        mask: (M,) bool.
        k: the number of slots (static).

    Returns:
        ``(index (k,) int64, used (k,) bool)``; unused slots (fewer than ``k`` True entries) hold 0.
    """
    m = mask.shape[0]
    on = mask.to(torch.int64)
    slot = torch.where(mask, torch.cumsum(on, 0) - 1, k + torch.cumsum(1 - on, 0) - 1)
    positions = torch.arange(m, device=mask.device)
    index = torch.zeros(k + m, dtype=torch.int64, device=mask.device).scatter(0, slot, positions)[:k]
    used = torch.zeros(k + m, dtype=torch.int64, device=mask.device).scatter(0, slot, on)[:k] > 0
    return index, used


@dataclass
class FixedBudgetDecisions:
    """Every intermediate decision of one run (for tests and the agreement study).

    Attributes:
        segment: (L,) int64 segment id of each frame (0-based, temporal order).
        segment_budget: (L,) int64 B_k per segment slot (0 for empty slots).
        frame_budget: (L,) int64 anchor budget of each frame (0 for non-anchor frames).
        static: (L, N) bool static candidates of each segment slot.
        richness: (L,) float32 e_k per segment slot (0 when CABA is off).
        salient, anchors, filled: (L, N) bool masks of the kept tokens by role.
        tokens: (B, D) in H's dtype; index: (B,) int64 sorted.
    """

    segment: torch.Tensor
    segment_budget: torch.Tensor
    frame_budget: torch.Tensor
    static: torch.Tensor
    richness: torch.Tensor
    salient: torch.Tensor
    anchors: torch.Tensor
    filled: torch.Tensor
    tokens: torch.Tensor
    index: torch.Tensor

    def segments(self) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` frame ranges (end exclusive), like the reference's ``segments``."""
        ids = self.segment.tolist()
        out, start = [], 0
        for l in range(1, len(ids) + 1):
            if l == len(ids) or ids[l] != ids[l - 1]:
                out.append((start, l))
                start = l
        return out


class FixedBudgetCompressor(nn.Module):
    """Fixed-budget, shape-static InfoMerge (or FastVID) for one video shape.

    Args:
        config: :class:`InfoMergeConfig` (``InfoMergeConfig.paper(r)`` or ``.fastvid(r)``).
        frames: L, the static frame count.
        tokens_per_frame: N (196 for LLaVA-OneVision).
        hidden: D, the token width.
        merge_impl: None (default: the blocked merge, one similarity and one summing matmul for
            all anchor ranks) or a callable with the signature of
            :func:`infomerge.compress.merge.merge_to_anchors`; then ALL merging goes through it
            (once per anchor rank, ``ceil(L / p)`` calls; what the fused merge kernels plug into).
        richness: ``"estimate"`` (in-graph Renyi-2 estimate, default) or ``"input"`` (the paper's
            entropy computed outside, passed to :meth:`forward` as ``richness``); see
            :mod:`infomerge.compress.richness`. Ignored when CABA is off.
        merge_scope: ``"anchor_frame"`` (default, the spec and FastVID's code: every anchor frame
            assigns all candidates of its segment to ITS nearest anchor, so a token feeds one
            anchor per anchor frame) or ``"segment"`` (each candidate is assigned once, to the
            nearest anchor of its segment's whole pool; one merge call; what
            :func:`infomerge.compress.reference.reference` does).

    Raises:
        BudgetError: the budget is impossible for this shape (from ``config.total_budget``).
        ValueError: bad shapes, an unknown richness mode or merge scope, or
            ``static_estimator != "tfd"``.
    """

    def __init__(
        self,
        config: InfoMergeConfig,
        frames: int,
        tokens_per_frame: int,
        hidden: int,
        merge_impl: MergeImpl | None = None,
        richness: str = "estimate",
        merge_scope: str = "anchor_frame",
    ):
        super().__init__()
        if frames < 1 or tokens_per_frame < 1 or hidden < 1:
            raise ValueError(
                f"FixedBudgetCompressor: need L, N, D >= 1, got {frames}, {tokens_per_frame}, {hidden}"
            )
        if richness not in RICHNESS_MODES:
            raise ValueError(f"richness must be one of {RICHNESS_MODES}, got {richness!r}")
        if merge_scope not in MERGE_SCOPES:
            raise ValueError(f"merge_scope must be one of {MERGE_SCOPES}, got {merge_scope!r}")
        if config.tfd and config.static_estimator != "tfd":
            raise ValueError("the static variant implements static_estimator='tfd' only")
        self.config = config
        self.frames, self.n, self.hidden = int(frames), int(tokens_per_frame), int(hidden)
        self.merge_impl = merge_impl
        self.richness_mode = richness
        self.merge_scope = merge_scope
        L, N = self.frames, self.n
        self.budget = config.total_budget(L, N)  # B, raises BudgetError
        self.salient_count = config.salient_per_frame(N)  # T_s
        self.context_total = self.budget - L * self.salient_count  # R = round(B_DTM) or C*L
        self.static_count = config.static_candidates(N) if config.tfd else 0
        R, p = self.context_total, config.anchor_interval
        self.ranks = math.ceil(L / p)
        # rank j: at most m_j = L // (j p + 1) segments have a j-th anchor frame, each with at most
        # ceil(B_k / (j + 1)) anchors (and at most N - T_s candidates)
        caps = [
            min(R, (R + (L // (j * p + 1)) * j) // (j + 1), (L // (j * p + 1)) * (N - self.salient_count))
            for j in range(self.ranks)
        ]
        self.rank_slots = caps if merge_scope == "anchor_frame" else [self.context_total]  # K_j
        # a rank-j anchor frame holds at most ceil(B_k / (j + 1)) <= ceil(R / (j + 1)) anchors and at
        # most its N - T_s candidates: the blocked merge's window of slots per rank
        self.window_slots = (
            [max(1, min(N - self.salient_count, -(-R // (j + 1)))) for j in range(self.ranks)]
            if merge_scope == "anchor_frame"
            else [R]
        )
        basis = sketch_basis(hidden) if (config.caba and richness == "estimate") else None
        self.use_sketch = basis is not None
        self.register_buffer("sketch", basis if basis is not None else torch.zeros(0), persistent=False)

    # ---- public API ----------------------------------------------------------------------------
    def forward(
        self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, richness: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress one video.

        Args:
            H: (L, N, D) float32 or float16 video tokens.
            A: (L, N) float32 saliency.
            g: (L, G) float32 global features.
            richness: (L,) float32 per-segment richness, required in ``"input"`` mode only.

        Returns:
            ``tokens`` (B, D) in H's dtype and ``index`` (B,) int64 sorted flat positions l*N + p.
        """
        d = self._run(H, A, g, richness)
        return d.tokens, d.index

    def decisions(
        self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, richness: torch.Tensor | None = None
    ) -> FixedBudgetDecisions:
        """Like :meth:`forward`, with every intermediate decision (eager use only)."""
        return self._run(H, A, g, richness)

    # ---- the algorithm -------------------------------------------------------------------------
    def _check(self, H, A, g, richness) -> None:
        L, N, D = self.frames, self.n, self.hidden
        if tuple(H.shape) != (L, N, D) or tuple(A.shape) != (L, N) or g.dim() != 2 or g.shape[0] != L:
            raise ValueError(
                f"FixedBudgetCompressor({L}x{N}x{D}): got H {tuple(H.shape)}, A {tuple(A.shape)}, "
                f"g {tuple(g.shape)}"
            )
        if self.config.caba and self.richness_mode == "input":
            if richness is None or tuple(richness.shape) != (L,):
                raise ValueError(f"richness='input' mode needs a (L,) = ({L},) richness tensor")

    def _run(self, H, A, g, richness) -> FixedBudgetDecisions:
        if not torch.jit.is_tracing():  # shapes are pinned in a traced graph (and checks would warn)
            self._check(H, A, g, richness)
        cfg = self.config
        L, N, D = self.frames, self.n, self.hidden
        dev = H.device
        f32 = torch.float32
        h = H.to(f32)
        a = A.to(f32)
        gg = g.to(f32)
        frame_ids = torch.arange(L, device=dev)

        # ---- step 1: segmentation -> membership ------------------------------------------------
        segment, start = self._segment(gg)
        onehot = (segment.unsqueeze(0) == frame_ids.unsqueeze(1)).to(f32)  # (K=L slots, L frames)
        seg_len = onehot.sum(1)  # (K,)
        seg_valid = seg_len > 0.5
        same = onehot.t() @ onehot  # (L, L) same-segment
        frame_len = same.sum(1)  # (L,) T of each frame's segment

        # ---- step 3: TFD static candidates per segment slot -----------------------------------
        static_slot = torch.zeros(L, N, dtype=torch.bool, device=dev)
        if cfg.tfd and self.static_count > 0 and L > 1:
            pair = onehot[:, :-1] * onehot[:, 1:]  # (K, L-1): frames l, l+1 both in k
            static_slot = self._static(h, pair, same, segment) & (seg_len > 1.5).unsqueeze(1)
        static_frame = onehot.t() @ static_slot.to(f32)  # (L, N) float {0,1}: S of each frame's segment

        # ---- step 4 + 2: segment budgets B_k ----------------------------------------------------
        R = self.context_total
        rich_out = torch.zeros(L, dtype=f32, device=dev)
        if cfg.caba:
            frame_mean = h.mean(1)  # (L, D)
            seg_mean = (onehot @ frame_mean) / seg_len.clamp_min(1.0).unsqueeze(1)
            video_mean = frame_mean.mean(0, keepdim=True)
            cos = (seg_mean * video_mean).sum(-1) / (
                seg_mean.norm(dim=-1).clamp_min(1e-12) * video_mean.norm(dim=-1).clamp_min(1e-12)
            )
            uniq = 1.0 - cos
            if self.richness_mode == "input":
                rich = richness.to(f32)
            else:
                rich = renyi2_richness(h, onehot, seg_len, self.sketch if self.use_sketch else None)
            rich_out = torch.where(seg_valid, rich, 0)
            prio = cfg.alpha * self._zscore(uniq, seg_valid) + cfg.beta * self._zscore(rich, seg_valid)
            weight = torch.sigmoid(cfg.tau * prio) * seg_len
        else:
            weight = seg_len
        weight = torch.where(seg_valid, weight, 0)
        share = R * weight / weight.sum().clamp_min(1e-30)
        if R >= L:  # every segment gets at least one token
            count = seg_valid.to(torch.int64).sum()
            excess = (share - 1.0).clamp_min(0.0)
            scaled = excess * (R - count).to(f32) / excess.sum().clamp_min(1e-30)
            seg_budget = seg_valid.to(torch.int64) + largest_remainder(scaled, R - count, seg_valid)
        else:
            seg_budget = largest_remainder(share, R, seg_valid)

        # anchor frames and their budgets
        upper = frame_ids.unsqueeze(0) > frame_ids.unsqueeze(1)  # [l, l'] = l' > l
        to_end = (same * upper.to(f32)).sum(1).to(torch.int64)  # frames after l in its segment
        p = cfg.anchor_interval
        is_anchor_frame = (to_end % p) == 0
        anchor_rank = torch.div(to_end, p, rounding_mode="floor")  # j
        n_af = torch.div(frame_len.to(torch.int64) + (p - 1), p, rounding_mode="floor")
        frame_seg_budget = seg_budget.index_select(0, segment)
        base = torch.div(frame_seg_budget, n_af, rounding_mode="floor")
        extra = frame_seg_budget - base * n_af
        frame_budget = torch.where(is_anchor_frame, base + (anchor_rank < extra).to(torch.int64), 0)

        # ---- step 5: salient selection, penalty history, static replacement --------------------
        Ts = self.salient_count
        if cfg.tfd and self.static_count > 0:
            std = a.std(1, correction=0)  # (L,)
            hist = torch.zeros(N, dtype=f32, device=dev)
            sal_rows, hist_rows = [], []
            for l in range(L):  # static unroll; state reset at segment starts
                hist = hist * (1.0 - start[l])
                s = a[l] - cfg.lam * std[l] * (static_frame[l] * hist)
                sel = (rank_desc(s) < Ts).to(f32)
                hist = torch.maximum(hist, sel * static_frame[l])
                sal_rows.append(sel)
                hist_rows.append(hist)
            salient = torch.stack(sal_rows) > 0.5
            replaced = torch.stack(hist_rows) > 0.5  # P after frame l = positions replaced in frame l
            hp = self._replace_static(h, replaced, static_frame > 0.5, same / frame_len.unsqueeze(1))
        else:
            salient = rank_desc(a) < Ts
            hp = h

        # ---- step 6a: density scores on every frame's candidates -------------------------------
        cand = ~salient
        C = N - Ts  # candidates per frame (exactly: every frame has T_s salient tokens)
        cpos = self._candidate_positions(cand)  # (L, C) in position order
        cand_rows = (cpos + frame_ids.unsqueeze(1) * N).reshape(L * C)  # (L C,) flat positions
        xs = hp.reshape(L * N, D).index_select(0, cand_rows)  # (L C, D): the density's and merge's rows
        score = self._density(hp, xs.reshape(L, C, D), cpos)  # (L, N), -inf for non-candidates

        # anchors per frame with the hard mask (a loop only when TFD is on)
        if cfg.tfd and self.static_count > 0:
            blocked = torch.zeros(N, dtype=f32, device=dev)
            rows = []
            for l in range(L):
                blocked = blocked * (1.0 - start[l])
                free = cand[l] & (blocked < 0.5)
                sc = torch.where(free, score[l], _NEG)
                bud = torch.minimum(frame_budget[l], free.to(torch.int64).sum())
                pick = (rank_desc(sc) < bud) & free
                blocked = torch.maximum(blocked, pick.to(f32) * static_frame[l])
                rows.append(pick)
            anchors = torch.stack(rows)
        else:
            bud = torch.minimum(frame_budget, cand.to(torch.int64).sum(1))
            anchors = (rank_desc(score) < bud.unsqueeze(1)) & cand

        # shortfall fill (only when a frame budget exceeded its candidates)
        flat_n = L * N
        kept = salient | anchors
        shortfall = R - anchors.to(torch.int64).sum()
        key = (rank_desc(a) * L + frame_ids.unsqueeze(1)).reshape(flat_n)  # unique 0..LN-1
        unkept = (~kept).reshape(flat_n).to(torch.int64)
        by_key = torch.zeros(flat_n, dtype=torch.int64, device=dev).scatter(0, key, unkept)
        take_by_key = (by_key > 0) & (torch.cumsum(by_key, 0) <= shortfall)
        filled = take_by_key.gather(0, key).reshape(L, N)
        kept = kept | filled

        # ---- step 6b: merge -----------------------------------------------------------------------
        xf = hp.reshape(flat_n, D)
        anchors_flat = anchors.reshape(flat_n)
        seg_of_token = segment.unsqueeze(1).expand(L, N).reshape(flat_n)
        rank_flat = anchor_rank.unsqueeze(1).expand(L, N).reshape(flat_n)
        # a candidate takes part in a rank-j merge only if its segment HAS rank-j anchors: a
        # rank-j anchor frame with 0 anchors (low retention) would otherwise send its segment's
        # candidates to the nearest anchor of another segment (the reference merges nothing there)
        anchors_per_frame = anchors.to(f32).sum(1)  # (L,)
        rank_of_frame = anchor_rank.unsqueeze(0) == frame_ids.unsqueeze(1)  # (J=L, L): frame l has rank j
        # (J, L): rank-j anchors in each frame's segment
        seg_anchors = (rank_of_frame.to(f32) * anchors_per_frame.unsqueeze(0)) @ same
        if self.merge_impl is not None:
            merged_all, slot_of_token = self._merge_per_rank(
                xf, cand.reshape(flat_n), anchors_flat, seg_of_token, rank_flat, seg_anchors, to_end
            )
        elif C == 0:  # no candidate, no anchor: nothing to merge
            merged_all, slot_of_token = xf[:1], torch.zeros(flat_n, dtype=torch.int64, device=dev)
        else:
            merged_all, slot_of_token = self._merge_blocked(
                xs, cand_rows, anchors_flat, seg_of_token, anchor_rank, seg_anchors, to_end
            )

        # ---- step 7: sorted output ---------------------------------------------------------------
        B = self.budget
        index, _ = compact(kept.reshape(flat_n), B)  # (B,) sorted: exactly B kept
        is_anchor_out = anchors_flat.index_select(0, index)
        from_merge = merged_all.index_select(0, slot_of_token.index_select(0, index))
        from_h = xf.index_select(0, index)
        tokens = torch.where(is_anchor_out.unsqueeze(1), from_merge, from_h).to(H.dtype)
        return FixedBudgetDecisions(
            segment=segment,
            segment_budget=torch.where(seg_valid, seg_budget, 0),
            frame_budget=frame_budget,
            static=static_slot,
            richness=rich_out,
            salient=salient,
            anchors=anchors,
            filled=filled,
            tokens=tokens,
            index=index,
        )

    def _replace_static(
        self, h: torch.Tensor, replaced: torch.Tensor, static: torch.Tensor, seg_avg: torch.Tensor
    ) -> torch.Tensor:
        """Step 5.4: ``H[l, p]`` replaced by the segment mean of position ``p`` where ``replaced``.

        Only the ``|S|`` static positions of each frame's segment can be replaced, so the segment
        means are computed for those only: the positions of each frame are permuted static-first
        (a frame of a single-frame segment has none, and its first ``|S|`` positions are unchanged
        tokens), the first ``|S|`` gathered, averaged over the segment by one (L, L) matmul, and
        written back by one ScatterElements with distinct indices: ``L^2 |S| D`` multiply-adds
        instead of ``L^2 N D``. Frames of one segment share ``S`` and its order, so row ``l`` of
        the matmul averages the same positions over the segment.

        Args:
            h: (L, N, D) float32. replaced, static: (L, N) bool (``replaced`` within ``static``).
            seg_avg: (L, L) float32, ``[l, l'] = 1 / T`` for frames of one segment, else 0.

        Returns:
            (L, N, D) float32.
        """
        L, N, D = self.frames, self.n, self.hidden
        k = min(self.static_count, N)
        on = static.to(torch.int64)
        rest = on.sum(1, keepdim=True) + torch.cumsum(1 - on, 1) - 1  # non-static positions after S
        slot = torch.where(static, torch.cumsum(on, 1) - 1, rest)  # (L, N) a permutation per frame
        positions = torch.arange(N, device=h.device).unsqueeze(0).expand(L, N)
        order = torch.zeros(L, N, dtype=torch.int64, device=h.device).scatter(1, slot, positions)[:, :k]
        index = order.unsqueeze(-1).expand(L, k, D)
        hs = h.gather(1, index)  # (L, |S|, D)
        mean = (seg_avg @ hs.reshape(L, k * D)).reshape(L, k, D)
        values = torch.where(replaced.gather(1, order).unsqueeze(-1), mean, hs)
        return h.scatter(1, index, values)

    # ---- step 6b: the two merge forms ----------------------------------------------------------------
    def _merge_per_rank(self, xf, cand_flat, anchors_flat, seg_of_token, rank_flat, seg_anchors, to_end):
        """Step 6b through ``merge_impl``: one call per anchor rank j over the whole video.

        The anchors of rank j are compacted into ``K_j`` slots; the merge input is
        ``[x, sqrt(2) |x| onehot(segment)]`` so that a token only picks anchors of its own segment
        (cosine becomes ``(cos + 2 [same segment]) / 3``). Costs ``LN x sum K_j x (D + L)`` (about
        ``4 R LN D`` at L = 128): the form for fused kernels (Triton, the TensorRT plugin).

        Returns:
            ``(merged (S, D), slot_of_token (LN,) int64)``: the merged tokens and, for every anchor
            token, its row in ``merged``.
        """
        cfg, L, D = self.config, self.frames, self.hidden
        flat_n, dev = xf.shape[0], xf.device
        frame_ids = torch.arange(L, device=dev)
        norm = xf.norm(dim=-1, keepdim=True)
        tag = (seg_of_token.unsqueeze(1) == frame_ids.unsqueeze(0)).to(xf.dtype) * (math.sqrt(2.0) * norm)
        xt = torch.cat([xf, tag], dim=1)  # (LN, D + L)
        merged_parts, slot_of_token = [], torch.zeros(flat_n, dtype=torch.int64, device=dev)
        offset = 0
        for j, kj in enumerate(self.rank_slots):
            if kj == 0:
                continue
            am = anchors_flat & (rank_flat == j) if self.merge_scope == "anchor_frame" else anchors_flat
            pos = torch.cumsum(am.to(torch.int64), 0) - 1
            slot_index, slot_used = compact(am, kj)
            has = seg_anchors[j] if self.merge_scope == "anchor_frame" else seg_anchors.sum(0)  # (L,)
            member = (cand_flat.reshape(L, -1) & (has > 0.5).unsqueeze(1)).reshape(flat_n).to(xf.dtype)
            merged = self.merge_impl(xt, member, slot_index, slot_used.to(xf.dtype), cfg.anchor_weight)
            merged_parts.append(merged[:, :D])
            slot_of_token = slot_of_token + am.to(torch.int64) * (pos + offset)
            offset += kj
        merged_all = torch.cat(merged_parts, 0) if merged_parts else xf[:1]
        return merged_all, slot_of_token

    def _merge_blocked(self, xs, cand_rows, anchors_flat, seg_of_token, anchor_rank, seg_anchors, to_end):
        """Step 6b, the default form: one similarity matmul, per-rank argmaxes, one summing matmul.

        The same decisions as :func:`~infomerge.compress.merge.merge_to_anchors` once per anchor
        rank (spec step 6, eqs. 12 and 31-34), without computing a similarity twice, on the
        candidates only (the merge's members and anchors are candidates; salient tokens take no
        part, so their rows are left out: -9% of both matmuls at T_s = 17 of 196):

        1. all anchors (at most R) in one list of R slots sorted by flat index; one (R + 1, L C)
           matmul of the anchors against every candidate, slot-major, so that row ``s L + l`` of
           its (R + 1) L x C view is slot s against frame l's candidates. ``anchor_frame`` scope:
           the plain cosine (the reference's ``assign_to_anchors``), from rows ``[x / |x|, 1]``
           against anchors ``[a / |a|, 0]`` and a dummy ``[0, -2]`` for unused window positions
           (-2, below every cosine); every window holds one segment's anchors, so no segment term
           is needed. ``segment`` scope (one ArgMax over every slot): rows
           ``[x, sqrt(2) |x| onehot(segment)]`` normalised, ``(cos + 2 [same segment]) / 3``, so a
           token's own segment's anchors always win, in cosine order, and a zero dummy;
        2. per rank j: each frame's window of slots (those of its segment's rank-j anchor frame,
           static width ``window_slots[j]``, unused positions read the dummy) gathered as rows of
           that view, and ArgMax over the window (ties: the lower slot, as ArgMax in the merge
           contract); a member takes part when its segment has rank-j anchors and is not itself a
           rank-j anchor;
        3. one (R + J, L C) 0/1 matrix ``W^T`` holding every (anchor, candidate) assignment of every
           rank, written by one ScatterElements with distinct indices (a non-member's entry goes
           to a dummy row of its rank); in eager mode it reuses the similarity's buffer;
        4. ``summed = W^T x``, ``n = W^T 1`` and :func:`~infomerge.compress.merge.combine_merge`.

        Costs ``L C R (2 D + 1)`` multiply-adds for the two matmuls (``+ L`` with the segment
        scope) plus ``L C sum_j window_slots[j]`` reads and compares, against
        ``2 LN (D + L) sum K_j`` for :meth:`_merge_per_rank` (``sum K_j`` is about 4 R at L = 128).

        Args:
            xs: (L C, D) the candidates' tokens, frame-major in position order; ``cand_rows``
                (L C,) their flat positions. anchors_flat, seg_of_token: (L N,). anchor_rank,
                to_end: (L,) int64. seg_anchors: (J, L) rank-j anchors in each frame's segment.

        Returns:
            ``(merged (R, D), slot_of_token (LN,) int64)``.
        """
        cfg, L, D = self.config, self.frames, self.hidden
        c_n, dev = xs.shape[0], xs.device
        C = self.n - self.salient_count
        R = self.context_total
        frame_ids = torch.arange(L, device=dev)
        anchors_c = anchors_flat.index_select(0, cand_rows)  # (L C,)
        slot_index, slot_used = compact(anchors_c, R)  # (R,) rows of xs, sorted by flat index
        norm = xs.norm(dim=-1, keepdim=True)
        if self.merge_scope == "segment":
            seg_c = seg_of_token.index_select(0, cand_rows)
            tag = (seg_c.unsqueeze(1) == frame_ids.unsqueeze(0)).to(xs.dtype)
            xt = torch.cat([xs, tag * (math.sqrt(2.0) * norm)], dim=1)  # (L C, D + L)
            rows = xt / xt.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            dummy = torch.zeros(1, rows.shape[1], dtype=xs.dtype, device=dev)  # 0, below any own anchor
            anchors_t = torch.cat([rows.index_select(0, slot_index), dummy])  # (R + 1, D + L)
        else:
            # [x / |x|, 1] in one division (a zero token: all zeros, ties go to the first slot)
            rows = torch.cat([xs, norm], dim=1) / norm.clamp_min(1e-12)  # (L C, D + 1)
            sel = rows.index_select(0, slot_index)  # (R, D + 1)
            real = torch.cat([sel[:, :D], sel[:, D:] * 0.0], dim=1)  # [a / |a|, 0]
            zero = torch.zeros(1, D, dtype=xs.dtype, device=dev)
            dummy = torch.cat([zero, torch.full_like(norm[:1], -2.0)], 1)  # [0, -2]
            anchors_t = torch.cat([real, dummy])  # (R + 1, D + 1)
        width = R + len(self.window_slots)  # slots, then one dummy column per rank
        buffer = None
        if torch.jit.is_tracing():
            sim_t = anchors_t @ rows.t()
        else:  # eager: W^T below reuses this buffer (one large allocation per call, not two)
            buffer = torch.empty(width, c_n, dtype=xs.dtype, device=dev)
            sim_t = torch.matmul(anchors_t, rows.t(), out=buffer[: R + 1])
        cols = torch.arange(c_n, device=dev)
        targets, values = [], []
        if self.merge_scope == "segment":  # one pool per segment: ArgMax over every slot
            slots = torch.where(slot_used, torch.arange(R, device=dev), R)
            best = slots.index_select(0, sim_t.index_select(0, slots).max(0).indices)
            has_tok = (seg_anchors.sum(0) > 0.5).unsqueeze(1).expand(L, C).reshape(c_n)
            member = has_tok & ~anchors_c
            targets.append(torch.where(member, best, R) * c_n + cols)
            values.append(member.to(xs.dtype))
        else:  # per rank j: the window of slots of the rank-j anchor frame of each frame's segment
            per_frame = anchors_flat.reshape(L, self.n).to(torch.int64).sum(1)  # (L,) anchors per frame
            first = torch.cumsum(per_frame, 0) - per_frame  # (L,) slot of each frame's first anchor
            sim_rows = sim_t.reshape((R + 1) * L, C)  # row s L + l: slot s against frame l's candidates
            rank_c = anchor_rank.unsqueeze(1).expand(L, C).reshape(c_n)
            p = cfg.anchor_interval
            for j, win_width in enumerate(self.window_slots):
                f = (frame_ids + to_end - j * p).clamp(0, L - 1)  # (L,) rank-j frame of l's segment
                t = torch.arange(win_width, device=dev).unsqueeze(0)
                inside = t < per_frame.index_select(0, f).unsqueeze(1)
                win = torch.where(inside, first.index_select(0, f).unsqueeze(1) + t, R)  # (L, width) slots
                picked = sim_rows.index_select(0, (win * L + frame_ids.unsqueeze(1)).reshape(-1))
                pick = picked.reshape(L, win_width, C).max(1).indices  # (L, C) first max
                best = win.gather(1, pick).reshape(c_n)  # (L C,) slot in [0, R)
                has_tok = (seg_anchors[j] > 0.5).unsqueeze(1).expand(L, C).reshape(c_n)
                member = has_tok & ~(anchors_c & (rank_c == j))
                targets.append(torch.where(member, best, R + j) * c_n + cols)
                values.append(member.to(xs.dtype))
        # W^T: (R + J, L C) 0/1, every (anchor, candidate) assignment of every rank; distinct indices
        target, value = torch.cat(targets), torch.cat(values)
        if buffer is None:  # traced: zeros from an input (a static torch.zeros is folded into an
            # (R + J) L C constant, 140 MB at L = 128, written into the ONNX file)
            w_t = (xs[:1, :1] * 0.0).expand(width, c_n).reshape(-1).scatter(0, target, value)
        else:
            w_t = buffer.zero_().reshape(-1).scatter_(0, target, value)
        w_t = w_t.reshape(width, c_n)
        summed = (w_t @ xs)[:R]  # (R, D) sum of each anchor's assigned tokens
        count = w_t.sum(1)[:R]  # (R,)
        merged = combine_merge(xs.index_select(0, slot_index), summed, count, cfg.anchor_weight)
        slot_of_token = torch.where(anchors_flat, torch.cumsum(anchors_flat.to(torch.int64), 0) - 1, 0)
        return merged, slot_of_token

    # ---- helpers -----------------------------------------------------------------------------------
    def _static(
        self, h: torch.Tensor, pair: torch.Tensor, same: torch.Tensor, segment: torch.Tensor
    ) -> torch.Tensor:
        """Step 3: (K, N) bool, the ``T_st`` positions of lowest TFD of every segment slot.

        ``TFD_k(p) = sum_{l, l+1 in k} sum_{l' in k} |cos(h_{l+1,p}, h_{l',p}) - cos(h_{l,p}, h_{l',p})|
        / ((T_k - 1) T_k)`` (spec step 3; the normalisation does not change the order within a slot).

        Exact across backends, as :meth:`_density`: TFD is a sum of differences of cosines near 1,
        so the matmul form's accumulation order (the BLAS's, ONNX Runtime's MLAS) moves it by
        ~1e-6 of values ~1e-3, and random-weight features have TFD gaps below that (the 7B Qwen2.5-VL
        fp16 export kept 2 of 594 tokens differently in ONNX Runtime). The matmul form only
        *chooses*: positions of rank ``< T_st - m`` are static, of rank ``>= T_st + m`` are not
        (``m`` = :data:`TFD_MARGIN`). The ``2 m`` positions between are ranked again on a float64
        TFD: unit vectors ``u = x / |x|`` in float64 (the squares of fp32 values are exact there),
        ``cos(a, b) = 1 - ||a - b||^2 / 2`` with the squared distances summed over the differences
        (no cancellation; exactly 0 for equal tokens, so repeated frames tie exactly in every
        backend), ties to the lower position. The backends still sum in their own order, but at
        float64's resolution (~1e-16 of the TFD) against gaps of ~1e-7 between random-weight
        positions: what moved fp32 TFDs (~1e-6) across those gaps is 10^9 times smaller. (The
        earlier form, fp32 sums in a fixed order of elementwise adds with a Newton square root, gave
        the same bits in torch and ONNX Runtime but took TensorRT-RTX 9 minutes to compile for 8
        tiny frames; this one builds in seconds.) Both forms sum in two steps: over the frames
        ``l'`` of frame ``l``'s segment, then over the pairs ``(l, l+1)`` of the slot.

        Args:
            h: (L, N, D) float32 tokens. pair: (K, L-1) float32 {0, 1}: frames l and l+1 both in
                slot k. same: (L, L) float32 {0, 1}: frames l and l' in one segment. segment: (L,)
                int64 slot of each frame.
        """
        L, N, D = self.frames, self.n, self.hidden
        S, dev = self.static_count, h.device
        # approximate TFD (K, N): cosines by matmul
        hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        hnt = hn.transpose(0, 1)  # (N, L, D)
        fm = hnt @ hnt.transpose(1, 2)  # (N, L, L) per-position cosines
        diff = (fm[:, 1:, :] - fm[:, :-1, :]).abs()  # (N, L-1, L)
        inner = (diff * same[:-1]).sum(-1)  # (N, L-1): over l' in l's segment
        rank = rank_asc(pair @ inner.t())  # (K, N), a permutation per slot
        lo, hi = max(S - TFD_MARGIN, 0), min(S + TFD_MARGIN, N)
        W = hi - lo
        positions = torch.arange(N, device=dev).unsqueeze(0).expand(L, N)
        by_rank = torch.zeros(L, N, dtype=torch.int64, device=dev).scatter(1, rank, positions)
        band = by_rank[:, lo:hi]  # (K, W) positions of ranks lo .. hi-1 in each slot

        # exact TFD of the band: frame l's band is its segment's (the same positions in l and l+1)
        fpos = band.index_select(0, segment)  # (L, W)
        frame_base = (torch.arange(L, device=dev) * N).unsqueeze(1)
        rows = (fpos + frame_base).reshape(L * W)  # token (l, fpos[l, j])
        cols = (fpos.unsqueeze(-1) + frame_base.reshape(1, 1, L)).reshape(L * W, L)  # (l', fpos[l, j])
        d2 = _unit_sq_dists(h.reshape(L * N, D), rows, cols, (L * W, L, D)).reshape(L, W, L)
        step = (d2[:-1] - d2[1:]).abs()  # (L-1, W, L) = 2 |cos_{l+1} - cos_l| against l', float64
        inner = (step * same[:-1].to(step.dtype).unsqueeze(1)).sum(-1)  # (L-1, W): over l' in l's segment
        exact = pair.to(step.dtype) @ inner  # (K, W), 2 (T-1) T TFD

        # the band's S - lo lowest exact TFD (ties: lower position) join the ranks below lo
        ei, ej = exact.unsqueeze(-1), exact.unsqueeze(-2)
        pi, pj = band.unsqueeze(-1), band.unsqueeze(-2)
        below = ((ej < ei) | ((ej == ei) & (pj < pi))).to(torch.int64).sum(-1)  # (K, W)
        pick = (below < S - lo).to(torch.int64)
        return (rank < lo) | (torch.zeros(L, N, dtype=torch.int64, device=dev).scatter(1, band, pick) > 0)

    def _segment(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1: (L,) int64 segment id per frame and (L,) float32 1.0 where a segment starts."""
        cfg, L, dev = self.config, self.frames, g.device
        if L == 1:
            return torch.zeros(1, dtype=torch.int64, device=dev), torch.ones(
                1, dtype=torch.float32, device=dev
            )
        gn = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        t = (gn[:-1] * gn[1:]).sum(-1)  # (L-1,) adjacent cosines
        boundary = (rank_asc(t) < cfg.min_segments - 1) | (t < cfg.seg_threshold)
        zero = torch.zeros(1, dtype=torch.int64, device=dev)
        segment = torch.cat([zero, torch.cumsum(boundary.to(torch.int64), 0)])
        start = torch.cat([torch.ones(1, dtype=torch.float32, device=dev), boundary.to(torch.float32)])
        return segment, start

    def exact_richness(self, H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The ``richness`` input of the ``"input"`` mode: the paper's entropy per segment slot.

        Host-side (eager, uses an eigen-decomposition): the segments are formed by the same code as
        in the graph, then :func:`infomerge.compress.richness.segment_richness_exact`.

        Args:
            H: (L, N, D) tokens. g: (L, G) global features.

        Returns:
            (L,) float32.
        """
        with torch.no_grad():
            ids = self._segment(g.to(torch.float32))[0].tolist()
        bounds = [l for l in range(1, len(ids)) if ids[l] != ids[l - 1]]
        segments = list(zip([0, *bounds], [*bounds, len(ids)]))
        return segment_richness_exact(H, segments, self.frames)

    @staticmethod
    def _zscore(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """z-score over the valid slots, population std + 1e-6 (spec step 4, [D]); 0 elsewhere."""
        v = valid.to(x.dtype)
        count = v.sum().clamp_min(1.0)
        xv = torch.where(valid, x, 0)
        mean = xv.sum() / count
        var = (((xv - mean) * v) ** 2).sum() / count
        return torch.where(valid, (x - mean) / (var.sqrt() + 1e-6), 0)

    def _candidate_positions(self, cand: torch.Tensor) -> torch.Tensor:
        """(L, C) int64 positions of each frame's ``C = N - T_s`` candidates (``cand`` (L, N) bool,
        exactly C True per frame), in position order: a cumsum slot per position (candidates
        first) and one ScatterElements with distinct indices."""
        L, N = self.frames, self.n
        C = N - self.salient_count
        on = cand.to(torch.int64)
        slot = torch.where(cand, torch.cumsum(on, 1) - 1, C + torch.cumsum(1 - on, 1) - 1)
        positions = torch.arange(N, device=cand.device).unsqueeze(0).expand(L, N)
        return torch.zeros(L, N, dtype=torch.int64, device=cand.device).scatter(1, slot, positions)[:, :C]

    def _density(self, x: torch.Tensor, xs: torch.Tensor, cpos: torch.Tensor) -> torch.Tensor:
        """DPC-kNN density score of every candidate, per frame (spec step 6); -inf elsewhere.

        Returns ``(rho delta)^2 / rho_max^2`` with ``rho_max`` the frame's largest ``rho``: only its
        order within a frame is used, and it is the order of ``rho * delta``.

        Exact across backends: every value a comparison depends on is computed bit-identically by
        torch and by ONNX Runtime, so the graph's anchors equal the eager module's. The squared
        distances of each frame's candidates come from
        :func:`~infomerge.compress.exact_arith.gram_sq_dist` on frame-centred tokens (the centre a
        fixed-order sum over the frame's positions): one float64 Gram per frame of integers on a
        per-token power-of-two grid, whose products and sums are exact in any accumulation order,
        so the kNN, the nearest denser and the farthest candidate are read straight from it (no
        re-computation of chosen pairs; the reference's distances are the float64 Gram form too,
        :func:`~infomerge.compress.density.pairwise_distances`). "j denser than i" compares the
        exponent ``m = mean kNN d^2`` (``m_j < m_i``; equal ``m``: the lower index under
        ``density_ties="index"``, never under ``"strict"``), not ``rho = exp(-m)``: the same order
        wherever fp32 ``exp`` keeps two ``m`` apart, without the ties fp32 rounding creates when
        ``rho`` is close to 1 (small features), which any last-bit difference broke. Exp and Sqrt
        are not used: ORT's differ from torch's in the last bits (Exp for ~4% of fp32 inputs, Sqrt
        is not correctly rounded); ``exact_arith.exp_neg`` is exp from Mul/Add/Floor/Where, and the
        score is ranked squared.

        Cost: ``L C^2 D`` float64 multiply-adds (C = N - T_s candidates per frame) and ``L C^2``
        elementwise work; the previous form (fp32 Gram to choose pairs, then 13 exact pair
        distances per candidate as elementwise sums) cost 0.65 s eager and 0.78 s in ORT at
        L = 128, D = 896 against 0.3-0.4 s (docs/compression.md, "Growth in frames").

        Args:
            x: (L, N, D) float32 tokens after replacement.
            xs: (L, C, D) its candidates (the non-salient tokens, ``C = N - T_s`` per frame), in
                position order: the score is computed on those only.
            cpos: (L, C) int64 their positions (:meth:`_candidate_positions`).
        """
        L, N, D = self.frames, self.n, self.hidden
        C = N - self.salient_count
        dev = x.device
        if C == 0:
            return torch.full((L, N), _NEG, dtype=x.dtype, device=dev)
        # translation-invariant; centred rows use the grid of gram_sq_dist best. The centre is a
        # fixed-order (halving) sum over positions: the same bits in every backend
        xc = xs - _position_sum(x, N) / N  # (L, C, D)
        d2 = (gram_sq_dist(xc, D) / D).to(x.dtype)  # (L, C, C) exact in any backend; diagonal 0

        # rho: mean of the k smallest d^2 (self included), summed in ascending order
        k = min(self.config.knn, C)
        near = torch.topk(d2, k, dim=-1, largest=False).values  # (L, C, k) ascending
        total = near[..., 0]
        for t in range(1, k):  # fixed summation order
            total = total + near[..., t]
        m = total / k

        # delta^2: d^2 to the nearest denser candidate; the densest: the frame's largest d^2
        idx = torch.arange(C, device=dev)
        lower = idx.unsqueeze(0) < idx.unsqueeze(1)  # [i, j] = j < i (candidates in position order)
        mi, mj = m.unsqueeze(-1), m.unsqueeze(-2)
        denser = mj < mi  # strict (FastVID preset): equal m is never denser
        if self.config.density_ties == "index":  # InfoMerge preset: a total order
            denser = denser | ((mj == mi) & lower)
        to_denser = torch.where(denser, d2, float("inf")).amin(-1)  # (L, C)
        has_denser = denser.any(-1)
        dmax2 = d2.amax(-1).amax(-1, keepdim=True)  # (L, 1)
        delta2 = torch.where(has_denser, to_denser, dmax2.expand(L, C))

        # ranked as (rho delta)^2 / rho_max^2 = exp(-2 (m - m_min)) delta^2: the order of rho * delta
        # without Sqrt (ORT's is not correctly rounded) and exp(-m) underflow in dense frames
        m_min = m.amin(-1, keepdim=True)
        rel = exp_neg(2.0 * (m - m_min))
        score = torch.full((L, N), _NEG, dtype=x.dtype, device=dev)
        return score.scatter(1, cpos, rel * delta2)


def _unit_sq_dists(xf: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int, int]):
    """(m, c) float64 ``||u[rows[i]] - u[cols[i, t]]||^2`` of the unit tokens ``u = x / |x|``,
    computed in float64 (the squares of fp32 values are exact there) and summed over the
    differences: exactly 0 for equal tokens. Only the gathered tokens are converted, in blocks of
    rows of about :data:`~infomerge.compress.exact_arith.TRACE_BLOCK` gathered elements (a float64
    copy of every token cost 1.4 GiB of transient memory at L = 128).

    Args:
        xf: (M, D) float32 tokens. rows: (m,) int64. cols: (m, c) int64. shape: ``(m, c, D)`` as
            Python ints (static when traced).
    """
    m, c, width = shape
    step = max(1, TRACE_BLOCK // (c * width))
    out = []
    for r in range(0, m, step):
        a = xf.index_select(0, rows[r : r + step]).to(torch.float64)  # (s, D)
        b = xf[cols[r : r + step]].to(torch.float64)  # (s, c, D)
        a = a / (a * a).sum(-1, keepdim=True).sqrt()
        b = b / (b * b).sum(-1, keepdim=True).sqrt()
        diff = a.unsqueeze(1) - b  # (s, c, D)
        out.append((diff * diff).sum(-1))  # (s, c)
    return torch.cat(out) if len(out) > 1 else out[0]


def _position_sum(x: torch.Tensor, width: int) -> torch.Tensor:
    """(L, 1, D) sum of ``x`` (L, width, D) over positions by halving with elementwise adds (the
    order of :func:`~infomerge.compress.exact_arith.tree_sum`, over dim 1): the same bits in
    every backend, unlike a ReduceSum / ReduceMean."""
    while width > 1:
        h = width // 2
        s = x[:, :h] + x[:, h : 2 * h]
        x = torch.cat([s, x[:, 2 * h :]], 1) if width % 2 else s
        width -= h
    return x[:, :1]

__all__ = [
    "FixedBudgetCompressor",
    "FixedBudgetDecisions",
    "compact",
    "largest_remainder",
    "rank_asc",
    "rank_desc",
]
