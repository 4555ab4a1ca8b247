"""DPC-kNN clustering of a token set: densities, distances to denser tokens, centres, assignment.

Density-peak clustering with a k-nearest-neighbour density, as the Unified compressor (Du et al.,
arXiv 2603.21957, Eqs. 3-4) and HoliTom (arXiv 2505.21334) cluster their recycle pool::

    d_ij    = ||x_i - x_j||_2 / sqrt(D)                       (d_ii = 0)
    rho_i   = exp(-mean of the k smallest d_ij^2, j = i included)          Eq. 3
    delta_i = min d_ij over the tokens j denser than i                     Eq. 4
              (the densest token: max_j d_ij of its own row; HoliTom: max_ij d_ij)
    gamma_i = rho_i * delta_i;  centres = the n largest gamma
    every token joins its nearest centre by d; a centre joins itself

Deterministic, no noise (HoliTom adds 1e-6 noise to rho instead): "j denser than i" means
``rho_j > rho_i`` or (``rho_j == rho_i`` and ``j < i``); equal gammas and equally near centres go
to the lower position. Details and the choices made where the paper is silent:
``docs/compression.md``, section "Unified".

This is the eager reference form (exact distances, data-dependent sizes); the shape-static form
lives in :mod:`infomerge.compress.unified_static`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from infomerge.compress._ops import stable_topk
from infomerge.compress.density import pairwise_distances


@dataclass
class Clusters:
    """DPC-kNN result on M tokens (positions 0..M-1 of the input).

    Attributes:
        rho: (M,) float32 density (Eq. 3).
        delta: (M,) float32 distance to the nearest denser token (Eq. 4).
        gamma: (M,) float32 ``rho * delta``.
        centres: (C,) int64 centre positions, ascending.
        nearest: (M,) int64 the centre position each token joins (a centre: itself).
    """

    rho: torch.Tensor
    delta: torch.Tensor
    gamma: torch.Tensor
    centres: torch.Tensor
    nearest: torch.Tensor


def scaled_distances(x: torch.Tensor) -> torch.Tensor:
    """(M, M) float32 ``d_ij = ||x_i - x_j|| / sqrt(D)`` of the rows of ``x`` (M, D), exact diagonal 0.

    Accumulated in float64 (:func:`infomerge.compress.density.pairwise_distances`), returned in fp32.
    """
    d = pairwise_distances(x.to(torch.float32), exact=True)
    return d / math.sqrt(x.shape[-1])


def density(d: torch.Tensor, knn: int) -> torch.Tensor:
    """(M,) ``rho_i = exp(-mean of the k smallest d_ij^2)``, ``k = min(knn, M)``, self included (Eq. 3).

    Args:
        d: (M, M) float32 scaled distances, zero diagonal.
        knn: k_nn (7 in HoliTom).
    """
    k = min(int(knn), d.shape[-1])
    nearest = torch.topk(d.square(), k, dim=-1, largest=False).values  # (M, k)
    return torch.exp(-nearest.mean(-1))


def denser_distance(d: torch.Tensor, rho: torch.Tensor, densest: str = "row") -> torch.Tensor:
    """(M,) ``delta_i``: min distance to a denser token; the densest token: its row's max (Eq. 4),
    or with ``densest="global"`` the largest entry of the whole matrix (HoliTom's
    ``cluster_dpc_knn``).

    "j denser than i": ``rho_j > rho_i`` or (equal and ``j < i``) [D, deterministic].
    """
    m = d.shape[-1]
    idx = torch.arange(m, device=d.device)
    ri, rj = rho.unsqueeze(1), rho.unsqueeze(0)
    denser = (rj > ri) | ((rj == ri) & (idx.unsqueeze(0) < idx.unsqueeze(1)))  # [i, j]: j denser
    to_denser = torch.where(denser, d, torch.full_like(d, float("inf"))).amin(-1)
    if densest not in ("row", "global"):
        raise ValueError(f"densest must be 'row' or 'global', got {densest!r}")
    far = d.amax(-1) if densest == "row" else d.amax().expand(m)
    return torch.where(denser.any(-1), to_denser, far)


def dpc_knn(x: torch.Tensor, n_centres: int, knn: int = 7, densest: str = "row") -> Clusters:
    """Cluster the rows of ``x`` into ``min(n_centres, M)`` DPC-kNN clusters.

    Args:
        x: (M, D) float tokens, M >= 1 (computed in fp32; distances accumulated in fp64).
        n_centres: number of centres, >= 0 (0: no centre, ``nearest`` is all -1).
        knn: neighbours of the density (self included).
        densest: ``delta`` of the densest token: ``"row"`` (its row's max; Unified) or
            ``"global"`` (the matrix max; HoliTom).

    Returns:
        :class:`Clusters`.

    Raises:
        ValueError: ``x`` is not 2-D or empty, ``n_centres < 0`` / ``knn < 1``, or an unknown
            ``densest``.
    """
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"dpc_knn: x must be (M >= 1, D), got {tuple(x.shape)}")
    if n_centres < 0 or knn < 1:
        raise ValueError(f"dpc_knn: need n_centres >= 0 and knn >= 1, got {n_centres}, {knn}")
    d = scaled_distances(x)  # (M, M)
    rho = density(d, knn)
    delta = denser_distance(d, rho, densest)
    gamma = rho * delta
    centres = stable_topk(gamma, n_centres).sort().values  # (C,) ascending
    if centres.numel() == 0:
        return Clusters(
            rho, delta, gamma, centres, torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
        )
    nearest = centres[d.index_select(1, centres).argmin(-1)]  # first (lowest) centre on ties
    nearest[centres] = centres  # a centre joins itself
    return Clusters(rho, delta, gamma, centres, nearest)


__all__ = ["Clusters", "dpc_knn", "density", "denser_distance", "scaled_distances"]
