"""CABA richness (spec step 4, InfoMerge eqs. 5-6) inside a static graph, and exactly on the host.

The paper's richness is the normalised spectral (Shannon) entropy of a segment's token matrix
``X_k`` ((T_k N) x D, not mean-centred): ``e_k = -sum_j pi_j log pi_j / log R_k`` with
``pi_j = s_j^2 / sum s^2`` and ``R_k = min(T_k N, D)``. ONNX has no SVD or eigen-decomposition, so
the export graph cannot compute it as written. Two routes are offered:

``"estimate"`` (default, matmul-only, in the graph)
    The collision (Renyi-2) spectral entropy ``-log(sum_j pi_j^2) / log R_k``. It needs no
    eigenvalues: ``sum_j pi_j^2 = ||X_k^T X_k||_F^2 / tr(X_k^T X_k)^2``. The D x D Gram of a segment
    is the sum of its frames' Grams, so all segments come from one batched per-frame Gram and a
    segment-membership matmul. For ``D > sketch_dim`` the tokens are first projected on a fixed
    random orthonormal basis of ``sketch_dim`` columns (seed 0, a graph constant); for
    ``D <= sketch_dim`` the projection is the identity and the estimate is the exact Renyi-2
    entropy. CABA only uses z-scores of ``e_k`` across the segments of one video, so an estimate
    that orders and spaces segments like the Shannon entropy gives the same budgets;
    ``docs/compression.md`` has the measured budget differences.

``"input"`` (exact, computed outside the graph)
    :func:`segment_richness_exact` computes the paper's entropy on the host (the reference's
    :func:`infomerge.compress.caba.spectral_entropy`, Gram eigenvalues in fp32) for the segments the
    graph will form (same segmentation code), and the graph takes it as an extra input
    ``richness`` (L,) float32: entry ``k`` belongs to the k-th segment in temporal order, entries
    past the last segment are ignored.
"""

from __future__ import annotations

import torch

RICHNESS_MODES = ("estimate", "input")
SKETCH_DIM = 256  # columns of the fixed random projection used when D > SKETCH_DIM


def sketch_basis(hidden: int, sketch_dim: int = SKETCH_DIM, seed: int = 0) -> torch.Tensor | None:
    """(hidden, sketch_dim) float32 random matrix with orthonormal columns, or None if hidden <= sketch_dim.

    Deterministic (CPU generator seeded with ``seed``) so eager and exported graphs agree.
    """
    if hidden <= sketch_dim:
        return None
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(hidden, sketch_dim, generator=gen, dtype=torch.float64))
    return q.to(torch.float32).contiguous()


def renyi2_richness(
    h: torch.Tensor, seg_onehot: torch.Tensor, seg_len: torch.Tensor, basis: torch.Tensor | None
) -> torch.Tensor:
    """Matmul-only richness estimate per segment slot (shape-static).

    Args:
        h: (L, N, D) float32 ORIGINAL tokens.
        seg_onehot: (L, L) float32, ``[k, l] = 1`` if frame l is in segment slot k.
        seg_len: (L,) float32 frames per segment slot (0 for unused slots).
        basis: (D, m) projection from :func:`sketch_basis`, or None for none.

    Returns:
        (L,) float32 ``-log(sum pi^2) / log(min(T_k N, D))``; 0 for unused slots or R_k < 2.
    """
    frames, n, d = h.shape
    y = h if basis is None else h @ basis  # (L, N, m)
    m = y.shape[-1]
    frame_gram = (y.transpose(1, 2) @ y).reshape(frames, m * m)  # (L, m*m)
    gram = (seg_onehot @ frame_gram).reshape(frames, m, m)  # (K, m, m), segment Grams
    ar = torch.arange(m, device=h.device)
    eye = (ar.unsqueeze(0) == ar.unsqueeze(1)).to(h.dtype)
    trace = (gram * eye).sum((-1, -2))
    frob2 = (gram * gram).sum((-1, -2))
    purity = frob2 / (trace * trace).clamp_min(1e-30)  # sum pi^2 in (0, 1]
    rank = torch.clamp(seg_len * n, max=d)
    log_rank = torch.log(rank.clamp_min(1.0))
    ent = -torch.log(purity.clamp_min(1e-30)) / log_rank.clamp_min(1e-6)
    usable = (rank > 1.5) & (trace > 0)
    return torch.where(usable, ent, 0)


def segment_richness_exact(h: torch.Tensor, segments: list[tuple[int, int]], slots: int) -> torch.Tensor:
    """Paper-exact richness for the ``"input"`` mode, laid out per segment slot.

    Args:
        h: (L, N, D) ORIGINAL tokens (any float dtype; computed in fp32, float64 kept).
        segments: ``[(start, end), ...]`` in temporal order (e.g. from
            :meth:`infomerge.compress.fixed_budget.FixedBudgetCompressor.decisions` or
            :func:`infomerge.compress.segmentation.segment_frames`).
        slots: length of the result (the graph's frame count L).

    Returns:
        (slots,) float32: entry k = e_k of the k-th segment, zeros after the last one.
    """
    from infomerge.compress.caba import spectral_entropy

    x = h.to(torch.float64 if h.dtype == torch.float64 else torch.float32)
    d = x.shape[-1]
    out = torch.zeros(slots, dtype=torch.float32)
    for k, (s, e) in enumerate(segments):
        out[k] = float(spectral_entropy(x[s:e].reshape(-1, d)))
    return out
