"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): diversity-based visual token pruning.

The kept set is a greedy solution of the Max-Min Diversity Problem (paper Sec. 3, eqs. 4-6) over
the video's tokens, with the cosine distance (eq. 5)::

    d(i, j)  = 1 - <x_i, x_j> / (|x_i| |x_j|)                                   (eq. 5)
    s_1      = argmax_i  min_{j != i} d(j, i)       (the most isolated token)
    s_t      = argmax_{i not in S} min_{s in S} d(s, i),   S = {s_1 .. s_{t-1}}   (Alg. 1, eq. 6)

for ``t = 1 .. K`` with ``K = int(round(r * L * N))`` over the WHOLE video (all frames together);
the kept tokens are the selected ones, unmerged, in original order.

Where the paper is silent, the official code (github.com/vbdi/divprune, ``llava_arch.py``,
``DivPrune``; read 2026-12-01) decides:

- ``K = int(round(r * M))`` (Python's round: half to even); the distances are taken on the
  projected tokens the LLM receives (here ``H``); the first token maximises the SECOND smallest
  entry of its column (the smallest other than itself), later ones the column minimum over the
  selected rows; ``argmax`` keeps the first (lowest) index on a tie.
- [D] A selected token is excluded explicitly; the official code relies on ``d(s, s) = 0``, which
  fp rounding can leave at +-1e-7 (then a duplicate could be re-selected). A zero token (norm 0)
  is normalised with the norm clamped at 1e-12: cosine 0, distance 1 to everything (the official
  code divides by 0).
- [D] The reference computes the distances in float64 (the paper's exact distances); the official
  code uses the model dtype.

:class:`FixedBudgetDivPrune` is the same selection as a shape-static graph (see its docstring).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from infomerge.compress._ops import FixedShapeModule, check_features
from infomerge.compress.fixed_budget import compact
from infomerge.compress.methods import Method
from infomerge.errors import BudgetError

_SELECTED = -1.0  # running-min entry of a selected token (cosine distances lie in [0, 2])


@dataclass(frozen=True)
class DivPruneConfig:
    """DivPrune's one hyperparameter: the retention ratio r in (0, 1].

    Raises:
        BudgetError: retention outside (0, 1].
    """

    retention: float

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"DivPrune: retention must be in (0, 1], got {self.retention!r}")

    def total_budget(self, frames: int, n: int) -> int:
        """K = int(round(r * L * N)) (the official code's rounding), exactly.

        Raises:
            BudgetError: K = 0 (raise the retention).
        """
        k = int(round(float(self.retention) * frames * n))
        if k < 1:
            raise BudgetError(
                f"DivPrune: retention {self.retention} keeps no token of a {frames}x{n} video; raise it"
            )
        return k

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DivPruneResult:
    """Reference output: ``tokens`` (K, D) in H's dtype and ``index`` (K,) int64 sorted flat
    positions ``l * N + p``; ``order`` (K,) int64 the same positions in selection order."""

    tokens: torch.Tensor
    index: torch.Tensor
    order: torch.Tensor

    @property
    def kept(self) -> int:
        return int(self.index.numel())


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    """(M, M) ``1 - cos(x_i, x_j)`` (eq. 5) of the rows of ``x`` (M, D), in x's dtype.

    Norms are clamped at 1e-12 (a zero row: distance 1 to every row, 1 to itself).
    """
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 1.0 - xn @ xn.transpose(0, 1)


def reference(H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, config: DivPruneConfig) -> DivPruneResult:
    """Paper-exact greedy max-min selection (Alg. 1) over the whole video.

    Args:
        H: (L, N, D) float tokens (LLM input space). A: (L, N) and g: (L, G) are not used
            (DivPrune is attention-free) but checked, as for every method.
        config: :class:`DivPruneConfig`.

    Returns:
        :class:`DivPruneResult` with ``K = config.total_budget(L, N)`` tokens.

    Raises:
        ValueError: bad shapes or non-finite H. BudgetError: from ``config.total_budget``.
    """
    check_features("DivPrune", H, A, g)
    L, N, D = H.shape
    k = config.total_budget(L, N)
    x = H.reshape(L * N, D)
    dist = cosine_distances(x.to(torch.float64))  # (M, M), eq. 5
    m = dist.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=H.device)
    nearest = torch.where(eye, math.inf, dist).amin(0)  # (M,) min_{j != i} d(j, i)
    order = [int(torch.argmax(nearest))]  # s_1
    running = dist[order[0]].clone()  # (M,) min over S of d(s, i)
    selected = torch.zeros(m, dtype=torch.bool, device=H.device)
    selected[order[0]] = True
    for _ in range(1, k):  # eq. 6
        s = int(torch.argmax(torch.where(selected, -math.inf, running)))
        order.append(s)
        selected[s] = True
        running = torch.minimum(running, dist[s])
    order_t = torch.tensor(order, dtype=torch.int64, device=H.device)
    index = order_t.sort().values
    return DivPruneResult(tokens=x.index_select(0, index), index=index, order=order_t)


class FixedBudgetDivPrune(FixedShapeModule):
    """DivPrune as a fixed-budget, shape-static graph for one video shape (L, N, D).

    The greedy loop is unrolled ``K`` times with three ops per step, which keeps the graph small
    (about 3 K nodes, no Loop): the distance matrix gets ``-1`` on its diagonal, so after
    ``running = min(running, dist[s])`` the selected token's own entry is ``-1`` and it can never
    win the next ``argmax`` (cosine distances are >= 0). Per step: ArgMax (first index on a tie, the
    ONNX default and torch's), Gather (row ``s`` of the precomputed matrix), Min. At the end the
    selected tokens are exactly the ``-1`` entries of ``running``; they are compacted to ``K``
    sorted indices (cumsum + ScatterElements, :func:`~infomerge.compress.fixed_budget.compact`).
    No NonZero, boolean indexing, TopK, Loop or data-dependent Python control flow.

    Differences from :func:`reference`: fp32 distances from one (M, M) MatMul (the reference:
    float64). The order only changes where two candidates' running minima are within fp32
    rounding (~1e-7) of each other.

    Args:
        config: :class:`DivPruneConfig`. frames, tokens_per_frame, hidden: L, N, D.

    Raises:
        BudgetError: from ``config.total_budget``. ValueError: a dimension < 1.
    """

    def __init__(self, config: DivPruneConfig, frames: int, tokens_per_frame: int, hidden: int):
        super().__init__(config, frames, tokens_per_frame, hidden)
        self.budget = config.total_budget(self.frames, self.n)

    def forward(self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Select ``B = budget`` tokens.

        Args:
            H: (L, N, D) float32 or float16. A: (L, N), g: (L, G): unused (kept as graph inputs).

        Returns:
            ``tokens`` (B, D) in H's dtype, ``index`` (B,) int64 sorted flat positions.
        """
        L, N, D = self.frames, self.n, self.hidden
        self.check_shape(H)
        m = L * N
        x = H.reshape(m, D)
        dist = cosine_distances(x.to(torch.float32))  # (M, M) eq. 5
        # the diagonal by a scatter at i (M + 1): an (M, M) mask would be folded into a constant
        # of M^2 bytes (39 MB at 32 x 196)
        diag = torch.arange(m, device=H.device) * (m + 1)
        flat = dist.reshape(m * m)
        fill = torch.ones(m, dtype=dist.dtype, device=H.device)
        nearest = flat.scatter(0, diag, 4.0 * fill).reshape(m, m).amin(0)  # (M,) min_{j != i} d(j, i)
        dist = flat.scatter(0, diag, _SELECTED * fill).reshape(m, m)
        # rows of shape (1, M): TensorRT's ArgMax needs an input of at least 2 dimensions
        s = torch.argmax(nearest.reshape(1, m), dim=1)  # (1,) s_1
        running = dist.index_select(0, s)  # (1, M)
        for _ in range(self.budget - 1):  # eq. 6, unrolled: the count is static
            s = torch.argmax(running, dim=1)
            running = torch.minimum(running, dist.index_select(0, s))
        index, _ = compact(running.reshape(m) < _SELECTED / 2, self.budget)  # (B,) sorted
        tokens = x.index_select(0, index)
        # A and g stay graph inputs like every compressor's (weight 0: no effect)
        tokens = tokens + (0.0 * (A.sum() + g.sum())).to(tokens.dtype)
        return tokens, index


METHOD = Method(
    name="divprune",
    summary="DivPrune: greedy max-min cosine diversity over the whole video (pruning, no merge)",
    config=DivPruneConfig,
    reference=reference,
    fixed_budget=FixedBudgetDivPrune,
)

__all__ = [
    "METHOD",
    "DivPruneConfig",
    "DivPruneResult",
    "FixedBudgetDivPrune",
    "cosine_distances",
    "reference",
]
