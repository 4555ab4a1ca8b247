"""DyCoke (Tao et al., CVPR 2025, arXiv 2411.15024): temporal token merging (TTM), its pre-LLM stage.

The frames are cut into windows of ``W = 4``; inside a window the later frames lose the tokens
that repeat, at the same spatial position, a token of an earlier frame of the window. Every frame
``t > 0`` has one comparison frame ``c(t)`` and every token the similarity

    s_{t,p} = cos(H[t, p], H[c(t), p])
    c(t)    = t - 1 (t mod 4 = 1 or 3),  t - 2 (t mod 4 = 2)                (DyCoke TTM)

and frame ``t`` keeps its ``q_t`` LEAST similar tokens (the rest are dropped: the official "merging"
is pruning; a kept token is an unmodified input row). Frames ``t mod 4 = 0`` (window starts) are
kept whole by DyCoke.

Where the paper is silent, the official code (github.com/KD-TAO/DyCoke, ``llava/model/
llava_arch.py``, ``dycole_ttm``; read 2026-12-01) decides: window 4; the comparison pattern above
(odd frames against the previous frame, the window's third frame against its first, both on the
projected features, our ``H``); a FIXED per-frame count ``int((1 - k) N)`` of kept tokens (``k``,
``dycoke_k``, the pruning ratio; 0.7 in its README), taken by ``topk(largest=False)``.

Decisions of this toolkit ([D], see ``docs/methods.md``):

- [D] The budget is ``B = round(r L N)`` (at least 1), split over the frames by shape alone
  (:meth:`DyCokeConfig.quotas`): the window starts first, the other frames share the rest evenly.
  TTM alone cannot go below ``1 / 4`` (window starts are whole); for ``B < (window starts) * N``
  the other frames keep nothing and the window starts ``t > 0`` are pruned the same way against the
  previous window start ``c(t) = t - 4``; frame 0 is whole while ``B >= N`` (below that it is ranked
  against frame 1).
- [D] Every complete AND incomplete window is processed, also the last (the official loop
  ``range(0, L - 4, 4)`` skips the last window's third frame, and an odd ``L`` loses its last
  frame there).
- [D] Similarity ranked through ``q = dot |dot| / (|a|^2 |b|^2)`` (= sign(cos) cos^2, the same order
  as cos, and exactly 1 for identical tokens in any precision); ties (identical or frozen tokens)
  keep the lower position. The reference computes it in float64.

:class:`FixedBudgetDyCoke` is the same selection as a shape-static graph (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from infomerge.compress._ops import FixedShapeModule, check_features
from infomerge.compress.exact_arith import chunked_sum
from infomerge.compress.fixed_budget import compact
from infomerge.compress.methods import Method
from infomerge.errors import BudgetError

WINDOW = 4  # DyCoke's window (paper and official code)


def comparison_frames(frames: int) -> list[int]:
    """``c(t)`` for t = 0 .. L-1 (list of ints): the frame each frame's tokens are compared with.

    ``t mod 4 = 1, 3``: t - 1; ``t mod 4 = 2``: t - 2 (DyCoke); ``t mod 4 = 0, t > 0``: t - 4, and
    frame 0: frame 1 (toolkit extension, used only below r = 1/4); frame 0 of a 1-frame video: 0.
    """
    out = []
    for t in range(frames):
        if t == 0:
            out.append(1 if frames > 1 else 0)
        elif t % WINDOW == 0:
            out.append(t - WINDOW)
        elif t % WINDOW == 2:
            out.append(t - 2)
        else:
            out.append(t - 1)
    return out


def _tier(t: int) -> int:
    return 2 if t == 0 else (1 if t % WINDOW == 0 else 0)


@dataclass(frozen=True)
class DyCokeConfig:
    """DyCoke TTM at retention r in (0, 1] (window 4).

    Raises:
        BudgetError: retention outside (0, 1].
    """

    retention: float
    window: int = field(default=WINDOW, init=False)

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"DyCoke: retention must be in (0, 1], got {self.retention!r}")

    def total_budget(self, frames: int, n: int) -> int:
        """B = max(1, round(r L N)), exactly (reference and static graph alike).

        Raises:
            BudgetError: L or N < 1.
        """
        if frames < 1 or n < 1:
            raise BudgetError(f"DyCoke: empty video {frames}x{n}")
        return max(1, int(round(float(self.retention) * frames * n)))

    def quotas(self, frames: int, n: int) -> list[int]:
        """q_t, the tokens frame t keeps (list of L ints, sum B): frame 0, then the window starts,
        then the other frames, each group filled in turn; inside a group evenly, the earlier frames
        taking the remainder. Depends on (r, L, N) only."""
        left = self.total_budget(frames, n)
        q = [0] * frames
        for tier in (2, 1, 0):
            group = [t for t in range(frames) if _tier(t) == tier]
            if not group or left == 0:
                continue
            if left >= len(group) * n:
                for t in group:
                    q[t] = n
                left -= len(group) * n
                continue
            base, extra = divmod(left, len(group))
            for i, t in enumerate(group):
                q[t] = base + (1 if i < extra else 0)
            left = 0
        return q

    def official_k(self, frames: int, n: int) -> float:
        """The official ``dycoke_k`` (pruned fraction of each non-window-start frame) these quotas
        correspond to: 1 - (mean q_t over those frames) / N; 1.0 when there is none."""
        q = self.quotas(frames, n)
        rest = [q[t] for t in range(frames) if _tier(t) == 0]
        return 1.0 - (sum(rest) / (len(rest) * n)) if rest else 1.0

    def to_dict(self) -> dict:
        return {"retention": float(self.retention), "window": self.window}


@dataclass
class DyCokeResult:
    """Reference output: ``tokens`` (K, D) in H's dtype, ``index`` (K,) int64 sorted flat positions
    ``l * N + p``; ``similarity`` (L, N) float64 cos to the comparison frame's token."""

    tokens: torch.Tensor
    index: torch.Tensor
    similarity: torch.Tensor

    @property
    def kept(self) -> int:
        return int(self.index.numel())


def reference(H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, config: DyCokeConfig) -> DyCokeResult:
    """DyCoke TTM: per frame, the ``q_t`` tokens least similar to the comparison frame's.

    Args:
        H: (L, N, D) float tokens (LLM input space). A: (L, N), g: (L, G): unused (TTM needs no
            attention) but checked, as for every method.
        config: :class:`DyCokeConfig`.

    Returns:
        :class:`DyCokeResult` with exactly ``config.total_budget(L, N)`` tokens.

    Raises:
        ValueError: bad shapes or non-finite H. BudgetError: from the config.
    """
    check_features("DyCoke", H, A, g)
    L, N, D = H.shape
    quotas = config.quotas(L, N)
    x = H.to(torch.float64)
    ref = x[torch.tensor(comparison_frames(L), device=H.device)]
    dot = (x * ref).sum(-1)
    nn2 = ((x * x).sum(-1) * (ref * ref).sum(-1)).clamp_min(1e-300)
    score = dot * dot.abs() / nn2  # sign(cos) cos^2: the order of cos
    keep = []
    for t in range(L):
        order = torch.sort(score[t], stable=True).indices  # ascending; ties: lower position first
        keep.append(order[: quotas[t]] + t * N)
    index = torch.cat(keep).sort().values
    cos = dot / nn2.sqrt()
    return DyCokeResult(tokens=H.reshape(L * N, D).index_select(0, index), index=index, similarity=cos)


class FixedBudgetDyCoke(FixedShapeModule):
    """DyCoke TTM as a fixed-budget, shape-static graph for one video shape (L, N, D).

    The comparison frames and the per-frame quotas ``q_t`` are Python constants of the shape (no
    value decides a count), so the graph keeps exactly ``B = sum q_t`` tokens. Per frame a token's
    rank is the number of tokens of its frame with a smaller score, plus those with an equal score
    at a lower position (one (L, N, N) comparison: no TopK, no sort); the frame keeps the tokens of
    rank ``< q_t``, and the (L N,) mask is compacted to B sorted indices (cumsum +
    ScatterElements). No NonZero, boolean indexing, TopK, Loop, If or data-dependent control flow.

    The score ``dot |dot| / (|a|^2 |b|^2)`` is computed from sums of elementwise products added in
    a fixed halving order (no MatMul, ReduceSum, Sqrt or Exp), so torch and ONNX Runtime compute it
    bit-identically and rank the same tokens. Differences from :func:`reference`: fp32 instead of
    float64, which can only swap two tokens whose scores are within fp32 rounding of each other.

    Args:
        config: :class:`DyCokeConfig`. frames, tokens_per_frame, hidden: L, N, D.

    Raises:
        BudgetError: from the config. ValueError: a dimension < 1.
    """

    def __init__(self, config: DyCokeConfig, frames: int, tokens_per_frame: int, hidden: int):
        super().__init__(config, frames, tokens_per_frame, hidden)
        self.quotas = config.quotas(self.frames, self.n)
        self.budget = int(sum(self.quotas))
        self.register_buffer(
            "_cmp", torch.tensor(comparison_frames(self.frames), dtype=torch.int64), persistent=False
        )
        self.register_buffer(
            "_quota", torch.tensor(self.quotas, dtype=torch.int64).reshape(-1, 1), persistent=False
        )

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return chunked_sum(t, self.hidden)  # (..., D) -> (...), backend-exact

    def scores(self, H: torch.Tensor) -> torch.Tensor:
        """(L, N) float32 ``sign(cos) cos^2`` of each token with its comparison frame's token."""
        x = H.to(torch.float32)
        ref = x.index_select(0, self._cmp)
        dot = self._sum(x * ref)
        nn2 = (self._sum(x * x) * self._sum(ref * ref)).clamp_min(1e-30)
        return dot * dot.abs() / nn2

    def forward(self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep ``B = budget`` tokens.

        Args:
            H: (L, N, D) float32 or float16. A: (L, N), g: (L, G): unused (kept as graph inputs).

        Returns:
            ``tokens`` (B, D) in H's dtype, ``index`` (B,) int64 sorted flat positions.
        """
        L, N, D = self.frames, self.n, self.hidden
        self.check_shape(H)
        s = self.scores(H)  # (L, N)
        pos = torch.arange(N, device=H.device)
        si, sj = s.unsqueeze(-1), s.unsqueeze(-2)  # (L, N, 1) token p, (L, 1, N) token q
        before = (sj < si) | ((sj == si) & (pos.reshape(1, 1, N) < pos.reshape(1, N, 1)))
        rank = before.to(torch.int64).sum(-1)  # (L, N)
        keep = rank < self._quota
        index, _ = compact(keep.reshape(L * N), self.budget)
        tokens = H.reshape(L * N, D).index_select(0, index)
        tokens = tokens + (0.0 * (A.sum() + g.sum())).to(tokens.dtype)
        return tokens, index


METHOD = Method(
    name="dycoke",
    summary="DyCoke TTM: windows of 4 frames, later frames keep the tokens least similar to an earlier one",
    config=DyCokeConfig,
    reference=reference,
    fixed_budget=FixedBudgetDyCoke,
)

__all__ = [
    "METHOD",
    "WINDOW",
    "DyCokeConfig",
    "DyCokeResult",
    "FixedBudgetDyCoke",
    "comparison_frames",
    "reference",
]
