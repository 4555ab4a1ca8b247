"""InfoMerge (arXiv 2606.02161) and its FastVID ablation as registered methods.

Both are one algorithm (:mod:`infomerge.compress.reference`, fixed-budget form
:mod:`infomerge.compress.fixed_budget`) under two configurations
(:class:`~infomerge.compress.config.InfoMergeConfig`): ``infomerge`` is the paper preset (TFD, CABA,
Table 7 hyperparameters for the retention ratio); ``fastvid`` turns TFD and CABA off and uses
FastVID's per-frame budget rounding.
"""

from __future__ import annotations

from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.fixed_budget import FixedBudgetCompressor
from infomerge.compress.methods import Method
from infomerge.compress.reference import reference

METHODS = (
    Method(
        name="infomerge",
        summary="InfoMerge: TFD static tokens, CABA budgets, density merging (paper preset)",
        config=InfoMergeConfig.paper,
        reference=reference,
        fixed_budget=FixedBudgetCompressor,
    ),
    Method(
        name="fastvid",
        summary="FastVID: InfoMerge without TFD and CABA, FastVID's budget rounding",
        config=InfoMergeConfig.fastvid,
        reference=reference,
        fixed_budget=FixedBudgetCompressor,
    ),
)
