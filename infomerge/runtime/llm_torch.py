"""The ``torch`` LLM backend: the checkpoint's Qwen2 decoder in transformers, with a KV cache.

Only the language model is read from a LLaVA-OneVision checkpoint (``model.safetensors`` or its
shards): the keys ``language_model.model.*`` / ``language_model.lm_head.*`` (the layout llava-hf
checkpoints and transformers' ``save_pretrained`` write) or ``model.language_model.*`` /
``lm_head.*`` (transformers' in-memory layout) become a plain ``Qwen2ForCausalLM``. The same
extraction feeds onnxruntime-genai's model builder (:func:`extract_text_checkpoint`).

Precision: fp32 on the CPU; bf16 on CUDA where the GPU supports it, else fp16.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from infomerge.errors import ArtifactError
from infomerge.runtime.llm import LLMBackend

# checkpoint key prefix -> Qwen2ForCausalLM key prefix
_TEXT_PREFIXES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
)
# tokenizer / generation files copied into an extracted text checkpoint
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
)


def text_config(checkpoint: str | os.PathLike):
    """The ``Qwen2Config`` of a LLaVA-OneVision checkpoint's language model (``architectures`` set).

    Raises:
        ArtifactError: no ``config.json``, or one without a Qwen2 ``text_config``.
    """
    from transformers import Qwen2Config

    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise ArtifactError(f"{checkpoint}: no config.json; not a Hugging Face checkpoint directory")
    cfg = json.loads(path.read_text())
    text = cfg.get("text_config", cfg)
    if text.get("model_type", "qwen2") != "qwen2":
        raise ArtifactError(f"{checkpoint}: the language model is {text.get('model_type')!r}, not qwen2")
    text = {k: v for k, v in text.items() if k not in ("architectures", "model_type", "dtype", "torch_dtype")}
    config = Qwen2Config(**text)
    config.architectures = ["Qwen2ForCausalLM"]
    if "tie_word_embeddings" in cfg and "tie_word_embeddings" not in text:
        config.tie_word_embeddings = cfg["tie_word_embeddings"]
    return config


def text_key(key: str) -> str | None:
    """Checkpoint key -> ``Qwen2ForCausalLM`` key, or None for the vision side (never read)."""
    for src, dst in _TEXT_PREFIXES:
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def text_state_dict(
    checkpoint: str | os.PathLike, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The language model's weights under ``Qwen2ForCausalLM`` key names (CPU tensors).

    Only these tensors are read (:func:`infomerge.backbones.loading.read_tensors`).
    ``lm_head.weight`` is the embedding matrix when the checkpoint ties them and stores none.

    Raises:
        ArtifactError: no language-model weights found.
    """
    from infomerge.backbones.loading import read_tensors

    state, _ = read_tensors(checkpoint, text_key)
    if "model.embed_tokens.weight" not in state:
        raise ArtifactError(
            f"{checkpoint}: no language-model weights (language_model.model.embed_tokens.weight)"
        )
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    return state


def load_text_model(checkpoint: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A ``Qwen2ForCausalLM`` (eval mode) holding the checkpoint's language model.

    The module is built on the meta device and the weights assigned, so nothing is initialised
    twice (a 7B model loads at the cost of reading its weights).
    """
    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    config = text_config(checkpoint)
    state = text_state_dict(checkpoint, dtype)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = Qwen2RotaryEmbedding(config=config)  # buffers are not in the state dict
    return model.to(device).eval()


def extract_text_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the language model as a standalone Qwen2 checkpoint (config, weights, tokenizer).

    This is what onnxruntime-genai's model builder takes as input. Weights keep the checkpoint's
    dtype.

    Returns:
        ``out_dir``.
    """
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = text_config(checkpoint)
    state = text_state_dict(checkpoint)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
    return out


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
            past_key_values=self._cache,
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


__all__ = [
    "TorchLLM",
    "default_dtype",
    "extract_text_checkpoint",
    "load_text_model",
    "text_config",
    "text_key",
    "text_state_dict",
]
