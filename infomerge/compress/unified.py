"""Unified spatiotemporal token compression, the outer-LLM stage (Du et al., arXiv 2603.21957, CVPR 2026).

No official code exists; the method extends HoliTom (arXiv 2505.21334). Every step, and every
choice made where the paper is silent, is written in ``docs/compression.md``, section "Unified".

One global pool over all L*N tokens of the video (no temporal segmentation; ``g`` is unused)::

    B     = round_half_up(r L N);  n_clu0 = round_half_up(rc B);  B_sel = B - n_clu0
    s     = A                                   contribution score (Eq. 1; the MAP-probe attention)
    order = all L N tokens by s descending, ties to the lower flat index
    P     = {}; visit in order until |P| = B_sel:                          Eq. 2
              c joins P iff max_{p in P} cos(h_c, h_p) < tau   (strict; the empty pool admits)
    recycle = every token not in P
    n_clu = B - |P|  (= n_clu0 unless the order ran out: the shortfall goes to the clusters)
    DPC-kNN on the recycle tokens (flat order): n_clu centres, each token joins its nearest
    merged token = mean of its cluster, centre included (option ``merge="beta"``:
              0.6 centre + 0.4 mean(others), HoliTom's default path)
    output = P's tokens unchanged + the n_clu merged tokens, a merged token at its centre's flat
             index; exactly B tokens, sorted by flat index (the original spatiotemporal order)

Hyperparameters (paper Fig. 5, one setting at every ratio): tau = 0.7, rc = 0.3, k_nn = 7 (HoliTom).
All maths in fp32; every tie goes to the lower flat index. Output positions: the runtime numbers
RoPE positions by the flat index (gaps kept, see ``docs/runtime.md``), so a kept or merged token's
position is its (centre's) original position.

The shape-static form (exactly B tokens, exportable): :mod:`infomerge.compress.unified_static`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from infomerge.compress.dpc_knn import Clusters, dpc_knn
from infomerge.compress.methods import Method
from infomerge.errors import BudgetError

MergeRule = Literal["mean", "beta"]
_EPS = 1e-9  # guards floor(x + 0.5) against 62.4999999 from binary floating point


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)`` for x >= 0 (B and n_clu0 round half up; 0.3 * 125 = 37.5 -> 38)."""
    return int(math.floor(x + 0.5 + _EPS))


@dataclass(frozen=True)
class UnifiedConfig:
    """Hyperparameters of the Unified compressor.

    Attributes:
        retention: r in (0, 1]; B = round_half_up(r L N) tokens are kept.
        tau: redundancy threshold of the selection (Eq. 2), 0.7 [paper Fig. 5].
        cluster_ratio: rc, share of B filled by merged tokens, 0.3 [paper Fig. 5; read as
            HoliTom's / FastVID's share of the budget].
        knn: k_nn of the DPC-kNN density, 7 [HoliTom].
        merge: "mean" (mean of the cluster, centre included [paper: "averaged"]) or "beta"
            (``centre_weight`` centre + rest mean of the others [HoliTom's default path]).
        centre_weight: the centre's weight under ``merge="beta"`` (0.6).
        rounds: R, rounds of the shape-static greedy selection (64); the reference ignores it.
        inner_merge: the inner-LLM stage (paper Eq. 9, "Ours" in Table 1; True): the torch LLM
            backend merges the video tokens before decoder layer ``inner_layer`` (see
            :mod:`infomerge.compress.unified_inner`); False: the paper's "w/o M".
        inner_layer: K = 18 [paper Table 5, HoliTom]; an LLM with <= K layers merges before its
            last layer (the runtime clamps to depth - 1 and reports it).
        inner_ratio: R = 0.5, the share of the video tokens kept at layer K [paper Fig. 5].
        inner_lambda: lambda = 0.5 of Eq. 9 [paper Fig. 5].

    Raises:
        BudgetError: retention outside (0, 1], tau outside (-1, 1], cluster_ratio outside [0, 1),
            knn / rounds < 1, an unknown merge rule, inner_layer < 1, inner_ratio outside (0, 1],
            inner_lambda outside [0, 1].
    """

    retention: float = 0.02
    tau: float = 0.7
    cluster_ratio: float = 0.3
    knn: int = 7
    merge: MergeRule = "mean"
    centre_weight: float = 0.6
    rounds: int = 64
    inner_merge: bool = True
    inner_layer: int = 18
    inner_ratio: float = 0.5
    inner_lambda: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"retention ratio must be in (0, 1], got {self.retention!r}")
        if not (-1.0 < float(self.tau) <= 1.0):
            raise BudgetError(f"tau is a cosine threshold in (-1, 1], got {self.tau!r}")
        if not (0.0 <= float(self.cluster_ratio) < 1.0):
            raise BudgetError(f"cluster_ratio must be in [0, 1), got {self.cluster_ratio!r}")
        if self.knn < 1 or self.rounds < 1:
            raise BudgetError(f"knn and rounds must be >= 1, got {self.knn}, {self.rounds}")
        if self.merge not in ("mean", "beta"):
            raise BudgetError(f"merge must be 'mean' or 'beta', got {self.merge!r}")
        if self.inner_layer < 1 or not (0.0 < float(self.inner_ratio) <= 1.0):
            raise BudgetError(
                f"inner_layer must be >= 1 and inner_ratio in (0, 1], got {self.inner_layer}, "
                f"{self.inner_ratio}"
            )
        if not (0.0 <= float(self.inner_lambda) <= 1.0):
            raise BudgetError(f"inner_lambda must be in [0, 1], got {self.inner_lambda!r}")

    @classmethod
    def paper(cls, retention: float = 0.02) -> UnifiedConfig:
        """The paper's one setting (tau 0.7, rc 0.3, k_nn 7, mean merge) at ``retention``."""
        return cls(retention=float(retention))

    def total_budget(self, frames: int, n: int) -> int:
        """B = round_half_up(r L N): 125 / 314 / 627 / 941 at r = 2 / 5 / 10 / 15 %, 32 x 196.

        Raises:
            BudgetError: B < 1 (the retention keeps no token of the video).
        """
        b = round_half_up(float(self.retention) * frames * n)
        if b < 1:
            raise BudgetError(
                f"retention {self.retention} keeps no token of a {frames}x{n} video "
                f"(round(r*L*N) = 0); raise it to at least {0.5 / (frames * n):.2g}"
            )
        return min(b, frames * n)

    def cluster_budget(self, frames: int, n: int) -> int:
        """n_clu0 = round_half_up(rc B) (38 at B = 125)."""
        return round_half_up(float(self.cluster_ratio) * self.total_budget(frames, n))

    def selection_budget(self, frames: int, n: int) -> int:
        """B_sel = B - n_clu0 (87 at B = 125)."""
        return self.total_budget(frames, n) - self.cluster_budget(frames, n)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class UnifiedCompressed:
    """Result of :func:`reference`.

    Attributes:
        tokens: (B, D) kept and merged tokens in H's dtype, in index order.
        index: (B,) int64 flat indices l*N + p, sorted, unique (a merged token: its centre's).
        selected: (L*N,) bool, the retention pool P.
        pool: (|P|,) int64 flat indices of P in visiting (acceptance) order.
        centres: (n_clu,) int64 flat indices of the cluster centres, ascending.
        assignment: (L*N,) int64 flat index of the output token every input token went into
            (itself for P; its centre for a recycle token; -1 when dropped, n_clu = 0).
        clusters: the :class:`~infomerge.compress.dpc_knn.Clusters` of the recycle pool
            (positions into the recycle tokens in flat order), or None when n_clu = 0.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    selected: torch.Tensor
    pool: torch.Tensor
    centres: torch.Tensor
    assignment: torch.Tensor
    clusters: Clusters | None

    @property
    def kept(self) -> int:
        return int(self.index.numel())


def _check(H: torch.Tensor, A: torch.Tensor) -> None:
    if H.dim() != 3 or A.shape != H.shape[:2]:
        raise ValueError(
            f"unified: need H (L, N, D) and A (L, N) with the same L, N; got H {tuple(H.shape)}, "
            f"A {tuple(A.shape)}"
        )
    if not torch.isfinite(A).all():
        raise ValueError("unified: the saliency A has NaN or inf entries; check the vision output")


def visiting_order(s: torch.Tensor) -> torch.Tensor:
    """(M,) int64 flat indices by score descending, ties to the lower index (stable sort)."""
    return torch.sort(s, descending=True, stable=True).indices


def select_pool(hn: torch.Tensor, s: torch.Tensor, budget: int, tau: float) -> torch.Tensor:
    """The retention pool of Eq. 2: greedy visit by score, admit while no cosine >= tau.

    Args:
        hn: (M, D) float32 unit-norm tokens (Hn = H / ||H||).
        s: (M,) float32 contribution scores.
        budget: B_sel, the pool stops at this size.
        tau: the strict threshold: c joins iff ``max_{p in P} cos(c, p) < tau``.

    Returns:
        (|P|,) int64 flat indices in acceptance order; |P| < budget only when the order ran out.
    """
    m = torch.full((hn.shape[0],), float("-inf"), dtype=hn.dtype, device=hn.device)  # max cos to P
    pool: list[int] = []
    for c in visiting_order(s).tolist():
        if len(pool) >= budget:
            break
        if bool(m[c] < tau):
            pool.append(c)
            m = torch.maximum(m, hn @ hn[c])  # running form of the max
    return torch.tensor(pool, dtype=torch.int64, device=hn.device)


def merge_clusters(x: torch.Tensor, cl: Clusters, rule: MergeRule, centre_weight: float) -> torch.Tensor:
    """(C, D) one merged token per centre (``cl.centres`` order) from the recycle tokens ``x`` (M, D).

    "mean": mean of all members, centre included; "beta": ``w c + (1 - w) mean(others)``
    (the centre alone when it has no other member).
    """
    out = []
    for c in cl.centres.tolist():
        members = (cl.nearest == c).nonzero().squeeze(1)  # includes c
        if rule == "mean" or members.numel() == 1:
            out.append(x[members].mean(0) if rule == "mean" else x[c])
        else:
            others = x[members[members != c]].mean(0)
            out.append(centre_weight * x[c] + (1.0 - centre_weight) * others)
    return torch.stack(out) if out else x[:0]


@torch.no_grad()
def reference(
    H: torch.Tensor, A: torch.Tensor, g: torch.Tensor | None, config: UnifiedConfig
) -> UnifiedCompressed:
    """Compress one video with the Unified outer-LLM stage (paper Eqs. 1-4, sequential form).

    Args:
        H: (L, N, D) float video tokens (projected, pooled, newline excluded).
        A: (L, N) float saliency, the contribution score s (Eq. 1; MAP-probe attention).
        g: (L, G) global features, unused (the method has one global pool); may be None.
        config: :class:`UnifiedConfig`.

    Returns:
        :class:`UnifiedCompressed` with exactly ``B = config.total_budget(L, N)`` tokens.

    Raises:
        ValueError: shapes disagree or A is not finite. BudgetError: from the config.
    """
    _check(H, A)
    L, N, D = H.shape
    B = config.total_budget(L, N)
    b_sel = config.selection_budget(L, N)
    h = H.reshape(L * N, D).to(torch.float32)
    hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    pool = select_pool(hn, A.reshape(-1).to(torch.float32), b_sel, float(config.tau))  # step 2
    selected = torch.zeros(L * N, dtype=torch.bool, device=H.device)
    selected[pool] = True
    recycle = (~selected).nonzero().squeeze(1)  # (M,) flat order
    n_clu = B - int(pool.numel())  # the shortfall goes to the clusters
    assignment = torch.full((L * N,), -1, dtype=torch.int64, device=H.device)
    assignment[pool] = pool
    cl, centres, merged = None, recycle[:0], h[:0]
    if n_clu > 0:  # step 3: DPC-kNN on the recycle pool
        cl = dpc_knn(h[recycle], n_clu, config.knn)
        centres = recycle[cl.centres]
        assignment[recycle] = recycle[cl.nearest]
        merged = merge_clusters(h[recycle], cl, config.merge, config.centre_weight)
    index = torch.cat([pool, centres])  # step 4: refill, sort
    tokens = torch.cat([h[pool], merged])
    order = torch.argsort(index)
    return UnifiedCompressed(
        tokens=tokens[order].to(H.dtype),
        index=index[order],
        selected=selected,
        pool=pool,
        centres=centres,
        assignment=assignment,
        clusters=cl,
    )


def _fixed_budget(config: UnifiedConfig, frames: int, tokens_per_frame: int, hidden: int, **kwargs):
    from infomerge.compress.unified_static import FixedBudgetUnified

    return FixedBudgetUnified(config, frames, tokens_per_frame, hidden, **kwargs)


METHOD = Method(
    name="unified",
    summary="Unified (arXiv 2603.21957): global attention+redundancy pool, DPC-kNN recycle clusters",
    config=UnifiedConfig.paper,
    reference=reference,
    fixed_budget=_fixed_budget,
)

__all__ = [
    "METHOD",
    "UnifiedCompressed",
    "UnifiedConfig",
    "merge_clusters",
    "reference",
    "round_half_up",
    "select_pool",
    "visiting_order",
]
