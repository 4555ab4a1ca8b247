"""The compression steps of ``infomerge-export``: ``compress.onnx`` and the fused ``vision_compress.onnx``.

``compress.onnx`` is :class:`~infomerge.compress.fixed_budget.FixedBudgetCompressor` for the run's backbone,
frame count, ``--method`` (``infomerge`` = ``InfoMergeConfig.paper(r)``, ``fastvid`` =
``InfoMergeConfig.fastvid(r)``) and ``--retention``:

    inputs   H (F, 196, D) float32 | float16 (the vision graph's H dtype), A (F, 196) float32,
             g (F, G) float32  -- the vision graph's output names, so the two graphs chain
    outputs  tokens (B, D) in H's dtype, index (B,) int64 sorted flat positions l*196 + p

It is traced on synthetic features (not the validation video) and validated in ONNX Runtime on
the real video's features: ``index`` must equal the eager module's exactly, ``tokens`` within
``atol`` relative to their peak. A graph that had frozen the tracing input's decisions would fail
here (its indices would be the synthetic input's).

``--fused`` also writes ``vision_compress.onnx`` (pixel_values -> tokens, index): the two graphs
joined with :func:`onnx.compose.merge_models` on H, A, g, validated against ``vision.onnx`` run in
ONNX Runtime followed by the eager compressor (the chain it must equal).

The merge implementation is :func:`~infomerge.compress.merge.merge_to_anchors` unless an earlier
step (the TensorRT merge plugin's, ``--merge-plugin``) put another callable with its signature in
``ctx.extra["merge_impl"]``.
"""

from __future__ import annotations

import numpy as np
import torch

from infomerge.compress.config import InfoMergeConfig
from infomerge.compress.merge import merge_to_anchors
from infomerge.export.context import ExportContext, Step
from infomerge.export.onnx_export import OPSET, export_onnx, graph_io, onnx_files, save_onnx

COMPRESS_ONNX = "compress.onnx"
FUSED_ONNX = "vision_compress.onnx"
COMPRESS_INPUTS = ("H", "A", "g")
COMPRESS_OUTPUTS = ("tokens", "index")
# tokens: relative to their peak; index: exact (0 -> tolerance 0).
DEFAULT_ATOL = {"fp32": {"tokens": 1e-4, "index": 0.0}, "fp16": {"tokens": 2e-2, "index": 0.0}}


def method_config(method: str, retention: float) -> InfoMergeConfig:
    """``--method`` and ``--retention`` -> the config (``infomerge``: paper preset; ``fastvid``).

    Raises:
        ValueError: an unknown method. BudgetError: a retention outside (0, 1].
    """
    if method == "infomerge":
        return InfoMergeConfig.paper(retention)
    if method == "fastvid":
        return InfoMergeConfig.fastvid(retention)
    raise ValueError(f"unknown compression method {method!r}; choose infomerge or fastvid")


def build_compressor(ctx: ExportContext):
    """The eager :class:`FixedBudgetCompressor` of this run (shape from the backbone and ``--frames``)."""
    from infomerge.compress.fixed_budget import FixedBudgetCompressor

    bb = ctx.backbone
    cfg = method_config(ctx.args.method, ctx.args.retention)
    merge_impl = ctx.extra.get("merge_impl", merge_to_anchors)
    return FixedBudgetCompressor(
        cfg, ctx.frames, bb.tokens_per_frame, bb.text_hidden, merge_impl=merge_impl
    ).eval()


def _h_dtype(ctx: ExportContext) -> torch.dtype:
    return torch.float16 if ctx.precision == "fp16" else torch.float32


def synthetic_features(frames: int, n: int, d: int, g_dim: int, dtype: torch.dtype, seed: int = 4321):
    """Deterministic tracing input (H, A, g): smooth random 'video' features, NOT a real video."""
    gen = torch.Generator().manual_seed(seed)
    walk = torch.cumsum(torch.randn(frames, 1, d, generator=gen), 0) * 0.1
    h = (torch.randn(1, n, d, generator=gen) + walk + 0.2 * torch.randn(frames, n, d, generator=gen)).to(
        dtype
    )
    a = torch.softmax(torch.randn(frames, n, generator=gen), -1)
    g = (
        torch.randn(1, g_dim, generator=gen)
        + torch.cumsum(torch.randn(frames, g_dim, generator=gen), 0) * 0.2
    )
    return h, a, g


def export_compress(ctx: ExportContext) -> None:
    """``compress.onnx`` (static shapes, opset 17), traced on synthetic features."""
    comp = build_compressor(ctx)
    bb = ctx.backbone
    g_dim = int(ctx.reference["g"].shape[-1]) if "g" in ctx.reference else bb.vision_hidden
    example = synthetic_features(ctx.frames, bb.tokens_per_frame, bb.text_hidden, g_dim, _h_dtype(ctx))
    path = ctx.path(COMPRESS_ONNX)
    export_onnx(comp, example, path, input_names=COMPRESS_INPUTS, output_names=COMPRESS_OUTPUTS)
    inputs, outputs = graph_io(path)
    ctx.manifest["graphs"]["compress"] = {
        "file": COMPRESS_ONNX,
        "opset": OPSET,
        "precision": ctx.precision,
        "method": ctx.args.method,
        "retention": ctx.args.retention,
        "tokens_kept": comp.budget,
        "merge_impl": getattr(comp.merge_impl, "__name__", type(comp.merge_impl).__name__),
        "richness": comp.richness_mode,
        "config": comp.config.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
    }
    ctx.extra["compressor"] = comp


def _features(ctx: ExportContext) -> dict[str, torch.Tensor]:
    r = ctx.reference
    return {"H": r["H"].to(_h_dtype(ctx)), "A": r["A"].float(), "g": r["g"].float()}


def validate_compress(ctx: ExportContext) -> None:
    """Run ``compress.onnx`` in ONNX Runtime on the real video's features; compare with eager."""
    from infomerge.export.validate import validate_onnx

    comp = ctx.extra["compressor"]
    atol = {k: (ctx.atol(v) if v > 0 else 0.0) for k, v in DEFAULT_ATOL[ctx.precision].items()}
    report = validate_onnx(
        ctx.work / COMPRESS_ONNX,
        lambda H, A, g: dict(zip(COMPRESS_OUTPUTS, comp(H, A, g))),
        _features(ctx),
        atol,
        output_names=COMPRESS_OUTPUTS,
        console=ctx.console,
        raise_on_failure=False,
        display_name=str(ctx.output / COMPRESS_ONNX),
    )
    ctx.record_validation(
        "compress", report, atol, "PyTorch eager FixedBudgetCompressor on the video's fp32 H, A, g"
    )


def export_fused(ctx: ExportContext) -> None:
    """``vision_compress.onnx``: vision.onnx and compress.onnx joined on H, A, g."""
    import onnx
    from onnx import compose

    vision = onnx.load(str(ctx.work / "vision.onnx"), load_external_data=True)
    comp = onnx.load(str(ctx.work / COMPRESS_ONNX))
    comp = compose.add_prefix(comp, "compress/", rename_inputs=False, rename_outputs=False)
    comp.ir_version = vision.ir_version = min(vision.ir_version, comp.ir_version)
    fused = compose.merge_models(
        vision, comp, io_map=[(n, n) for n in COMPRESS_INPUTS], outputs=list(COMPRESS_OUTPUTS)
    )
    path = ctx.path(FUSED_ONNX)
    save_onnx(fused, path)
    del vision, comp, fused
    inputs, outputs = graph_io(path)
    files = onnx_files(path)
    ctx.manifest["graphs"]["vision_compress"] = {
        "file": FUSED_ONNX,
        "external_data": files[1].name if len(files) > 1 else None,
        "opset": OPSET,
        "precision": ctx.precision,
        "method": ctx.args.method,
        "retention": ctx.args.retention,
        "inputs": inputs,
        "outputs": outputs,
    }


def validate_fused(ctx: ExportContext) -> None:
    """ORT ``vision_compress.onnx`` == eager compressor on ORT ``vision.onnx``'s outputs (same frames).

    Both graphs run with ONNX Runtime's graph optimizations off: with them on, the CPU provider
    (which has no fp16 kernels and computes fp16 graphs in fp32) removes the fp32 -> fp16 -> fp32
    Cast pair at the H junction of the fused fp16 graph, so the fused graph sees H unrounded while
    ``vision.onnx``'s output is rounded to fp16, and near-tied decisions can differ (measured on
    the tiny backbone: 3 of 920 indices). That is the optimizer, not the fusion.
    """
    from infomerge.export.validate import run_onnx, validate_onnx

    comp = ctx.extra["compressor"]
    px = {"pixel_values": _numpy(ctx.pixel_values)}
    vis, _, _ = run_onnx(ctx.work / "vision.onnx", px, optimization="off")
    with torch.no_grad():
        tokens, index = comp(*(torch.from_numpy(np.ascontiguousarray(vis[k])) for k in COMPRESS_INPUTS))
    atol = {k: (ctx.atol(v) if v > 0 else 0.0) for k, v in DEFAULT_ATOL[ctx.precision].items()}
    report = validate_onnx(
        ctx.work / FUSED_ONNX,
        {"tokens": tokens, "index": index},
        px,
        atol,
        output_names=COMPRESS_OUTPUTS,
        console=ctx.console,
        raise_on_failure=False,
        display_name=str(ctx.output / FUSED_ONNX),
        optimization="off",
    )
    ctx.record_validation(
        "vision_compress",
        report,
        atol,
        "vision.onnx in ONNX Runtime, then the eager FixedBudgetCompressor",
        ort_graph_optimizations="off",
    )


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


COMPRESS_STEPS = [
    Step("export compress.onnx", export_compress, flags=("--method", "--retention")),
    Step("validate compress.onnx", validate_compress),
    Step("export vision_compress.onnx", export_fused, flags=("--fused",), when=lambda a: a.fused),
    Step("validate vision_compress.onnx", validate_fused, when=lambda a: a.fused),
]

__all__ = [
    "COMPRESS_ONNX",
    "COMPRESS_STEPS",
    "FUSED_ONNX",
    "build_compressor",
    "export_compress",
    "export_fused",
    "method_config",
    "synthetic_features",
    "validate_compress",
    "validate_fused",
]
