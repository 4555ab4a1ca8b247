"""Vision and compression backends of the runtime: torch, ONNX Runtime and TensorRT.

Every vision backend maps ``pixel_values`` (F, 3, 384, 384) float32 to ``(H, A, g)``:
H (F, N, D), A (F, N) float32, g (F, G) float32 (see :mod:`infomerge.backbones.vision`), and
holds the (D,) ``image_newline``. Every compressor maps ``(H, A, g)`` to :class:`VideoTokens`:
the kept tokens and their original flat indices, sorted.

| backend | vision | compression |
|---|---|---|
| torch | ``VisionEncoder`` on the checkpoint | paper-exact reference (``compress.reference.reference``) |
| ort | ``vision.onnx`` of an artifact directory | ``compress.onnx`` (fixed budget, shape-static) |
| trt | the vision engine (:mod:`infomerge.engines`) | the compression engine |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infomerge.errors import ArtifactError

VISION_BACKENDS = ("torch", "ort", "trt")
COMPRESS_BACKENDS = ("none", "torch", "ort", "trt")


@dataclass
class VisionFeatures:
    """Output of the vision stage: H (F, N, D), A (F, N) float32, g (F, G) float32 (CPU tensors)."""

    H: torch.Tensor
    A: torch.Tensor
    g: torch.Tensor


@dataclass
class VideoTokens:
    """Output of the compression stage.

    Attributes:
        tokens: (K, D) kept video tokens (merged context tokens included), sorted by ``index``.
        index: (K,) int64 original flat positions ``l * N + p``, strictly increasing.
        detail: the reference compressor's full record (segments, budgets, salient and anchor
            sets; :class:`infomerge.compress.reference.Compressed`) when the torch backend ran,
            else None.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    detail: Any = None


# --- helpers -------------------------------------------------------------------------------------
def _ort_session(path: Path, device: str):
    import onnxruntime as ort

    from infomerge.runtime.llm_ort import providers_for

    if not path.is_file():
        raise ArtifactError(f"{path} is missing; export it with `infomerge-export` (see docs/export.md)")
    return ort.InferenceSession(str(path), providers=providers_for(device))


def _dedupe_sorted(tokens: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort by index and drop repeated indices (a fixed-budget graph may pad with repeats)."""
    order = torch.argsort(index, stable=True)
    index, tokens = index[order], tokens[order]
    if index.numel() > 1:
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        index, tokens = index[keep], tokens[keep]
    return tokens, index


# --- vision --------------------------------------------------------------------------------------
class TorchVision:
    """The checkpoint's vision tower, projector and SigLIP head in PyTorch."""

    name = "torch"

    def __init__(self, encoder, device: str = "cpu"):
        self.encoder = encoder.to(device).eval()
        self.device = device
        self.image_newline = encoder.image_newline.detach().float().cpu()

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> VisionFeatures:
        h, a, g = self.encoder(pixel_values.to(self.device))
        return VisionFeatures(h.float().cpu(), a.float().cpu(), g.float().cpu())


class OrtVision:
    """``vision.onnx`` (input ``pixel_values``; outputs ``H``, ``A``, ``g``) in ONNX Runtime."""

    name = "ort"

    def __init__(self, graph: str | os.PathLike, image_newline: str | os.PathLike, device: str = "cpu"):
        self.session = _ort_session(Path(graph), device)
        newline = Path(image_newline)
        if not newline.is_file():
            raise ArtifactError(f"{newline} is missing; re-run `infomerge-export` for these artifacts")
        self.image_newline = torch.from_numpy(np.load(newline).astype(np.float32))

    def __call__(self, pixel_values: torch.Tensor) -> VisionFeatures:
        h, a, g = self.session.run(["H", "A", "g"], {"pixel_values": pixel_values.float().numpy()})
        return VisionFeatures(
            torch.from_numpy(h).float(), torch.from_numpy(a).float(), torch.from_numpy(g).float()
        )


# --- compression ---------------------------------------------------------------------------------
class NoCompression:
    """Keeps all F * N tokens (the uncompressed baseline)."""

    name = "none"

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        frames, n, d = f.H.shape
        return VideoTokens(f.H.reshape(frames * n, d), torch.arange(frames * n, dtype=torch.int64))


class TorchCompressor:
    """The paper-exact reference compressor (data-dependent token count)."""

    name = "torch"

    def __init__(self, config):
        self.config = config

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        from infomerge.compress.reference import reference

        c = reference(f.H, f.A, f.g, self.config)
        tokens, index = c.tokens, c.index.to(torch.int64)
        return VideoTokens(tokens, index, detail=c)


class OrtCompressor:
    """``compress.onnx`` (inputs ``H``, ``A``, ``g``; outputs ``tokens`` (B, D), ``index`` (B,))."""

    name = "ort"

    def __init__(self, graph: str | os.PathLike, device: str = "cpu"):
        self.session = _ort_session(Path(graph), device)
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        def as_input(name: str, t: torch.Tensor) -> np.ndarray:
            dtype = np.float16 if self.input_types.get(name) == "tensor(float16)" else np.float32
            return t.numpy().astype(dtype)

        feeds = {"H": as_input("H", f.H), "A": as_input("A", f.A), "g": as_input("g", f.g)}
        tokens, index = self.session.run(["tokens", "index"], feeds)
        tokens, index = _dedupe_sorted(
            torch.from_numpy(tokens).float(), torch.from_numpy(index).to(torch.int64)
        )
        return VideoTokens(tokens, index)


# --- TensorRT ------------------------------------------------------------------------------------
def trt_runner(artifacts: str | os.PathLike, graph: str):
    """The checked runner of ``<artifacts>/engines/<graph>.smXY.engine`` (:mod:`infomerge.engines.runner`).

    Raises:
        ArtifactError: no engine of that graph for this GPU (the message lists what exists).
        BackendUnavailableError: no TensorRT flavour installed (names the extra) or no CUDA GPU here.
        EngineMismatchError: the engine was built for another GPU, TensorRT version or source ONNX.
    """
    from infomerge.engines.runner import find_engine, load_engine_runner

    root = Path(artifacts)
    return load_engine_runner(find_engine(root, graph), expected_onnx=root / f"{graph}.onnx")


class TrtVision:
    """The vision engine (same I/O names as ``vision.onnx``)."""

    name = "trt"

    def __init__(self, artifacts: str | os.PathLike, image_newline: str | os.PathLike):
        self.runner = trt_runner(artifacts, "vision")
        self.image_newline = torch.from_numpy(np.load(image_newline).astype(np.float32))

    def __call__(self, pixel_values: torch.Tensor) -> VisionFeatures:
        out = self.runner({"pixel_values": pixel_values.float()})
        return VisionFeatures(*(out[k].float().cpu() for k in ("H", "A", "g")))


class TrtCompressor:
    """The compression engine (same I/O names as ``compress.onnx``)."""

    name = "trt"

    def __init__(self, artifacts: str | os.PathLike):
        self.runner = trt_runner(artifacts, "compress")

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        out = self.runner({"H": f.H, "A": f.A, "g": f.g})
        return VideoTokens(*_dedupe_sorted(out["tokens"].float().cpu(), out["index"].to(torch.int64).cpu()))


__all__ = [
    "COMPRESS_BACKENDS",
    "VISION_BACKENDS",
    "NoCompression",
    "OrtCompressor",
    "OrtVision",
    "TorchCompressor",
    "TorchVision",
    "TrtCompressor",
    "TrtVision",
    "VideoTokens",
    "VisionFeatures",
    "trt_runner",
]
