"""Qwen2.5-VL: its own ViT (window attention, 2D rotary, SwiGLU) with a 2x2 patch merger,
temporal patch 2 (F frames give L = F / 2 temporal groups), no newline, 3D M-RoPE positions.

Sources: ``config.json`` of ``Qwen/Qwen2.5-VL-{3B,7B}-Instruct`` (SiLU vision MLP, RMSNorm,
``mrope_section`` [16, 24, 24], ``rope_theta`` 1e6, ``tokens_per_second`` 2); transformers'
``modeling_qwen2_5_vl.py`` and ``Qwen2VLImageProcessor`` (see docs/backbones.md, "Qwen2.5-VL").
"""

from __future__ import annotations

from pathlib import Path

from infomerge.backbones.family import BackboneFamily


class Qwen25VLFamily(BackboneFamily):
    """Qwen2.5-VL at a fixed frame size (``frame_height`` x ``frame_width``)."""

    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    positions = "mrope"
    newline_modes = ("none",)
    siglip_head = False
    vision_shards_only = False  # the LLM reads every shard
    vision_dtypes = ("fp32",)
    static_frame_count = True
    fps_sampling = True  # qwen-vl-utils samples at 2 fps by default; M-RoPE ids follow the rate
    ort_fused_vision = False  # ORT's fusions are those of a ViT with LayerNorm and no rotary embedding
    backends = {
        "vision": ("torch", "ort", "trt"),
        "compress": ("torch", "none", "ort", "trt"),
        "llm": ("torch", "ort"),  # ort: the builder's MRotaryEmbedding graph, (3, 1, S) position_ids
    }
    missing_backend = {
        "vision": "not a Qwen2.5-VL vision backend",
        "compress": "not a Qwen2.5-VL compress backend",
        "llm": "not a Qwen2.5-VL LLM backend",
    }
    #: VisionZip, FlashVID and HoliTom read the tower's last-layer ``attention`` (and ``keys``)
    vision_outputs = ("attention", "keys")  # infomerge.backbones.qwen_vision
    model_types = ("qwen2_5_vl",)
    hf_baseline_refusal = (
        "the Hugging Face baseline row drives LlavaOnevision's classes; Qwen2.5-VL's equivalence with "
        "HF is tested in tests/test_qwen.py instead"
    )

    def hf_config(self, bb):
        """A transformers ``Qwen2_5_VLConfig`` with ``bb``'s numbers, built offline (no download).

        Raises:
            ValueError: ``bb`` is not a Qwen2.5-VL backbone.
        """
        if bb.family != self.name:
            raise ValueError(f"backbone {bb.name!r} is not a Qwen2.5-VL backbone")
        from transformers import Qwen2_5_VLConfig

        vision = dict(
            depth=bb.vision_layers,
            hidden_size=bb.vision_hidden,
            hidden_act="silu",
            intermediate_size=bb.vision_intermediate,
            num_heads=bb.vision_heads,
            in_channels=3,
            patch_size=bb.patch,
            spatial_merge_size=bb.spatial_merge,
            temporal_patch_size=bb.temporal_patch,
            tokens_per_second=bb.tokens_per_second,
            window_size=bb.vision_window,
            out_hidden_size=bb.vision_out_hidden or bb.text_hidden,
            fullatt_block_indexes=list(bb.vision_fullatt_blocks),
        )
        text = dict(
            vocab_size=bb.text_vocab,
            hidden_size=bb.text_hidden,
            intermediate_size=bb.text_intermediate,
            num_hidden_layers=bb.text_layers,
            num_attention_heads=bb.text_heads,
            num_key_value_heads=bb.text_kv_heads,
            hidden_act="silu",
            max_position_embeddings=bb.text_max_positions,
            rms_norm_eps=bb.text_rms_norm_eps,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": bb.text_rope_theta,
                "mrope_section": list(bb.mrope_section),
            },
            tie_word_embeddings=bb.tie_word_embeddings,
            # <|endoftext|> / <|im_end|> of the Qwen2.5 vocabulary; the tiny one sets its own
            bos_token_id=151643 if bb.text_vocab > 151645 else None,
            eos_token_id=151645 if bb.text_vocab > 151645 else None,
        )
        return Qwen2_5_VLConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=bb.image_token_id,
            video_token_id=bb.video_token_id,
            vision_start_token_id=bb.vision_start_token_id,
            vision_end_token_id=bb.vision_end_token_id,
            tie_word_embeddings=bb.tie_word_embeddings,
        )

    def patch_grid(self, bb):
        """(frame_height / 14, frame_width / 14)."""
        return bb.frame_height // bb.patch, bb.frame_width // bb.patch

    def token_grid(self, bb):
        """(frame_height / 28, frame_width / 28): 2 x 2 patches merge into one token."""
        h, w = self.patch_grid(bb)
        return h // bb.spatial_merge, w // bb.spatial_merge

    def frame_step(self, bb):
        """The temporal patch (2): frames are encoded in pairs."""
        return bb.temporal_patch

    def groups_for(self, bb, frames):
        """L = F / temporal_patch temporal groups (F must be a multiple of it)."""
        return frames // bb.temporal_patch

    def video_tokens_for(self, bb, frames, tokens_per_frame=None):
        """(F / 2) * N video pad tokens (``<|vision_start|>`` / ``<|vision_end|>`` are text tokens of
        the template, not counted; M-RoPE positions may span more)."""
        n = bb.tokens_per_frame if tokens_per_frame is None else tokens_per_frame
        return self.groups_for(bb, frames) * n

    def build_tiny_checkpoint(self) -> Path:
        from infomerge.backbones.tiny_qwen import build_tiny_qwen_checkpoint

        return build_tiny_qwen_checkpoint()

    def write_random_weights(self, out, bb, seed, device):
        from infomerge.backbones.random_weights import write_qwen

        write_qwen(out, bb, seed, device)

    def vision_encoder(self, bb, model_path=None, *, frames=None, random_weights=False, siglip_path=None,
                       seed=0, dtype=None, fingerprint=True):
        """:class:`~infomerge.backbones.qwen_vision.QwenVisionEncoder` at ``frames`` frames (its grid
        is static); ``siglip_path`` does not apply."""
        import torch

        from infomerge.backbones.qwen_vision import QwenVisionEncoder

        return QwenVisionEncoder.from_backbone(
            bb,
            model_path,
            frames=frames,
            random_weights=random_weights,
            dtype=torch.float32 if dtype is None else dtype,
            seed=seed,
            fingerprint=fingerprint,
        )

    def decode_options(self, bb):
        """Full-resolution frames, then :func:`~infomerge.video.qwen_preprocess.qwen_preprocess` at
        the backbone's fixed ``frame_height x frame_width``."""
        from functools import partial

        from infomerge.video.qwen_preprocess import qwen_preprocess

        size = {"height": bb.frame_height, "width": bb.frame_width}
        return {"preprocess": partial(qwen_preprocess, **size)}

    def pixel_shape(self, bb, frames):
        """[F, 3, h, w] at the backbone's fixed frame size."""
        return [frames, 3, bb.frame_height, bb.frame_width]

    def trace_frames(self, bb):
        """One temporal group (the graph is traced on 2 frames, then pinned to F)."""
        return bb.temporal_patch

    def load_text_decoder(self, checkpoint, dtype, device):
        """:func:`~infomerge.backbones.qwen_text.load_qwen_text_decoder` (the plain-torch decoder
        with M-RoPE)."""
        from infomerge.backbones.qwen_text import load_qwen_text_decoder

        return load_qwen_text_decoder(checkpoint, dtype, device)

    def text_key(self, key):
        """:func:`~infomerge.backbones.qwen_text.qwen_text_key` (``model.language_model.*``, the hub's
        ``model.layers.*`` / ``model.embed_tokens.*`` / ``model.norm.*``, ``lm_head.*``)."""
        from infomerge.backbones.qwen_text import qwen_text_key

        return qwen_text_key(key)

    def llm_builder_input(self, checkpoint, scratch):
        """The checkpoint itself: its config names ``Qwen2_5_VLForConditionalGeneration``, for which
        the builder has its own text-model path (``Qwen25VLTextModel``: transformers loads the
        checkpoint and maps its keys; only the language model is exported; M-RoPE as
        ``com.microsoft.MRotaryEmbedding`` with the config's ``mrope_section``, ``position_ids``
        (3, B, S))."""
        return Path(checkpoint)

    def manifest_geometry(self, bb):
        """Its frame size replaces SigLIP's ``image_size``; the feature axis is L = F / 2 groups."""
        return {
            "family": bb.family,
            "frame_height": bb.frame_height,
            "frame_width": bb.frame_width,
            "temporal_patch": bb.temporal_patch,
            "groups": self.groups_for(bb, bb.frames),
        }


FAMILY = Qwen25VLFamily()
