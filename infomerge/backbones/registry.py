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

Qwen2.5-VL (``family="qwen2_5_vl"``; :meth:`Backbone.qwen_config`): the ``config.json`` of
``Qwen/Qwen2.5-VL-3B-Instruct`` and ``-7B-Instruct`` (ViT 32 x 1280 with window attention, patch
merger to the LLM width; Qwen2.5-3B / -7B text models with M-RoPE), pinned to 32 frames of 336 x 588
pixels for export (docs/backbones.md, "Qwen2.5-VL").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from infomerge.backbones.family import BackboneFamily, get_family
from infomerge.errors import UnknownBackboneError

NewlineMode = Literal["one", "grid", "none"]
PoolMode = Literal["bilinear", "average"]
Family = str  # a registered family name: infomerge.backbones.family.family_names()

SIGLIP_HEAD_ID = "google/siglip-so400m-patch14-384"
# Token ids of the Qwen2 vocabulary used by the llava-hf checkpoints.
QWEN2_IMAGE_TOKEN_ID = 151646
QWEN2_VIDEO_TOKEN_ID = 151647
# Token ids of Qwen2.5-VL's vocabulary (config.json of Qwen/Qwen2.5-VL-{3B,7B}-Instruct).
QWEN25VL_VISION_START_ID = 151652
QWEN25VL_VISION_END_ID = 151653
QWEN25VL_IMAGE_PAD_ID = 151655
QWEN25VL_VIDEO_PAD_ID = 151656


@dataclass(frozen=True)
class Backbone:
    """One video LLM: checkpoint, frames, and the dimensions of its vision tower and LLM.

    Attributes:
        name: registry key (``tiny``, ``tiny-video``, ``ov-0.5b``, ``ov-7b``, ``llava-video-7b``,
            ``tiny-qwen``, ``qwen2.5-vl-3b``, ``qwen2.5-vl-7b``).
        family: ``"llava"`` (LLaVA-OneVision / LLaVA-Video: SigLIP, projector, newline(s), 1D RoPE)
            or ``"qwen2_5_vl"`` (Qwen2.5-VL: its own ViT with window attention and a patch merger,
            temporal patch 2, 3D M-RoPE positions, no newline): a registered family name
            (:mod:`infomerge.backbones.family`). Its :attr:`family_spec` chooses the transformers
            config (:meth:`hf_config`), the vision module, the preprocessing and the position scheme.
        hf_id: Hugging Face checkpoint id (``None`` for ``tiny``, which is built locally).
        frames: F, frames sampled per video.
        newline: ``"one"``: one ``image_newline`` vector after all frames (OneVision video,
            ``mm_newline_position="one_token"``); ``"grid"``: one after every pooled row of every
            frame (LLaVA-Video, ``mm_newline_position="grid"``, LLaVA-NeXT ``add_token_per_grid``);
            ``"none"``: no newline (Qwen2.5-VL: ``<|vision_start|>`` / ``<|vision_end|>`` text
            tokens frame the video instead).
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

    Qwen2.5-VL only (``family="qwen2_5_vl"``; ``Qwen2_5_VLVisionConfig`` names in brackets):
        frame_height, frame_width: the fixed resolution every sampled frame is resized to (pixels,
            multiples of ``patch * spatial_merge`` = 28; the export's static shape).
        temporal_patch: frames per temporal patch [``temporal_patch_size``] (2): F frames give
            L = F / 2 temporal groups, the "frames" every compression method sees.
        spatial_merge: [``spatial_merge_size``] (2): 2 x 2 patches merge into one LLM token.
        vision_out_hidden: [``out_hidden_size``], the merger's output width (= ``text_hidden``).
        vision_window: [``window_size``] in pixels (112 = 8 x 8 patches = 4 x 4 merged tokens).
        vision_fullatt_blocks: [``fullatt_block_indexes``], blocks with full (not window) attention.
        tokens_per_second: [``tokens_per_second``] (2): M-RoPE temporal ids advance by
            ``tokens_per_second * second_per_grid_t`` per temporal group.
        mrope_section: the text model's ``rope_parameters["mrope_section"]`` (t, h, w rotary pairs).
        vision_start_token_id, vision_end_token_id: ``<|vision_start|>`` / ``<|vision_end|>``.
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
    family: Family = "llava"
    frame_height: int = 0
    frame_width: int = 0
    temporal_patch: int = 1
    spatial_merge: int = 1
    vision_out_hidden: int = 0
    vision_window: int = 112
    vision_fullatt_blocks: tuple[int, ...] = ()
    tokens_per_second: int = 2
    mrope_section: tuple[int, ...] = ()
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None

    # --- derived geometry ------------------------------------------------------------------
    @property
    def family_spec(self) -> BackboneFamily:
        """The registered :class:`~infomerge.backbones.family.BackboneFamily` of :attr:`family`.

        Raises:
            UnknownFamilyError: :attr:`family` is not a registered family name.
        """
        return get_family(self.family)

    @property
    def patch_side(self) -> int:
        """Patches per side: image_size // patch (27). Qwen2.5-VL: see :attr:`patch_grid`."""
        return self.image_size // self.patch

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of patches of one frame: (27, 27) for SigLIP 384; Qwen2.5-VL:
        (frame_height / 14, frame_width / 14). Asked of the family."""
        return self.family_spec.patch_grid(self)

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of LLM tokens of one frame (one temporal group for Qwen2.5-VL):
        (14, 14) / (13, 13) pooled for LLaVA; (frame_height / 28, frame_width / 28) merged for
        Qwen2.5-VL. Asked of the family."""
        return self.family_spec.token_grid(self)

    @property
    def num_patches(self) -> int:
        """Patches per frame (729; Qwen2.5-VL: (H / 14) * (W / 14))."""
        h, w = self.patch_grid
        return h * w

    @property
    def tokens_per_frame(self) -> int:
        """N, LLM tokens per frame: 196 / 169 pooled (LLaVA); (H / 28) * (W / 28) merged tokens
        per temporal group (Qwen2.5-VL)."""
        h, w = self.token_grid
        return h * w

    def groups_for(self, frames: int) -> int:
        """L, the frame axis the compressor sees for ``frames`` sampled frames: F (LLaVA) or
        F / temporal_patch temporal groups (Qwen2.5-VL; F must be a multiple of it)."""
        return self.family_spec.groups_for(self, frames)

    @property
    def video_tokens(self) -> int:
        """Video placeholder tokens of one uncompressed video of :attr:`frames`, newline(s) included.

        ``"one"``: F * N + 1 (6273 for 32 x 196); ``"grid"``: F * side * (side + 1) (11648 for
        64 x 13 x 14).
        """
        return self.video_tokens_for(self.frames)

    def video_tokens_for(self, frames: int) -> int:
        """As :attr:`video_tokens` for ``frames`` frames (the runtime may sample another F).

        Qwen2.5-VL: (F / 2) * N video pad tokens (``<|vision_start|>`` / ``<|vision_end|>`` are
        text tokens of the template, not counted).
        """
        return self.family_spec.video_tokens_for(self, frames)

    def newline_tokens_for(self, frames: int) -> int:
        """Newline vectors of one uncompressed video: 1 (``"one"``), F * side (``"grid"``) or 0."""
        if self.newline == "none":
            return 0
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

    def hf_config(self):
        """The transformers config of the whole model, built offline by the family:
        ``LlavaOnevisionConfig`` (:meth:`llava_config`) or ``Qwen2_5_VLConfig`` (:meth:`qwen_config`)."""
        return self.family_spec.hf_config(self)

    def qwen_config(self):
        """A transformers ``Qwen2_5_VLConfig`` with these numbers, built offline (no download);
        :meth:`infomerge.backbones.families.qwen2_5_vl.Qwen25VLFamily.hf_config`.

        Raises:
            ValueError: not a Qwen2.5-VL backbone.
        """
        return get_family("qwen2_5_vl").hf_config(self)

    def llava_config(self):
        """A transformers ``LlavaOnevisionConfig`` with these numbers, built offline (no download);
        :meth:`infomerge.backbones.families.llava.LlavaFamily.hf_config`."""
        return get_family("llava").hf_config(self)

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

# Qwen2.5-VL's vision tower (identical in the 3B and 7B checkpoints): 32 blocks of width 1280,
# 16 heads, SwiGLU MLP 3420, window attention (112 px) except blocks 7, 15, 23, 31.
_QWEN25VL_VISION = dict(
    family="qwen2_5_vl",
    newline="none",
    siglip_head_id=None,
    patch=14,
    temporal_patch=2,
    spatial_merge=2,
    vision_hidden=1280,
    vision_layers=32,
    vision_heads=16,
    vision_intermediate=3420,
    vision_window=112,
    vision_fullatt_blocks=(7, 15, 23, 31),
    tokens_per_second=2,
    mrope_section=(16, 24, 24),
    text_max_positions=128000,
    text_rms_norm_eps=1e-6,
    image_token_id=QWEN25VL_IMAGE_PAD_ID,
    video_token_id=QWEN25VL_VIDEO_PAD_ID,
    vision_start_token_id=QWEN25VL_VISION_START_ID,
    vision_end_token_id=QWEN25VL_VISION_END_ID,
    # the fixed export shape: 32 frames (16 temporal groups) at 336 x 588 (16:9 rounded to
    # multiples of 28): 24 x 42 patches, 12 x 21 = 252 merged tokens per group, 4,032 per video
    frames=32,
    frame_height=336,
    frame_width=588,
)

# A tiny random-weight Qwen2.5-VL (built locally, see tiny_qwen.py): real patch / merge / window
# geometry, tiny widths and depths (vision: 2 blocks, block 1 full attention; text: 2 layers,
# head_dim 16 -> mrope_section (2, 3, 3)). 16 frames at 224 x 336: 16 x 24 patches (2 x 3
# windows), 8 x 12 = 96 tokens per temporal group, 8 groups, 768 video tokens.
TINY_QWEN = Backbone(
    name="tiny-qwen",
    hf_id=None,
    **{
        **_QWEN25VL_VISION,
        "frames": 16,
        "frame_height": 224,
        "frame_width": 336,
        "vision_hidden": 64,
        "vision_layers": 2,
        "vision_heads": 4,
        "vision_intermediate": 128,
        "vision_fullatt_blocks": (1,),
        "mrope_section": (2, 3, 3),
        "text_max_positions": 8192,
        "vision_start_token_id": 3,
        "vision_end_token_id": 4,
        "image_token_id": 5,
        "video_token_id": 6,
    },
    vision_out_hidden=64,
    text_hidden=64,
    text_layers=2,
    text_heads=4,
    text_kv_heads=2,
    text_intermediate=128,
    text_vocab=1024,
    tie_word_embeddings=False,
)

BACKBONES: dict[str, Backbone] = {
    "tiny": TINY,
    "tiny-video": TINY_VIDEO,
    "tiny-qwen": TINY_QWEN,
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
    # Qwen2.5-VL-3B: Qwen2.5-3B text model (tied embeddings), merger output 2048.
    "qwen2.5-vl-3b": Backbone(
        name="qwen2.5-vl-3b",
        hf_id="Qwen/Qwen2.5-VL-3B-Instruct",
        **_QWEN25VL_VISION,
        vision_out_hidden=2048,
        text_hidden=2048,
        text_layers=36,
        text_heads=16,
        text_kv_heads=2,
        text_intermediate=11008,
        text_vocab=151936,
        tie_word_embeddings=True,
    ),
    # Qwen2.5-VL-7B: Qwen2.5-7B text model, merger output 3584.
    "qwen2.5-vl-7b": Backbone(
        name="qwen2.5-vl-7b",
        hf_id="Qwen/Qwen2.5-VL-7B-Instruct",
        **_QWEN25VL_VISION,
        vision_out_hidden=3584,
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
    "TINY_QWEN",
    "TINY_VIDEO",
    "Backbone",
    "Family",
    "NewlineMode",
    "PoolMode",
    "get_backbone",
    "uncompressed_video_tokens",
]
