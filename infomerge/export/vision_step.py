"""The vision steps of ``infomerge-export``: encoder, real frames, reference, ``vision.onnx``, and
(fp32) ``ort/vision.onnx``, the same graph with ONNX Runtime's transformer fusions
(:mod:`infomerge.export.ort_fusion`), validated on the real frames like ``vision.onnx``.

Order and memory: the fp32 encoder is loaded (vision tensors only), the fp32 reference outputs on
the real video are computed in chunks of frames, then (``--fp16``) the encoder is cast to fp16 in
place, exported, and freed before ONNX Runtime validates the graph. The peak is therefore one fp32
tower + the exporter's copy, or ONNX Runtime's session, not both.
"""

from __future__ import annotations

import gc

import numpy as np
import torch

from infomerge.artifacts.layout import IMAGE_NEWLINE, VISION_ONNX, VISION_ORT_ONNX
from infomerge.artifacts.manifest import tensor_spec
from infomerge.artifacts.onnx_graph import graph_io, onnx_files
from infomerge.export.context import ExportContext, Step
from infomerge.export.graphs import VISION, GraphSpec, feature_frames, with_vision_outputs
from infomerge.export.onnx_export import export_onnx

VISION_INPUTS = VISION.inputs
VISION_OUTPUTS = VISION.outputs
TRACE_FRAMES = 1  # frames in the tracing example (the graph is pinned to F afterwards)
REFERENCE_CHUNK = 4  # frames per fp32 reference forward (bounds activation memory)
DEFAULT_ATOL = VISION.atol


def vision_spec(ctx: ExportContext) -> GraphSpec:
    """The ``vision`` graph of this export: H, A, g, then ``options.vision_outputs`` (the method's
    optional vision outputs, see :func:`infomerge.export.graphs.with_vision_outputs`)."""
    return with_vision_outputs(VISION, ctx.options.vision_outputs or ())


def load_encoder(ctx: ExportContext) -> None:
    """Build the fp32 encoder from the checkpoint (vision tensors only) or random weights; it
    returns the export's optional vision outputs after (H, A, g). Qwen2.5-VL: the static-grid
    :class:`~infomerge.backbones.qwen_vision.QwenVisionEncoder` at the backbone's frame size."""
    a = ctx.options
    ctx.encoder = ctx.backbone.family_spec.vision_encoder(
        ctx.backbone,
        a.model_path,
        frames=ctx.frames,
        random_weights=a.random_weights,
        siglip_path=a.siglip_path,
        seed=a.seed,
    )
    ctx.encoder.extra_outputs = tuple(a.vision_outputs or ())
    src = dict(ctx.encoder.source)
    src.setdefault("weights", "checkpoint")
    ctx.manifest["checkpoint"] = src
    ctx.image_newline = ctx.encoder.image_newline.detach().to(torch.float32).numpy().copy()


def read_frames(ctx: ExportContext) -> None:
    """Decode, sample and preprocess F frames of the validation video (each frame resized as it is
    decoded, as the runtime does it: memory does not grow with the video's resolution).
    Qwen2.5-VL: the sampled frames preprocessed as Qwen's processor does it
    (:func:`~infomerge.video.qwen_preprocess.qwen_preprocess` at the backbone's fixed size)."""
    from infomerge.video import read_video

    bb = ctx.backbone
    how = bb.family_spec.decode_options(bb)  # {"size": S} or {"preprocess": f} (Qwen2.5-VL)
    preprocess = how.get("preprocess")
    clip = read_video(ctx.video, ctx.frames, size=how.get("size"))
    ctx.pixel_values = clip.pixel_values if preprocess is None else preprocess(clip.frames)
    ctx.manifest["validation_video"] = {
        "path": str(ctx.video),
        "frame_indices": [int(i) for i in clip.indices],
        "total_frames": int(clip.total_frames),
    }


@torch.no_grad()
def compute_reference(ctx: ExportContext) -> None:
    """fp32 PyTorch outputs H, A, g (and the optional vision outputs) on the real frames (chunked:
    4 frames, i.e. 2 temporal groups for Qwen2.5-VL), kept in ``ctx.reference``."""
    enc = ctx.encoder
    names = vision_spec(ctx).outputs
    parts = [enc(ctx.pixel_values[i : i + REFERENCE_CHUNK]) for i in range(0, ctx.frames, REFERENCE_CHUNK)]
    ctx.reference = {name: torch.cat([p[k] for p in parts]).float() for k, name in enumerate(names)}


def save_image_newline(ctx: ExportContext) -> None:
    """``image_newline.npy``: (D,) float32."""
    np.save(ctx.path(IMAGE_NEWLINE), ctx.image_newline.astype(np.float32))
    ctx.manifest["arrays"]["image_newline"] = {
        "file": IMAGE_NEWLINE,
        **tensor_spec(ctx.image_newline.shape, "float32"),
    }


def export_vision(ctx: ExportContext) -> None:
    """``vision.onnx``: pixel_values (F,3,S,S) float32 -> H (F,196,D), A (F,196), g (F,G), then the
    optional vision outputs of :func:`vision_spec`. Qwen2.5-VL: pixel_values (F, 3, h, w) -> H
    (L, N, D), A (L, N), g (L, D), ... (L = F / 2), traced on one temporal group (2 frames)."""
    enc = ctx.encoder
    spec = vision_spec(ctx)
    bb = ctx.backbone
    if ctx.precision == "fp16":
        enc.to_compute_dtype(torch.float16)
    n = min(ctx.frames, bb.family_spec.trace_frames(bb) or TRACE_FRAMES)
    example = spec.example(bb, n, torch.float32, 0)  # not the validation frames
    path = ctx.path(VISION_ONNX)
    pinned = None
    if n != ctx.frames:
        pinned = {
            **dict.fromkeys(spec.inputs, ctx.frames),
            **dict.fromkeys(spec.outputs, feature_frames(bb, ctx.frames)),
        }
    export_onnx(enc, example, path, input_names=spec.inputs, output_names=spec.outputs, frames=pinned)
    inputs, outputs = graph_io(path)
    spec.check_io(inputs, outputs, ctx.backbone, ctx.frames, None, int(ctx.reference["g"].shape[-1]))
    files = onnx_files(path)
    ctx.manifest["graphs"]["vision"] = {
        "file": VISION_ONNX,
        "external_data": files[1].name if len(files) > 1 else None,
        "opset": VISION.opset,
        "precision": ctx.precision,
        "inputs": inputs,
        "outputs": outputs,
    }
    # The graph holds the weights now; free the torch copy before ONNX Runtime loads its own.
    ctx.encoder = None
    del enc
    release_memory()


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the
    next step's peak does not stack on memory this process no longer uses."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _validate_graph(ctx: ExportContext, file: str, key: str) -> None:
    """Run the vision graph ``file`` (in the work directory) in ONNX Runtime on the real frames;
    compare each output with the fp32 PyTorch reference at the vision spec's tolerances; record the
    report under ``key`` in the manifest."""
    from infomerge.export.validate import validate_onnx

    spec = vision_spec(ctx)
    atol = spec.tolerances(ctx.precision, ctx.options.atol)
    report = validate_onnx(
        ctx.work / file,
        ctx.reference,
        {"pixel_values": ctx.pixel_values},
        atol,
        output_names=spec.outputs,
        console=ctx.console,
        raise_on_failure=False,
        display_name=str(ctx.output / file),
    )
    ctx.record_validation(key, report, atol, "PyTorch fp32 VisionEncoder")


def validate_vision(ctx: ExportContext) -> None:
    """Run ``vision.onnx`` in ONNX Runtime on the real frames; compare with the fp32 reference."""
    _validate_graph(ctx, VISION_ONNX, "vision")


def fuse_vision(ctx: ExportContext) -> None:
    """``ort/vision.onnx``: ``vision.onnx`` with ONNX Runtime's fusions (MultiHeadAttention,
    SkipLayerNormalization, FastGelu, BiasGelu) and a free frame axis; what the ``ort`` vision
    backend runs when present."""
    from infomerge.export.ort_fusion import fuse_vision_graph

    bb = ctx.backbone
    path = ctx.path(VISION_ORT_ONNX)
    fused = fuse_vision_graph(ctx.work / VISION_ONNX, path, bb.vision_heads, bb.vision_hidden)
    inputs, outputs = graph_io(path)
    pinned = {k: {**v, "shape": [ctx.frames, *v["shape"][1:]]} for k, v in {**inputs, **outputs}.items()}
    vision_spec(ctx).check_io(  # the frame axis is free ("frames"); every other dimension as declared
        {k: pinned[k] for k in inputs}, {k: pinned[k] for k in outputs}, bb, ctx.frames, None,
        int(ctx.reference["g"].shape[-1]),
    )  # fmt: skip
    files = onnx_files(path)
    ctx.manifest["graphs"]["vision_ort"] = {
        "file": VISION_ORT_ONNX,
        "external_data": f"{VISION_ORT_ONNX}.data" if len(files) > 1 else None,
        "opset": VISION.opset,
        "precision": ctx.precision,
        "fused_ops": fused,
        "source": "onnxruntime.transformers optimizer (model_type vit) + SDPA -> MultiHeadAttention",
        "inputs": inputs,
        "outputs": outputs,
    }
    release_memory()


def validate_vision_ort(ctx: ExportContext) -> None:
    """Run ``ort/vision.onnx`` on the real frames; compare with the fp32 reference (vision tolerances)."""
    _validate_graph(ctx, VISION_ORT_ONNX, "vision_ort")


def _fused_vision(options) -> bool:
    """ORT's fused vision graph: with the vision graph, in fp32 (ORT's CPU contrib kernels are fp32),
    for a family whose ``ort_fused_vision`` holds; not for Qwen2.5-VL (the fusions are those of a
    ViT with LayerNorm and no rotary embedding)."""
    from infomerge.backbones.registry import get_backbone

    return (
        bool(options.vision)
        and not options.fp16
        and get_backbone(options.backbone).family_spec.ort_fused_vision
    )


VISION_STEPS = [
    Step("load vision encoder", load_encoder),
    Step("decode validation video", read_frames),
    Step("PyTorch fp32 reference", compute_reference),
    Step("save image_newline.npy", save_image_newline),
    Step("export vision.onnx", export_vision, when=lambda o: o.vision),
    Step("validate vision.onnx", validate_vision, when=lambda o: o.vision),
    Step("ONNX Runtime fusions: ort/vision.onnx", fuse_vision, when=_fused_vision),
    Step("validate ort/vision.onnx", validate_vision_ort, when=_fused_vision),
]

__all__ = [
    "DEFAULT_ATOL",
    "IMAGE_NEWLINE",
    "VISION_INPUTS",
    "VISION_ONNX",
    "VISION_OUTPUTS",
    "VISION_STEPS",
    "compute_reference",
    "export_vision",
    "fuse_vision",
    "load_encoder",
    "read_frames",
    "release_memory",
    "save_image_newline",
    "validate_vision",
    "vision_spec",
    "validate_vision_ort",
]
