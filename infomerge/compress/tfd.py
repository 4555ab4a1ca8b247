"""Step 3: static candidates per segment: Temporal Fingerprint Difference (InfoMerge eqs. 1-2)
and the paper's Table 5 alternative, the DyCoke-style "adjacent difference".

TFD, for a segment of ``T`` frames and each token position ``p``, on L2-normalised tokens::

    F_p[l, l'] = cos(H_{l,p}, H_{l',p})                                      (T x T, eq. 1)
    TFD(p)     = sum_{l=1..T-1} sum_{l'} |F_p[l+1, l'] - F_p[l, l']| / ((T-1) T)   (eq. 2)

Small TFD = temporally redundant. For ``T = 2`` TFD equals ``1 - cos`` of the two tokens.

Adjacent difference ([D] where the paper is silent): the segment is cut into windows of
``window`` consecutive frames starting at its first frame (the last window may be shorter);
``ADJ(p)`` = mean over every adjacent pair ``(l, l+1)`` inside one window of
``1 - cos(H_{l,p}, H_{l+1,p})``. First-order (adjacent frames only), as DyCoke's temporal merging
compares neighbouring frames inside windows of 4. For ``T = 2`` it equals TFD.

All functions are vectorised and shape-static for a given ``T`` (export-friendly).
"""

from __future__ import annotations

import torch

from infomerge.compress._ops import l2_normalize, topk_mask


def tfd_scores(h: torch.Tensor) -> torch.Tensor:
    """TFD of every token position of one segment (eqs. 1-2).

    Args:
        h: (T, N, D) the segment's ORIGINAL tokens (float; computed in h's dtype).

    Returns:
        (N,) TFD in h's dtype. ``T = 1`` returns zeros (the caller takes no static candidate from
        a single-frame segment, [D]).
    """
    t, n, _ = h.shape
    if t < 2:
        return torch.zeros(n, dtype=h.dtype, device=h.device)
    hn = l2_normalize(h).transpose(0, 1)  # (N, T, D)
    fm = hn @ hn.transpose(1, 2)  # (N, T, T): fm[p, l, l'] = F_p[l, l']
    return (fm[:, 1:] - fm[:, :-1]).abs().sum((1, 2)) / ((t - 1) * t)


def adjacent_scores(h: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Adjacent-difference static score of every position (paper Table 5 alternative to TFD).

    Args:
        h: (T, N, D) the segment's original tokens.
        window: frames per window (4, DyCoke); pairs that straddle two windows are not compared.

    Returns:
        (N,) mean ``1 - cos`` of adjacent same-window frames; zeros for ``T = 1``.
    """
    t, n, _ = h.shape
    if t < 2:
        return torch.zeros(n, dtype=h.dtype, device=h.device)
    if window < 2:
        raise ValueError(f"adjacent_scores: window must be >= 2, got {window}")
    hn = l2_normalize(h)
    dist = 1.0 - (hn[:-1] * hn[1:]).sum(-1)  # (T-1, N): pair (l, l+1)
    keep = torch.tensor([(l % window) != window - 1 for l in range(t - 1)], device=h.device)
    return dist[keep].mean(0)


def static_scores(h: torch.Tensor, estimator: str = "tfd", window: int = 4) -> torch.Tensor:
    """Dispatch on ``InfoMergeConfig.static_estimator``: ``"tfd"`` or ``"adjacent"``."""
    if estimator == "tfd":
        return tfd_scores(h)
    if estimator == "adjacent":
        return adjacent_scores(h, window)
    raise ValueError(f"unknown static estimator {estimator!r}; use 'tfd' or 'adjacent'")


def static_candidates(scores: torch.Tensor, count: int) -> torch.Tensor:
    """S_k: bool mask (N,) of the ``count`` positions with the SMALLEST score (ties: lower index).

    ``count`` is ``floor(rho * N)`` (``InfoMergeConfig.static_candidates``); pass 0 for a
    single-frame segment or with TFD off.
    """
    return topk_mask(scores, count, largest=False)
