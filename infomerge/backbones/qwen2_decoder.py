"""A plain-torch Qwen2 decoder for the torch LLM backend: what a run calls, without transformers' modelling.

transformers' ``modeling_qwen2`` imports its masking, kernel-hub, loading and loss modules, and
through them ``torch._dynamo``, ``torch.distributed.tensor``, sympy and scipy.optimize: about 1.3 s
of a 3.4 s start-up that a run never uses (docs/runtime.md, "Load and start-up"). This module is
the forward pass of ``Qwen2ForCausalLM`` and of Qwen2.5-VL's M-RoPE text model, written in plain
torch, with the same module and parameter names (the checkpoint's state dict loads unchanged):

- RMSNorm in fp32 (``Qwen2RMSNorm``): ``w * x / sqrt(mean(x^2) + eps)``;
- rotary position embedding (RoFormer, arXiv 2104.09864, Eq. 34) with ``rotate_half`` on the two
  halves of each head; for Qwen2.5-VL the M-RoPE of arXiv 2409.12191 Sec. 2.1: the frequencies of
  the head are split into ``mrope_section`` (t, h, w) groups, each rotated by its own position row
  (``apply_multimodal_rotary_pos_emb``);
- grouped-query attention (arXiv 2305.13245) with ``F.scaled_dot_product_attention``, scale
  ``head_dim ** -0.5``, q/k/v with bias, o without;
- the SwiGLU MLP ``down(silu(gate(x)) * up(x))`` (arXiv 2002.05202);
- a static KV cache (:class:`KVCache`): one preallocated (L, 2, B, H_kv, capacity, d) tensor.

Runs that need transformers' layers (the inner-LLM merges of Unified, HoliTom and FlashVID drive
them one by one) get them from :meth:`Qwen2Decoder.to_transformers`, which builds transformers'
model around the same weight tensors (no copy); only those runs import its modelling.

Source: transformers 5.x ``models/qwen2/modeling_qwen2.py`` and
``models/qwen2_5_vl/modeling_qwen2_5_vl.py`` (the reference this is tested against, logits equal
to fp32 rounding, ``tests/test_qwen2_decoder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DecoderShape:
    """The sizes and constants of a Qwen2 decoder, read from its transformers config.

    ``mrope_section``: (t, h, w) frequency counts per head half for Qwen2.5-VL (sum ``head_dim / 2``),
    None for plain RoPE.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    mrope_section: tuple[int, ...] | None = None


def unsupported(config) -> str | None:
    """Why this decoder cannot run ``config`` exactly (None: it can).

    Covered: SiLU MLP, default RoPE or M-RoPE (``mrope_section``), full attention in every layer.
    """
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r}"
    rope = _rope_parameters(config)
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
        return f"rope type {rope.get('rope_type', rope.get('type'))!r}"
    if getattr(config, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(config, "layer_types", None) or ())
    ):
        return "sliding-window attention"
    return None


def _rope_parameters(config) -> dict:
    """transformers 5 ``rope_parameters``, or 4.x ``rope_theta`` / ``rope_scaling``."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope.update({k: v for k, v in (getattr(config, "rope_scaling", None) or {}).items() if k not in rope})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def decoder_shape(config) -> DecoderShape:
    """:class:`DecoderShape` of a ``Qwen2Config`` / ``Qwen2_5_VLTextConfig``.

    Raises:
        ValueError: a config this decoder does not cover (:func:`unsupported`).
    """
    why = unsupported(config)
    if why is not None:
        raise ValueError(f"the plain Qwen2 decoder does not cover {why}; use transformers' model")
    rope = _rope_parameters(config)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    section = rope.get("mrope_section")
    if section is None and str(getattr(config, "model_type", "")).startswith("qwen2_5_vl"):
        section = (16, 24, 24)  # transformers' default for Qwen2.5-VL (Qwen2_5_VLRotaryEmbedding)
    return DecoderShape(
        hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        num_hidden_layers=int(config.num_hidden_layers),
        num_attention_heads=heads,
        num_key_value_heads=int(config.num_key_value_heads),
        head_dim=head_dim,
        vocab_size=int(config.vocab_size),
        rms_norm_eps=float(config.rms_norm_eps),
        rope_theta=float(rope["rope_theta"]),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        mrope_section=None if section is None else tuple(int(s) for s in section),
    )


class KVCache:
    """A static KV cache: keys and values of every layer in one preallocated tensor.

    ``data``: (L, 2, B, H_kv, capacity, d). Slots ``0 .. filled-1`` hold the tokens present, in
    order (their RoPE positions may have gaps; the cache does not care). Writing past ``capacity``
    grows the tensor (doubling), so a caller's estimate is a reservation, not a limit.
    """

    def __init__(self, shape: DecoderShape, capacity: int, batch: int, dtype: torch.dtype, device):
        self.data = torch.zeros(
            shape.num_hidden_layers,
            2,
            batch,
            shape.num_key_value_heads,
            max(1, int(capacity)),
            shape.head_dim,
            dtype=dtype,
            device=device,
        )
        self.filled = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    def reserve(self, n: int) -> None:
        """Room for ``n`` more slots (grows the tensor when needed)."""
        need = self.filled + n
        if need > self.capacity:
            grown = self.data.new_zeros(
                *self.data.shape[:4], max(need, 2 * self.capacity), self.data.shape[5]
            )
            grown[..., : self.filled, :] = self.data[..., : self.filled, :]
            self.data = grown

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H_kv, n, d) ``k``, ``v`` at slots ``filled .. filled+n-1`` of ``layer``; return
        the layer's keys and values so far, (B, H_kv, filled+n, d) views. ``filled`` advances in
        :meth:`advance`, once every layer has written."""
        end = self.filled + k.shape[2]
        self.data[layer, 0, :, :, self.filled : end] = k
        self.data[layer, 1, :, :, self.filled : end] = v
        return self.data[layer, 0, :, :, :end], self.data[layer, 1, :, :, :end]

    def advance(self, n: int) -> None:
        self.filled += n


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, computed in fp32 (``Qwen2RMSNorm``)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def inverse_frequencies(shape: DecoderShape, device=None) -> torch.Tensor:
    """(d/2,) fp32 RoPE frequencies ``theta ** (-2i / d)`` (RoFormer Eq. 15), as transformers has them."""
    d = shape.head_dim
    exponent = torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d
    return 1.0 / (shape.rope_theta**exponent)


def rope_cos_sin(
    inv_freq: torch.Tensor, position_ids: torch.Tensor, mrope_section: tuple[int, ...] | None, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (B, T, d) in ``dtype``, of the rotation at each position.

    Args:
        inv_freq: (d/2,) fp32.
        position_ids: (B, T) int64, or (3, B, T) M-RoPE rows (t, h, w); with ``mrope_section``
            (s_t, s_h, s_w) frequency ``i`` of each half takes row 0 for i < s_t, row 1 for
            i < s_t + s_h, else row 2 (Qwen2.5-VL); a (B, T) input is the same position in all three.
    """
    if position_ids.dim() == 3 and mrope_section is None:
        raise ValueError("(3, B, T) M-RoPE positions need a decoder with mrope_section (Qwen2.5-VL)")
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, d/2) or (3, B, T, d/2)
    if position_ids.dim() == 3:
        parts, start = [], 0
        for row, size in enumerate(mrope_section):
            parts.append(freqs[row, ..., start : start + size])
            start += size
        freqs = torch.cat(parts, dim=-1)  # (B, T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, d)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, d) ``x`` by (B, T, d) ``cos`` / ``sin``: ``x cos + rotate_half(x) sin``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and a static KV cache (``Qwen2Attention``)."""

    def __init__(self, shape: DecoderShape):
        super().__init__()
        d, h, hkv = shape.head_dim, shape.num_attention_heads, shape.num_key_value_heads
        self.heads, self.kv_heads, self.head_dim = h, hkv, d
        self.q_proj = nn.Linear(shape.hidden_size, h * d, bias=True)
        self.k_proj = nn.Linear(shape.hidden_size, hkv * d, bias=True)
        self.v_proj = nn.Linear(shape.hidden_size, hkv * d, bias=True)
        self.o_proj = nn.Linear(h * d, shape.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos, sin, cache: KVCache, layer: int) -> torch.Tensor:
        """(B, n, D) -> (B, n, D); the n rows follow the ``cache.filled`` cached ones."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, n, d)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, n, d)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        start = cache.filled
        keys, values = cache.write(layer, k, v)  # (B, Hkv, start+n, d)
        group = self.heads // self.kv_heads
        keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
        mask = None  # one row, or a prompt on an empty cache (is_causal): no mask tensor
        if n > 1 and start > 0:  # row i sees slots 0 .. start + i
            mask = torch.ones(n, start + n, dtype=torch.bool, device=x.device).tril(start)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=n > 1 and start == 0, scale=self.head_dim**-0.5
        )  # (B, H, n, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, shape: DecoderShape):
        super().__init__()
        self.gate_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, shape: DecoderShape):
        super().__init__()
        self.self_attn = Attention(shape)
        self.mlp = MLP(shape)
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)

    def forward(self, x, cos, sin, cache: KVCache, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """Embeddings, decoder layers and final norm (``Qwen2Model``'s parameter names)."""

    def __init__(self, shape: DecoderShape):
        super().__init__()
        # an empty weight, not nn.Embedding's normal_ init: on the meta device normal_ runs torch's
        # Python reference, which imports torch._dynamo (what this module exists to avoid); the
        # weights come from the checkpoint
        v, d = shape.vocab_size, shape.hidden_size
        self.embed_tokens = nn.Embedding(v, d, _weight=torch.empty(v, d))
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.num_hidden_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)


class Qwen2Decoder(nn.Module):
    """Qwen2 (or Qwen2.5-VL's M-RoPE text model) with its LM head, fed ``inputs_embeds``.

    Attributes:
        config: the transformers config it was built from (sizes, context, ...).
        shape: its :class:`DecoderShape`.
        model: :class:`DecoderStack` (``embed_tokens``, ``layers``, ``norm``).
        lm_head: (V, D) Linear, no bias (the embedding matrix when tied).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.shape = decoder_shape(config)
        self.model = DecoderStack(self.shape)
        self.lm_head = nn.Linear(self.shape.hidden_size, self.shape.vocab_size, bias=False)
        # (d/2,) fp32, a buffer outside the state dict (moves with .to(device)); made on the CPU
        # even when built on the meta device (torch.arange there runs torch's Python reference,
        # which imports torch._dynamo)
        inv_freq = inverse_frequencies(self.shape, device="cpu")
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def new_cache(self, capacity: int, batch: int = 1) -> KVCache:
        """An empty :class:`KVCache` for ``capacity`` tokens on this model's device and dtype."""
        w = self.lm_head.weight
        return KVCache(self.shape, capacity, batch, w.dtype, w.device)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        logits_to_keep: int = 1,
    ) -> torch.Tensor:
        """Logits of the last ``logits_to_keep`` rows (0: all); extends ``cache``.

        Args:
            inputs_embeds: (B, n, D) in the model's dtype.
            position_ids: (B, n) int64 RoPE positions (gaps allowed), or (3, B, n) M-RoPE rows.
            cache: the sequence's :class:`KVCache` (``n`` rows are appended).

        Returns:
            (B, n', V) logits in the model's dtype.
        """
        n = inputs_embeds.shape[1]
        cos, sin = rope_cos_sin(self.inv_freq, position_ids, self.shape.mrope_section, inputs_embeds.dtype)
        cache.reserve(n)
        x = inputs_embeds
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache, i)
        cache.advance(n)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.lm_head(self.model.norm(x))

    def to_transformers(self):
        """transformers' model (eval) holding these same weight tensors: ``Qwen2ForCausalLM``, or
        :class:`~infomerge.backbones.qwen_text.QwenTextLM` for M-RoPE. Imports transformers' modelling."""
        if self.shape.mrope_section is not None:
            from infomerge.backbones.qwen_text import qwen_text_model

            return qwen_text_model(self.config, dict(self.state_dict()), self.lm_head.weight.device)
        from infomerge.backbones.text import hf_text_model

        return hf_text_model(self.config, dict(self.state_dict()), self.lm_head.weight.device)


def build_decoder(config, state: dict[str, torch.Tensor], device="cpu") -> Qwen2Decoder:
    """A :class:`Qwen2Decoder` (eval) on ``device`` holding ``state`` (``model.*``, ``lm_head.*``
    keys; built on the meta device, tensors assigned, not copied; ``lm_head.weight`` may be absent
    when the embeddings are tied).

    Raises:
        ValueError: a config the decoder does not cover (:func:`unsupported`).
        RuntimeError: missing or unexpected weights (``load_state_dict``).
    """
    with torch.device("meta"):
        model = Qwen2Decoder(config)
    state = dict(state)
    if "lm_head.weight" not in state or model.shape.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # one tensor when tied
    model.load_state_dict(state, strict=True, assign=True)
    if state["lm_head.weight"] is state["model.embed_tokens.weight"]:
        model.lm_head.weight = model.model.embed_tokens.weight  # one Parameter (assign wraps each)
    return model.to(device).eval()


__all__ = [
    "DecoderShape",
    "KVCache",
    "Qwen2Decoder",
    "apply_rope",
    "build_decoder",
    "decoder_shape",
    "rope_cos_sin",
    "unsupported",
]
