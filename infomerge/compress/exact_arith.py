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


SQRT_MIN = 2.0**-120  # sqrt_exact's input floor (a normal fp32; 4^-63 < it < 1)
SQRT_MAX = 2.0**124  # ... and ceiling (below 4^63)


def sqrt_exact(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for fp32 ``x`` (clamped to [2^-120, 2^124]) from Mul, Div, Add and Where only.

    ONNX Runtime's Sqrt is not correctly rounded (it differs from ``torch.sqrt`` in the last bit for
    about 0.6 % of fp32 inputs, measured on 10^7 values in [0, 4)); Div, Mul and Add are IEEE in
    both. ``x = m 4^e`` with ``m`` in [1, 4) found by comparisons with exact powers of 4 (greedy
    over the bits of ``e``, as :func:`exp_neg` builds ``2^-n``), then Newton's iteration
    ``y <- (y + m / y) / 2`` from the linear seed ``0.35 m + 0.7`` (within 5 % on [1, 4): four
    steps reach fp32's last bits, a fifth settles them), times the exact ``2^e``. Within 1 ulp of
    the true value; the same bits in torch and ONNX Runtime.
    """
    m = x.clamp(SQRT_MIN, SQRT_MAX)
    s = torch.ones_like(m)
    for b in (32, 16, 8, 4, 2, 1):  # down: after step b, m < 4^b
        hi = m >= 4.0**b
        m = torch.where(hi, m * 4.0**-b, m)
        s = torch.where(hi, s * 2.0**b, s)
    for b in (32, 16, 8, 4, 2, 1):  # up: the largest e with m 4^e < 4, so m 4^e >= 1
        lo = m * 4.0**b < 4.0
        m = torch.where(lo, m * 4.0**b, m)
        s = torch.where(lo, s * 2.0**-b, s)
    y = m * 0.35 + 0.7
    for _ in range(5):
        y = (y + m / y) * 0.5
    return y * s


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


def sq_dist_to(
    rows: torch.Tensor, xf: torch.Tensor, cols: torch.Tensor, width: int, shape: tuple[int, int]
) -> torch.Tensor:
    """``||rows[i] - xf[cols[i, t]]||^2`` (m, c) from elementwise ops only: :func:`row_sq_dist` for
    rows that are not ``xf``'s own (gathered ones, say).

    Args:
        rows: (m, D) float32. xf: (M, D) float32. cols: (m, c) int64 rows of ``xf``. width: D.
        shape: ``(m, c)`` as Python ints.

    Blocks of about ``TRACE_BLOCK`` elements per temporary, eager and traced alike; the same
    additions in the same order, so the same bits in torch and ONNX Runtime.
    """
    m, c = shape
    step = max(1, TRACE_BLOCK // (c * SUM_CHUNK))
    return torch.cat(
        [
            _row_block_sq_dist(rows[r : r + step], xf, cols[r : r + step], width, (min(step, m - r), c))
            for r in range(0, m, step)
        ]
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


__all__ = [
    "EXP_MAX",
    "SQRT_MAX",
    "SQRT_MIN",
    "ROW_BLOCK",
    "TRACE_BLOCK",
    "SUM_CHUNK",
    "chunked_sum",
    "exp_neg",
    "pair_sq_dist",
    "row_sq_dist",
    "sq_dist_to",
    "sqrt_exact",
    "tree_sum",
]
