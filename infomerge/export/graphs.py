"""Every graph ``infomerge-export`` writes, declared once (in the manner of Optimum's ``OnnxConfig``).

A :class:`GraphSpec` names the graph's file, its inputs and outputs in order with their shapes and
dtypes (as functions of the backbone, frames and precision), the validation tolerance of each
output per precision (relative to the output's peak |value|; 0 means exact), how to make tracing
inputs, and the opset. The export steps read these; nothing else spells a graph's I/O.

- ``vision``: pixel_values (F, 3, S, S) float32 -> H (F, N, D) float32 or float16, A (F, N),
  g (F, G) float32;
- ``compress``: H (F, N, D), A (F, N), g (F, G) -> tokens (B, D) in H's dtype, index (B,) int64;
- ``vision_compress``: pixel_values -> tokens, index;
- ``compress_plugin``: as ``compress``, its merges as TensorRT plugin ops.

S: image size (384), N: tokens per frame (196), D: the LLM width, G: the vision width (SigLIP
head), B: the method's budget for the retention ratio.

Qwen2.5-VL (``family="qwen2_5_vl"``; shapes asked of ``backbone.family_spec``): pixel_values
(F, 3, h, w) at the backbone's fixed frame size; the feature axis is L = F / 2 temporal groups
(``backbone.groups_for(F)``), N = (h / 28) (w / 28) merged tokens, G = D (FastVID's global feature
is the mean merged token). Every shape function takes F, the sampled frames, and derives L itself.

A method that reads optional vision outputs (``Method.vision_outputs``, e.g. VisionZip's
``attention`` (F, N) and ``keys`` (F, N, head_dim), :data:`infomerge.backbones.vision.EXTRA_OUTPUTS`)
gets the specs of :func:`with_vision_outputs`: ``vision`` with those names appended to its
outputs, ``compress`` / ``compress_plugin`` with them appended to their inputs (the fused graph's
I/O is unchanged; it is joined on every shared name). The default specs are those of every other
method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from infomerge.artifacts.layout import COMPRESS_ONNX, FUSED_ONNX, PLUGIN_ONNX, VISION_ONNX
from infomerge.backbones.vision import EXTRA_OUTPUTS

OPSET = 17


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph.

    Attributes:
        name: the key in the manifest's ``graphs`` section.
        file: the ``.onnx`` file name in the artifact directory.
        inputs: input names, in order.
        outputs: output names, in order.
        shapes: ``shapes(backbone, frames, budget, g_dim) -> {name: [dims]}`` of inputs and outputs.
        atol: ``{precision: {output: tolerance}}``, relative to each output's peak; 0: exact.
        example: ``example(backbone, frames, dtype, g_dim) -> tuple`` of tracing inputs (never the
            validation video), or None where the graph is composed rather than traced.
        opset: ONNX opset.
    """

    name: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shapes: Callable[..., dict]
    atol: dict
    example: Callable[..., tuple] | None = None
    opset: int = OPSET

    def check_io(self, inputs: dict, outputs: dict, bb, frames: int, budget: int | None, g_dim: int) -> None:
        """Compare an exported graph's I/O (from :func:`infomerge.artifacts.onnx_graph.graph_io`) with
        this declaration: names in order and static shapes.

        Raises:
            ValidationError: a missing, extra or reordered name, or a shape other than declared.
        """
        from infomerge.errors import ValidationError

        if tuple(inputs) != self.inputs or tuple(outputs) != self.outputs:
            raise ValidationError(
                f"{self.file}: I/O {tuple(inputs)} -> {tuple(outputs)}, "
                f"declared {self.inputs} -> {self.outputs}"
            )
        want = self.shapes(bb, frames, budget, g_dim)
        for name, spec in {**inputs, **outputs}.items():
            if name in want and list(spec["shape"]) != list(want[name]):
                raise ValidationError(f"{self.file}: {name} has shape {spec['shape']}, declared {want[name]}")

    def tolerances(self, precision: str, override: float | None = None) -> dict[str, float]:
        """Per-output tolerances for ``precision``; ``override`` (``--atol``) replaces every non-exact one."""
        return {
            k: (float(override) if override is not None and v > 0 else float(v))
            for k, v in self.atol[precision].items()
        }


def synthetic_features(frames: int, n: int, d: int, g_dim: int, dtype: torch.dtype, seed: int = 4321):
    """Deterministic tracing input (H (F, N, D) ``dtype``, A (F, N), g (F, G) float32): smooth random
    'video' features, NOT a real video."""
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


def pixel_shape(bb, frames: int) -> list[int]:
    """[F, 3, S, S] (SigLIP's square frames), or [F, 3, h, w] at a Qwen2.5-VL backbone's fixed size:
    the family's (:meth:`~infomerge.backbones.family.BackboneFamily.pixel_shape`)."""
    return bb.family_spec.pixel_shape(bb, frames)


def feature_frames(bb, frames: int) -> int:
    """The frame axis of H, A, g for ``frames`` sampled frames: F, or L = F / 2 for Qwen2.5-VL."""
    return bb.groups_for(frames)


def _random_pixels(bb, frames: int, dtype: torch.dtype, g_dim: int):
    gen = torch.Generator().manual_seed(1234)
    return (torch.rand(pixel_shape(bb, frames), generator=gen) * 2 - 1,)


def _compress_example(bb, frames: int, dtype: torch.dtype, g_dim: int):
    return synthetic_features(feature_frames(bb, frames), bb.tokens_per_frame, bb.text_hidden, g_dim, dtype)


def _vision_shapes(bb, frames, budget, g_dim):
    n, lf = bb.tokens_per_frame, feature_frames(bb, frames)
    return {
        "pixel_values": pixel_shape(bb, frames),
        "H": [lf, n, bb.text_hidden],
        "A": [lf, n],
        "g": [lf, g_dim],
    }


def _compress_shapes(bb, frames, budget, g_dim):
    n, lf = bb.tokens_per_frame, feature_frames(bb, frames)
    return {
        "H": [lf, n, bb.text_hidden],
        "A": [lf, n],
        "g": [lf, g_dim],
        "tokens": [budget, bb.text_hidden],
        "index": [budget],
    }


def _fused_shapes(bb, frames, budget, g_dim):
    return {"pixel_values": pixel_shape(bb, frames), "tokens": [budget, bb.text_hidden], "index": [budget]}


# fp32: graph and torch differ in summation order only. fp16: weights and activations are rounded
# to 11 bits through 26 layers (measured on real frames: docs/export.md). index: exact.
_VISION_ATOL = {"fp32": {"H": 1e-4, "A": 1e-4, "g": 1e-4}, "fp16": {"H": 2e-2, "A": 2e-2, "g": 2e-2}}
_COMPRESS_ATOL = {"fp32": {"tokens": 1e-4, "index": 0.0}, "fp16": {"tokens": 2e-2, "index": 0.0}}

VISION = GraphSpec(
    "vision", VISION_ONNX, ("pixel_values",), ("H", "A", "g"), _vision_shapes, _VISION_ATOL, _random_pixels
)
COMPRESS = GraphSpec(
    "compress",
    COMPRESS_ONNX,
    ("H", "A", "g"),
    ("tokens", "index"),
    _compress_shapes,
    _COMPRESS_ATOL,
    _compress_example,
)
FUSED = GraphSpec(
    "vision_compress", FUSED_ONNX, ("pixel_values",), ("tokens", "index"), _fused_shapes, _COMPRESS_ATOL
)
PLUGIN = GraphSpec(
    "compress_plugin",
    PLUGIN_ONNX,
    ("H", "A", "g"),
    ("tokens", "index"),
    _compress_shapes,
    _COMPRESS_ATOL,
    _compress_example,
)

GRAPHS = {g.name: g for g in (VISION, COMPRESS, FUSED, PLUGIN)}


def extra_shape(name: str, bb, frames: int) -> list[int]:
    """Static shape of optional vision output ``name`` (:data:`~infomerge.backbones.vision.EXTRA_OUTPUTS`):
    ``attention`` [F, N], ``keys`` [F, N, head_dim] (head_dim = vision width / heads); F is L
    (:func:`feature_frames`) for Qwen2.5-VL.

    Raises:
        ValueError: an unknown name.
    """
    n, lf = bb.tokens_per_frame, feature_frames(bb, frames)
    if name == "attention":
        return [lf, n]
    if name == "keys":
        return [lf, n, bb.vision_hidden // bb.vision_heads]
    raise ValueError(f"unknown vision output {name!r}; known: {', '.join(EXTRA_OUTPUTS)}")


def synthetic_extras(names, bb, frames: int, seed: int = 8765) -> tuple[torch.Tensor, ...]:
    """Deterministic float32 tracing inputs for the optional vision outputs ``names`` (NOT a real
    video): a softmax row per frame for ``attention``, Gaussian ``keys``; shapes of :func:`extra_shape`."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name in names:
        shape = extra_shape(name, bb, frames)
        x = torch.randn(shape, generator=gen)
        out.append(torch.softmax(x, -1) if name == "attention" else x)
    return tuple(out)


def with_vision_outputs(spec: GraphSpec, names: tuple[str, ...]) -> GraphSpec:
    """``spec`` for a method that reads the optional vision outputs ``names`` (in that order).

    ``vision``: the names appended to the outputs (tolerances as ``A``'s); ``compress`` and
    ``compress_plugin``: appended to the inputs (tracing example: :func:`synthetic_extras`);
    ``vision_compress``: unchanged. ``names == ()``: ``spec`` itself.

    Raises:
        ValueError: an unknown name.
    """
    names = tuple(names)
    if not names or spec.name == FUSED.name:
        return spec
    unknown = [k for k in names if k not in EXTRA_OUTPUTS]
    if unknown:
        raise ValueError(f"unknown vision outputs {unknown}; known: {', '.join(EXTRA_OUTPUTS)}")
    base_shapes = spec.shapes

    def shapes(bb, frames, budget, g_dim):
        return {**base_shapes(bb, frames, budget, g_dim), **{k: extra_shape(k, bb, frames) for k in names}}

    if spec.name == VISION.name:
        atol = {p: {**tol, **{k: tol["A"] for k in names}} for p, tol in spec.atol.items()}
        return dataclasses.replace(spec, outputs=spec.outputs + names, shapes=shapes, atol=atol)
    base_example = spec.example

    def example(bb, frames, dtype, g_dim):
        return (*base_example(bb, frames, dtype, g_dim), *synthetic_extras(names, bb, frames))

    return dataclasses.replace(spec, inputs=spec.inputs + names, shapes=shapes, example=example)


__all__ = [
    "COMPRESS",
    "FUSED",
    "GRAPHS",
    "OPSET",
    "PLUGIN",
    "VISION",
    "GraphSpec",
    "extra_shape",
    "feature_frames",
    "pixel_shape",
    "synthetic_extras",
    "synthetic_features",
    "with_vision_outputs",
]
