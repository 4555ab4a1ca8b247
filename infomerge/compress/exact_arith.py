"""Arithmetic that rounds identically in torch and ONNX Runtime (and TensorRT's elementwise ops).

A MatMul or ReduceSum accumulates in the kernel's order and ``Exp`` / ``Sqrt`` differ between
backends in the last bit or two, so a fixed-budget graph that ranks by such a value can keep a
different token in another backend than in eager torch. The building blocks here use elementwise
Add / Mul / Floor / Where in a fixed order only: the same bits in every backend. Used by the
fixed-budget graphs of InfoMerge / FastVID (``fixed_budget.py``), DyCoke, HoliTom and FlashVID.
"""

from __future__ import annotations

import math

import torch

LN2_HI, LN2_LO = 0.693145751953125, 1.428606765330187e-06  # ln 2 = HI + LO, HI has 15 bits
EXP_MAX = 87.0  # exp(-87) is still a normal fp32


def exp_neg(m: torch.Tensor) -> torch.Tensor:
    """``exp(-m)`` for ``m >= 0`` (clamped to 87) from Floor, Mul, Add and Where only.

    ``torch.exp`` and ONNX Runtime's Exp disagree in the last bit or two for a few percent of fp32
    inputs; this form rounds identically in both. ``m = n ln2 + r`` (Cody-Waite, ``|r| <= ln2/2``),
    ``exp(-r)`` by a degree-8 Taylor polynomial (truncation < 3e-10), times ``2^-n`` built from
    exact powers of two. Within a few ulp of the true value.
    """
    m = m.clamp(0.0, EXP_MAX)
    n = torch.floor(m * (1.0 / math.log(2.0)) + 0.5)
    t = (n * LN2_HI - m) + n * LN2_LO  # -r
    p = torch.full_like(t, 1.0 / math.factorial(8))
    for i in range(7, -1, -1):
        p = p * t + 1.0 / math.factorial(i)
    ni = n.to(torch.int64)
    for b in range(7):  # n <= 126
        bit = torch.remainder(torch.div(ni, 2**b, rounding_mode="floor"), 2) > 0
        p = p * torch.where(bit, 2.0 ** -(2**b), 1.0)
    return p


SUM_CHUNK = 512  # columns per chunk of a row sum (bounds its (M, c, chunk) temporaries)


def tree_sum(t: torch.Tensor, width: int) -> torch.Tensor:
    """Sum over the last dim (static ``width``) by halving with elementwise adds: the same
    rounding in every backend."""
    while width > 1:
        h = width // 2
        s = t[..., :h] + t[..., h : 2 * h]
        t = torch.cat([s, t[..., 2 * h :]], -1) if width % 2 else s
        width -= h
    return t[..., 0]


def chunked_sum(t: torch.Tensor, width: int) -> torch.Tensor:
    """Sum over the last dim (static ``width``): :func:`tree_sum` over chunks of ``SUM_CHUNK``
    columns, the chunk sums added left to right. (..., width) -> (...), same dtype; the same bits
    in torch and ONNX Runtime."""
    total = None
    for c0 in range(0, width, SUM_CHUNK):
        s = tree_sum(t[..., c0 : c0 + SUM_CHUNK], min(SUM_CHUNK, width - c0))
        total = s if total is None else total + s
    return total


def pair_sq_dist(xf: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    """``||xf[rows] - xf[cols]||^2`` (P,) from elementwise ops only (Gather, Sub, Mul, Add).

    Args:
        xf: (M, D) float32 tokens. rows, cols: (P,) int64 token pairs. width: D (static).

    Unlike a MatMul or ReduceSum, whose accumulation order is the kernel's, the result is
    bit-identical in torch and ONNX Runtime, and free of the Gram form's cancellation.
    """
    total = None
    for c0 in range(0, width, SUM_CHUNK):
        part = xf[:, c0 : c0 + SUM_CHUNK]
        diff = part.index_select(0, rows) - part.index_select(0, cols)
        s = tree_sum(diff * diff, min(SUM_CHUNK, width - c0))
        total = s if total is None else total + s
    return total


ROW_BLOCK = 64  # rows per block of :func:`row_sq_dist` in eager mode (keeps its temporaries in cache)
TRACE_BLOCK = 1 << 20  # elements per temporary of :func:`row_sq_dist` in the traced graph (4 MiB)


def row_sq_dist(
    xf: torch.Tensor, cols: torch.Tensor, width: int, shape: tuple[int, int] | None = None
) -> torch.Tensor:
    """``||xf[i] - xf[cols[i, t]]||^2`` (M, c) from elementwise ops only (Gather, Sub, Mul, Add).

    Args:
        xf: (M, D) float32 tokens. cols: (M, c) int64 partner of each token. width: D (static).
        shape: ``(M, c)`` as Python ints (required when tracing: traced shapes are tensors).

    Unlike a MatMul or ReduceSum, whose accumulation order is the kernel's, the result is
    bit-identical in torch and ONNX Runtime, and free of the Gram form's cancellation. Row ``i``
    is broadcast, not gathered, and the columns are summed in chunks of ``SUM_CHUNK`` by
    :func:`tree_sum`: the same additions in the same order whatever the row count, so eager
    mode works through blocks of ``ROW_BLOCK`` rows (cache-sized temporaries) and computes each
    block in place (:func:`_row_block_sq_dist_in_place`); the graph, traced, is unrolled over
    blocks of about ``TRACE_BLOCK`` elements per temporary with functional ops (ONNX Runtime runs
    each op over the whole tensor: one block made (M, c, 512) temporaries of 422 MB at L = 128, each
    op a pass through memory; cache-sized blocks took ORT's L = 64 run from 1.01 to 0.91 s). Same
    additions in the same order: same bits.
    """
    m, c = shape if shape is not None else tuple(cols.shape)
    if torch.jit.is_tracing():  # unrolled blocks of about TRACE_BLOCK elements per temporary
        step = max(ROW_BLOCK, TRACE_BLOCK // (c * SUM_CHUNK))
        return torch.cat(
            [
                _row_block_sq_dist(xf[r : r + step], xf, cols[r : r + step], width, (min(step, m - r), c))
                for r in range(0, m, step)
            ]
        )
    chunks = [xf[:, c0 : c0 + SUM_CHUNK].contiguous() for c0 in range(0, width, SUM_CHUNK)]
    return torch.cat(
        [_row_block_sq_dist_in_place(chunks, cols[r : r + ROW_BLOCK], r) for r in range(0, m, ROW_BLOCK)]
    )


def _row_block_sq_dist(
    rows: torch.Tensor, xf: torch.Tensor, cols: torch.Tensor, width: int, shape: tuple[int, int] | None = None
) -> torch.Tensor:
    """``||rows[i] - xf[cols[i, t]]||^2`` (m, c) for a block of rows (see :func:`row_sq_dist`);
    ``shape``: ``(m, c)`` as Python ints (static reshapes in a traced graph)."""
    m, c = shape if shape is not None else tuple(cols.shape)
    flat = cols.reshape(-1)
    total = None
    for c0 in range(0, width, SUM_CHUNK):
        w = min(SUM_CHUNK, width - c0)
        part = xf[:, c0 : c0 + w]
        diff = rows[:, c0 : c0 + w].unsqueeze(1) - part.index_select(0, flat).reshape(m, c, w)  # (m, c, w)
        s = tree_sum(diff * diff, w)
        total = s if total is None else total + s
    return total


def _row_block_sq_dist_in_place(chunks: list[torch.Tensor], cols: torch.Tensor, start: int) -> torch.Tensor:
    """:func:`_row_block_sq_dist` for rows ``start .. start + m`` with every step written into the
    gathered block (eager only): the same subtractions, products and halving additions, without
    temporaries. ``chunks``: the token matrix's column chunks of ``SUM_CHUNK``, each contiguous."""
    m, c = cols.shape
    flat = cols.reshape(-1)
    total = None
    for part in chunks:
        w = part.shape[1]
        t = part.index_select(0, flat).reshape(m, c, w)
        torch.sub(part[start : start + m].unsqueeze(1), t, out=t)
        t.mul_(t)
        while w > 1:  # exact_arith.tree_sum, in place
            h = w // 2
            t[..., :h].add_(t[..., h : 2 * h])
            if w % 2:
                t[..., h].copy_(t[..., 2 * h])
            w -= h
        s = t[..., 0]
        total = s if total is None else total + s
    return total


POW2_RANGE = (-64, 64)  # exponents of the per-token scales of :func:`gram_sq_dist` (|x| < 2^64)


def pow2_exponent(m: torch.Tensor) -> torch.Tensor:
    """(...) int64 ``e`` with ``2^(e-1) <= m < 2^e`` for ``m >= 0``, from comparisons only.

    Clamped to ``POW2_RANGE``: ``m < 2^-64`` (zero included) gives -64; ``m >= 2^63`` gives 64.
    A count of ``m >= 2^b`` over a constant table of powers of two: no Log / Pow kernel, so the
    same integer in every backend.
    """
    table = _POW2_TABLES[0][1].to(device=m.device, dtype=m.dtype)[:-1]  # 2^lo .. 2^(hi - 1)
    return (m.unsqueeze(-1) >= table).to(torch.int64).sum(-1) + POW2_RANGE[0]


def _pow2_table(shift: int, sign: int) -> torch.Tensor:
    """(hi - lo + 1,) float64 ``2^(sign b + shift)`` for b in ``POW2_RANGE``."""
    lo, hi = POW2_RANGE
    return torch.tensor([2.0 ** (sign * b + shift) for b in range(lo, hi + 1)], dtype=torch.float64)


# built at import (constants of a traced graph; ``torch.tensor`` inside a traced function warns):
# [bits] = (2^(bits - e), 2^(e - bits)) for e in POW2_RANGE, bits = 0 .. 24 (see exact_bits)
_POW2_TABLES = {bits: (_pow2_table(bits, -1), _pow2_table(-bits, 1)) for bits in range(25)}


def exact_bits(width: int) -> int:
    """Bits per coordinate of :func:`gram_sq_dist` for ``width`` coordinates: integers of at most
    ``b`` bits have products of ``2b`` bits, and ``width`` of them sum below 2^53 (float64's exact
    integer range) when ``2b + ceil(log2 width) <= 53``; at most 24 (fp32's mantissa).
    896 -> 21, 3584 -> 20, 8192 -> 20."""
    return min(24, (53 - max(0, math.ceil(math.log2(width)))) // 2)


def gram_sq_dist(x: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """(..., M, M) float64 squared distances between the rows of ``x`` (..., M, D), the same bits
    in every backend and whatever the matmul's accumulation order.

    Each row ``x_i`` is rounded to integers on its own power-of-two grid,
    ``q_i = round(x_i 2^(b - e_i))`` with ``2^(e_i - 1) <= max_d |x_id| < 2^e_i`` and
    ``b = exact_bits(D)`` bits (21 at D = 896: a step of at most ``2^-20`` of the row's largest
    coordinate, ``2^-21`` of it in the rounding). Every product ``q_id q_jd`` and every partial sum
    of the Gram ``Q Q^T`` is then an integer below 2^53, so float64 GEMM (with or without FMA, in
    any order, blocked or not) returns the exact integer, as does ``sum_d q_id^2``. The distance
    ``a_i + a_j - 2 s_i s_j G_ij`` (``s_i = 2^(e_i - b)``, ``a_i = s_i^2 sum_d q_id^2``, each term
    exact) rounds only in its two elementwise float64 adds, in a fixed order: the same bits in
    torch and ONNX Runtime. Without the rounding to a grid, fp32 products summed in the kernel's
    order (or the float64 Gram of fp32 inputs, rounded back) differ between backends in the last
    bit (issue 20: the exact pair distances this replaces cost ~0.6 s of ORT's time at L = 128).

    Accuracy: the distances are those of the rounded rows, exact up to float64 rounding of the
    final adds (relative ~1e-16 of ``|a_i| + |a_j|``); against the fp32 rows the relative error of
    ``d_ij^2`` is about ``2^-b max|x| sqrt(D) / d_ij`` (a few fp32 ulp for near neighbours whose
    coordinates are ~1/30 of the row's largest). Rows should be centred first (translation
    invariance: the grid follows the largest coordinate). The diagonal is exactly 0, and equal
    rows have distance exactly 0. Rows with every ``|x| < 2^-64`` round to 0; ``|x| >= 2^64`` is
    outside the exact range (float features never get there).

    Args:
        x: (..., M, D) float32 (rows already centred).
        width: D as a Python int (required when tracing: traced shapes are tensors).

    Returns:
        (..., M, M) float64, ``>= 0``.
    """
    bits = exact_bits(int(x.shape[-1]) if width is None else width)
    up, down = _POW2_TABLES[bits]
    up = up.to(device=x.device, dtype=x.dtype)  # 2^(bits - e)
    down = down.to(device=x.device)  # 2^(e - bits), float64
    if torch.jit.is_tracing() or x.dim() != 3:
        return _gram_sq_dist(x, up, down)
    # eager: one (M, D) slice at a time (its float64 copy stays in cache; one 164 MB block at
    # L = 128 cost page faults); the same exact integers, so the same bits
    out = torch.empty(x.shape[0], x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(x.shape[0]):
        out[i] = _gram_sq_dist(x[i], up, down)
    return out


def _gram_sq_dist(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """:func:`gram_sq_dist` with its tables: ``up[e] = 2^(b - e)`` (x's dtype), ``down[e] = 2^(e - b)``
    (float64), both indexed by ``e - POW2_RANGE[0]``."""
    e = pow2_exponent(x.abs().amax(-1)) - POW2_RANGE[0]  # (..., M) index into the tables
    q = torch.round(x * up[e].unsqueeze(-1)).to(torch.float64)  # (..., M, D) integers, |q| <= 2^bits
    s = down[e]  # (..., M) 2^(e - bits)
    gram = q @ q.transpose(-1, -2)  # exact integers
    a = (q * q).sum(-1) * (s * s)  # exact
    d2 = (a.unsqueeze(-1) + a.unsqueeze(-2)) - 2.0 * gram * (s.unsqueeze(-1) * s.unsqueeze(-2))
    return d2.clamp_min(0.0)

__all__ = [
    "EXP_MAX",
    "ROW_BLOCK",
    "TRACE_BLOCK",
    "SUM_CHUNK",
    "POW2_RANGE",
    "chunked_sum",
    "exact_bits",
    "exp_neg",
    "gram_sq_dist",
    "pair_sq_dist",
    "pow2_exponent",
    "row_sq_dist",
    "tree_sum",
]
