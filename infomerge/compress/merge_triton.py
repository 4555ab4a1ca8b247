"""The merge step (spec step 6, :func:`infomerge.compress.merge.merge_to_anchors`) as ONE Triton kernel.

The same kernel serves three callers:

- :func:`merge_to_anchors_triton`: the PyTorch path on CUDA (or on CPU tensors under
  ``TRITON_INTERPRET=1``, which is how the tests prove it on a machine without a GPU);
- :mod:`infomerge.engines.plugin`: the TensorRT plugin, whose ahead-of-time implementation compiles
  this kernel to PTX (:func:`compile_merge_kernel`) and bakes it into the engine;
- nothing else: the standard-ONNX form in :mod:`infomerge.compress.merge` stays the reference.

Kernel design (one launch, no scratch memory, so the TensorRT AOT plugin can launch it as is):
grid = (B, cdiv(K, BLOCK_K), cdiv(D, BLOCK_D)). Program (b, kb, db) walks the M tokens of scope b
in blocks of BLOCK_M; for each block it computes the cosine of every token to every anchor over the
full D (``tl.dot``, fp32 accumulation), takes the nearest valid anchor exactly as
:func:`~infomerge.compress.merge.assign_to_anchors` does (same penalties, ties to the lower slot),
and accumulates the assigned tokens of its BLOCK_K slots x BLOCK_D channels with a one-hot
``tl.dot``. The assignment is recomputed by each (kb, db) program: it costs M*K*D multiply-adds per
program, which is what buys a single launch without a workspace.

Numerics: cosines and sums accumulate in fp32 (the PyTorch form sums in x's dtype), so fp16
results agree with the PyTorch form within fp16 rounding, and the assignment agrees wherever the
nearest anchor is not a near-tie at fp16 precision.
"""

from __future__ import annotations

import os

import torch

from infomerge.errors import BackendUnavailableError

# Same constant as infomerge.compress.merge (a cosine is in [-1, 1]).
INVALID_ANCHOR_PENALTY = 4.0

BLOCK_M = 32
BLOCK_D = 64
MAX_BLOCK_K = 64

try:  # triton is the optional extra [triton]; the module stays importable without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None
    tl = None


def triton_available() -> bool:
    """True when triton is importable."""
    return triton is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def block_k_for(k: int) -> int:
    """BLOCK_K for K anchor slots: the next power of two >= K, at least 16 (tl.dot), at most 64."""
    b = 16
    while b < k and b < MAX_BLOCK_K:
        b *= 2
    return b


if triton is not None:

    @triton.jit
    def merge_kernel(
        x_ptr,  # (B, M, D) fp32 / fp16, contiguous
        member_ptr,  # (B, M) fp32 {0, 1}
        anchor_ptr,  # (B, K) int32 / int64 positions in [0, M)
        valid_ptr,  # (B, K) fp32 {0, 1}
        M,
        K,
        D,
        out_ptr,  # (B, K, D) x's dtype
        MU: tl.constexpr,
        PENALTY: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # Argument order is TensorRT's AOT plugin convention: inputs, int32 scalars, outputs.
        b = tl.program_id(0)
        kb = tl.program_id(1)
        db = tl.program_id(2)
        x_b = x_ptr + b.to(tl.int64) * M * D
        offs_kout = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        kout_mask = offs_kout < K
        offs_dout = db * BLOCK_D + tl.arange(0, BLOCK_D)
        dout_mask = offs_dout < D

        acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
        count = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_mask = offs_m < M
            best = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
            best_k = tl.zeros((BLOCK_M,), dtype=tl.int32)
            is_anchor = tl.zeros((BLOCK_M,), dtype=tl.int32)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < K
                aidx = tl.load(anchor_ptr + b * K + offs_k, mask=k_mask, other=0).to(tl.int64)
                valid = tl.load(valid_ptr + b * K + offs_k, mask=k_mask, other=0.0).to(tl.float32)
                dots = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
                x_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
                a_sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    d_mask = offs_d < D
                    xt = tl.load(
                        x_b + offs_m[:, None] * D + offs_d[None, :],
                        mask=m_mask[:, None] & d_mask[None, :],
                        other=0.0,
                    )
                    at = tl.load(
                        x_b + aidx[:, None] * D + offs_d[None, :],
                        mask=k_mask[:, None] & d_mask[None, :],
                        other=0.0,
                    )
                    dots += tl.dot(xt, tl.trans(at), input_precision="ieee")
                    xf = xt.to(tl.float32)
                    af = at.to(tl.float32)
                    x_sq += tl.sum(xf * xf, axis=1)
                    a_sq += tl.sum(af * af, axis=1)
                x_norm = tl.maximum(tl.sqrt(x_sq), 1e-12)
                a_norm = tl.maximum(tl.sqrt(a_sq), 1e-12)
                sim = dots / x_norm[:, None] / a_norm[None, :]
                sim = sim - PENALTY * (1.0 - valid)[None, :]
                own = (offs_m[:, None] == aidx[None, :]) & (valid[None, :] != 0.0) & k_mask[None, :]
                sim = sim + 2.0 * PENALTY * own.to(tl.float32)
                sim = tl.where(k_mask[None, :], sim, float("-inf"))
                blk_best = tl.max(sim, axis=1)
                # lowest slot among the maxima (ONNX ArgMax / torch.argmax tie rule)
                cand = tl.where(sim == blk_best[:, None], offs_k[None, :], 2147483647)
                blk_k = tl.min(cand, axis=1)
                better = blk_best > best  # strict: an earlier block wins a tie
                best = tl.where(better, blk_best, best)
                best_k = tl.where(better, blk_k, best_k)
                is_anchor = tl.maximum(is_anchor, tl.max(own.to(tl.int32), axis=1))
            member = tl.load(member_ptr + b * M + offs_m, mask=m_mask, other=0.0).to(tl.float32)
            weight = member * (1 - is_anchor).to(tl.float32)  # assigned tokens, anchors excluded
            hit = (best_k[None, :] == offs_kout[:, None]) & m_mask[None, :]
            onehot = hit.to(tl.float32) * weight[None, :]  # (BLOCK_K, BLOCK_M)
            count += tl.sum(onehot, axis=1)
            xo = tl.load(
                x_b + offs_m[:, None] * D + offs_dout[None, :],
                mask=m_mask[:, None] & dout_mask[None, :],
                other=0.0,
            )
            acc += tl.dot(onehot.to(xo.dtype), xo, input_precision="ieee")

        aidx_out = tl.load(anchor_ptr + b * K + offs_kout, mask=kout_mask, other=0).to(tl.int64)
        anchor = tl.load(
            x_b + aidx_out[:, None] * D + offs_dout[None, :],
            mask=kout_mask[:, None] & dout_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        n1 = count + 1.0
        mean = (anchor + acc) / n1[:, None]
        w = tl.maximum(1.0 / n1, MU)[:, None]
        merged = w * anchor + (1.0 - w) * mean
        out_b = out_ptr + b.to(tl.int64) * K * D
        tl.store(
            out_b + offs_kout[:, None] * D + offs_dout[None, :],
            merged.to(out_ptr.dtype.element_ty),
            mask=kout_mask[:, None] & dout_mask[None, :],
        )


def launch_grid(batch: int, k: int, d: int) -> tuple[int, int, int]:
    """The kernel's grid for B scopes, K slots and D channels: (B, cdiv(K, BLOCK_K), cdiv(D, BLOCK_D))."""
    bk = block_k_for(k)
    return (batch, -(-k // bk), -(-d // BLOCK_D))


def merge_to_anchors_triton(
    x: torch.Tensor,
    member: torch.Tensor,
    anchor_index: torch.Tensor,
    anchor_valid: torch.Tensor,
    mu: float,
) -> torch.Tensor:
    """:func:`infomerge.compress.merge.merge_to_anchors`, computed by the Triton kernel.

    Args:
        x: (..., M, D) fp32 or fp16 tokens of the scope.
        member: (..., M) float or bool {0, 1}: tokens that take part in the merge.
        anchor_index: (..., K) int32 or int64 anchor positions in [0, M) (anchors must be members).
        anchor_valid: (..., K) float or bool {0, 1}: used anchor slots.
        mu: anchor weight (0.6 in the paper); compiled into the kernel as a constant.

    Returns:
        (..., K, D) merged tokens in x's dtype, on x's device.

    Raises:
        ValueError: when shapes disagree, or x is not fp32/fp16.
        BackendUnavailableError: when triton is not installed (``pip install 'infomerge[triton]'``),
            or x is on the CPU and ``TRITON_INTERPRET=1`` was not set before triton was imported.
    """
    if x.shape[:-1] != member.shape or anchor_index.shape != anchor_valid.shape:
        raise ValueError(
            f"merge_to_anchors_triton: x {tuple(x.shape)}, member {tuple(member.shape)}, "
            f"anchor_index {tuple(anchor_index.shape)}, anchor_valid {tuple(anchor_valid.shape)} disagree"
        )
    if x.shape[:-2] != anchor_index.shape[:-1]:
        raise ValueError(
            f"merge_to_anchors_triton: batch dims of x {tuple(x.shape)} and anchor_index "
            f"{tuple(anchor_index.shape)} disagree"
        )
    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"merge_to_anchors_triton: x must be fp32 or fp16, got {x.dtype}")
    if triton is None:
        raise BackendUnavailableError("the Triton merge kernel needs triton: pip install 'infomerge[triton]'")
    if x.device.type != "cuda" and not interpreting():
        raise BackendUnavailableError(
            f"the Triton merge kernel runs on CUDA tensors (got {x.device}); on a CPU set "
            "TRITON_INTERPRET=1 before importing triton, or use infomerge.compress.merge.merge_to_anchors"
        )
    *batch_shape, m, d = x.shape
    k = anchor_index.shape[-1]
    batch = 1
    for s in batch_shape:
        batch *= int(s)
    out = torch.empty((*batch_shape, k, d), dtype=x.dtype, device=x.device)
    if batch == 0 or k == 0 or d == 0:
        return out
    xs = x.reshape(batch, m, d).contiguous()
    members = member.reshape(batch, m).to(torch.float32).contiguous()
    anchors = anchor_index.reshape(batch, k).contiguous()
    valid = anchor_valid.reshape(batch, k).to(torch.float32).contiguous()
    merge_kernel[launch_grid(batch, k, d)](
        xs,
        members,
        anchors,
        valid,
        m,
        k,
        d,
        out,
        MU=float(mu),
        PENALTY=INVALID_ANCHOR_PENALTY,
        BLOCK_M=BLOCK_M,
        BLOCK_K=block_k_for(k),
        BLOCK_D=BLOCK_D,
    )
    return out


def kernel_signature(dtype: str, index_dtype: str = "i32") -> dict[str, str]:
    """Triton signature of :func:`merge_kernel` for ahead-of-time compilation.

    Args:
        dtype: "fp32" or "fp16", the dtype of x and of the output.
        index_dtype: "i32" or "i64", the dtype of anchor_index.
    """
    return {
        "x_ptr": f"*{dtype}",
        "member_ptr": "*fp32",
        "anchor_ptr": f"*{index_dtype}",
        "valid_ptr": "*fp32",
        "M": "i32",
        "K": "i32",
        "D": "i32",
        "out_ptr": f"*{dtype}",
        "MU": "constexpr",
        "PENALTY": "constexpr",
        "BLOCK_M": "constexpr",
        "BLOCK_K": "constexpr",
        "BLOCK_D": "constexpr",
    }


def compile_merge_kernel(
    dtype: str, mu: float, block_k: int, *, arch: int | None = None, index_dtype: str = "i32"
):
    """Compile :func:`merge_kernel` ahead of time (PTX), as the TensorRT AOT plugin needs it.

    Args:
        dtype: "fp32" or "fp16".
        mu: anchor weight, a compile-time constant.
        block_k: BLOCK_K (see :func:`block_k_for`).
        arch: CUDA compute capability as an int (86 for sm_86); None = the current GPU.
        index_dtype: "i32" or "i64".

    Returns:
        triton's compiled kernel: ``.asm["ptx"]``, ``.metadata.name``, ``.metadata.num_warps``,
        ``.metadata.shared``.

    Raises:
        BackendUnavailableError: when triton is missing.
    """
    if triton is None:
        raise BackendUnavailableError(
            "compiling the merge kernel needs triton: pip install 'infomerge[triton]'"
        )
    src = triton.compiler.ASTSource(
        fn=merge_kernel,
        signature=kernel_signature(dtype, index_dtype),
        constexprs={
            "MU": float(mu),
            "PENALTY": INVALID_ANCHOR_PENALTY,
            "BLOCK_M": BLOCK_M,
            "BLOCK_K": int(block_k),
            "BLOCK_D": BLOCK_D,
        },
    )
    if arch is None:
        return triton.compile(src)
    from triton.backends.compiler import GPUTarget

    return triton.compile(src, target=GPUTarget("cuda", int(arch), 32))
