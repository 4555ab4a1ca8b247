"""Paper-exact InfoMerge (and FastVID, its ablation): the PyTorch reference.

``reference(H, A, g, config) -> Compressed`` follows InfoMerge (arXiv 2606.02161; summary in
``docs/algorithm.md``) step by step; it is the ground truth that the shape-static export variant,
the Triton kernel and the engines are measured against. Dynamic shapes, Python loops over
segments and frames; nothing here is meant to be traced. The building blocks live one concept per
module, with standalone signatures that the static variant reuses where they are shape-static:

==========================  =====================================================================
step                        functions
==========================  =====================================================================
1 segmentation              :mod:`~infomerge.compress.segmentation`: ``adjacent_similarity``,
                            ``boundary_mask``, ``segments_from_boundaries``, ``segment_frames``
2 budget split              :class:`~infomerge.compress.config.InfoMergeConfig`:
                            ``salient_per_frame``, ``context_budget``, ``total_budget``
3 static candidates         :mod:`~infomerge.compress.tfd`: ``tfd_scores``, ``adjacent_scores``,
                            ``static_scores``, ``static_candidates``
4 CABA                      :mod:`~infomerge.compress.caba`: ``segment_uniqueness``,
                            ``spectral_entropy``, ``segment_richness``, ``zscore``,
                            ``caba_priority``, ``caba_weights``, ``allocate_budgets``
5 selection + replacement   :mod:`~infomerge.compress.selection`: ``penalized_scores``,
                            ``select_salient``, ``apply_static_replacement``
6 density, anchors, merge   :mod:`~infomerge.compress.density`: ``pairwise_distances``,
                            ``density_scores``, ``anchor_frames``, ``select_anchors``;
                            :func:`~infomerge.compress.merge.merge_to_anchors`
7 output                    :func:`reference` (this module)
==========================  =====================================================================

Decisions where the spec is silent (all in ``docs/algorithm.md`` too):

- Precision: everything is computed in float32, or float64 when ``H`` is float64 (fp16 / bf16 inputs
  are scored in fp32); CABA's ``m_k``, ``w_k`` and shares in float64. Output tokens are cast back
  to ``H``'s dtype; a salient token that was not replaced is bit-identical to its input.
- Ties: every top-k is a stable sort, the lower index wins (segmentation, static candidates,
  attention, density score, equal densities); cosine ties in the merge assignment go to the anchor
  with the lower flat index (anchors are passed to the merge sorted by index; argmax takes the first).
- Merge scope (spec step 6, "as FastVID", read literally): in a multi-frame segment EVERY anchor
  frame assigns ALL candidate tokens of the segment to its own nearest anchor (one cosine matmul of
  the segment's candidates against that frame's anchors, argmax) and merges them; a candidate
  therefore feeds one anchor in each anchor frame of its segment, and another frame's anchor token
  is an ordinary member for this frame's anchors. A single-frame segment merges within its frame.
  The shape-static variant does the same (``FixedBudgetCompressor(merge_scope="anchor_frame")``).
- Candidates (merge members) are the tokens not selected in step 5, after the static replacement
  of step 5.4 (their values may be a static mean); salient tokens take no part in the merge.
- Non-finite inputs are rejected (``ValueError``) rather than silently propagated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from infomerge.compress._ops import compute_dtype
from infomerge.compress.caba import (
    allocate_budgets,
    caba_priority,
    caba_weights,
    segment_richness,
    segment_uniqueness,
)
from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.density import anchor_frames, density_scores, select_anchors
from infomerge.compress.merge import merge_to_anchors
from infomerge.compress.segmentation import segment_frames
from infomerge.compress.selection import apply_static_replacement, select_salient
from infomerge.compress.tfd import static_candidates, static_scores

__all__ = [
    "CabaStats",
    "Compressed",
    "InfoMergeConfig",
    "reference",
]


@dataclass(frozen=True)
class CabaStats:
    """CABA's per-segment quantities (float64, shape (K,)): uniqueness ``u``, richness ``e``,
    priority ``m`` and weight ``w`` (eqs. 3-8)."""

    u: torch.Tensor
    e: torch.Tensor
    m: torch.Tensor
    w: torch.Tensor


@dataclass
class Compressed:
    """What InfoMerge keeps of one video.

    Attributes:
        tokens: (K, D) kept tokens in H's dtype, in ``index`` order: salient tokens (after static
            replacement) and merged context tokens.
        index: (K,) int64 original flat positions ``l * N + p``, sorted ascending, unique. A merged
            token carries the index of its anchor.
        segments: ``[(start, end), ...]`` frame ranges, end exclusive.
        budgets: per-segment context budgets ``B_k`` (before the anchor-frame split).
        static: (num_segments, N) bool, the static candidates ``S_k`` of each segment (all False
            for single-frame segments and with TFD off).
        salient: int64 sorted flat indices of the salient tokens (``L * T_s`` of them).
        anchors: int64 sorted flat indices of the merged context tokens' anchors.
        replaced: int64 sorted flat indices of every token overwritten by its static mean in step
            5.4 (kept or not).
        anchor_frames: per segment, the absolute frame indices of its anchor frames.
        frames: L.  tokens_per_frame: N.
        salient_per_frame: T_s.  context_budget: B_DTM (a float under the paper rule).
        caba: CABA's u, e, m, w, or None with CABA off.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    segments: list[tuple[int, int]]
    budgets: list[int]
    static: torch.Tensor
    salient: torch.Tensor
    anchors: torch.Tensor
    replaced: torch.Tensor
    anchor_frames: list[list[int]]
    frames: int
    tokens_per_frame: int
    salient_per_frame: int
    context_budget: float
    caba: CabaStats | None = field(default=None)

    @property
    def kept(self) -> int:
        """Number of kept tokens K."""
        return int(self.index.numel())

    @property
    def is_salient(self) -> torch.Tensor:
        """(K,) bool aligned with ``index``: True for salient tokens, False for merged ones."""
        return torch.isin(self.index, self.salient)

    def per_frame(self, which: str = "salient") -> list[torch.Tensor]:
        """Positions (0..N-1) per frame of ``which`` in {"salient", "anchors", "replaced", "index"}."""
        flat = getattr(self, which)
        n = self.tokens_per_frame
        return [flat[(flat // n) == l] % n for l in range(self.frames)]


def _check_inputs(h: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> tuple[int, int, int]:
    if h.dim() != 3:
        raise ValueError(f"reference: H must be (L, N, D), got shape {tuple(h.shape)}")
    big_l, n, d = h.shape
    if big_l < 1 or n < 1 or d < 1:
        raise ValueError(f"reference: H must have L, N, D >= 1, got shape {tuple(h.shape)}")
    if tuple(a.shape) != (big_l, n):
        raise ValueError(f"reference: A must be (L, N) = {(big_l, n)}, got {tuple(a.shape)}")
    if g.dim() != 2 or g.shape[0] != big_l or g.shape[1] < 1:
        raise ValueError(f"reference: g must be (L, G) with L = {big_l}, got {tuple(g.shape)}")
    for name, t in (("H", h), ("A", a), ("g", g)):
        if not t.is_floating_point():
            raise ValueError(f"reference: {name} must be a float tensor, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"reference: {name} contains NaN or infinite values")
    return big_l, n, d


@torch.no_grad()
def reference(
    H: torch.Tensor,  # noqa: N803 (the spec's symbols)
    A: torch.Tensor,  # noqa: N803
    g: torch.Tensor,
    config: InfoMergeConfig | None = None,
) -> Compressed:
    """Compress one video's tokens with InfoMerge, exactly as the spec says (steps 1-7).

    Args:
        H: (L, N, D) video tokens after projector and 14x14 pooling (float16/bfloat16/32/64).
        A: (L, N) per-frame saliency (SigLIP MAP-head attention resized to the token grid).
        g: (L, G) per-frame global features (the MAP head's pooled output).
        config: hyperparameters; default ``InfoMergeConfig.paper(0.15)``. The FastVID preset
            (``InfoMergeConfig.fastvid(r)``) is TFD off + CABA off + the "fastvid" budget rule.

    Returns:
        :class:`Compressed`. Kept count = ``L * T_s + sum_k a_k * min(B_k // a_k, unmasked
        candidates)`` with ``a_k = ceil(T_k / p)`` anchor frames: the anchor-frame remainder is
        dropped (FastVID), so it may differ from ``config.total_budget`` by a few tokens.

    Raises:
        ValueError: shapes, dtypes or non-finite values of the inputs.
        BudgetError: a retention ratio that keeps no token at this shape.

    Steps (spec numbering; decisions where the paper is silent marked [D]):
        1. Segments from ``g`` (:func:`~infomerge.compress.segmentation.segment_frames`).
        2. ``T_s`` and ``B_DTM`` from ``config`` (``budget_rule`` "paper" or "fastvid").
        3. Per multi-frame segment with TFD on: ``S_k`` = the ``floor(rho N)`` positions with the
           smallest TFD (or adjacent difference), on the ORIGINAL tokens; empty for T = 1 [D].
        4. ``B_k`` from CABA on the original tokens, or proportional to ``T_k`` with CABA off.
        5. Per segment and frame: penalised attention top-``T_s``; static hits replace
           ``H[r, p]`` by the segment mean of position p for ``r >= l`` [D: before step 6].
        6. Per segment: anchor frames (last, then every p-th backwards), frame budget
           ``B_k // a_k``; density scores on the frame's candidates (after replacement) with the
           hard mask; anchors = top-budget (capped at unmasked candidates); all candidates of the
           segment merged into the segment's anchor pool by
           :func:`~infomerge.compress.merge.merge_to_anchors`.
        7. Salient + merged tokens with their original flat indices, sorted by index.
    """
    config = config if config is not None else InfoMergeConfig.paper(0.15)
    big_l, n, d = _check_inputs(H, A, g)
    config.total_budget(big_l, n)  # BudgetError when the ratio keeps nothing at this shape
    cdt = compute_dtype(H.dtype)
    dev = H.device
    h = H.to(cdt)
    a = A.to(cdt)
    t_s = config.salient_per_frame(n)
    b_dtm = config.context_budget(big_l, n)

    # step 1: segmentation
    segments = segment_frames(g.to(cdt), config.min_segments, config.seg_threshold)
    lengths = [e - s for s, e in segments]

    # step 3: static candidates (original tokens)
    n_static = config.static_candidates(n) if config.tfd else 0
    static = torch.zeros(len(segments), n, dtype=torch.bool, device=dev)
    for k, (s, e) in enumerate(segments):
        if n_static > 0 and e - s > 1:
            scores = static_scores(h[s:e], config.static_estimator, config.adjacent_window)
            static[k] = static_candidates(scores, n_static)

    # step 4: budgets (original tokens)
    caba = None
    if config.caba:
        u = segment_uniqueness(h, segments).double()
        e_k = segment_richness(h, segments).double()
        w = caba_weights(u, e_k, lengths, config.tau, config.alpha, config.beta)
        caba = CabaStats(u=u, e=e_k, m=caba_priority(u, e_k, config.alpha, config.beta), w=w)
    else:
        w = torch.tensor(lengths, dtype=torch.float64)
    budgets = allocate_budgets(w, b_dtm)

    # steps 5-6, per segment
    out_index, out_tokens, sal_index, anc_index, rep_index, seg_anchor_frames = [], [], [], [], [], []
    for k, (s, e) in enumerate(segments):
        t = e - s
        salient, replaced = select_salient(a[s:e], static[k], t_s, config.lam)
        hs = apply_static_replacement(h[s:e], replaced)
        candidate = ~salient

        frames = anchor_frames(t, config.anchor_interval)
        per_frame = budgets[k] // len(frames)  # remainder dropped (FastVID)
        chosen_static = torch.zeros(n, dtype=torch.bool, device=dev)
        local_anchors = []
        for f in frames:  # temporal order: the hard mask depends on it
            scores = density_scores(hs[f], config.knn, valid=candidate[f], ties=config.density_ties)
            picked = select_anchors(scores, per_frame, blocked=static[k] & chosen_static)
            chosen_static[picked] |= static[k][picked]
            local_anchors.append(f * n + picked)
        seg_anchor_frames.append([s + f for f in frames])

        base = s * n
        sal_flat = salient.reshape(-1).nonzero().squeeze(-1)  # ascending (row-major)
        flat_h = hs.reshape(-1, d)
        sal_index.append(base + sal_flat)
        out_index.append(base + sal_flat)
        out_tokens.append(flat_h[sal_flat])
        rep_index.append(base + replaced.reshape(-1).nonzero().squeeze(-1))

        members = candidate.reshape(-1).to(cdt)
        for picked in local_anchors:  # one merge per anchor frame, over the whole segment
            if picked.numel() == 0:
                continue
            anchors = picked.sort().values
            merged = merge_to_anchors(
                flat_h,
                members,
                anchors,
                torch.ones(anchors.shape, dtype=cdt, device=dev),
                config.anchor_weight,
            )
            anc_index.append(base + anchors)
            out_index.append(base + anchors)
            out_tokens.append(merged)

    # step 7: output sorted by original index
    index = torch.cat(out_index)
    order = torch.argsort(index)
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    return Compressed(
        tokens=torch.cat(out_tokens)[order].to(H.dtype),
        index=index[order],
        segments=segments,
        budgets=budgets,
        static=static,
        salient=torch.cat(sal_index).sort().values,
        anchors=torch.cat(anc_index).sort().values if anc_index else empty,
        replaced=torch.cat(rep_index).sort().values,
        anchor_frames=seg_anchor_frames,
        frames=big_l,
        tokens_per_frame=n,
        salient_per_frame=t_s,
        context_budget=b_dtm,
        caba=caba,
    )
