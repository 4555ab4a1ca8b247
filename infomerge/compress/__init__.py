"""The compressors: the paper-exact InfoMerge reference (FastVID as its ablation), its step
functions, the budget config and the shared merge contract.

Public names (step functions are importable from their modules too):

- :func:`reference`, :class:`Compressed`, :class:`CabaStats` (:mod:`.infomerge`)
- :class:`InfoMergeConfig` (:mod:`.config`)
- step 1 :mod:`.segmentation`, step 3 :mod:`.tfd`, step 4 :mod:`.caba`, step 5 :mod:`.selection`,
  step 6 :mod:`.density` and :mod:`.merge`.

:mod:`.infomerge` is imported lazily so that ``python -m infomerge.compress.infomerge --time``
runs without a double-import warning.
"""

from __future__ import annotations

import importlib

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
from infomerge.compress.merge import assign_to_anchors, merge_to_anchors
from infomerge.compress.segmentation import (
    adjacent_similarity,
    boundary_mask,
    segment_frames,
    segments_from_boundaries,
)
from infomerge.compress.selection import apply_static_replacement, penalized_scores, select_salient
from infomerge.compress.tfd import adjacent_scores, static_candidates, static_scores, tfd_scores

_LAZY = {
    "reference": "infomerge",
    "Compressed": "infomerge",
    "CabaStats": "infomerge",
    "synthetic_inputs": "infomerge",
}

__all__ = [
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
    "synthetic_inputs",
    "tfd_scores",
    "topk_mask",
    "zscore",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
