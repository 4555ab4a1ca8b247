"""The compression steps of ``infomerge-export``: ``compress.onnx`` and the fused ``vision_compress.onnx``.

``compress.onnx`` is the fixed-budget module of the run's ``--method`` (looked up in the method
registry, :mod:`infomerge.compress.methods`) for the backbone, frame count and ``--retention``
(graph declaration: :data:`infomerge.export.graphs.COMPRESS`):

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

A method with optional vision outputs (``Method.vision_outputs``, VisionZip's ``attention`` and
``keys``) gets a ``compress.onnx`` with those inputs after H, A, g, of the same names as the
vision graph's extra outputs (:func:`infomerge.export.graphs.with_vision_outputs`); it is traced
on synthetic ones and validated on the real video's, and the fused graph joins on them too.

The merge implementation is the module's own unless an earlier step set ``ctx.merge_impl``.
"""

from __future__ import annotations

import numpy as np
import torch

from infomerge.artifacts.layout import COMPRESS_ONNX, FUSED_ONNX, VISION_ONNX
from infomerge.artifacts.onnx_graph import graph_io, onnx_files
from infomerge.compress.methods import get_method
from infomerge.export.context import ExportContext, Step
from infomerge.export.graphs import (
    COMPRESS,
    FUSED,
    GraphSpec,
    feature_frames,
    synthetic_features,
    with_vision_outputs,
)
from infomerge.export.onnx_export import export_onnx, save_onnx

COMPRESS_INPUTS = COMPRESS.inputs
COMPRESS_OUTPUTS = COMPRESS.outputs
DEFAULT_ATOL = COMPRESS.atol


def compress_spec(ctx: ExportContext) -> GraphSpec:
    """The ``compress`` graph of this run's method: H, A, g, then the method's vision outputs."""
    return with_vision_outputs(COMPRESS, get_method(ctx.options.method).vision_outputs)


def build_compressor(ctx: ExportContext):
    """The eager fixed-budget module of this run (shape from the backbone and ``--frames``).

    Raises:
        UnknownMethodError, BudgetError: from the method registry.
    """
    bb, o = ctx.backbone, ctx.options
    method = get_method(o.method)
    kwargs = {"merge_impl": ctx.merge_impl} if ctx.merge_impl is not None else {}
    config = method.config(o.retention)
    frames = feature_frames(bb, ctx.frames)  # L = F / 2 temporal groups for Qwen2.5-VL
    return method.fixed_budget(config, frames, bb.tokens_per_frame, bb.text_hidden, **kwargs).eval()


def _h_dtype(ctx: ExportContext) -> torch.dtype:
    return torch.float16 if ctx.precision == "fp16" else torch.float32


def export_compress(ctx: ExportContext) -> None:
    """``compress.onnx`` (static shapes, opset 17), traced on synthetic features."""
    comp = build_compressor(ctx)
    bb = ctx.backbone
    spec = compress_spec(ctx)
    g_dim = int(ctx.reference["g"].shape[-1]) if "g" in ctx.reference else bb.vision_hidden
    example = spec.example(bb, ctx.frames, _h_dtype(ctx), g_dim)
    path = ctx.path(COMPRESS_ONNX)
    export_onnx(comp, example, path, input_names=spec.inputs, output_names=spec.outputs)
    inputs, outputs = graph_io(path)
    spec.check_io(inputs, outputs, bb, ctx.frames, int(comp.budget), g_dim)
    ctx.manifest["graphs"]["compress"] = {
        "file": COMPRESS_ONNX,
        "opset": COMPRESS.opset,
        "precision": ctx.precision,
        "method": ctx.options.method,
        "retention": ctx.options.retention,
        "tokens_kept": int(comp.budget),
        "config": comp.config.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
    }
    merge_impl = getattr(comp, "merge_impl", None)
    if merge_impl is not None:
        name = getattr(merge_impl, "__name__", type(merge_impl).__name__)
        ctx.manifest["graphs"]["compress"]["merge_impl"] = name
    if hasattr(comp, "richness_mode"):
        ctx.manifest["graphs"]["compress"]["richness"] = comp.richness_mode
    ctx.compressor = comp


def _features(ctx: ExportContext) -> dict[str, torch.Tensor]:
    """The compress graph's inputs on the real video: H in the graph's dtype, the rest float32.

    Raises:
        ValidationError: the vision reference lacks one of the method's vision outputs.
    """
    from infomerge.errors import ValidationError

    r = ctx.reference
    names = compress_spec(ctx).inputs
    missing = [k for k in names if k not in r]
    if missing:
        raise ValidationError(f"the vision reference lacks {missing}, which {ctx.options.method} reads")
    return {k: (r[k].to(_h_dtype(ctx)) if k == "H" else r[k].float()) for k in names}


def validate_compress(ctx: ExportContext) -> None:
    """Run ``compress.onnx`` in ONNX Runtime on the real video's features; compare with eager."""
    from infomerge.export.validate import validate_onnx

    comp = ctx.compressor
    names = compress_spec(ctx).inputs
    atol = COMPRESS.tolerances(ctx.precision, ctx.options.atol)
    report = validate_onnx(
        ctx.work / COMPRESS_ONNX,
        lambda **feed: dict(zip(COMPRESS_OUTPUTS, comp(*(feed[k] for k in names)))),
        _features(ctx),
        atol,
        output_names=COMPRESS_OUTPUTS,
        console=ctx.console,
        raise_on_failure=False,
        display_name=str(ctx.output / COMPRESS_ONNX),
    )
    ctx.record_validation(
        "compress",
        report,
        atol,
        f"PyTorch eager fixed-budget {ctx.options.method} on the video's fp32 {', '.join(names)}",
    )


def export_fused(ctx: ExportContext) -> None:
    """``vision_compress.onnx``: vision.onnx and compress.onnx joined on the compress graph's inputs
    (H, A, g and the method's vision outputs)."""
    import onnx
    from onnx import compose

    vision = onnx.load(str(ctx.work / VISION_ONNX), load_external_data=True)
    comp = onnx.load(str(ctx.work / COMPRESS_ONNX))
    comp = compose.add_prefix(comp, "compress/", rename_inputs=False, rename_outputs=False)
    comp.ir_version = vision.ir_version = min(vision.ir_version, comp.ir_version)
    fused = compose.merge_models(
        vision, comp, io_map=[(n, n) for n in compress_spec(ctx).inputs], outputs=list(FUSED.outputs)
    )
    path = ctx.path(FUSED_ONNX)
    save_onnx(fused, path)
    del vision, comp, fused
    inputs, outputs = graph_io(path)
    files = onnx_files(path)
    ctx.manifest["graphs"]["vision_compress"] = {
        "file": FUSED_ONNX,
        "external_data": files[1].name if len(files) > 1 else None,
        "opset": FUSED.opset,
        "precision": ctx.precision,
        "method": ctx.options.method,
        "retention": ctx.options.retention,
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

    comp = ctx.compressor
    px = {"pixel_values": _numpy(ctx.pixel_values)}
    vis, _, _ = run_onnx(ctx.work / VISION_ONNX, px, optimization="off")
    with torch.no_grad():
        names = compress_spec(ctx).inputs
        tokens, index = comp(*(torch.from_numpy(np.ascontiguousarray(vis[k])) for k in names))
    atol = FUSED.tolerances(ctx.precision, ctx.options.atol)
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
        "vision.onnx in ONNX Runtime, then the eager fixed-budget compressor",
        ort_graph_optimizations="off",
    )


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


COMPRESS_STEPS = [
    Step("export compress.onnx", export_compress, when=lambda o: o.compress),
    Step("validate compress.onnx", validate_compress, when=lambda o: o.compress),
    Step("export vision_compress.onnx", export_fused, when=lambda o: o.fused),
    Step("validate vision_compress.onnx", validate_fused, when=lambda o: o.fused),
]

__all__ = [
    "COMPRESS_ONNX",
    "COMPRESS_STEPS",
    "FUSED_ONNX",
    "build_compressor",
    "compress_spec",
    "export_compress",
    "export_fused",
    "synthetic_features",
    "validate_compress",
    "validate_fused",
]
