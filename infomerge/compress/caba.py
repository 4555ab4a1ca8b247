"""Step 4: Content-Aware Budget Allocation, CABA (InfoMerge eqs. 3-9, 24-28).

Per segment ``k`` (``T_k`` frames, tokens ``X_k`` as a ``(T_k N) x D`` matrix, not mean-centred):

- uniqueness  ``u_k = 1 - cos(mean(X_k), mean(all video tokens))``                (eqs. 3-4)
- richness    ``e_k = -sum_j pi_j log pi_j / log R``, ``pi_j = s_j^2 / sum s^2`` over the singular
  values of ``X_k``, ``R = min(T_k N, D)``                                         (eqs. 5-6)
- ``m_k = alpha z(u_k) + beta z(e_k)``, z-scores over the K segments with the population std
  plus 1e-6 ([D])                                                                  (eq. 7)
- ``w_k = sigmoid(tau m_k) T_k``; ``B_k = max(1, round(B_DTM w_k / sum_j w_j))``   (eqs. 8-9)

CABA off (FastVID): ``w_k = T_k``, i.e. budgets proportional to segment length.

Decisions where the paper is silent ([D]):
- ``s_j^2`` are the eigenvalues of the SMALLER Gram matrix (``X X^T`` if ``T_k N <= D`` else
  ``X^T X``), from ``torch.linalg.eigvalsh`` in fp32 (float64 for float64 input); tiny negative
  eigenvalues from rounding are clamped to 0, and ``0 log 0 = 0``.
- ``R = 1`` (one token or ``D = 1``) or an all-zero segment: ``e_k = 0``.
- ``round`` is Python's ``round`` (half to even), on float64, as ``InfoMergeConfig.total_budget``.
- ``m_k``, ``w_k`` and the shares are computed in float64 from ``u_k``, ``e_k``.
"""

from __future__ import annotations

import math

import torch

from infomerge.compress._ops import l2_normalize


def segment_uniqueness(h: torch.Tensor, segments: list[tuple[int, int]]) -> torch.Tensor:
    """u_k = 1 - cos(mean of segment tokens, mean of all video tokens) (eqs. 3-4).

    Args:
        h: (L, N, D) ORIGINAL video tokens (computed in h's dtype).
        segments: ``[(start, end), ...]``.

    Returns:
        (K,) uniqueness per segment, h's dtype.
    """
    d = h.shape[-1]
    video_mean = l2_normalize(h.reshape(-1, d).mean(0))
    seg_means = torch.stack([h[s:e].reshape(-1, d).mean(0) for s, e in segments])
    return 1.0 - (l2_normalize(seg_means) * video_mean).sum(-1)


def spectral_entropy(x: torch.Tensor) -> torch.Tensor:
    """Normalised spectral entropy of a token matrix (eqs. 5-6).

    Args:
        x: (M, D) tokens (rows), not mean-centred. Computed in x's dtype: pass fp32 (or float64).

    Returns:
        0-dim tensor ``-sum pi log pi / log min(M, D)`` in [0, 1]; 0 when ``min(M, D) = 1`` or x = 0.
    """
    m, d = x.shape
    r = min(m, d)
    if r < 2:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    gram = x @ x.T if m <= d else x.T @ x  # the smaller Gram matrix: min(M, D) square
    lam = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    total = lam.sum()
    if not bool(total > 0):
        return torch.zeros((), dtype=x.dtype, device=x.device)
    pi = lam / total
    plogp = torch.where(
        pi > 0, pi * torch.log(pi.clamp_min(torch.finfo(pi.dtype).tiny)), torch.zeros_like(pi)
    )
    return -plogp.sum() / math.log(r)


def segment_richness(h: torch.Tensor, segments: list[tuple[int, int]]) -> torch.Tensor:
    """e_k for every segment: :func:`spectral_entropy` of ``h[start:end]`` as a (T N) x D matrix."""
    d = h.shape[-1]
    return torch.stack([spectral_entropy(h[s:e].reshape(-1, d)) for s, e in segments])


def zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / (population std + eps)`` over the last dim ([D]); one value gives 0."""
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, correction=0, keepdim=True) if x.shape[-1] > 1 else torch.zeros_like(mean)
    return (x - mean) / (std + eps)


def caba_priority(
    uniqueness: torch.Tensor, richness: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """``m_k = alpha z(u_k) + beta z(e_k)`` (eq. 7), in the inputs' dtype."""
    return alpha * zscore(uniqueness) + beta * zscore(richness)


def caba_weights(
    uniqueness: torch.Tensor,
    richness: torch.Tensor,
    lengths: torch.Tensor | list[int],
    tau: float,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """``w_k = sigmoid(tau m_k) T_k`` with ``m_k`` from :func:`caba_priority` (eqs. 7-8)."""
    t = torch.as_tensor(lengths, dtype=uniqueness.dtype, device=uniqueness.device)
    return torch.sigmoid(tau * caba_priority(uniqueness, richness, alpha, beta)) * t


def allocate_budgets(weights: torch.Tensor | list[float], context_budget: float) -> list[int]:
    """``B_k = max(1, round(B_DTM w_k / sum_j w_j))`` (eq. 9) as Python ints.

    Used for CABA (``weights`` from :func:`caba_weights`) and, with ``weights = T_k``, for CABA
    off (budgets proportional to segment length: FastVID gives each segment ``C T_k``).
    """
    w = [float(v) for v in (weights.tolist() if torch.is_tensor(weights) else weights)]
    total = math.fsum(w)
    if total <= 0:
        raise ValueError(f"allocate_budgets: weights must have a positive sum, got {w}")
    return [max(1, int(round(float(context_budget) * wk / total))) for wk in w]
