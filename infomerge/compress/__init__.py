"""The compressors: the paper-exact InfoMerge reference (FastVID as its ablation), its step
functions, the budget config and the shared merge contract.

Public names (step functions are importable from their modules too):

- :data:`METHODS`, :func:`get_method`, :class:`Method` (:mod:`.methods`): the method registry
- :func:`reference`, :class:`Compressed`, :class:`CabaStats` (:mod:`.reference`)
- :class:`FixedBudgetCompressor` (:mod:`.fixed_budget`): the shape-static export form
- :class:`InfoMergeConfig` (:mod:`.config`)
- step 1 :mod:`.segmentation`, step 3 :mod:`.tfd`, step 4 :mod:`.caba`, step 5 :mod:`.selection`,
  step 6 :mod:`.density` and :mod:`.merge`.

This package imports torch, numpy and :mod:`infomerge.errors` only (the import-layer check in
``pyproject.toml`` enforces it).
"""

from __future__ import annotations

from infomerge.compress._ops import stable_topk, topk_mask
from infomerge.compress.caba import (
    allocate_budgets,
    caba_priority,
    caba_weights,
    segment_richness,
    segment_uniqueness,
    spectral_entropy,
    zscore,
)
from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.density import anchor_frames, density_scores, pairwise_distances, select_anchors
from infomerge.compress.fixed_budget import FixedBudgetCompressor
from infomerge.compress.merge import assign_to_anchors, merge_to_anchors
from infomerge.compress.methods import METHODS, Method, get_method, method_names
from infomerge.compress.reference import CabaStats, Compressed, reference
from infomerge.compress.segmentation import (
    adjacent_similarity,
    boundary_mask,
    segment_frames,
    segments_from_boundaries,
)
from infomerge.compress.selection import apply_static_replacement, penalized_scores, select_salient
from infomerge.compress.tfd import adjacent_scores, static_candidates, static_scores, tfd_scores

__all__ = [
    "METHODS",
    "FixedBudgetCompressor",
    "Method",
    "get_method",
    "method_names",
    "CabaStats",
    "Compressed",
    "InfoMergeConfig",
    "adjacent_scores",
    "adjacent_similarity",
    "allocate_budgets",
    "anchor_frames",
    "apply_static_replacement",
    "assign_to_anchors",
    "boundary_mask",
    "caba_priority",
    "caba_weights",
    "density_scores",
    "merge_to_anchors",
    "pairwise_distances",
    "penalized_scores",
    "reference",
    "segment_frames",
    "segment_richness",
    "segment_uniqueness",
    "segments_from_boundaries",
    "select_anchors",
    "select_salient",
    "spectral_entropy",
    "stable_topk",
    "static_candidates",
    "static_scores",
    "tfd_scores",
    "topk_mask",
    "zscore",
]

