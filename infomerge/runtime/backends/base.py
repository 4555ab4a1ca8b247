"""The three stage interfaces of the runtime, what flows between them, and what a backend is built
from.

Every vision backend maps ``pixel_values`` (F, 3, S, S) float32 to :class:`VisionFeatures`
``(H, A, g)``: H (F, N, D), A (F, N), g (F, G) (see :mod:`infomerge.backbones.vision`), plus the
optional vision outputs it produces (``extra``, by name: VisionZip's ``attention`` and ``keys``,
listed in the backend's ``extra_outputs``), and holds the (D,) ``image_newline``. Every
compressor maps the features to :class:`VideoTokens`: the kept tokens and their original flat
indices, sorted; one whose method declares ``vision_outputs`` reads them from ``extra``
(:func:`method_inputs`). The LLM interface is
:class:`infomerge.runtime.llm.LLMBackend`.

Stage outputs stay where the backend computed them: a torch vision backend on CUDA returns CUDA
tensors, and the torch compressor runs on them there; a consumer on another device moves them
(the embedding assembly moves the kept tokens to the LLM's device once).

A backend is built by a factory ``factory(source: BackendSource) -> backend`` registered under its
name (:mod:`infomerge.runtime.backends`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from infomerge.errors import ArtifactError, UsageError


@dataclass
class VisionFeatures:
    """Output of the vision stage: H (F, N, D), A (F, N) float32, g (F, G) float32, on the
    backend's device; ``extra``: the optional vision outputs by name (``attention`` (F, N),
    ``keys`` (F, N, head_dim), float32; empty for the default graph)."""

    H: torch.Tensor
    A: torch.Tensor
    g: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def method_inputs(method, features: VisionFeatures, where: str) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the optional vision outputs ``method`` reads (``method.vision_outputs``),
    taken from ``features.extra``.

    Raises:
        ArtifactError: the features lack one (a vision source exported or built without it; the
            message names the re-export command).
    """
    names = tuple(getattr(method, "vision_outputs", ()))
    missing = [k for k in names if k not in features.extra]
    if missing:
        raise ArtifactError(missing_outputs_message(method.name, missing, where))
    return {k: features.extra[k] for k in names}


def missing_outputs_message(method: str, missing, where: str) -> str:
    """The one error text for a vision source without the outputs a method reads."""
    return (
        f"{method} reads the vision outputs {', '.join(missing)}, which {where} does not produce "
        f"(exported for another method, or before they existed); re-export with "
        f"`infomerge-export --method {method}` (its vision.onnx carries them) or use --vision-backend torch"
    )


@dataclass
class VideoTokens:
    """Output of the compression stage.

    Attributes:
        tokens: (K, D) kept video tokens (merged context tokens included), sorted by ``index``.
        index: (K,) int64 original flat positions ``l * N + p``, strictly increasing.
        detail: the reference's full record (for InfoMerge / FastVID the
            :class:`~infomerge.compress.reference.Compressed` with segments, budgets, salient and
            anchor sets) when a torch compressor ran, else None.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    detail: Any = None


class VisionBackend(Protocol):
    """``__call__(pixel_values (F, 3, S, S) float32) -> VisionFeatures``; ``image_newline`` (D,).

    ``any_frame_count`` (optional, default False): the backend accepts any number of frames, not
    only the F its graph was built for (what :func:`encode_unique_frames` needs).
    """

    name: str
    image_newline: torch.Tensor

    def __call__(self, pixel_values: torch.Tensor) -> VisionFeatures: ...


class CompressBackend(Protocol):
    """``__call__(VisionFeatures) -> VideoTokens``."""

    name: str

    def __call__(self, features: VisionFeatures) -> VideoTokens: ...


@dataclass(frozen=True)
class BackendSource:
    """What a backend factory builds from.

    Attributes:
        backbone: the :class:`~infomerge.backbones.registry.Backbone`.
        device: "cpu" or "cuda[:i]".
        checkpoint: the Hugging Face checkpoint directory (torch backends), or None.
        artifacts: an ``infomerge-export`` directory (ort / trt backends), or None.
        manifest: its verified manifest, or None.
        frames: F, frames per video.
        method: the compression method's registry entry (compress backends), or None.
        config: its configuration for the retention ratio (compress backends), or None.
        options: backend-specific settings (``siglip_path``, ``compile_mode``, ``threads``).
        vision_outputs: optional vision outputs the vision backend must produce besides H, A, g
            (the methods' ``vision_outputs``; a torch encoder computes them, a graph must have them).
    """

    backbone: Any
    device: str = "cpu"
    checkpoint: Path | None = None
    artifacts: Path | None = None
    manifest: dict | None = None
    frames: int | None = None
    method: Any = None
    config: Any = None
    options: dict = field(default_factory=dict)
    vision_outputs: tuple[str, ...] = ()

    def need_artifacts(self, what: str) -> Path:
        """The artifact directory, or :class:`UsageError` (exit status 2: a missing argument) naming the
        backend that needs one."""
        if self.artifacts is None:
            raise UsageError(
                f"the {what} backend reads exported graphs: pass --artifacts DIR (infomerge-export)"
            )
        return self.artifacts

    def need_checkpoint(self, what: str) -> Path:
        """The checkpoint directory, or :class:`ArtifactError` naming the backend that needs one."""
        if self.checkpoint is None:
            raise ArtifactError(f"the {what} backend reads the checkpoint: pass --model-path DIR")
        return self.checkpoint


def encode_unique_frames(vision, pixel_values: torch.Tensor, frame_indices=None) -> VisionFeatures:
    """Run ``vision`` once per distinct sampled frame and give every repeat its frame's features.

    A video shorter than F frames is sampled with repeated frame indices (the same decoded frame,
    hence the same pixels): the tower then runs on the U < F distinct frames only, and the features
    are gathered back to F rows in sampling order. Backends pinned to F frames (exported graphs:
    ``any_frame_count`` false) run all F frames.

    Args:
        vision: a vision backend.
        pixel_values: (F, 3, S, S) float32.
        frame_indices: (F,) decoded-frame index of each sampled frame (``VideoClip.indices``), or
            None (every frame encoded).

    Returns:
        :class:`VisionFeatures` with F rows, equal to ``vision(pixel_values)``'s.
    """
    if frame_indices is None or not getattr(vision, "any_frame_count", False):
        return vision(pixel_values)
    idx = torch.as_tensor(frame_indices).reshape(-1)
    unique, inverse = torch.unique(idx, return_inverse=True)  # inverse: (F,) row in ``unique``
    if unique.numel() == idx.numel():
        return vision(pixel_values)
    first = torch.full((unique.numel(),), idx.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(idx.numel()), reduce="amin")  # (U,) first position
    f = vision(pixel_values[first])
    rows = inverse.to(f.H.device)
    return VisionFeatures(f.H[rows], f.A[rows], f.g[rows], {k: v[rows] for k, v in f.extra.items()})


def dedupe_sorted(tokens: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort by index and drop repeated indices (a fixed-budget graph may pad with repeats).

    Args:
        tokens: (B, D); index: (B,) int64.

    Returns:
        (K, D) tokens and (K,) strictly increasing indices, K <= B.
    """
    order = torch.argsort(index, stable=True)
    index, tokens = index[order], tokens[order]
    if index.numel() > 1:
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        index, tokens = index[keep], tokens[keep]
    return tokens, index


class NoCompression:
    """Keeps all F * N tokens (the uncompressed baseline, ``--retention 1.0``)."""

    name = "none"

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        frames, n, d = f.H.shape
        return VideoTokens(
            f.H.reshape(frames * n, d), torch.arange(frames * n, dtype=torch.int64, device=f.H.device)
        )


def no_compression(source: BackendSource) -> NoCompression:
    """Factory of the ``none`` compress backend."""
    return NoCompression()


__all__ = [
    "BackendSource",
    "CompressBackend",
    "NoCompression",
    "VideoTokens",
    "VisionBackend",
    "VisionFeatures",
    "dedupe_sorted",
    "encode_unique_frames",
    "method_inputs",
    "missing_outputs_message",
    "no_compression",
]
