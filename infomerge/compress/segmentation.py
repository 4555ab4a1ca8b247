"""Step 1: dynamic temporal segmentation (InfoMerge eqs. 22-23; FastVID DySeg).

``t_l = cos(g_l, g_{l+1})`` for ``l = 0 .. L-2``; a boundary at ``l`` splits between frames ``l``
and ``l + 1``. Boundaries = the ``c - 1`` smallest ``t_l`` (ties: lower ``l`` first, [D]) union
``{l : t_l < tau_seg}`` (strictly less; ``t_l == tau_seg`` is no boundary, as in FastVID's code).
With fewer than ``c`` frames every frame is its own segment ([D]).

:func:`adjacent_similarity` and :func:`boundary_mask` are shape-static for a given ``L`` (one sort
and comparisons; the Python branch depends on ``L`` and ``c`` only), so the export variant can
reuse them and turn the boolean boundary vector into a segment-membership mask with a cumsum.
"""

from __future__ import annotations

import torch

from infomerge.compress._ops import l2_normalize, stable_topk


def adjacent_similarity(g: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of consecutive global features.

    Args:
        g: (L, G) per-frame global features (any float dtype; the result keeps it).

    Returns:
        (L - 1,) ``cos(g_l, g_{l+1})``. A zero feature vector has cosine 0 with everything.
    """
    gn = l2_normalize(g)
    return (gn[:-1] * gn[1:]).sum(-1)


def boundary_mask(similarity: torch.Tensor, min_segments: int, threshold: float) -> torch.Tensor:
    """Boundaries from the adjacent similarities (spec step 1).

    Args:
        similarity: (L - 1,) adjacent cosines ``t_l``.
        min_segments: ``c``; the ``c - 1`` smallest ``t_l`` are always boundaries.
        threshold: ``tau_seg``; every ``t_l < tau_seg`` (strict) is a boundary.

    Returns:
        (L - 1,) bool, True where frames ``l`` and ``l + 1`` fall in different segments. With
        ``L < c`` every entry is True (each frame its own segment, [D]). Ties among the smallest
        similarities go to the lower ``l`` ([D], deterministic).
    """
    n = similarity.shape[0]
    frames = n + 1
    if frames < min_segments:
        return torch.ones(n, dtype=torch.bool, device=similarity.device)
    cut = similarity < threshold
    smallest = stable_topk(similarity, min_segments - 1, largest=False)
    cut = cut.clone()
    cut[smallest] = True
    return cut


def segments_from_boundaries(boundaries: torch.Tensor | list[bool]) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` frame ranges (end exclusive) from an (L - 1,) boundary vector."""
    flags = [bool(b) for b in (boundaries.tolist() if torch.is_tensor(boundaries) else boundaries)]
    segments, start = [], 0
    for l, cut in enumerate(flags):
        if cut:
            segments.append((start, l + 1))
            start = l + 1
    segments.append((start, len(flags) + 1))
    return segments


def segment_frames(g: torch.Tensor, min_segments: int, threshold: float) -> list[tuple[int, int]]:
    """Step 1 end to end: ``(L, G)`` global features -> list of ``(start, end)`` segments.

    Always at least ``min(c, L)`` segments; single-frame segments occur.
    """
    if g.dim() != 2 or g.shape[0] < 1:
        raise ValueError(f"segment_frames: g must be (L, G) with L >= 1, got {tuple(g.shape)}")
    return segments_from_boundaries(boundary_mask(adjacent_similarity(g), min_segments, threshold))
