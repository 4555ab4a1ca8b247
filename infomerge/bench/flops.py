"""Theoretical LLM prefill FLOPs of the visual tokens (InfoMerge paper, App. A.2).

Source: InfoMerge (arXiv 2606.02161; summary in ``docs/algorithm.md``), "Reference numbers": per decoder layer

    N * d^2 * (2 + 2 * kv / heads)  +  2 * N^2 * d  +  3 * N * d * d_ff

(Q and O projections ``2 N d^2``, K and V projections ``2 N d^2 kv/heads`` under grouped-query
attention, attention scores and weighted values ``2 N^2 d``, the SwiGLU MLP ``3 N d d_ff``), times
the number of layers, counting the N visual tokens only (no text tokens, no LM head). As in the
paper, one multiply-add counts as one FLOP.

Which token counts reproduce the paper's Table 1 (LLaVA-OneVision-7B, 32 x 196 = 6272 tokens):

=========  ==========================  =========  ========================================
retention  N = round(r * 6272)         FLOPs (T)  fixed budgets of the export (spec)
=========  ==========================  =========  ========================================
100 %      6272                        48.82      --
15 %       941  (940.8)                6.32       920 -> 6.17 T, 928 -> 6.23 T: not the paper's
10 %       627  (627.2)                4.17       603 -> 4.01 T, 608 -> 4.04 T
5 %        314  (313.6)                2.07       285 -> 1.88 T, 288 -> 1.90 T
=========  ==========================  =========  ========================================

So the paper's FLOPs use the nominal count ``round(r * L * N)`` (:func:`nominal_tokens`), not the
per-frame-rounded budgets that the compressor actually keeps. The benchmark reports both: the
nominal figure that matches the paper and the figure for the tokens really kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from infomerge.errors import BudgetError


@dataclass(frozen=True)
class LLMDims:
    """The decoder dimensions the FLOPs formula needs.

    Attributes:
        layers: number of decoder layers.
        hidden: d, the model width.
        ffn: d_ff, the MLP inner width.
        heads: attention (query) heads.
        kv_heads: key/value heads (grouped-query attention); ``heads`` for multi-head attention.
    """

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "ffn", "heads", "kv_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LLMDims.{name} must be >= 1, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# Qwen2-7B, the LLM of LLaVA-OneVision-7B and LLaVA-Video-7B (spec "pipeline.md"): the paper's numbers.
QWEN2_7B = LLMDims(layers=28, hidden=3584, ffn=18944, heads=28, kv_heads=4)
# Qwen2-0.5B, the LLM of LLaVA-OneVision-0.5B.
QWEN2_0_5B = LLMDims(layers=24, hidden=896, ffn=4864, heads=14, kv_heads=2)

# LLaVA-OneVision video: 32 frames x 196 tokens (14 x 14 after pooling).
PAPER_VIDEO_TOKENS = 32 * 196


def layer_flops(n_tokens: int, dims: LLMDims = QWEN2_7B) -> float:
    """FLOPs of one decoder layer for ``n_tokens`` tokens (paper App. A.2), as a float.

    Raises:
        ValueError: ``n_tokens < 0``.
    """
    n = int(n_tokens)
    if n < 0:
        raise ValueError(f"token count must be >= 0, got {n_tokens!r}")
    d, dff = float(dims.hidden), float(dims.ffn)
    return n * d * d * (2.0 + 2.0 * dims.kv_heads / dims.heads) + 2.0 * n * n * d + 3.0 * n * d * dff


def prefill_flops(n_tokens: int, dims: LLMDims = QWEN2_7B) -> float:
    """Prefill FLOPs of ``n_tokens`` visual tokens through all layers (FLOPs, not TFLOPs).

    ``prefill_flops(6272) / 1e12`` is 48.82 for the 7B LLM (paper Table 1, "full").

    Raises:
        ValueError: ``n_tokens < 0``.
    """
    return dims.layers * layer_flops(n_tokens, dims)


def nominal_tokens(retention: float, total: int = PAPER_VIDEO_TOKENS) -> int:
    """``round(retention * total)``, half up: the visual-token count of the paper's FLOPs column.

    Raises:
        BudgetError: ``retention`` outside (0, 1] or ``total < 1``.
    """
    r = float(retention)
    if not (0.0 < r <= 1.0) or total < 1:
        raise BudgetError(
            f"retention must be in (0, 1] and total >= 1, got retention={retention!r}, total={total}"
        )
    return int(math.floor(r * total + 0.5))


def paper_flops(retention: float, dims: LLMDims = QWEN2_7B, total: int = PAPER_VIDEO_TOKENS) -> float:
    """The paper's prefill FLOPs at ``retention`` (FLOPs): ``prefill_flops(nominal_tokens(r))``.

    ``paper_flops(0.15) / 1e12`` = 6.32, ``(0.10)`` = 4.17, ``(0.05)`` = 2.07 (Table 1).
    """
    return prefill_flops(nominal_tokens(retention, total), dims)


def vision_flops(frames: int, backbone) -> float:
    """FLOPs of the vision stage for ``frames`` frames, counted like :func:`layer_flops` (one
    multiply-add = one FLOP): the SigLIP tower, per frame and layer over its P patches of width G,

        P * G^2 * 4  +  2 * P^2 * G  +  2 * P * G * G_ff

    (q, k, v, o projections; scores and weighted values; the MLP), times its layers, plus the patch
    embedding ``P * 3 * patch^2 * G`` and the projector ``P * (G D + D^2)``. Normalisations,
    activations, the bilinear pooling and the SigLIP head (one query) are left out (< 1 %).

    Args:
        frames: F >= 0.
        backbone: a registry :class:`~infomerge.backbones.registry.Backbone` (``vision_hidden``,
            ``vision_layers``, ``vision_intermediate``, ``num_patches``, ``patch``, ``text_hidden``).

    Raises:
        ValueError: ``frames < 0``.
    """
    if int(frames) < 0:
        raise ValueError(f"frame count must be >= 0, got {frames!r}")
    p, g, gff = (
        float(backbone.num_patches),
        float(backbone.vision_hidden),
        float(backbone.vision_intermediate),
    )
    layer = p * g * g * 4.0 + 2.0 * p * p * g + 2.0 * p * g * gff
    embed = p * 3.0 * backbone.patch**2 * g
    projector = p * (g * backbone.text_hidden + float(backbone.text_hidden) ** 2)
    return int(frames) * (backbone.vision_layers * layer + embed + projector)


def ttft_flops_bound(retention: float, frames: int, backbone) -> float:
    """The most that compression alone can speed up vision + prefill if time follows FLOPs:
    ``(vision + prefill(F N)) / (vision + prefill(round(r F N)))`` (vision is not compressed).

    Raises:
        BudgetError: ``retention`` outside (0, 1].
    """
    dims = dims_from_config(backbone)
    total = int(frames) * int(backbone.tokens_per_frame)
    vision = vision_flops(frames, backbone)
    return (vision + prefill_flops(total, dims)) / (
        vision + prefill_flops(nominal_tokens(retention, total), dims)
    )


def dims_from_config(config) -> LLMDims:
    """LLMDims from a Hugging Face-style config (object or dict).

    Accepts a Qwen2/Llama text config (``num_hidden_layers``, ``hidden_size``,
    ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``) or a multimodal config
    that holds one under ``text_config`` / ``llm`` / ``llm_config``; also accepts a registry
    :class:`~infomerge.backbones.registry.Backbone` (``text_layers``, ``text_hidden``, ...) and
    our own field names (``layers``, ``hidden``, ``ffn``, ``heads``, ``kv_heads``).

    Raises:
        ValueError: a required dimension is missing.
    """

    def get(obj, name):
        if isinstance(obj, dict):
            return obj.get(name)
        return getattr(obj, name, None)

    for nested in ("text_config", "llm", "llm_config"):
        inner = get(config, nested)
        if inner is not None and not isinstance(inner, (str, int, float)):
            try:
                return dims_from_config(inner)
            except ValueError:
                pass

    def first(*names):
        for n in names:
            v = get(config, n)
            if v is not None:
                return int(v)
        return None

    layers = first("num_hidden_layers", "text_layers", "layers")
    hidden = first("hidden_size", "text_hidden", "hidden")
    ffn = first("intermediate_size", "text_intermediate", "ffn")
    heads = first("num_attention_heads", "text_heads", "heads")
    kv = first("num_key_value_heads", "text_kv_heads", "kv_heads")
    missing = [
        n for n, v in (("layers", layers), ("hidden", hidden), ("ffn", ffn), ("heads", heads)) if v is None
    ]
    if missing:
        raise ValueError(f"config {type(config).__name__} lacks LLM dimensions {missing}")
    return LLMDims(
        layers=layers, hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv if kv is not None else heads
    )


def dims_for_backbone(name: str) -> LLMDims:
    """LLMDims of a registered backbone's LLM (``infomerge.backbones.registry.get_backbone``).

    Raises:
        UnknownBackboneError: ``name`` is not registered.
    """
    from infomerge.backbones.registry import get_backbone

    return dims_from_config(get_backbone(name))


def tflops(flops: float) -> float:
    """FLOPs -> TFLOPs (1e12)."""
    return flops / 1e12


__all__ = [
    "PAPER_VIDEO_TOKENS",
    "QWEN2_0_5B",
    "QWEN2_7B",
    "LLMDims",
    "dims_for_backbone",
    "dims_from_config",
    "layer_flops",
    "nominal_tokens",
    "paper_flops",
    "prefill_flops",
    "tflops",
    "ttft_flops_bound",
    "vision_flops",
]
