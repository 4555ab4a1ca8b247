"""The text half of a LLaVA-OneVision checkpoint: the Qwen2 language model, read on its own.

Only the language model is read from a checkpoint (``model.safetensors`` or its shards): the keys
``language_model.model.*`` / ``language_model.lm_head.*`` (the layout llava-hf checkpoints and
transformers' ``save_pretrained`` write) or ``model.language_model.*`` / ``lm_head.*``
(transformers' in-memory layout) become a plain ``Qwen2ForCausalLM``. The torch LLM backend loads it
(:func:`load_text_model`); onnxruntime-genai's model builder takes it as a standalone checkpoint
(:func:`extract_text_checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from infomerge.errors import ArtifactError

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
    twice (a 7B model loads at the cost of reading its weights). Imports transformers' modelling;
    the torch LLM backend's runs without an inner-LLM stage use :func:`load_text_decoder` instead.
    """
    return hf_text_model(text_config(checkpoint), text_state_dict(checkpoint, dtype), device)


def hf_text_model(config, state: dict[str, torch.Tensor], device: str = "cpu"):
    """``Qwen2ForCausalLM`` (eval) of ``config`` holding ``state`` (``model.*`` / ``lm_head.*`` keys),
    built on the meta device with the tensors assigned (not copied)."""
    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    state = dict(state)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = Qwen2RotaryEmbedding(config=config)  # buffers are not in the state dict
    return model.to(device).eval()


def load_text_decoder(checkpoint: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The checkpoint's language model as a plain-torch
    :class:`~infomerge.backbones.qwen2_decoder.Qwen2Decoder` (eval mode), or transformers'
    ``Qwen2ForCausalLM`` (:func:`load_text_model`) for a config that decoder does not cover
    (:func:`~infomerge.backbones.qwen2_decoder.unsupported`). Same weights, same logits; the
    decoder does not import transformers' modelling stack (docs/runtime.md, "Load and start-up").

    Raises:
        ArtifactError: no ``config.json``, not Qwen2, or no language-model weights.
    """
    from infomerge.backbones.qwen2_decoder import build_decoder, unsupported

    config = text_config(checkpoint)
    state = text_state_dict(checkpoint, dtype)
    if unsupported(config) is not None:
        return hf_text_model(config, state, device)
    return build_decoder(config, state, device)


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


__all__ = [
    "extract_text_checkpoint",
    "hf_text_model",
    "load_text_decoder",
    "load_text_model",
    "text_config",
    "text_key",
    "text_state_dict",
]
