"""Unified (arXiv 2603.21957) as a fixed-budget, shape-static module that exports to ONNX.

Same computation as :func:`infomerge.compress.unified.reference`, with static shapes: exactly
``B = config.total_budget(L, N)`` tokens, no NonZero, boolean-mask indexing, Sort, Unique, cdist,
scatter with reduction, Python control flow on tensor values, and one TopK (k = k_nn = 7). Every
Python ``if``/``for`` below depends on the configuration and the static shapes only. Over all
M = L N tokens, fp32 (``docs/compression.md``, section "Unified"):

1. Order without sorting: ``E[i, j] = s_j > s_i or (s_j == s_i and j < i)`` (j is visited before i).
2. The greedy pool (Eq. 2) is the lexicographically-first maximal independent set of the conflict
   graph ``C = E and (Hn Hn^T >= tau)``, decided in R rounds (unrolled)::

       und = 1 - acc - rej;  a = C acc;  u = C und
       acc += und [a = 0][u = 0];  rej += und [a > 0]

   Each decision is final and equals the sequential one; every round settles at least the earliest
   undecided token. ``selected = acc and (E acc < B_sel)`` (the sequential visit stops at B_sel);
   ``exact`` = no undecided token has ``E acc < B_sel`` (then the graph equals the sequential
   reference; :meth:`FixedBudgetUnified.decisions` reports it and the rounds used).
3. ``n_clu = B - sum(selected)``; DPC-kNN with masks: squared distances by the matmul form
   ``||a||^2 + ||b||^2 - 2ab`` (on mean-centred tokens, clamped >= 0, diagonal 0), non-recycle
   columns +inf for TopK(k_nn, smallest), delta and ArgMin; the densest token takes its row max over
   recycle columns; gamma = -inf for selected tokens (Eqs. 3-4).
4. Centres by a rank mask: ``rank_i = #{j: gamma_j > gamma_i or (equal and j < i)}``,
   ``centre = recycle and rank < n_clu``.
5. Nearest centre: ArgMin of d over centre columns (first index on ties); a centre maps to itself.
6. ``keep = selected or centre`` has exactly B ones; ``slot`` = exclusive CumSum(keep) (flat order);
   ``dest = slot`` (selected) or ``slot[nearest]`` (recycle); ``W = (dest == arange(B))`` one-hot
   (M, B); ``tokens = W^T H / W^T 1``; ``index = (W keep)^T arange(M)``.

Memory: a few (M, M) fp32 matrices (157 MB each at M = 6272).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from infomerge.compress.unified import UnifiedConfig


@dataclass
class UnifiedDecisions:
    """Every decision of one static run (eager use: tests and the agreement study).

    Attributes:
        selected: (M,) bool, the retention pool P.
        undecided: (M,) bool, greedy tokens still undecided after R rounds.
        exact: 0-dim bool, the pool provably equals the sequential greedy's.
        rounds_used: first round after which nothing changed (R + 1 if still changing), int.
        centre: (M,) bool. nearest: (M,) int64 centre of every token (itself for selected / centres).
        tokens: (B, D) in H's dtype; index: (B,) int64 sorted.
    """

    selected: torch.Tensor
    undecided: torch.Tensor
    exact: torch.Tensor
    rounds_used: int
    centre: torch.Tensor
    nearest: torch.Tensor
    tokens: torch.Tensor
    index: torch.Tensor


def greedy_rounds(
    conflict: torch.Tensor, rounds: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Lexicographically-first maximal independent set by R rounds of parallel decisions.

    Args:
        conflict: (M, M) float32 {0, 1}; ``conflict[i, j] = 1``: j precedes i and conflicts with it.
        rounds: R (static).

    Returns:
        ``(acc, rej, history)``: (M,) float32 {0, 1} accepted / rejected after R rounds, and the
        accepted vector after every round (for the rounds-used count).
    """
    m = conflict.shape[0]
    acc = torch.zeros(m, dtype=conflict.dtype, device=conflict.device)
    rej = torch.zeros_like(acc)
    history = []
    for _ in range(rounds):
        und = 1.0 - acc - rej
        au = conflict @ torch.stack([acc, und], 1)  # (M, 2): accepted / undecided conflicting predecessors
        a, u = au[:, 0], au[:, 1]
        free = ((a == 0) & (u == 0)).to(acc.dtype)
        acc = acc + und * free
        rej = rej + und * (a > 0).to(acc.dtype)
        history.append(acc + 2.0 * rej)
    return acc, rej, history


class FixedBudgetUnified(nn.Module):
    """Fixed-budget, shape-static Unified compressor for one video shape.

    Args:
        config: :class:`~infomerge.compress.unified.UnifiedConfig`.
        frames: L. tokens_per_frame: N. hidden: D.
        merge_impl: must be None (Unified has no anchor merge; the merge plugin is InfoMerge's).

    Raises:
        BudgetError: from ``config.total_budget``. ValueError: bad shapes or a merge_impl.
    """

    def __init__(
        self, config: UnifiedConfig, frames: int, tokens_per_frame: int, hidden: int, merge_impl=None
    ):
        super().__init__()
        if frames < 1 or tokens_per_frame < 1 or hidden < 1:
            raise ValueError(
                f"FixedBudgetUnified: need L, N, D >= 1, got {frames}, {tokens_per_frame}, {hidden}"
            )
        if merge_impl is not None:
            raise ValueError("the unified method has no anchor merge: drop the merge plugin / merge_impl")
        self.config = config
        self.frames, self.n, self.hidden = int(frames), int(tokens_per_frame), int(hidden)
        m = self.frames * self.n
        self.budget = config.total_budget(self.frames, self.n)  # B
        self.selection_budget = config.selection_budget(self.frames, self.n)  # B_sel
        self.knn = min(int(config.knn), m - self.selection_budget)  # recycle pool has >= M - B_sel tokens

    def forward(self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress one video.

        Args:
            H: (L, N, D) float32 / float16 tokens. A: (L, N) float32 saliency. g: (L, G), unused.

        Returns:
            ``tokens`` (B, D) in H's dtype and ``index`` (B,) int64 sorted flat positions.
        """
        d = self._run(H, A, g)
        return d.tokens, d.index

    def decisions(self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor) -> UnifiedDecisions:
        """Like :meth:`forward`, with every decision and ``exact`` (eager use only)."""
        return self._run(H, A, g)

    def _check(self, H, A) -> None:
        L, N, D = self.frames, self.n, self.hidden
        if tuple(H.shape) != (L, N, D) or tuple(A.shape) != (L, N):
            raise ValueError(f"FixedBudgetUnified({L}x{N}x{D}): got H {tuple(H.shape)}, A {tuple(A.shape)}")

    def _run(self, H, A, g) -> UnifiedDecisions:
        if not torch.jit.is_tracing():
            self._check(H, A)
        cfg, L, N, D = self.config, self.frames, self.n, self.hidden
        M, B = L * N, self.budget
        f32 = torch.float32
        h = H.reshape(M, D).to(f32)
        s = A.reshape(M).to(f32)
        # positions computed from the input, not torch.arange: the exporter would fold every
        # (M, M) mask built from a constant into a 39-157 MB initializer
        one = torch.where(s == s, 1, 1)  # (M,) int64 ones, input-dependent so not folded
        idx = torch.cumsum(one, 0) - 1  # (M,) 0..M-1
        lower = idx.unsqueeze(0) < idx.unsqueeze(1)  # [i, j] = j < i

        # ---- step 1-2: order and the greedy pool (Eq. 2) -------------------------------------
        si, sj = s.unsqueeze(1), s.unsqueeze(0)
        before = (sj > si) | ((sj == si) & lower)  # E[i, j]: j visited before i
        hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        conflict = (before & ((hn @ hn.t()) >= cfg.tau)).to(f32)  # (M, M)
        acc, rej, history = greedy_rounds(conflict, cfg.rounds)
        und = 1.0 - acc - rej
        e = before.to(f32)
        acc_before = e @ acc  # accepted tokens visited before each token
        selected = (acc > 0.5) & (acc_before < self.selection_budget)
        undecided = und > 0.5
        exact = ~(undecided & (acc_before < self.selection_budget)).any()
        recycle = ~selected

        # ---- step 3: DPC-kNN on the recycle pool (Eqs. 3-4) ----------------------------------
        xc = h - h.mean(0, keepdim=True)  # translation-invariant; less cancellation
        sq = (xc * xc).sum(-1)
        d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (xc @ xc.t())).clamp_min(0.0) / D
        d2 = torch.where(idx.unsqueeze(0) == idx.unsqueeze(1), 0.0, d2)
        inf = float("inf")
        col = recycle.unsqueeze(0)  # (1, M) recycle columns
        knn = torch.topk(torch.where(col, d2, inf), self.knn, dim=-1, largest=False).values  # (M, k)
        rho = torch.exp(-knn.mean(-1))  # Eq. 3
        dist = d2.sqrt()
        ri, rj = rho.unsqueeze(1), rho.unsqueeze(0)
        denser = ((rj > ri) | ((rj == ri) & lower)) & col
        to_denser = torch.where(denser, dist, inf).amin(-1)
        row_max = torch.where(col, dist, 0.0).amax(-1)
        delta = torch.where(denser.any(-1), to_denser, row_max)  # Eq. 4
        gamma = torch.where(recycle, rho * delta, float("-inf"))

        # ---- step 4-5: centres by rank, nearest centre ---------------------------------------
        n_clu = B - selected.to(torch.int64).sum()
        gi, gj = gamma.unsqueeze(1), gamma.unsqueeze(0)
        rank = ((gj > gi) | ((gj == gi) & lower)).to(torch.int64).sum(-1)  # ties: lower index first
        centre = recycle & (rank < n_clu)
        nearest = torch.where(centre.unsqueeze(0), dist, inf).argmin(-1)  # first index on ties
        nearest = torch.where(centre | selected, idx, nearest)

        # ---- step 6: one-hot refill, sorted output -------------------------------------------
        keep = selected | centre  # exactly B ones
        keep_i = keep.to(torch.int64)
        slot = torch.cumsum(keep_i, 0) - keep_i  # exclusive: already in flat order
        dest = slot.index_select(0, nearest)
        w = (dest.unsqueeze(1) == idx[:B].unsqueeze(0)).to(f32)  # (M, B) one-hot
        count = w.sum(0)  # (B,)
        total = w.t() @ h  # (B, D)
        own = w * keep.to(f32).unsqueeze(1)  # the kept / centre token of every slot
        first = own.t() @ h  # (B, D) the centre's (or selected token's) features
        if cfg.merge == "beta":
            others = (total - first) / (count - 1.0).clamp_min(1.0).unsqueeze(1)
            beta = cfg.centre_weight * first + (1.0 - cfg.centre_weight) * others
            tokens = torch.where((count > 1.5).unsqueeze(1), beta, first)
        else:
            tokens = total / count.unsqueeze(1)
        if g is not None:  # g is unused (one global pool); weight 0 keeps it a graph input
            tokens = tokens + 0.0 * g[:1, :1].to(f32).sum()
        # a column sum, not own^T @ idx: ORT fuses Transpose + MatMul with a 1-D operand wrongly
        index = (own * idx.to(f32).unsqueeze(1)).sum(0).to(torch.int64)  # exact: M < 2^24
        rounds_used = self._rounds_used(history)
        return UnifiedDecisions(
            selected=selected,
            undecided=undecided,
            exact=exact,
            rounds_used=rounds_used,
            centre=centre,
            nearest=nearest,
            tokens=tokens.to(H.dtype),
            index=index,
        )

    @staticmethod
    def _rounds_used(history: list[torch.Tensor]) -> int:
        """Eager only (-1 while tracing): the first round after which the state stopped changing."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return -1
        for r in range(1, len(history)):
            if torch.equal(history[r], history[r - 1]):
                return r
        return len(history) + 1


__all__ = ["FixedBudgetUnified", "UnifiedDecisions", "greedy_rounds"]
