"""``infomerge-plan``: will a backbone, an LLM quantization, a frame count and a retention fit a device?

Every size comes from the backbone's configs (``get_backbone(name).llava_config()`` and
``siglip_head_config()``) and from :class:`infomerge.compress.config.InfoMergeConfig`; the only
constants are the assumptions listed in :class:`Assumptions`, each printed beside the row it feeds.

Rows (bytes; "act" = activation dtype size, 2 for fp16):

1. **Vision engine** (TensorRT, fp16): weights of the SigLIP tower (embeddings, the backbone's layers,
   post_layernorm), the SigLIP MAP head, the projector (Linear-GELU-Linear) and ``image_newline``,
   2 bytes each. Activations: the largest of its stages for ``Fv`` frames per call (``Fv`` = frames, or
   ``--vision-batch``), with T = patches per frame, d = vision width, h = heads, ff = MLP width,
   D = LLM width, N = pooled tokens per frame:
   attention ``Fv*T*4d*act + Fv*h*T*T*4`` (residual, q, k, v; scores materialised in fp32: softmax
   kept in fp32 and no fused-attention kernel assumed), MLP ``Fv*T*(2d+ff)*act``, projector and pooling
   ``Fv*T*(d+2D)*act + Fv*N*D*act``.
2. **Compression engine** (no weights: InfoMerge is training-free). Its buffers, all counted live at
   once: input tokens ``F*N*D*act``, an fp32 working copy ``F*N*D*4``, one token-token similarity
   matrix ``(F*N)^2*4`` (worst case: a single segment spanning the video), the one-hot merge matrix
   ``B*F*N*act`` and the output ``B*D*act``; B = ``InfoMergeConfig.paper(r).total_budget(F, N)``.
3. **LLM weights** by quantization, the ones ``infomerge-export --llm`` builds: ``int4`` (for the
   CUDA execution provider, ``--llm-ep cuda``) and ``fp32``. Decoder linears (q, k, v, o, gate, up,
   down): int4 0.5 B/weight + one fp16 scale per block of 32 input weights (symmetric, no zero point:
   the onnxruntime-genai builder's default layout), biases, RMSNorms and the input embedding table
   fp16 (it is gathered, not multiplied); fp32: every weight 4 B. An untied lm_head (Qwen2-7B) is
   quantized like the decoder linears; a tied one (Qwen2-0.5B) reuses the embedding table and adds
   nothing.
4. **KV cache** at the compressed sequence: ``2 * layers * kv_heads * head_dim * seq * 2`` (fp16),
   seq = B + newline tokens + text tokens (prompt template, question and answer; ``--text-tokens``);
   newline tokens: 1 for LLaVA-OneVision, at most ``min(F * side, B)`` for LLaVA-Video's grid
   layout (one per pooled row that keeps a token).
5. **LLM activations and workspace**: prefill of seq tokens with fused grouped-query attention (no
   score matrix): ``seq*(2D + max(2D + 2*kv_heads*head_dim, 3*d_ff))*act``, plus logits ``seq*vocab*act``
   (``--logits all``, the default: assumes the decoder returns the logits of every prompt position in
   prefill) or ``vocab*act`` (``last``), plus a workspace for cuBLAS / the ORT arena
   (``--llm-workspace-mib``).
6. **Runtime overhead**: one CUDA context with TensorRT, cuBLAS/cuDNN and the ORT CUDA provider loaded
   (``--cuda-context-mib``). On shared-memory devices (Jetson) also the host side of the process:
   Python with torch, transformers, onnxruntime and the tokenizer (``--host-runtime-mib``), and the
   peak of reading the video as :mod:`infomerge.video` does it (``--video-size``): each sampled
   frame is resized as it is decoded, so what grows with the frame count is the fp32 output
   ``F*3*S*S*4`` and the uint8 display copies (longer side at most 1280 pixels) ``F*w*h*3``; what
   grows with the source resolution is the frame in flight, ``W*H*3`` bytes (the decoded 4:2:0 frame,
   1.5 B/pixel, and one reference frame; above 1080p the RGB conversion runs in 256-row strips, so no
   full-resolution RGB frame exists). Fitted to the peak RSS of reading 32 frames (docs/video.md,
   "Memory"): 8K minus 720p measured 90 MiB, this gives 92 MiB; 4K minus 720p measured 2 MiB
   (noise +-20 MiB), this gives 21 MiB. Before issue 16 the reader held every frame at
   full resolution in fp32, ``F*W*H*18`` bytes (4.5 GiB at 4K, measured in issue 18).

All engines are counted resident at once with their activations allocated (TensorRT's default: an
execution context holds its device memory for its lifetime). The total is compared with the
device's usable memory (:mod:`infomerge.jetson.devices`). The overhead figures are assumptions, not
measurements; measure on the board with ``infomerge-bench --tegrastats`` and pass the real figures.

Exit status of :func:`main`: 0 fits, 1 does not fit, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Literal

from infomerge.errors import BudgetError, InfomergeError
from infomerge.jetson.devices import DEVICES, MIB, Device, get_device

LLMQuant = Literal["int4", "fp32"]
#: the LLM precisions ``infomerge-export --llm`` builds (its choices less ``none``)
QUANTS: tuple[str, ...] = ("int4", "fp32")
#: bytes per source pixel of the frame in flight while a video is read (fitted; see the docstring)
VIDEO_BYTES_PER_PIXEL = 3
#: longer side of the display copy kept of each sampled frame (infomerge.video.DISPLAY_MAX)
VIDEO_DISPLAY_MAX = 1280
GIB = 1024 * MIB
FRAMES_SEARCH_LIMIT = 256
FP16 = 2
FP32 = 4


@dataclass(frozen=True)
class Assumptions:
    """The numbers the planner cannot read from a config. Every one is a stated assumption.

    Attributes:
        text_tokens: prompt template + question + answer tokens in the KV cache.
        logits: ``"all"`` (logits of every prefill position) or ``"last"``.
        act_bytes: activation dtype size (2: fp16).
        int4_block: input weights per fp16 scale in int4 (32).
        llm_workspace_mib: cuBLAS workspace / ORT arena slack of the LLM session (MiB).
        cuda_context_mib: CUDA context plus loaded TensorRT, cuBLAS, cuDNN and ORT CUDA kernels (MiB).
        host_runtime_mib: Python process with torch, transformers, onnxruntime, tokenizer (MiB);
            counted on shared-memory devices only.
        video_size: (width, height) of decoded source frames held on the host (shared devices only).
        vision_batch: frames per vision-engine call; ``None`` = all frames in one call.
    """

    text_tokens: int = 256
    logits: Literal["all", "last"] = "all"
    act_bytes: int = FP16
    int4_block: int = 32
    llm_workspace_mib: int = 256
    cuda_context_mib: int = 512
    host_runtime_mib: int = 768
    video_size: tuple[int, int] = (1920, 1080)
    vision_batch: int | None = None


@dataclass(frozen=True)
class Row:
    """One line of the plan: bytes of weights and of runtime buffers (activations, cache, overhead)."""

    name: str
    weights: int
    runtime: int
    note: str
    detail: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.runtime


@dataclass(frozen=True)
class MemoryPlan:
    """A full plan. ``tokens`` is B (kept video tokens), ``seq`` the LLM sequence in the KV cache."""

    backbone: str
    device: Device
    llm_quant: str
    retention: float
    frames: int
    tokens: int
    seq: int
    rows: tuple[Row, ...]
    assumptions: Assumptions = field(default_factory=Assumptions)
    method: str = "infomerge"

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def usable(self) -> int:
        return self.device.usable_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone,
            "device": asdict(self.device) | {"usable_mib": self.device.usable_mib},
            "llm_quant": self.llm_quant,
            "retention": self.retention,
            "frames": self.frames,
            "tokens": self.tokens,
            "seq": self.seq,
            "rows": [asdict(r) | {"total": r.total} for r in self.rows],
            "total_bytes": self.total,
            "usable_bytes": self.usable,
            "fits": self.fits,
            "assumptions": asdict(self.assumptions),
        }


# ---- parameter counts from the configs -------------------------------------------------------
def _siglip_layer_params(d: int, ff: int) -> int:
    attn = 4 * (d * d + d)  # q, k, v, out projections with bias
    mlp = d * ff + ff + ff * d + d  # fc1, fc2 with bias
    norms = 2 * 2 * d  # layer_norm1, layer_norm2 (weight + bias)
    return attn + mlp + norms


def vision_params(vision_config, head_config, text_hidden: int) -> dict[str, int]:
    """Parameter counts of the vision engine's parts, from a ``SiglipVisionConfig`` (the tower),
    the SigLIP config with its head, and the LLM width D.

    Returns ``{"tower", "head", "projector", "newline"}``; the tower includes patch and position
    embeddings and its post_layernorm, the head is the MAP head (probe, attention, LayerNorm, MLP).
    """
    d, ff = vision_config.hidden_size, vision_config.intermediate_size
    p, c = vision_config.patch_size, vision_config.num_channels
    patches = (vision_config.image_size // p) ** 2
    embeddings = c * p * p * d + d + patches * d
    tower = embeddings + vision_config.num_hidden_layers * _siglip_layer_params(d, ff) + 2 * d
    hd, hff = head_config.hidden_size, head_config.intermediate_size
    head = hd + (3 * hd * hd + 3 * hd) + (hd * hd + hd) + 2 * hd + (hd * hff + hff + hff * hd + hd)
    projector = d * text_hidden + text_hidden + text_hidden * text_hidden + text_hidden
    return {"tower": tower, "head": head, "projector": projector, "newline": text_hidden}


def qwen_vision_params(vision_config) -> dict[str, int]:
    """Parameter counts of Qwen2.5-VL's vision tower from its ``Qwen2_5_VLVisionConfig``.

    Returns ``{"patch_embed", "blocks", "merger"}``: the 3D patch convolution (2 x 14 x 14, no bias);
    ``depth`` blocks of two RMSNorms, qkv and output projections with bias and a SwiGLU MLP (gate,
    up, down, with bias); the patch merger (RMSNorm, Linear 4d -> 4d, GELU, Linear 4d -> D, biases).
    Source: ``transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py``.
    """
    d, ff, out = vision_config.hidden_size, vision_config.intermediate_size, vision_config.out_hidden_size
    p, t, c = vision_config.patch_size, vision_config.temporal_patch_size, vision_config.in_channels
    m = vision_config.spatial_merge_size**2 * d
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * (d * ff + ff) + (ff * d + d)
    return {
        "patch_embed": c * t * p * p * d,
        "blocks": vision_config.depth * block,
        "merger": d + (m * m + m) + (m * out + out),
    }


def _head_dim(tc) -> int:
    return getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads


def _tied(tc, llava_config) -> bool:
    tied = getattr(tc, "tie_word_embeddings", False) or getattr(llava_config, "tie_word_embeddings", False)
    return bool(tied)


def llm_linear_shapes(tc) -> list[tuple[int, int]]:
    """(out, in) of the quantizable linears of ONE Qwen2 decoder layer: q, k, v, o, gate, up, down."""
    d, ff, kv = tc.hidden_size, tc.intermediate_size, tc.num_key_value_heads * _head_dim(tc)
    q = tc.num_attention_heads * _head_dim(tc)
    return [(q, d), (kv, d), (kv, d), (d, q), (ff, d), (ff, d), (d, ff)]


def quantized_linear_bytes(out_features: int, in_features: int, quant: str, int4_block: int = 32) -> int:
    """Bytes of one linear weight (out x in) under ``quant`` (see the module docstring)."""
    n = out_features * in_features
    if quant == "fp32":
        return n * FP32
    if quant == "int4":
        return n // 2 + out_features * math.ceil(in_features / int4_block) * FP16
    raise ValueError(_quant_error(quant))


def _quant_error(quant: str) -> str:
    return (f"unknown LLM quantization {quant!r}; choose one of {', '.join(QUANTS)} (what "
            "infomerge-export --llm builds)")


def llm_weight_bytes(tc, quant: str, tied: bool, int4_block: int = 32) -> dict[str, int]:
    """Bytes of the Qwen2 LLM's weights by part: ``decoder_linears``, ``decoder_other`` (q/k/v biases,
    RMSNorms), ``embeddings`` (fp16), ``lm_head`` (0 when tied) and ``final_norm``."""
    d, layers, q = tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads * _head_dim(tc)
    kv = tc.num_key_value_heads * _head_dim(tc)
    linears = sum(quantized_linear_bytes(o, i, quant, int4_block) for o, i in llm_linear_shapes(tc))
    other = (q + 2 * kv) + 2 * d  # q/k/v biases, input and post-attention RMSNorm
    dense = FP32 if quant == "fp32" else FP16  # what is not quantized
    return {
        "decoder_linears": layers * linears,
        "decoder_other": layers * other * dense,
        "embeddings": tc.vocab_size * d * dense,
        "lm_head": 0 if tied else quantized_linear_bytes(tc.vocab_size, d, quant, int4_block),
        "final_norm": d * dense,
    }


def kv_cache_bytes(tc, seq: int, dtype_bytes: int = FP16) -> int:
    """``2 * layers * kv_heads * head_dim * seq * dtype_bytes`` (keys and values of every layer)."""
    return 2 * tc.num_hidden_layers * tc.num_key_value_heads * _head_dim(tc) * seq * dtype_bytes


# ---- the plan ---------------------------------------------------------------------------------
def _fmt(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def _newline_tokens(backbone, frames: int, tokens: int) -> int:
    # "one": a single image_newline after all frames; "grid" (LLaVA-Video): one per pooled row that
    # keeps a token (infomerge.runtime.embeddings.grid_layout), at most min(rows, kept tokens);
    # "none" (Qwen2.5-VL): no newline.
    if backbone.newline == "none":
        return 0
    return 1 if backbone.newline == "one" else min(frames * backbone.pooled_side, tokens)


@cache
def _configs(backbone: str):
    """(Backbone, LlavaOnevisionConfig, SigLIP-with-head config) of a registry name, built once;
    Qwen2.5-VL: (Backbone, Qwen2_5_VLConfig, None)."""
    from infomerge.backbones.registry import get_backbone

    bb = get_backbone(backbone)
    return bb, bb.hf_config(), bb.siglip_head_config() if bb.family_spec.siglip_head else None


def plan_memory(
    backbone: str,
    device: str,
    llm_quant: str = "int4",
    retention: float = 0.15,
    frames: int | None = None,
    assumptions: Assumptions | None = None,
    method: str = "infomerge",
) -> MemoryPlan:
    """Build the plan (see the module docstring for every formula).

    Args:
        backbone: registry name (``ov-7b``, ``ov-0.5b``, ...).
        device: device name from :data:`infomerge.jetson.devices.DEVICES`.
        llm_quant: ``int4`` or ``fp32`` (what ``infomerge-export --llm`` builds).
        retention: retention ratio r in (0, 1] of ``method``.
        frames: F; ``None`` takes the backbone's frames per video.
        assumptions: overrides of :class:`Assumptions`.
        method: a registered compression method (its budget B; the compression engine's buffers are
            modelled on InfoMerge's, the largest of the registered methods' graphs).

    Raises:
        UnknownBackboneError, UnknownDeviceError, UnknownMethodError: unknown names.
        BudgetError: a retention outside (0, 1] or one that keeps no token.
        ValueError: an unknown quantization or a frame count < 1.
    """
    from infomerge.compress.methods import get_method

    a = assumptions or Assumptions()
    bb, cfg, hc = _configs(backbone)
    dev = get_device(device)
    if llm_quant not in QUANTS:
        raise ValueError(_quant_error(llm_quant))
    frames = bb.frames if frames is None else int(frames)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    step = bb.family_spec.frame_step(bb)  # Qwen2.5-VL: the temporal patch (2)
    if frames % step:
        raise ValueError(f"{bb.name} takes frames in temporal patches of {step}; got {frames}")

    vc, tc = cfg.vision_config, cfg.text_config
    act = a.act_bytes
    n = bb.tokens_per_frame
    big_d = tc.hidden_size
    groups = bb.groups_for(frames)  # the compressor's frame axis: F (LLaVA), F / 2 (Qwen2.5-VL)
    tokens = get_method(method).budget(retention, groups, n)

    # 1. vision engine
    vision = _VISION_ROWS[bb.family](bb, vc, hc, big_d, frames, groups, a)

    # 2. compression engine
    fn = groups * n
    c_act = fn * big_d * act + fn * big_d * FP32 + fn * fn * FP32 + tokens * fn * act + tokens * big_d * act
    compression = Row(
        "Compression engine",
        0,
        c_act,
        f"{fn} -> {tokens} tokens",
        f"no weights (training-free); buffers live at once: input {fn}x{big_d}, fp32 copy, "
        f"{fn}x{fn} fp32 similarity matrix (one segment spanning the video, worst case), one-hot merge "
        f"matrix {tokens}x{fn}, output {tokens}x{big_d}; B = {method} at r={retention:g} "
        f"for {groups}x{n} tokens"
        + (f" ({frames} frames in temporal patches of {step})" if step > 1 else ""),
    )

    # 3. LLM weights
    tied = _tied(tc, cfg)
    lw = llm_weight_bytes(tc, llm_quant, tied, a.int4_block)
    dense = "fp32" if llm_quant == "fp32" else "fp16"
    head_note = f"lm_head tied to the {dense} embeddings" if tied else f"lm_head {llm_quant}"
    llm = Row(
        "LLM weights",
        sum(lw.values()),
        0,
        f"{llm_quant}" + (f", block {a.int4_block}" if llm_quant == "int4" else ""),
        f"{tc.num_hidden_layers} layers, d={big_d}, d_ff={tc.intermediate_size}, vocab {tc.vocab_size}: "
        f"decoder linears {llm_quant} {_fmt(lw['decoder_linears'])}, biases+norms {dense} "
        f"{_fmt(lw['decoder_other'])}, embeddings {dense} {_fmt(lw['embeddings'])}, "
        + (f"{head_note}" if tied else f"{head_note} {_fmt(lw['lm_head'])}"),
    )

    # 4. KV cache
    newlines = _newline_tokens(bb, frames, tokens)
    seq = tokens + newlines + a.text_tokens
    kv_dtype = FP32 if llm_quant == "fp32" else FP16
    kv = Row(
        "KV cache",
        0,
        kv_cache_bytes(tc, seq, kv_dtype),
        f"{'fp32' if kv_dtype == FP32 else 'fp16'}, seq {seq}",
        f"seq {seq} = {tokens} video + {newlines} newline + {a.text_tokens} text tokens; "
        f"2 x {tc.num_hidden_layers} layers x {tc.num_key_value_heads} kv heads x {_head_dim(tc)} head dim "
        f"x {seq} x {kv_dtype} bytes",
    )

    # 5. LLM activations and workspace
    kvd = tc.num_key_value_heads * _head_dim(tc)
    l_act = seq * (2 * big_d + max(2 * big_d + 2 * kvd, 3 * tc.intermediate_size)) * act
    logits_rows = seq if a.logits == "all" else 1
    l_logits = logits_rows * tc.vocab_size * act
    l_ws = a.llm_workspace_mib * MIB
    llm_act = Row(
        "LLM activations + workspace",
        0,
        l_act + l_logits + l_ws,
        f"prefill {seq}, logits {a.logits}",
        f"prefill of {seq} tokens with fused attention {_fmt(l_act)}; logits of {logits_rows} position(s) "
        f"x {tc.vocab_size} {_fmt(l_logits)}; workspace {a.llm_workspace_mib} MiB (assumed)",
    )

    # 6. runtime overhead
    overhead = a.cuda_context_mib * MIB
    detail = (
        f"CUDA context with TensorRT, cuBLAS, cuDNN and ORT CUDA kernels {a.cuda_context_mib} MiB (assumed)"
    )
    short = "CUDA context"
    if dev.shared:
        w, hgt = a.video_size
        frames_bytes, kept, (out_h, out_w) = _HOST_FRAMES[bb.family](bb, vc, frames, w, hgt)
        overhead += a.host_runtime_mib * MIB + frames_bytes
        short += " + host process"
        detail += (
            "; shared memory, so the host side counts too: "
            f"Python runtime {a.host_runtime_mib} MiB (assumed), "
            f"reading {frames} frames of {w}x{hgt} (one frame in flight, {VIDEO_BYTES_PER_PIXEL} B/pixel, "
            + f"fitted; {kept})"
            + f" and their fp32 {out_w}x{out_h} output {_fmt(frames_bytes)}"
        )
    runtime = Row("Runtime overhead", 0, overhead, short, detail)

    return MemoryPlan(
        backbone=bb.name,
        device=dev,
        llm_quant=llm_quant,
        retention=float(retention),
        frames=frames,
        tokens=tokens,
        method=method,
        seq=seq,
        rows=(vision, compression, llm, kv, llm_act, runtime),
        assumptions=a,
    )


def _siglip_vision_row(vc, hc, big_d: int, n: int, frames: int, a: Assumptions) -> Row:
    """Row 1 for LLaVA: SigLIP tower, MAP head, projector, newline (see the module docstring)."""
    act = a.act_bytes
    vp = vision_params(vc, hc, big_d)
    v_weights = sum(vp.values()) * FP16
    t = (vc.image_size // vc.patch_size) ** 2
    d, ff, h = vc.hidden_size, vc.intermediate_size, vc.num_attention_heads
    fv = min(frames, a.vision_batch) if a.vision_batch else frames
    v_attn = fv * t * 4 * d * act + fv * h * t * t * FP32
    v_mlp = fv * t * (2 * d + ff) * act
    v_proj = fv * t * (d + 2 * big_d) * act + fv * n * big_d * act
    v_act = max(v_attn, v_mlp, v_proj)
    return Row(
        "Vision engine",
        v_weights,
        v_act,
        f"fp16, {fv} frames/call",
        f"weights: SigLIP tower {vp['tower']:,} params ({vc.num_hidden_layers} layers) + MAP head "
        f"{vp['head']:,} + projector {vp['projector']:,} + newline {vp['newline']:,}, 2 bytes each; "
        f"activations: largest stage for {fv} frames of {t} patches (attention {_fmt(v_attn)} with "
        f"fp32 scores and no fused kernel, MLP {_fmt(v_mlp)}, projector+pooling {_fmt(v_proj)})",
    )


def _qwen_vision_row(bb, vc, groups: int, a: Assumptions) -> Row:
    """Row 1 for Qwen2.5-VL: the window-attention ViT and its patch merger, fp16.

    Per call of ``Lv`` temporal groups (``--vision-batch`` counts groups here) of P = (H/14)(W/14)
    patches, d = vision width, h = heads, ff = SwiGLU width, D = LLM width: the largest of attention
    in a full-attention block ``Lv*P*4d*act + Lv*h*P*P*4`` (fp32 scores over the whole frame pair; the
    window blocks' 64 x 64 windows are smaller), the MLP ``Lv*P*(2d + 2ff)*act`` and the merger
    ``Lv*P*d*act + Lv*(P/4)*(4d + D)*act``.
    """
    act = a.act_bytes
    vp = qwen_vision_params(vc)
    rows, cols = bb.patch_grid
    p = rows * cols
    d, ff, h, big_d = vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.out_hidden_size
    lv = min(groups, a.vision_batch) if a.vision_batch else groups
    v_attn = lv * p * 4 * d * act + lv * h * p * p * FP32
    v_mlp = lv * p * (2 * d + 2 * ff) * act
    v_merge = lv * p * d * act + lv * (p // 4) * (4 * d + big_d) * act
    return Row(
        "Vision engine",
        sum(vp.values()) * FP16,
        max(v_attn, v_mlp, v_merge),
        f"fp16, {lv} temporal groups/call",
        f"weights: Qwen2.5-VL ViT patch embed {vp['patch_embed']:,} + {vc.depth} blocks {vp['blocks']:,} + "
        f"merger {vp['merger']:,} params, 2 bytes each; activations: largest stage for {lv} groups of "
        f"{p} patches ({bb.frame_height}x{bb.frame_width} px, 2 frames each): full attention "
        f"{_fmt(v_attn)} with fp32 scores and no fused kernel, MLP {_fmt(v_mlp)}, merger {_fmt(v_merge)}",
    )


def _siglip_row(bb, vc, hc, big_d: int, frames: int, groups: int, a: Assumptions) -> Row:
    return _siglip_vision_row(vc, hc, big_d, bb.tokens_per_frame, frames, a)


def _qwen_row(bb, vc, hc, big_d: int, frames: int, groups: int, a: Assumptions) -> Row:
    return _qwen_vision_row(bb, vc, groups, a)


#: row 1 (the vision engine) per backbone family: ``(bb, vision config, SigLIP head config or None,
#: D, F, L, assumptions) -> Row``; a new family adds its line here
_VISION_ROWS = {"llava": _siglip_row, "qwen2_5_vl": _qwen_row}


def _siglip_host_frames(bb, vc, frames: int, w: int, h: int) -> tuple[int, str, tuple[int, int]]:
    """Host bytes of reading F frames of W x H for LLaVA: one frame in flight, F uint8 display copies,
    their fp32 S x S output; (bytes, what is kept, (out_h, out_w))."""
    dw, dh = _display_size(w, h)
    out = vc.image_size
    total = w * h * VIDEO_BYTES_PER_PIXEL + frames * dw * dh * 3 + frames * 3 * out * out * FP32
    return total, f"{dw}x{dh} uint8 display copies", (out, out)


def _qwen_host_frames(bb, vc, frames: int, w: int, h: int) -> tuple[int, str, tuple[int, int]]:
    """As :func:`_siglip_host_frames` for Qwen2.5-VL: the sampled frames are kept at full resolution,
    then resized to the backbone's frame_height x frame_width (fp32)."""
    out_h, out_w = bb.frame_height, bb.frame_width
    total = w * h * VIDEO_BYTES_PER_PIXEL + frames * w * h * 3 + frames * 3 * out_h * out_w * FP32
    return total, f"{w}x{h} uint8 sampled frames", (out_h, out_w)


#: host-side frame memory per backbone family (shared-memory devices); a new family adds its line here
_HOST_FRAMES = {"llava": _siglip_host_frames, "qwen2_5_vl": _qwen_host_frames}


def _display_size(w: int, h: int) -> tuple[int, int]:
    """(width, height) of the display copy ``infomerge.video`` keeps of a W x H frame: longer side
    at most ``VIDEO_DISPLAY_MAX``, aspect kept, rounded (``infomerge.video.preprocess.display_copy``)."""
    if max(w, h) <= VIDEO_DISPLAY_MAX:
        return w, h
    scale = VIDEO_DISPLAY_MAX / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _last_fitting(candidates, plan_for) -> float | int | None:
    """The last candidate (ascending) whose plan fits; stops at the first that does not, since every
    term of a plan grows with frames and with retention. Candidates with no token are skipped."""
    best = None
    for c in candidates:
        try:
            fits = plan_for(c).fits
        except BudgetError:
            continue
        if not fits:
            break
        best = c
    return best


def largest_frames(backbone: str, device: str, llm_quant: str, retention: float,
                   assumptions: Assumptions | None = None, limit: int = FRAMES_SEARCH_LIMIT) -> int | None:
    """The largest F in [1, limit] whose plan fits at ``retention``; ``None`` when not even one frame fits.
    Qwen2.5-VL: multiples of its temporal patch (2) only."""
    bb = _configs(backbone)[0]
    step = bb.family_spec.frame_step(bb)
    return _last_fitting(range(step, limit + 1, step),
                         lambda f: plan_memory(backbone, device, llm_quant, retention, f, assumptions))


def largest_retention(backbone: str, device: str, llm_quant: str, frames: int | None,
                      assumptions: Assumptions | None = None) -> float | None:
    """The largest r on the 0.01 grid in (0, 1] whose plan fits at ``frames``; ``None`` when none fits."""
    return _last_fitting([step / 100 for step in range(1, 101)],
                         lambda r: plan_memory(backbone, device, llm_quant, r, frames, assumptions))


# ---- command line -----------------------------------------------------------------------------
def _video_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"video size must be positive, got {text!r}")
    return w, h


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _nonneg(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    d = Assumptions()
    p = argparse.ArgumentParser(
        prog="infomerge-plan",
        description="Plan the memory of the vision engine, compression engine and LLM on a device, "
        "and say whether it fits. Exit status: 0 fits, 1 does not fit, 2 bad arguments.",
    )
    p.add_argument("--device", choices=sorted(DEVICES), help="target device")
    p.add_argument("--backbone", default="ov-7b", help="backbone name from the registry (default ov-7b)")
    p.add_argument("--llm-quant", choices=QUANTS, default="int4",
                   help="LLM weight quantization (default int4)")
    p.add_argument("--retention", type=float, default=0.15, help="retention ratio r (default 0.15)")
    from infomerge.compress.methods import method_names

    p.add_argument("--method", choices=method_names(), default="infomerge",
                   help="compression method whose budget B is planned (default infomerge)")
    p.add_argument("--frames", type=_positive, default=None,
                   help="frames per video (default: the backbone's)")
    p.add_argument("--vision-batch", type=_positive, default=None,
                   help="frames per vision-engine call (default: all frames in one call)")
    p.add_argument("--text-tokens", type=_nonneg, default=d.text_tokens,
                   help=f"prompt + answer tokens in the KV cache (default {d.text_tokens})")
    p.add_argument("--logits", choices=("all", "last"), default=d.logits,
                   help="prefill logits kept for every position or only the last (default all)")
    p.add_argument("--cuda-context-mib", type=_nonneg, default=d.cuda_context_mib,
                   help=f"CUDA context and loaded kernels, MiB (assumed {d.cuda_context_mib})")
    p.add_argument("--host-runtime-mib", type=_nonneg, default=d.host_runtime_mib,
                   help=f"Python process on shared memory, MiB (assumed {d.host_runtime_mib})")
    p.add_argument("--llm-workspace-mib", type=_nonneg, default=d.llm_workspace_mib,
                   help=f"LLM workspace / arena slack, MiB (assumed {d.llm_workspace_mib})")
    p.add_argument("--video-size", type=_video_size, default=d.video_size, metavar="WxH",
                   help="decoded source frame size held on the host (default 1920x1080)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.add_argument("--list-devices", action="store_true", help="list the devices and their memory, then exit")
    return p


def _print_devices(console) -> None:
    from rich.table import Table

    table = Table(title="Devices")
    table.add_column("device", no_wrap=True)
    for col in ("product", "visible MiB", "reserved MiB", "usable MiB", "shared CPU/GPU"):
        table.add_column(col)
    for dev in DEVICES.values():
        table.add_row(dev.name, dev.label, str(dev.visible_mib), str(dev.reserve_mib),
                      str(dev.usable_mib), "yes" if dev.shared else "no")
    console.print(table)
    console.print("Visible memory sources and the reserve assumption: see infomerge/jetson/devices.py.")


def _print_plan(console, plan: MemoryPlan, frames_fit, retention_fit) -> None:
    from rich.table import Table

    dev = plan.device
    table = Table(
        title=f"{plan.backbone} on {dev.label}: {plan.frames} frames, r={plan.retention:g} "
        f"({plan.tokens} video tokens), LLM {plan.llm_quant}"
    )
    table.add_column("component")
    table.add_column("weights", justify="right")
    table.add_column("activations / cache", justify="right")
    table.add_column("total", justify="right")
    table.add_column("note")
    for r in plan.rows:
        table.add_row(r.name, _fmt(r.weights) if r.weights else "-", _fmt(r.runtime) if r.runtime else "-",
                      _fmt(r.total), r.note)
    table.add_section()
    table.add_row("Total", "", "", _fmt(plan.total), "all resident")
    table.add_row("Usable on device", "", "", _fmt(plan.usable),
                  "shared CPU/GPU" if dev.shared else "GPU memory")
    console.print(table)
    console.print("How each row is counted:")
    for r in plan.rows:
        console.print(f"- {r.name}: {r.detail}", highlight=False)
    console.print(f"- Usable: {dev.visible_mib} MiB visible ({dev.source}) - {dev.reserve_mib} MiB reserved "
                  "for the OS/driver (assumed)", highlight=False)
    if plan.fits:
        console.print(f"[bold green]FITS[/]: {_fmt(plan.total)} of {_fmt(plan.usable)} usable, "
                      f"{_fmt(plan.usable - plan.total)} to spare.")
    else:
        console.print(f"[bold red]DOES NOT FIT[/]: {_fmt(plan.total)} needed, {_fmt(plan.usable)} usable, "
                      f"short by {_fmt(plan.total - plan.usable)}.")
    if not plan.fits:
        for flag, alt in alternatives(plan):
            verdict = "fits" if alt.fits else "still does not fit"
            console.print(f"  with {flag}: {_fmt(alt.total)}, {verdict}", highlight=False)
    frames_text = "none (not even 1 frame)" if frames_fit is None else str(frames_fit)
    if frames_fit == FRAMES_SEARCH_LIMIT:
        frames_text += " or more (search stops there)"
    console.print(
        f"Largest frames that fit at r={plan.retention:g}: {frames_text}"
        f"   (headroom only: infomerge-run always samples the backbone's {_backbone_frames(plan.backbone)})"
    )
    console.print(
        f"Largest retention that fits at {plan.frames} frames: "
        + (f"{retention_fit:.2f}" if retention_fit else "none (not even r=0.01)")
    )
    console.print("Overheads are assumptions, not measurements: measure with `infomerge-bench --tegrastats` "
                  "on the board and pass --cuda-context-mib / --host-runtime-mib.")


def _backbone_frames(name: str) -> int:
    return _configs(name)[0].frames


def alternatives(plan: MemoryPlan) -> list[tuple[str, MemoryPlan]]:
    """Single changes a user can make that shrink the plan, each with its own plan (which may or may
    not fit): the int4 LLM (``infomerge-export --llm int4``), the 0.5B backbone, a lower retention
    (``infomerge-run --retention``), a video downscaled to 1080p before it is read. Only changes that
    make the total smaller are offered; the frame count is not one (``infomerge-run`` samples the
    backbone's own), nor is the vision batch (the exported vision graph takes every frame at once)."""
    a, out = plan.assumptions, []
    base = dict(backbone=plan.backbone, device=plan.device.name, llm_quant=plan.llm_quant,
                retention=plan.retention, frames=plan.frames, assumptions=a, method=plan.method)
    if plan.llm_quant != "int4":
        out.append(("--llm-quant int4", plan_memory(**(base | {"llm_quant": "int4"}))))
    if plan.backbone != "ov-0.5b":
        out.append(("--backbone ov-0.5b", plan_memory(**(base | {"backbone": "ov-0.5b", "frames": None}))))
    if plan.retention > 0.10:
        out.append(("--retention 0.1", plan_memory(**(base | {"retention": 0.10}))))
    w, h = a.video_size
    if plan.device.shared and w * h > 1920 * 1080:
        out.append(("--video-size 1920x1080 (downscale the video first)",
                    plan_memory(**(base | {"assumptions": replace(a, video_size=(1920, 1080))}))))
    return [(flag, alt) for flag, alt in out if alt.total < plan.total]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``infomerge-plan``. Returns 0 when the plan fits, 1 when not, 2 on bad input."""
    args = build_parser().parse_args(argv)
    from rich.console import Console

    console = Console()
    if args.list_devices:
        _print_devices(console)
        return 0
    if args.device is None:
        print("infomerge-plan: error: --device is required (see --list-devices)", file=sys.stderr)
        return 2
    a = replace(
        Assumptions(),
        text_tokens=args.text_tokens,
        logits=args.logits,
        llm_workspace_mib=args.llm_workspace_mib,
        cuda_context_mib=args.cuda_context_mib,
        host_runtime_mib=args.host_runtime_mib,
        video_size=args.video_size,
        vision_batch=args.vision_batch,
    )
    try:
        plan = plan_memory(args.backbone, args.device, args.llm_quant, args.retention, args.frames, a,
                           method=args.method)
        frames_fit = largest_frames(args.backbone, args.device, args.llm_quant, args.retention, a)
        retention_fit = largest_retention(args.backbone, args.device, args.llm_quant, plan.frames, a)
    except (InfomergeError, ValueError) as exc:
        print(f"infomerge-plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = plan.to_dict() | {"largest_frames": frames_fit, "largest_retention": retention_fit}
        print(json.dumps(out, indent=2))
    else:
        _print_plan(console, plan, frames_fit, retention_fit)
    return 0 if plan.fits else 1


def entry() -> None:
    """Console-script entry point of ``infomerge-plan``: :func:`main`, then
    :func:`~infomerge.interrupts.exit_process` (an interrupted run ends with status 130, never by
    the signal)."""
    from infomerge.interrupts import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()
