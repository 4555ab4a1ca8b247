"""The ``torch`` LLM backend: the checkpoint's Qwen2 decoder, with a KV cache.

The language model is read on its own from the checkpoint by its family's ``load_text_decoder``
(:mod:`infomerge.backbones.family`): :func:`infomerge.backbones.text.load_text_decoder` (LLaVA), or
:func:`infomerge.backbones.qwen_text.load_qwen_text_decoder` (Qwen2.5-VL's M-RoPE text model, fed
(3, 1, T) position ids): the plain-torch :class:`~infomerge.backbones.qwen2_decoder.Qwen2Decoder`
with a static KV cache, which does not import transformers' modelling stack (start-up,
docs/runtime.md). A transformers model (``Qwen2ForCausalLM``, ``QwenTextLM``) is accepted as well,
with transformers' ``DynamicCache``.

Precision: fp32 on the CPU; bf16 on CUDA where the GPU supports it, else fp16.

With ``prefill(..., visual=InnerMerge(...))`` the prefill runs the Unified method's inner-LLM merge
(arXiv 2603.21957 Eq. 9; ``docs/compression.md``, "Inner-LLM merge"): a loop over the decoder
layers that shortens the sequence before layer K. The cache then holds T rows in layers 0..K-1 and
fewer in layers K..; :meth:`TorchLLM.step` runs the same loop (one query row: no mask needed).
HoliTom's merge and FlashVID's FastV pruning (``InnerMerge.prune``: the other video rows dropped,
no merge; ``flashvid/modeling_qwen2.py`` + ``utils.py`` ``fastv_prune``) run in the same loop. That
loop drives transformers' decoder layers: with the plain decoder, the first inner-stage prefill
builds transformers' model around the same weight tensors (``Qwen2Decoder.to_transformers``), so
only runs with an inner-LLM stage import transformers' modelling.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from infomerge.backbones.qwen2_decoder import KVCache, Qwen2Decoder
from infomerge.compress.unified_inner import (
    InnerMerge,
    attention_rows,
    importance,
    merge_video,
    top_kept,
)
from infomerge.runtime.llm import LLMBackend

# attention implementations that apply the causal mask themselves when given none (``is_causal``)
_IS_CAUSAL_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")


def default_dtype(device: str) -> torch.dtype:
    """fp32 on the CPU; bf16 on a CUDA device that supports it, else fp16."""
    if not str(device).startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TorchLLM(LLMBackend):
    """Qwen2, fed ``inputs_embeds`` and explicit ``position_ids``.

    ``model``: a :class:`~infomerge.backbones.qwen2_decoder.Qwen2Decoder` (static
    :class:`~infomerge.backbones.qwen2_decoder.KVCache` of ``capacity`` slots) or a transformers
    model (``DynamicCache``). Either way the cache slots count the tokens present (0, 1, 2, ...)
    while ``position_ids`` carry the RoPE positions (with gaps), so the causal mask is over the
    tokens actually present.
    """

    name = "torch"

    def __init__(self, model, eos_token_ids: Sequence[int], device: str = "cpu"):
        self.model = model  # what _forward calls (the bench may swap in torch.compile's wrapper)
        self.decoder = model if isinstance(model, Qwen2Decoder) else None
        self._hf = None if self.decoder is not None else model  # transformers' model, the layer loop's
        self.device = str(device)
        self.dtype = next(model.parameters()).dtype
        cfg = model.config
        self.hidden_size = int(cfg.hidden_size)
        self.vocab_size = int(cfg.vocab_size)
        self.context = int(cfg.max_position_embeddings)
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.num_layers = int(cfg.num_hidden_layers)
        self._cache = None
        self._filled = 0
        self._looped = False  # the cache came from the layer loop (per-layer lengths differ)
        self.last_merge: dict | None = None  # kept rows / targets (None: pruned) of the last inner stage
        self._cache_kw = "cache" if self._hf is None else _cache_keyword(model)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        eos_token_ids: Sequence[int],
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> TorchLLM:
        """Load the language model of a checkpoint through its family's ``load_text_decoder``
        (:func:`~infomerge.backbones.family.checkpoint_family`: ``config.json`` says which): Qwen2 of
        a LLaVA-OneVision / LLaVA-Video one, or the M-RoPE text model of a Qwen2.5-VL one, as the
        plain-torch :class:`~infomerge.backbones.qwen2_decoder.Qwen2Decoder`."""
        from infomerge.backbones.family import checkpoint_family

        family = checkpoint_family(checkpoint)
        model = family.load_text_decoder(Path(checkpoint), dtype or default_dtype(device), device)
        return cls(model, eos_token_ids, device)

    @torch.inference_mode()
    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.model.get_input_embeddings()
        return table(torch.as_tensor(list(ids), dtype=torch.long, device=self.device)).float().cpu()

    @torch.inference_mode()
    def _forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> np.ndarray:
        n = inputs_embeds.shape[1]
        if isinstance(self._cache, KVCache):  # the plain decoder
            logits = self.model(
                inputs_embeds.to(self.device, self.dtype),
                position_ids.to(self.device, torch.long),
                self._cache,
                logits_to_keep=1,
            )
            self._filled += n
            return logits[0, -1].float().cpu().numpy()
        out = self.model(
            inputs_embeds=inputs_embeds.to(self.device, self.dtype),
            position_ids=position_ids.to(self.device, torch.long),
            cache_position=torch.arange(self._filled, self._filled + n, device=self.device),
            **{self._cache_kw: self._cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self._filled += n
        return out.logits[0, -1].float().cpu().numpy()

    def prefill(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        capacity: int,
        visual: InnerMerge | None = None,
    ) -> np.ndarray:
        """Start a sequence (see :meth:`LLMBackend.prefill`); with ``visual``, merge inside the LLM.

        Args:
            inputs_embeds: (1, T, D) float prompt embeddings.
            position_ids: (1, T) int64 RoPE positions (gaps allowed), or (3, 1, T) M-RoPE
                positions (t, h, w) for Qwen2.5-VL.
            capacity: KV slots to reserve (the plain decoder's static cache; it grows if exceeded;
                transformers' DynamicCache ignores it).
            visual: the inner-LLM merge or pruning (video rows, K, kept count, lambda, prune);
                None: plain forward.

        Returns:
            (V,) float32 logits of the token after the prompt.

        Raises:
            ValueError: ``visual`` out of range (K not in [1, depth), rows outside the prompt).
        """
        self._filled = 0
        self.last_merge = None
        self._looped = visual is not None
        if visual is None and self.decoder is not None:
            self._cache = self.decoder.new_cache(capacity)
            return self._forward(inputs_embeds, position_ids)
        from transformers import DynamicCache

        hf = self.transformers_model()
        self._cache = DynamicCache(config=hf.config)
        if visual is None:
            return self._forward(inputs_embeds, position_ids)
        return self._prefill_merged(inputs_embeds, position_ids, visual)

    def transformers_model(self):
        """transformers' model of these weights (the inner-LLM loop's layers): the one given, or
        built once from the plain decoder around the same tensors (imports transformers' modelling)."""
        if self._hf is None:
            self._hf = self.decoder.to_transformers()
            self._cache_kw = _cache_keyword(self._hf)
        return self._hf

    def step(self, token_id: int, position: int) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("step() before prefill()")
        emb = self.model.get_input_embeddings()(torch.tensor([[token_id]], device=self.device))
        if self._looped:
            with torch.inference_mode():
                self._filled += 1
                return self._layers(emb, torch.tensor([[position]], device=self.device), 0, None)
        return self._forward(emb, torch.tensor([[position]]))

    # --- the inner-LLM merge: a loop over the decoder layers ------------------------------------
    def _layers(self, x: torch.Tensor, pos: torch.Tensor, first: int, last: int | None) -> torch.Tensor:
        """Run decoder layers ``first .. last-1`` (None: to the end, then norm + lm_head -> logits)."""
        hf = self.transformers_model()
        m = hf.model
        n = x.shape[1]
        rope = m.rotary_emb(x, pos)
        # prefill (n > 1) starts from an empty cache in every layer, so the rows present are all the
        # keys: SDPA / flash take the causal mask as ``is_causal`` (no mask given: their fused
        # kernels); eager (and any other) attention gets it written out. One query row sees every
        # cached key.
        mask = None
        if n > 1 and hf.config._attn_implementation not in _IS_CAUSAL_ATTENTION:
            mask = torch.full((n, n), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device).triu(1)[
                None, None
            ]
        for i in range(first, self.num_layers if last is None else last):
            x = m.layers[i](
                x,
                attention_mask=mask,
                position_ids=pos,
                position_embeddings=rope,
                use_cache=True,
                **{self._cache_kw: self._cache},
            )
        if last is not None:
            return x
        return hf.lm_head(m.norm(x[:, -1:]))[0, -1].float().cpu().numpy()

    def _attention_rows(
        self, layer: int, x_in: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """(|rows|, T) head-mean attention of layer ``layer`` for the query ``rows`` (SDPA gives none).

        q = RoPE(q_proj(input_layernorm(x))) for the rows, k = RoPE(k_proj(...)) for every row,
        biases included; then :func:`attention_rows` (fp32 softmax, causal).
        """
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        hf = self.transformers_model()
        block = hf.model.layers[layer]
        att = block.self_attn
        h = block.input_layernorm(x_in)[0]  # (T, D)
        d = att.head_dim
        q = att.q_proj(h[rows]).view(len(rows), -1, d).transpose(0, 1)[None]  # (1, H, Tq, d)
        k = att.k_proj(h).view(h.shape[0], -1, d).transpose(0, 1)[None]  # (1, Hkv, T, d)
        cos, sin = hf.model.rotary_emb(x_in, pos)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        return attention_rows(q[0], k[0], rows)

    @torch.inference_mode()
    def _prefill_merged(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, v: InnerMerge
    ) -> np.ndarray:
        x = inputs_embeds.to(self.device, self.dtype)
        pos = position_ids.to(self.device, torch.long)
        n = x.shape[1]
        if not (1 <= v.layer < self.num_layers) or not (0 <= v.start < v.stop <= v.queries < n):
            raise ValueError(
                f"inner merge: need 1 <= layer < {self.num_layers} and 0 <= start < stop <= queries < {n}; "
                f"got {v}"
            )
        x_in = self._layers(x, pos, 0, v.layer - 1)  # layer K-1's input
        x = self._layers(x_in, pos, v.layer - 1, v.layer)  # states leaving layer K-1
        rows = torch.arange(v.queries, n, device=x.device)
        attn = self._attention_rows(v.layer - 1, x_in, pos, rows)  # (|T|, T)
        xv = x[0, v.start : v.stop]
        score = importance(attn[:, v.start : v.stop], xv, x[0, v.queries :], v.lam)
        if v.prune:  # FastV: the kept rows go on unchanged, the others leave the sequence
            kept, target = top_kept(score, min(v.keep, v.video)), None
        else:
            kept, target, merged = merge_video(xv, score, min(v.keep, v.video))
        keep_rows = torch.cat(
            [torch.arange(v.start, device=x.device), v.start + kept, torch.arange(v.stop, n, device=x.device)]
        )
        x = x[:, keep_rows].clone()
        if target is not None:
            x[0, v.start : v.start + len(kept)] = merged.to(x.dtype)
        self.last_merge = {
            "rows": keep_rows.cpu(),
            "kept": kept.cpu(),
            "target": None if target is None else target.cpu(),
            "score": score.cpu(),
        }
        self._filled = n
        return self._layers(x, pos[..., keep_rows], v.layer, None)  # (1, T') or (3, 1, T')

    def close(self) -> None:
        self._cache = None
        self._filled = 0


def _cache_keyword(model) -> str:
    """transformers 5.x names the KV-cache argument ``cache`` (``past_key_values`` is deprecated and
    warns mid-answer); 4.x knows only ``past_key_values``."""
    forward = getattr(model, "_orig_mod", model).forward  # torch.compile's wrapper: the module's
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


__all__ = ["TorchLLM", "default_dtype"]
