"""The backbone registry: every supported video LLM declared in one place.

A :class:`Backbone` holds the numbers the toolkit needs without downloading anything: the Hugging
Face checkpoint id, frames per video, the newline mode, the SigLIP tower / head geometry and the
Qwen2 text dimensions. :meth:`Backbone.llava_config` turns them into a transformers
``LlavaOnevisionConfig`` offline (used for ``--random-weights`` and to cross-check a checkpoint).

Sources: the LLaVA-OneVision pipeline (arXiv 2408.03326; summary in ``docs/export.md``); the
``config.json`` of ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``,
``llava-hf/llava-onevision-qwen2-7b-ov-hf`` and ``llava-hf/LLaVA-Video-7B-Qwen2-hf`` (Qwen2-0.5B /
Qwen2-7B text models, SigLIP so400m/14-384 with its last layer removed: 26 layers, no head); the
SigLIP head (post_layernorm + MAP head) of ``google/siglip-so400m-patch14-384``.

LLaVA-Video's video layout (``llava-video-7b``, ``tiny-video``) is that of the original LLaVA-NeXT
code (``llava/model/llava_arch.py``: ``get_2dPool`` with ``mm_spatial_pool_mode="average"``, stride
2; ``add_token_per_grid`` for ``mm_newline_position="grid"``) and of its published evaluation
(``docs/LLaVA_Video_1003.md``: lmms-eval ``llava_vid``, ``max_frames_num=64``,
``mm_spatial_pool_mode=average``): 64 frames x 13 x (13 + 1) = 11,648 video tokens. Hugging Face's
``LlavaOnevisionModel.get_video_features`` (bilinear 14 x 14, one newline) is NOT that layout; see
``docs/backbones.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from infomerge.errors import UnknownBackboneError

NewlineMode = Literal["one", "grid"]
PoolMode = Literal["bilinear", "average"]

SIGLIP_HEAD_ID = "google/siglip-so400m-patch14-384"
# Token ids of the Qwen2 vocabulary used by the llava-hf checkpoints.
QWEN2_IMAGE_TOKEN_ID = 151646
QWEN2_VIDEO_TOKEN_ID = 151647


@dataclass(frozen=True)
class Backbone:
    """One video LLM: checkpoint, frames, and the dimensions of its vision tower and LLM.

    Attributes:
        name: registry key (``tiny``, ``tiny-video``, ``ov-0.5b``, ``ov-7b``, ``llava-video-7b``).
        hf_id: Hugging Face checkpoint id (``None`` for ``tiny``, which is built locally).
        frames: F, frames sampled per video.
        newline: ``"one"``: one ``image_newline`` vector after all frames (OneVision video,
            ``mm_newline_position="one_token"``); ``"grid"``: one after every pooled row of every
            frame (LLaVA-Video, ``mm_newline_position="grid"``, LLaVA-NeXT ``add_token_per_grid``).
        pool: ``mm_spatial_pool_mode`` with stride 2: ``"bilinear"`` (OneVision: 27 -> ceil(27/2)
            = 14) or ``"average"`` (LLaVA-Video: ``avg_pool2d``, 27 -> floor(27/2) = 13).
        siglip_head_id: checkpoint of the SigLIP post_layernorm + MAP head (not part of the LLaVA
            checkpoints); ``None`` for ``tiny`` (the head ships inside its checkpoint).
        image_size: input side in pixels (384).
        patch: patch side in pixels (14): 27 x 27 = 729 patches.
        pooled_side: side of the pooled grid: 14 (196 tokens per frame, bilinear) or 13 (169,
            average).
        vision_hidden, vision_layers, vision_heads, vision_intermediate: SigLIP tower (and head).
        vision_layer_norm_eps: LayerNorm epsilon of the tower and head.
        text_*: Qwen2 decoder dimensions; ``text_hidden`` is D, the width of H.
        image_token_id, video_token_id: placeholder token ids in the tokenizer.
        tie_word_embeddings: whether the LM head shares the embedding matrix.
    """

    name: str
    hf_id: str | None
    frames: int
    newline: NewlineMode
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    text_vocab: int
    text_max_positions: int = 32768
    text_rope_theta: float = 1_000_000.0
    text_rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    siglip_head_id: str | None = SIGLIP_HEAD_ID
    pool: PoolMode = "bilinear"
    image_size: int = 384
    patch: int = 14
    pooled_side: int = 14
    vision_hidden: int = 1152
    vision_layers: int = 26
    vision_heads: int = 16
    vision_intermediate: int = 4304
    vision_layer_norm_eps: float = 1e-6
    image_token_id: int = QWEN2_IMAGE_TOKEN_ID
    video_token_id: int = QWEN2_VIDEO_TOKEN_ID

    # --- derived geometry ------------------------------------------------------------------
    @property
    def patch_side(self) -> int:
        """Patches per side: image_size // patch (27)."""
        return self.image_size // self.patch

    @property
    def num_patches(self) -> int:
        """Patches per frame (729)."""
        return self.patch_side**2

    @property
    def tokens_per_frame(self) -> int:
        """N, pooled tokens per frame (196)."""
        return self.pooled_side**2

    @property
    def video_tokens(self) -> int:
        """Video placeholder tokens of one uncompressed video of :attr:`frames`, newline(s) included.

        ``"one"``: F * N + 1 (6273 for 32 x 196); ``"grid"``: F * side * (side + 1) (11648 for
        64 x 13 x 14).
        """
        return self.video_tokens_for(self.frames)

    def video_tokens_for(self, frames: int) -> int:
        """As :attr:`video_tokens` for ``frames`` frames (the runtime may sample another F)."""
        return uncompressed_video_tokens(self.newline, frames, self.pooled_side)

    def newline_tokens_for(self, frames: int) -> int:
        """Newline vectors of one uncompressed video: 1 (``"one"``) or F * side (``"grid"``)."""
        return 1 if self.newline == "one" else frames * self.pooled_side

    # --- transformers configs --------------------------------------------------------------
    def vision_config(self):
        """The tower's ``SiglipVisionConfig`` (no head, ``vision_use_head=False``), built offline."""
        return self._siglip_config(self.vision_layers, use_head=False)

    def _siglip_config(self, layers: int, use_head: bool):
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(
            hidden_size=self.vision_hidden,
            intermediate_size=self.vision_intermediate,
            num_hidden_layers=layers,
            num_attention_heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=self.vision_layer_norm_eps,
            vision_use_head=use_head,
        )

    def text_config(self):
        """The ``Qwen2Config`` of the language model, built offline."""
        from transformers import Qwen2Config

        return Qwen2Config(
            hidden_size=self.text_hidden,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            num_key_value_heads=self.text_kv_heads,
            intermediate_size=self.text_intermediate,
            vocab_size=self.text_vocab,
            max_position_embeddings=self.text_max_positions,
            rope_theta=self.text_rope_theta,
            rms_norm_eps=self.text_rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act="silu",
        )

    def llava_config(self):
        """A transformers ``LlavaOnevisionConfig`` with these numbers, built offline (no download).

        Matches the llava-hf checkpoints: ``vision_feature_layer=-1`` on the 26-layer tower,
        ``vision_feature_select_strategy="full"``, GELU projector with bias.
        """
        from transformers import LlavaOnevisionConfig

        return LlavaOnevisionConfig(
            vision_config=self.vision_config(),
            text_config=self.text_config(),
            image_token_index=self.image_token_id,
            video_token_index=self.video_token_id,
            projector_hidden_act="gelu",
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            multimodal_projector_bias=True,
            tie_word_embeddings=self.tie_word_embeddings,
            vision_aspect_ratio="anyres_max_9",
        )

    def siglip_head_config(self):
        """``SiglipVisionConfig`` of the original SigLIP with its head (``vision_use_head=True``).

        Only ``post_layernorm`` and ``head`` are used from it: hidden size, heads, MLP width and
        LayerNorm epsilon are those of the tower. ``num_hidden_layers`` is the original 27.
        """
        return self._siglip_config(self.vision_layers + 1, use_head=True)


def uncompressed_video_tokens(newline: NewlineMode, frames: int, side: int) -> int:
    """Video tokens of an uncompressed video, newlines included.

    Args:
        newline: ``"one"`` or ``"grid"`` (see :class:`Backbone`).
        frames: F. side: the pooled grid side (N = side^2 tokens per frame).

    Returns:
        F * side^2 + 1 (``"one"``) or F * side * (side + 1) (``"grid"``: a newline closes every row).
    """
    if newline == "one":
        return frames * side * side + 1
    return frames * side * (side + 1)


# Qwen2-7B text model shared by the 7B backbones.
_QWEN2_7B = dict(
    text_hidden=3584,
    text_layers=28,
    text_heads=28,
    text_kv_heads=4,
    text_intermediate=18944,
    text_vocab=152064,
    tie_word_embeddings=False,
)

# The embedded default: real geometry (384 px, patch 14, 27x27 -> 14x14), tiny widths and depths.
# Its vocabulary and special-token ids come from the locally built tokenizer (see tiny.py).
TINY = Backbone(
    name="tiny",
    hf_id=None,
    frames=32,
    newline="one",
    siglip_head_id=None,
    vision_hidden=64,
    vision_layers=2,
    vision_heads=4,
    vision_intermediate=128,
    text_hidden=64,
    text_layers=2,
    text_heads=4,
    text_kv_heads=2,
    text_intermediate=128,
    text_vocab=1024,
    text_max_positions=8192,
    tie_word_embeddings=False,
    image_token_id=3,
    video_token_id=4,
)

# The LLaVA-Video layout on the tiny weights: 2x2 average pooling (13 x 13 = 169 tokens per frame),
# a newline after every row. It reads the tiny checkpoint: a LLaVA-Video checkpoint in Hugging Face
# format has exactly the LLaVA-OneVision tensors, only the video layout differs. 32 frames, not 64:
# 64 x 182 = 11,648 video positions exceed the tiny LLM's 8,192-position context.
TINY_VIDEO = replace(TINY, name="tiny-video", frames=32, newline="grid", pool="average", pooled_side=13)

BACKBONES: dict[str, Backbone] = {
    "tiny": TINY,
    "tiny-video": TINY_VIDEO,
    "ov-0.5b": Backbone(
        name="ov-0.5b",
        hf_id="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        frames=32,
        newline="one",
        text_hidden=896,
        text_layers=24,
        text_heads=14,
        text_kv_heads=2,
        text_intermediate=4864,
        text_vocab=151936,
        tie_word_embeddings=True,
    ),
    "ov-7b": Backbone(
        name="ov-7b",
        hf_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        frames=32,
        newline="one",
        **_QWEN2_7B,
    ),
    "llava-video-7b": Backbone(
        name="llava-video-7b",
        hf_id="llava-hf/LLaVA-Video-7B-Qwen2-hf",
        frames=64,
        newline="grid",
        pool="average",
        pooled_side=13,
        **_QWEN2_7B,
    ),
}


def get_backbone(name: str) -> Backbone:
    """The registered backbone called ``name``.

    Raises:
        UnknownBackboneError: ``name`` is not registered; the message lists the choices.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"
        ) from None


__all__ = [
    "BACKBONES",
    "SIGLIP_HEAD_ID",
    "TINY",
    "TINY_VIDEO",
    "Backbone",
    "NewlineMode",
    "PoolMode",
    "get_backbone",
    "uncompressed_video_tokens",
]
