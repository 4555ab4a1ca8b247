"""Step 5: attention-based selection with redundancy penalty and static replacement
(InfoMerge eqs. 10-11, 29-30).

Per segment, frames in temporal order, history ``P = {}`` reset at each segment start:

1. ``s = A_l``; for ``p`` in ``S_k`` and in ``P``: ``s_p -= lambda * std(A_l)`` (population std, [D]);
2. salient set ``T_l`` = top-``T_s`` positions of ``s`` (ties: lower position, [D]);
3. ``P = P | (T_l & S_k)``;
4. for ``p`` in ``T_l & S_k``: ``H[r, p] = m_p`` for ``r = l .. end of segment``, ``m_p`` the mean of
   position ``p`` over the segment's ORIGINAL tokens ([D]). The token count is unchanged; the
   replacement is applied before step 6 ([D]).

Because ``P`` only grows, "replaced at frame r" is exactly "``p`` in ``P`` after frame r", which
:func:`select_salient` returns as the ``replaced`` mask. With an all-False static mask (TFD off)
this is FastVID's plain per-frame attention top-k.
"""

from __future__ import annotations

import torch

from infomerge.compress._ops import topk_mask


def penalized_scores(
    a: torch.Tensor, history: torch.Tensor, static: torch.Tensor, lam: float
) -> torch.Tensor:
    """Step 5.1 for one frame: ``A_l`` minus ``lam * std(A_l)`` on ``S_k & P`` (population std).

    Args:
        a: (N,) attention of frame l (or (..., N) batched).
        history: (N,) bool ``P``, static positions already selected in this segment.
        static: (N,) bool ``S_k``.
        lam: lambda, the penalty strength.
    """
    std = a.std(-1, correction=0, keepdim=True)
    return a - lam * std * (history & static).to(a.dtype)


def select_salient(
    a: torch.Tensor, static: torch.Tensor, count: int, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 5.1-5.3 for one segment.

    Args:
        a: (T, N) attention of the segment's frames, temporal order.
        static: (N,) bool static candidates ``S_k`` (all False: no penalty, no replacement).
        count: ``T_s``, salient tokens per frame.
        lam: lambda.

    Returns:
        ``(salient, replaced)``, both (T, N) bool: ``salient[l]`` = ``T_l``; ``replaced[r, p]`` = True
        where step 5.4 overwrites ``H[r, p]`` with the static mean ``m_p``.
    """
    t, n = a.shape
    salient = torch.zeros(t, n, dtype=torch.bool, device=a.device)
    replaced = torch.zeros(t, n, dtype=torch.bool, device=a.device)
    history = torch.zeros(n, dtype=torch.bool, device=a.device)
    for l in range(t):
        s = penalized_scores(a[l], history, static, lam)
        salient[l] = topk_mask(s, count)
        history = history | (salient[l] & static)
        replaced[l] = history
    return salient, replaced


def apply_static_replacement(h: torch.Tensor, replaced: torch.Tensor) -> torch.Tensor:
    """Step 5.4: a copy of the segment ``h`` (T, N, D) with ``h[r, p] = mean_r' h[r', p]`` where
    ``replaced[r, p]``; the means are over the ORIGINAL tokens of the segment."""
    if not bool(replaced.any()):
        return h
    mean = h.mean(0, keepdim=True).expand_as(h)
    return torch.where(replaced.unsqueeze(-1), mean, h)
