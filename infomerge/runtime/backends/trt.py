"""The ``trt`` backend: the TensorRT engines of an artifact directory (:mod:`infomerge.engines`).

- vision: the ``vision`` engine (same I/O names as ``vision.onnx``; outputs after H, A, g go to
  ``VisionFeatures.extra``);
- compress: the ``compress`` engine (same I/O names as ``compress.onnx``, inputs fed by name), checked
  against the requested method and retention like the ONNX Runtime one.

There is no TensorRT LLM backend: pair it with ``--llm torch`` or ``--llm ort``. Engine outputs
are CUDA tensors and stay there: the compress engine reads the vision engine's outputs in place.
"""

from __future__ import annotations

import torch

from infomerge.artifacts.layout import IMAGE_NEWLINE
from infomerge.runtime.backends.base import (
    BackendSource,
    VideoTokens,
    VisionFeatures,
    dedupe_sorted,
    method_inputs,
)
from infomerge.runtime.backends.ort import (
    BASE_OUTPUTS,
    check_compress_graph,
    load_image_newline,
)


class TrtVision:
    """The vision engine; ``extra_outputs``: its outputs after H, A, g."""

    name = "trt"

    def __init__(self, runner, image_newline: torch.Tensor):
        self.runner = runner
        self.image_newline = image_newline
        self.extra_outputs = tuple(k for k in runner.output_names if k not in BASE_OUTPUTS)

    def __call__(self, pixel_values: torch.Tensor) -> VisionFeatures:
        out = self.runner({"pixel_values": pixel_values.float()})
        extra = {k: out[k].float() for k in self.extra_outputs}
        return VisionFeatures(*(out[k].float() for k in BASE_OUTPUTS), extra)


class TrtCompressor:
    """The compression engine."""

    name = "trt"

    def __init__(self, runner, method=None):
        self.runner = runner
        self.method = method

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        extra = method_inputs(self.method, f, "this vision backend") if self.method is not None else f.extra
        out = self.runner({"H": f.H, "A": f.A, "g": f.g, **extra})
        return VideoTokens(*dedupe_sorted(out["tokens"].float(), out["index"].to(torch.int64)))


def vision(source: BackendSource) -> TrtVision:
    from infomerge.engines.runner import load_artifact_engine

    root = source.need_artifacts("trt vision")
    return TrtVision(load_artifact_engine(root, "vision"), load_image_newline(root / IMAGE_NEWLINE))


def compress(source: BackendSource) -> TrtCompressor:
    from infomerge.engines.runner import load_artifact_engine

    root = source.need_artifacts("trt compress")
    m = source.method
    check_compress_graph(root, source.manifest, m.name, float(source.config.retention), m.vision_outputs)
    return TrtCompressor(load_artifact_engine(root, "compress"), m)


VISION, COMPRESS = vision, compress
