"""The ``torch`` LLM backend: the checkpoint's Qwen2 decoder in transformers, with a KV cache.

The language model is read on its own from the checkpoint by
:func:`infomerge.backbones.text.load_text_model`.

Precision: fp32 on the CPU; bf16 on CUDA where the GPU supports it, else fp16.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import numpy as np
import torch

from infomerge.backbones.text import load_text_model
from infomerge.runtime.llm import LLMBackend


def default_dtype(device: str) -> torch.dtype:
    """fp32 on the CPU; bf16 on a CUDA device that supports it, else fp16."""
    if not str(device).startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TorchLLM(LLMBackend):
    """Qwen2 in transformers, fed ``inputs_embeds`` and explicit ``position_ids``.

    The KV cache is a transformers ``DynamicCache``; ``cache_position`` counts cache slots
    (0, 1, 2, ...) while ``position_ids`` carry the RoPE positions (with gaps), so the causal mask
    is over the tokens actually present.
    """

    name = "torch"

    def __init__(self, model, eos_token_ids: Sequence[int], device: str = "cpu"):
        self.model = model
        self.device = str(device)
        self.dtype = next(model.parameters()).dtype
        cfg = model.config
        self.hidden_size = int(cfg.hidden_size)
        self.vocab_size = int(cfg.vocab_size)
        self.context = int(cfg.max_position_embeddings)
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self._cache = None
        self._filled = 0
        # transformers 5.x names the KV-cache argument ``cache`` (``past_key_values`` is deprecated
        # and warns mid-answer); 4.x knows only ``past_key_values``
        params = inspect.signature(type(model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        eos_token_ids: Sequence[int],
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> TorchLLM:
        """Load the language model of a LLaVA-OneVision checkpoint (see :func:`load_text_model`)."""
        model = load_text_model(checkpoint, dtype or default_dtype(device), device)
        return cls(model, eos_token_ids, device)

    @torch.inference_mode()
    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.model.get_input_embeddings()
        return table(torch.as_tensor(list(ids), dtype=torch.long, device=self.device)).float().cpu()

    @torch.inference_mode()
    def _forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> np.ndarray:
        n = inputs_embeds.shape[1]
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

    def prefill(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, capacity: int) -> np.ndarray:
        from transformers import DynamicCache

        self._cache = DynamicCache(config=self.model.config)
        self._filled = 0
        return self._forward(inputs_embeds, position_ids)

    def step(self, token_id: int, position: int) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("step() before prefill()")
        emb = self.model.get_input_embeddings()(torch.tensor([[token_id]], device=self.device))
        return self._forward(emb, torch.tensor([[position]]))

    def close(self) -> None:
        self._cache = None
        self._filled = 0


__all__ = ["TorchLLM", "default_dtype"]
