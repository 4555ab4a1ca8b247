"""The merge step as a TensorRT plugin op: ``infomerge::MergeToAnchors``.

Three pieces, one computation (:func:`infomerge.compress.merge.merge_to_anchors`):

1. :data:`plugin_merge` / :class:`PluginMerge`: a drop-in ``merge_impl`` for the shape-static
   compressor. Eager, it runs the Triton kernel on CUDA tensors and the PyTorch form elsewhere;
   traced by ``torch.onnx.export(..., dynamo=False)`` it emits ONE custom node
   ``MergeToAnchors`` (domain ``infomerge``) with the attributes the TensorRT ONNX parser reads:
   ``plugin_namespace="infomerge"``, ``plugin_version="1"``, ``aot=1`` (use the ahead-of-time
   implementation) and ``mu``. Inputs are cast to the plugin's I/O types first (standard Cast nodes):
   x fp32/fp16, member fp32, anchor_index int32, anchor_valid fp32; output (..., K, D) in x's dtype.
2. :func:`register_plugin`: the TensorRT quickly-deployable-plugin registration
   (``tensorrt.plugin``, full TensorRT >= 10.6): ``@trtp.register`` (output shape and type, from
   :func:`describe_output`), ``@trtp.autotune`` (type combinations) and ``@trtp.aot_impl``
   (:func:`aot_kernel`: the Triton kernel of :mod:`infomerge.compress.merge_triton` compiled to PTX
   with its launch grid and int32 arguments), so the engine runs under ``trtexec`` or a C++ runtime
   without Python.
3. ONNX Runtime cannot run the custom node: the standard-ONNX merge stays the default export.

TensorRT for RTX 1.7 has no ``tensorrt_rtx.plugin`` module, no ``INetworkDefinition.add_plugin_v3``
and no AOT plugin interface in its Python bindings; see docs/tensorrt.md for what that means here.

This module deliberately has no ``from __future__ import annotations``: ``tensorrt.plugin`` reads
the registration function's annotations as objects.
"""

import re

import torch

from infomerge.compress.merge import merge_to_anchors
from infomerge.compress.merge_triton import (
    BLOCK_D,
    MAX_BLOCK_K,
    block_k_for,
    compile_merge_kernel,
    triton_available,
)
from infomerge.errors import BackendUnavailableError

PLUGIN_NAMESPACE = "infomerge"
PLUGIN_NAME = "MergeToAnchors"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
#: input/output type combinations (x, member, anchor_index, anchor_valid, out)
TYPE_COMBINATIONS = "FP32|FP16, FP32, INT32, FP32, FP32|FP16"


# --- 1. the traceable callable -------------------------------------------------------------------
def _eager_merge(x, member, anchor_index, anchor_valid, mu):
    if x.is_cuda and triton_available():
        from infomerge.compress.merge_triton import merge_to_anchors_triton

        return merge_to_anchors_triton(x, member, anchor_index, anchor_valid, mu)
    return merge_to_anchors(x, member, anchor_index.to(torch.int64), anchor_valid, mu)


class _MergeToAnchorsOp(torch.autograd.Function):
    """Eager: the merge. ONNX (TorchScript exporter): one ``infomerge::MergeToAnchors`` node."""

    @staticmethod
    def forward(ctx, x, member, anchor_index, anchor_valid, mu):
        return _eager_merge(x, member, anchor_index, anchor_valid, mu)

    @staticmethod
    def symbolic(g, x, member, anchor_index, anchor_valid, mu):
        out = g.op(
            f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}",
            x,
            member,
            anchor_index,
            anchor_valid,
            mu_f=float(mu),
            plugin_namespace_s=PLUGIN_NAMESPACE,
            plugin_version_s=PLUGIN_VERSION,
            aot_i=1,
        )
        x_sizes = x.type().varyingSizes() if hasattr(x.type(), "varyingSizes") else None
        a_sizes = anchor_index.type().varyingSizes() if hasattr(anchor_index.type(), "varyingSizes") else None
        if x_sizes and a_sizes:
            out.setType(x.type().with_sizes([*x_sizes[:-2], a_sizes[-1], x_sizes[-1]]))
        else:
            out.setType(x.type())
        return out


class PluginMerge:
    """``merge_impl`` with the signature of :func:`~infomerge.compress.merge.merge_to_anchors`.

    Call: ``(x (..., M, D), member (..., M), anchor_index (..., K) int, anchor_valid (..., K), mu)
    -> (..., K, D)`` in x's dtype. Eager results equal ``merge_to_anchors`` (PyTorch form on CPU,
    the Triton kernel on CUDA); under ``torch.onnx.export(dynamo=False)`` the merge becomes the
    single plugin node described in the module docstring.
    """

    def __call__(self, x, member, anchor_index, anchor_valid, mu):
        if x.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"PluginMerge: x must be fp32 or fp16, got {x.dtype}")
        return _MergeToAnchorsOp.apply(
            x,
            member.to(torch.float32),
            anchor_index.to(torch.int32),
            anchor_valid.to(torch.float32),
            float(mu),
        )

    def __repr__(self) -> str:
        return f"PluginMerge({PLUGIN_ID})"


plugin_merge = PluginMerge()


# --- 2. TensorRT registration --------------------------------------------------------------------
def _rank(desc) -> int:
    return len(desc.shape_expr)


def check_ranks(x, member, anchor_index, anchor_valid) -> None:
    """Raise ValueError unless x is (..., M, D) and member/anchor_index/anchor_valid have rank x-1."""
    r = _rank(x)
    ranks = {
        "member": _rank(member),
        "anchor_index": _rank(anchor_index),
        "anchor_valid": _rank(anchor_valid),
    }
    if r < 2 or any(v != r - 1 for v in ranks.values()):
        raise ValueError(f"{PLUGIN_ID}: x has rank {r}, need rank >= 2 and rank {r - 1} for {ranks}")


def describe_output(trtp, x, member, anchor_index, anchor_valid, mu):
    """Output descriptor (the body of ``@trtp.register``): shape ``x.shape[:-2] + (K, D)``, x's dtype.

    Args:
        trtp: the ``tensorrt.plugin`` module (or a stand-in with ``from_shape_expr``).
        x, member, anchor_index, anchor_valid: ``trtp.TensorDesc`` of the inputs.
        mu: the anchor weight attribute (unused for shapes).
    """
    check_ranks(x, member, anchor_index, anchor_valid)
    xs = x.shape_expr
    r = len(xs)
    dims = tuple(xs[i] for i in range(r - 2)) + (anchor_index.shape_expr[r - 2], xs[r - 1])
    return trtp.from_shape_expr(dims, dtype=x.dtype)


def _is_fp16(trt, dtype) -> bool:
    return dtype == getattr(trt, "float16", None) or str(dtype).split(".")[-1].upper() in ("HALF", "FLOAT16")


def aot_kernel(
    trtp, trt, x, anchor_index, mu, outputs, *, arch: int | None = None, compile_fn=compile_merge_kernel
):
    """The ahead-of-time implementation (the body of ``@trtp.aot_impl``).

    Compiles :func:`infomerge.compress.merge_triton.merge_kernel` to PTX for x's dtype and ``mu``,
    and returns ``(kernel name, PTX, launch params, extra int32 args)``: grid
    ``(B, cdiv(K, BLOCK_K), cdiv(D, BLOCK_D))`` with B the product of x's leading dims, block
    ``num_warps * 32`` threads, ``shared`` bytes of shared memory, extra args ``(M, K, D)``
    (TensorRT passes inputs, then these, then outputs, which is the kernel's parameter order).

    Raises:
        BackendUnavailableError: triton missing.
        RuntimeError: the kernel needs Triton global scratch memory (TensorRT passes none).
    """
    xs = x.shape_expr
    r = len(xs)
    m, d, k = xs[r - 2], xs[r - 1], anchor_index.shape_expr[r - 2]
    batch = None
    for i in range(r - 2):
        batch = xs[i] if batch is None else batch * xs[i]
    block_k = block_k_for(k.constant_value()) if _is_constant(k) else MAX_BLOCK_K
    dtype = "fp16" if _is_fp16(trt, x.dtype) else "fp32"
    compiled = compile_fn(dtype, float(mu), block_k, arch=arch)
    if getattr(compiled.metadata, "global_scratch_size", 0):
        raise RuntimeError(
            f"{PLUGIN_ID}: the compiled kernel needs global scratch memory; TensorRT passes none"
        )
    ptx = strip_unused_params(compiled.asm["ptx"], compiled.metadata.name, 8)

    params = trtp.KernelLaunchParams()
    # rank 2 (one scope): a constant-1 expression built from a dimension keeps the API's types
    params.grid_x = batch if batch is not None else m * 0 + 1
    params.grid_y = trtp.cdiv(k, block_k)
    params.grid_z = trtp.cdiv(d, BLOCK_D)
    params.block_x = compiled.metadata.num_warps * 32
    params.shared_mem = compiled.metadata.shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (m, k, d)])
    return compiled.metadata.name, ptx, params, extra


def _is_constant(expr) -> bool:
    try:
        return (not getattr(expr, "is_fake", False)) and bool(expr.is_constant)
    except RuntimeError:
        return False


def strip_unused_params(ptx: str, kernel: str, keep: int) -> str:
    """Drop the kernel's PTX parameters from index ``keep`` on when the code never reads them.

    Triton >= 3.3 appends ``global_scratch`` and ``profile_scratch`` pointers to every kernel;
    TensorRT's AOT plugin launches with exactly inputs + extra args + outputs (8 here). Unused
    trailing parameters are removed so the declared and the passed parameter lists agree.

    Raises:
        RuntimeError: a parameter to drop is read by the kernel.
    """
    lines = ptx.splitlines(keepends=True)
    out = []
    dropped = []
    for line in lines:
        stripped = line.strip()
        drop = False
        for i in range(keep, keep + 4):
            name = f"{kernel}_param_{i}"
            if stripped.startswith(".param") and (stripped.endswith(name) or stripped.endswith(name + ",")):
                drop = True
                dropped.append(name)
        if not drop:
            out.append(line)
    text = "".join(out)
    for name in dropped:
        if re.search(rf"\b{name}\b", text):
            raise RuntimeError(f"{PLUGIN_ID}: PTX parameter {name} is used by the kernel; cannot drop it")
    # the last kept parameter must not end with a comma any more
    return text.replace(f"{kernel}_param_{keep - 1},\n", f"{kernel}_param_{keep - 1}\n")


_REGISTERED = False


def register_plugin(trtp=None, trt=None):
    """Register ``infomerge::MergeToAnchors`` with TensorRT's quickly-deployable-plugin API.

    Call before parsing an ONNX graph exported with ``--merge-plugin``. Idempotent.

    Args:
        trtp, trt: ``tensorrt.plugin`` and ``tensorrt`` (default: imported; tests pass stand-ins).

    Returns:
        dict of the registered functions: "register", "autotune", "aot_impl".

    Raises:
        BackendUnavailableError: full TensorRT (>= 10.6, with ``tensorrt.plugin``) is not installed;
            TensorRT for RTX 1.7 has no plugin module.
    """
    global _REGISTERED
    if trtp is None or trt is None:
        try:
            import tensorrt as trt
            import tensorrt.plugin as trtp
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the {PLUGIN_ID} plugin needs full TensorRT >= 10.6 with tensorrt.plugin ({exc}): "
                "pip install 'infomerge[trt]' (TensorRT for RTX 1.7 has no plugin API; export without "
                "--merge-plugin for --engine rtx)"
            ) from None
        if _REGISTERED:
            return _REGISTERED

    TensorDesc = trtp.TensorDesc

    def merge_to_anchors_desc(
        x: TensorDesc, member: TensorDesc, anchor_index: TensorDesc, anchor_valid: TensorDesc, mu: float
    ) -> TensorDesc:
        return describe_output(trtp, x, member, anchor_index, anchor_valid, mu)

    def merge_to_anchors_autotune(x, member, anchor_index, anchor_valid, outputs):
        return [trtp.AutoTuneCombination(TYPE_COMBINATIONS)]

    def merge_to_anchors_aot(x, member, anchor_index, anchor_valid, mu, outputs, tactic):
        return aot_kernel(trtp, trt, x, anchor_index, mu, outputs)

    registered = {
        "register": trtp.register(PLUGIN_ID)(merge_to_anchors_desc),
        "autotune": trtp.autotune(PLUGIN_ID)(merge_to_anchors_autotune),
        "aot_impl": trtp.aot_impl(PLUGIN_ID)(merge_to_anchors_aot),
    }
    if getattr(trtp, "__name__", "") == "tensorrt.plugin":
        _REGISTERED = registered
    return registered
