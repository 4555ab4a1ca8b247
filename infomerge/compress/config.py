"""Hyperparameters and token budgets of InfoMerge and FastVID.

Source: InfoMerge (arXiv 2606.02161; summary in ``docs/algorithm.md``) ("Hyperparameters",
"Step 2: budget split", "Fixed-budget,
shape-static variant"); InfoMerge paper (arXiv 2606.02161) Table 7 and eqs. 18-21; FastVID
(arXiv 2503.11187) code for the "fastvid" rounding rule.

Both the paper-exact reference (:mod:`infomerge.compress.reference`) and the shape-static export
variant (:mod:`infomerge.compress.fixed_budget`) take their numbers from here, so a budget is computed in
exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

from infomerge.errors import BudgetError

BudgetRule = Literal["paper", "fastvid"]
StaticEstimator = Literal["tfd", "adjacent"]
DensityTies = Literal["index", "strict"]

# Paper Table 7: retention -> (tau, rho). Other ratios take the nearest row, the lower on a tie.
_TABLE7 = {0.05: (2.0, 0.05), 0.10: (1.2, 0.10), 0.15: (1.2, 0.09)}

_EPS = 1e-9  # guards floor/int against 17.999999 from binary floating point


def _floor(x: float) -> int:
    return int(math.floor(x + _EPS))


def _table7_row(retention: float) -> tuple[float, float]:
    best = min(_TABLE7, key=lambda r: (abs(r - retention), r))
    return _TABLE7[best]


@dataclass(frozen=True)
class InfoMergeConfig:
    """Every hyperparameter of InfoMerge (and of FastVID, its ablation).

    Attributes (symbols as in the spec):
        retention: r, the retention ratio in (0, 1]; kept tokens ~ r * L * N.
        tau: CABA sigmoid temperature (eq. 8).
        rho: fraction of N taken as static candidates per segment (TFD, step 3).
        lam: lambda, redundancy penalty strength (eq. 10).
        alpha, beta: uniqueness / richness weights of CABA (eq. 7).
        min_segments: c, the minimum number of segments (FastVID).
        seg_threshold: tau_seg, the adjacent-frame cosine threshold for a boundary (FastVID).
        context_share: d, share of the budget for merged context tokens (FastVID).
        anchor_interval: p, anchor-frame interval (FastVID).
        anchor_weight: mu, anchor weight in merging (FastVID ``DTM_beta``).
        knn: k_nn, neighbours for the density estimate (FastVID).
        budget_rule: "paper" (eqs. 18-21) or "fastvid" (per-frame integer rounding of FastVID's code).
        tfd: static candidates, redundancy penalty, static replacement and the hard mask (step 3, 5, 6).
        caba: content-aware budget allocation (step 4); off = budgets proportional to segment length.
        static_estimator: "tfd" (eqs. 1-2) or "adjacent" (paper Table 5: DyCoke-style first-order
            difference to the previous frames within a window of ``adjacent_window``).
        adjacent_window: window of the "adjacent" estimator.
        density_ties: who is "denser" in the DPC-kNN delta (step 6). "index" (InfoMerge preset, [D]):
            a total order, ``rho_j > rho_i`` or (equal and ``j < i``), so of k tied tokens exactly
            one counts as the densest. "strict" (FastVID preset): FastVID's code, ``rho_j > rho_i``
            only, so every token tied at the top density gets the frame's maximum distance and
            tied tokens never serve as each other's denser neighbour.

    Raises:
        BudgetError: from ``__post_init__`` when retention is outside (0, 1] or a share is invalid.
    """

    retention: float = 0.15
    tau: float = 1.2
    rho: float = 0.09
    lam: float = 12.0
    alpha: float = 0.9
    beta: float = 0.1
    min_segments: int = 8
    seg_threshold: float = 0.9
    context_share: float = 0.4
    anchor_interval: int = 4
    anchor_weight: float = 0.6
    knn: int = 4
    budget_rule: BudgetRule = "paper"
    tfd: bool = True
    caba: bool = True
    static_estimator: StaticEstimator = "tfd"
    adjacent_window: int = 4
    density_ties: DensityTies = "index"

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"retention ratio must be in (0, 1], got {self.retention!r}")
        if not (0.0 <= self.context_share < 1.0):
            raise BudgetError(f"context share d must be in [0, 1), got {self.context_share!r}")
        if self.budget_rule not in ("paper", "fastvid"):
            raise BudgetError(f"budget_rule must be 'paper' or 'fastvid', got {self.budget_rule!r}")
        if self.static_estimator not in ("tfd", "adjacent"):
            raise BudgetError(f"static_estimator must be 'tfd' or 'adjacent', got {self.static_estimator!r}")
        if self.density_ties not in ("index", "strict"):
            raise BudgetError(f"density_ties must be 'index' or 'strict', got {self.density_ties!r}")
        if self.anchor_interval < 1 or self.knn < 1 or self.min_segments < 1:
            raise BudgetError("anchor_interval, knn and min_segments must be >= 1")

    # ---- presets ------------------------------------------------------------------------------
    @classmethod
    def paper(cls, retention: float = 0.15, **overrides) -> InfoMergeConfig:
        """InfoMerge with the paper's Table 7 values for ``retention`` (nearest row, lower on a tie)."""
        tau, rho = _table7_row(float(retention))
        return replace(cls(retention=retention, tau=tau, rho=rho), **overrides)

    @classmethod
    def fastvid(cls, retention: float = 0.25, **overrides) -> InfoMergeConfig:
        """FastVID: InfoMerge with TFD and CABA off, FastVID's per-frame budget rounding and its
        strict "denser" rule (``density_ties="strict"``)."""
        base = cls.paper(retention)
        fields = dict(tfd=False, caba=False, budget_rule="fastvid", density_ties="strict")
        fields.update(overrides)
        return replace(base, **fields)

    def with_(self, **overrides) -> InfoMergeConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    # ---- budgets (spec step 2) ----------------------------------------------------------------
    def salient_per_frame(self, n: int) -> int:
        """T_s, salient tokens kept per frame (int).

        paper: floor((1 - d) * r * N)  (eq. 19);  fastvid: R = int(N r), T_s = R - int(R d).
        """
        r, d = float(self.retention), float(self.context_share)
        if self.budget_rule == "paper":
            return _floor((1.0 - d) * r * n)
        big_r = _floor(n * r)
        return big_r - _floor(big_r * d)

    def context_per_frame(self, n: int) -> int:
        """C, context tokens per frame under the "fastvid" rule: R - T_s. (Paper rule: not integer.)"""
        return _floor(n * float(self.retention)) - self.salient_per_frame(n)

    def context_budget(self, frames: int, n: int) -> float:
        """B_DTM, the video's context (merged-token) budget, a float under the paper rule.

        paper: d * r * L * N  (eq. 18, 20);  fastvid: C * L.
        """
        if self.budget_rule == "paper":
            return float(self.context_share) * float(self.retention) * frames * n
        return float(self.context_per_frame(n) * frames)

    def total_budget(self, frames: int, n: int) -> int:
        """B, the exact token count of the fixed-budget variant.

        paper: L * T_s + round(B_DTM)  (920 / 603 / 285 at r = 15 / 10 / 5 %, 32 x 196);
        fastvid: L * (T_s + C)          (928 / 608 / 288).

        Raises:
            BudgetError: when the budget is zero tokens or exceeds L * N.
        """
        if self.budget_rule == "paper":
            b = frames * self.salient_per_frame(n) + int(round(self.context_budget(frames, n)))
        else:
            b = frames * (self.salient_per_frame(n) + self.context_per_frame(n))
        if b < 1:
            raise BudgetError(
                f"retention {self.retention} keeps no token of a {frames}x{n} video; raise the retention"
            )
        if b > frames * n:
            raise BudgetError(f"budget {b} exceeds the {frames * n} tokens of the video")
        return b

    def static_candidates(self, n: int) -> int:
        """|S_k| = floor(rho * N), static candidate positions per multi-frame segment."""
        return _floor(float(self.rho) * n)
