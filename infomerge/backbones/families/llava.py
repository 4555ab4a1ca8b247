"""LLaVA-OneVision / LLaVA-Video: SigLIP tower + MAP head, a 2-layer GELU projector, 2x2 spatial
pooling (bilinear or average), newline vector(s), a Qwen2 LLM with 1D RoPE.

Sources: the ``config.json`` of the llava-hf checkpoints (``LlavaOnevisionConfig``); the video
layouts of arXiv 2408.03326 and LLaVA-NeXT's ``llava_arch.py`` (see
:mod:`infomerge.backbones.registry`).
"""

from __future__ import annotations

from pathlib import Path

from infomerge.backbones.family import BackboneFamily


class LlavaFamily(BackboneFamily):
    """LLaVA-OneVision (``newline="one"``) and LLaVA-Video (``newline="grid"``)."""

    name = "llava"
    title = "LLaVA-OneVision"
    positions = "1d"
    newline_modes = ("one", "grid")
    siglip_head = True
    vision_shards_only = True
    vision_dtypes = ("fp32", "bf16")
    ort_fused_vision = True
    model_types = ("llava_onevision",)

    def hf_config(self, bb):
        """A transformers ``LlavaOnevisionConfig`` with ``bb``'s numbers, built offline.

        Matches the llava-hf checkpoints: ``vision_feature_layer=-1`` on the 26-layer tower,
        ``vision_feature_select_strategy="full"``, GELU projector with bias.
        """
        from transformers import LlavaOnevisionConfig

        return LlavaOnevisionConfig(
            vision_config=bb.vision_config(),
            text_config=bb.text_config(),
            image_token_index=bb.image_token_id,
            video_token_index=bb.video_token_id,
            projector_hidden_act="gelu",
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            multimodal_projector_bias=True,
            tie_word_embeddings=bb.tie_word_embeddings,
            vision_aspect_ratio="anyres_max_9",
        )

    def patch_grid(self, bb):
        """(27, 27) for SigLIP 384 / 14: image_size // patch per side."""
        return bb.patch_side, bb.patch_side

    def token_grid(self, bb):
        """(14, 14) bilinear or (13, 13) average pooled."""
        return bb.pooled_side, bb.pooled_side

    def video_tokens_for(self, bb, frames, tokens_per_frame=None):
        """F * N + 1 (``"one"``) or F * side * (side + 1) (``"grid"``), side = sqrt(N)."""
        import math

        from infomerge.backbones.registry import uncompressed_video_tokens

        side = bb.pooled_side if tokens_per_frame is None else math.isqrt(tokens_per_frame)
        return uncompressed_video_tokens(bb.newline, frames, side)

    def build_tiny_checkpoint(self) -> Path:
        from infomerge.backbones.tiny import build_tiny_checkpoint

        return build_tiny_checkpoint()

    def write_random_weights(self, out, bb, seed, device):
        from infomerge.backbones.random_weights import write_llava

        write_llava(out, bb, seed, device)

    def vision_encoder(self, bb, model_path=None, *, frames=None, random_weights=False, siglip_path=None,
                       seed=0, dtype=None, fingerprint=True):
        """:class:`~infomerge.backbones.vision.VisionEncoder` (any frame count)."""
        import torch

        from infomerge.backbones.vision import VisionEncoder

        return VisionEncoder.from_backbone(
            bb,
            model_path,
            random_weights=random_weights,
            dtype=torch.float32 if dtype is None else dtype,
            siglip_path=siglip_path,
            seed=seed,
            fingerprint=fingerprint,
        )

    def decode_options(self, bb):
        """SigLIP's square resize to ``image_size`` while decoding."""
        return {"size": bb.image_size}

    def pixel_shape(self, bb, frames):
        """[F, 3, S, S] (SigLIP's square frames)."""
        return [frames, 3, bb.image_size, bb.image_size]

    def load_text_decoder(self, checkpoint, dtype, device):
        """:func:`~infomerge.backbones.text.load_text_decoder` (the plain-torch Qwen2 decoder)."""
        from infomerge.backbones.text import load_text_decoder

        return load_text_decoder(checkpoint, dtype, device)

    def text_key(self, key):
        """:func:`~infomerge.backbones.text.text_key` (``language_model.*``, ``model.language_model.*``,
        ``lm_head.*``)."""
        from infomerge.backbones.text import text_key

        return text_key(key)

    def llm_builder_input(self, checkpoint, scratch):
        """A standalone Qwen2 checkpoint of the language model, written into ``scratch/hf``
        (:func:`~infomerge.backbones.text.extract_text_checkpoint`): the builder's Qwen2 path,
        ``RotaryEmbedding`` fed by ``position_ids`` (B, S)."""
        from infomerge.backbones.text import extract_text_checkpoint

        return extract_text_checkpoint(checkpoint, Path(scratch) / "hf")


FAMILY = LlavaFamily()
