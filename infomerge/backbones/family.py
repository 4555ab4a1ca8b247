"""The backbone-family registry: what differs between model families, asked by name.

A :class:`BackboneFamily` holds everything that depends on a backbone's architecture rather than
its sizes: the transformers config, the vision encoder, frame preprocessing, token / group
arithmetic, checkpoint building, the position scheme of the LLM, the shape of the vision graph's
input and the refusals that apply. A :class:`~infomerge.backbones.registry.Backbone` names its
family (``Backbone.family``, a registered name) and call sites ask it
(``bb.family_spec.groups_for(bb, frames)``) instead of branching on the name.

Adding a family: write one module under ``infomerge/backbones/families/`` that defines
``FAMILY = MyFamily()`` (a :class:`BackboneFamily` subclass) and add its module name to
:data:`MODULES` below. Where a higher layer (runtime, export, jetson) needs per-family code that
cannot live here, it keeps a small registry keyed by family name (e.g. the planner's vision rows).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from infomerge.errors import UnknownFamilyError

if TYPE_CHECKING:  # the registry imports this module; Backbone is only named in annotations
    import torch

    from infomerge.backbones.registry import Backbone

PositionScheme = Literal["1d", "mrope"]


class BackboneFamily:
    """One model family (LLaVA-OneVision / LLaVA-Video, Qwen2.5-VL, ...).

    Class attributes (data a call site reads):
        name: the registry key, the value of ``Backbone.family``.
        title: the family in messages (``"Qwen2.5-VL"``).
        positions: ``"1d"`` (gapped 1D RoPE ids, :func:`infomerge.runtime.embeddings.assemble`) or
            ``"mrope"`` (3-row M-RoPE ids, :func:`~infomerge.runtime.embeddings.assemble_mrope`).
        newline_modes: the ``Backbone.newline`` values the runtime assembles for this family.
        siglip_head: whether checkpoints carry a ``siglip_head/`` (the SigLIP MAP head giving g).
        vision_shards_only: whether the vision stage may fetch only the hub shards holding vision
            tensors (False: the LLM reads every shard, fetch them all).
        vision_dtypes: ``--vision-dtype`` values the torch vision encoder runs.
        static_frame_count: whether the vision encoder's frame count is fixed at build time.
        fps_sampling: whether frames may be sampled at a rate (``--fps``,
            :func:`infomerge.video.sampling.sample_by_fps`): the family's processor samples by fps
            and its positions follow the sampled rate (Qwen2.5-VL's M-RoPE time ids). False: a
            fixed frame count only (LLaVA: lmms-eval's 32 / 64 frames, positions without time).
        ort_fused_vision: whether ORT's transformer fusions apply to the vision graph.
        backends: per stage (``vision``, ``compress``, ``llm``) the backend names that run this
            family; None: every registered backend.
        missing_backend: per stage, why the other backends do not run it.
        vision_outputs: the optional vision outputs (``Method.vision_outputs``) its vision stage
            produces; None: all of :data:`infomerge.backbones.vision.EXTRA_OUTPUTS`.
        onnx_llm_refusal: why ``infomerge-export --llm`` cannot export its LLM (None: it can).
        model_types: the ``config.json`` ``model_type`` values of its checkpoints
            (:func:`checkpoint_family`).
        hf_baseline_refusal: why the benchmark's Hugging Face row cannot drive it (None: it can).
    """

    name: str = ""
    title: str = ""
    positions: PositionScheme = "1d"
    newline_modes: tuple[str, ...] = ()
    siglip_head: bool = False
    vision_shards_only: bool = False
    vision_dtypes: tuple[str, ...] = ("fp32",)
    static_frame_count: bool = False
    fps_sampling: bool = False
    ort_fused_vision: bool = False
    backends: Mapping[str, tuple[str, ...]] | None = None
    missing_backend: Mapping[str, str] = {}
    vision_outputs: tuple[str, ...] | None = None
    onnx_llm_refusal: str | None = None
    hf_baseline_refusal: str | None = None
    model_types: tuple[str, ...] = ()

    # --- transformers config ------------------------------------------------------------------
    def hf_config(self, bb: Backbone) -> Any:
        """The transformers config of the whole model, built offline (no download)."""
        raise NotImplementedError

    # --- token / group arithmetic -------------------------------------------------------------
    def patch_grid(self, bb: Backbone) -> tuple[int, int]:
        """(rows, columns) of vision patches of one frame."""
        raise NotImplementedError

    def token_grid(self, bb: Backbone) -> tuple[int, int]:
        """(rows, columns) of LLM tokens of one frame (or temporal group)."""
        raise NotImplementedError

    def frame_step(self, bb: Backbone) -> int:
        """Sampled frame counts must be multiples of this (1: any count)."""
        return 1

    def groups_for(self, bb: Backbone, frames: int) -> int:
        """L, the frame axis the compressor sees for ``frames`` sampled frames (default F)."""
        return frames

    def video_tokens_for(self, bb: Backbone, frames: int, tokens_per_frame: int | None = None) -> int:
        """Video placeholder tokens of one uncompressed video of ``frames`` frames with
        ``tokens_per_frame`` tokens per frame (default the backbone's), newline(s) included."""
        raise NotImplementedError

    # --- checkpoints ----------------------------------------------------------------------------
    def build_tiny_checkpoint(self) -> Path:
        """Build (or reuse) the locally built tiny random-weight checkpoint of this family."""
        raise NotImplementedError

    def write_random_weights(self, out: Path, bb: Backbone, seed: int, device: str) -> None:
        """Write a full-size random-weight checkpoint of ``bb`` into the empty directory ``out``."""
        raise NotImplementedError

    # --- vision ---------------------------------------------------------------------------------
    def vision_encoder(
        self,
        bb: Backbone,
        model_path: str | Path | None = None,
        *,
        frames: int | None = None,
        random_weights: bool = False,
        siglip_path: str | Path | None = None,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        fingerprint: bool = True,
    ) -> torch.nn.Module:
        """The vision encoder of ``bb`` with its weights (``pixel_values -> (H, A, g, ...)``).

        ``frames``: the frame count of a static-grid encoder (ignored by the others);
        ``siglip_path``: the SigLIP head checkpoint (ignored by families without one).
        """
        raise NotImplementedError

    def decode_options(self, bb: Backbone) -> dict:
        """How frames are preprocessed, as :func:`infomerge.video.read_video`-side keywords:
        ``{"size": S}`` (square resize while decoding) or ``{"preprocess": f}`` (``f`` maps the
        sampled full-resolution frames to ``pixel_values``)."""
        raise NotImplementedError

    def pixel_shape(self, bb: Backbone, frames: int) -> list[int]:
        """The vision graph's ``pixel_values`` shape for ``frames`` frames, e.g. [F, 3, S, S]."""
        raise NotImplementedError

    def trace_frames(self, bb: Backbone) -> int | None:
        """Frames the vision graph is traced on (None: the exporter's default)."""
        return None

    def manifest_geometry(self, bb: Backbone) -> dict:
        """Extra backbone fields recorded in the artifact manifest (default none)."""
        return {}

    # --- the language model ----------------------------------------------------------------------
    def load_text_decoder(self, checkpoint: Path, dtype: torch.dtype, device: str) -> torch.nn.Module:
        """The checkpoint's language model for the torch LLM backend: the plain-torch
        :class:`~infomerge.backbones.qwen2_decoder.Qwen2Decoder` (eval mode, ``inputs_embeds`` and
        explicit ``position_ids`` in, logits out), or a transformers model for a config that
        decoder does not cover."""
        raise NotImplementedError

    def text_key(self, key: str) -> str | None:
        """Checkpoint key -> the language model's key (``model.*``, ``lm_head.*``), or None for the
        vision side (never read)."""
        raise NotImplementedError

    def llm_builder_input(self, checkpoint: Path, scratch: Path) -> Path:
        """The checkpoint directory onnxruntime-genai's model builder reads to build this family's
        language model (``scratch``: an empty temporary directory it may write into)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<backbone family {self.name!r}>"


#: the modules that define the registered families (each a ``FAMILY``)
MODULES = (
    "infomerge.backbones.families.llava",
    "infomerge.backbones.families.qwen2_5_vl",
)

_FAMILIES: dict[str, BackboneFamily] = {}


def _registry() -> dict[str, BackboneFamily]:
    if not _FAMILIES:
        for module_name in MODULES:
            register_family(importlib.import_module(module_name).FAMILY)
    return _FAMILIES


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Add ``family`` to the registry under ``family.name`` (the modules of :data:`MODULES` are
    registered on first use; a test or plugin may add one more).

    Raises:
        ValueError: a family of that name is already registered, or the name is empty.
    """
    if not family.name:
        raise ValueError(f"{type(family).__name__}: a family needs a name")
    if family.name in _FAMILIES:
        raise ValueError(f"backbone family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family added by :func:`register_family` (tests); unknown names are ignored."""
    _FAMILIES.pop(name, None)


def family_names() -> tuple[str, ...]:
    """The registered family names."""
    return tuple(_registry())


def get_family(name: str) -> BackboneFamily:
    """The registered :class:`BackboneFamily` called ``name``.

    Raises:
        UnknownFamilyError: ``name`` is not registered; the message lists the choices and how to
            add one.
    """
    try:
        return _registry()[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown backbone family {name!r}; choose one of: {', '.join(_registry())} (a new family "
            "is a module under infomerge/backbones/families/ listed in infomerge.backbones.family.MODULES)"
        ) from None


def checkpoint_family(checkpoint: str | Path, default: str = "llava") -> BackboneFamily:
    """The family whose :attr:`~BackboneFamily.model_types` hold ``checkpoint``'s ``config.json``
    ``model_type``; ``default`` for other model types or no ``config.json`` (whose reader then
    reports what it cannot read)."""
    import json

    config = Path(checkpoint) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    for family in _registry().values():
        if model_type in family.model_types:
            return family
    return get_family(default)


__all__ = [
    "MODULES",
    "BackboneFamily",
    "PositionScheme",
    "checkpoint_family",
    "family_names",
    "get_family",
    "register_family",
    "unregister_family",
]
