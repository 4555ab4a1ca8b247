"""The text half of a Qwen2.5-VL checkpoint: its M-RoPE language model, read on its own.

transformers has no causal-LM class for Qwen2.5-VL's text model alone
(``Qwen2_5_VLForConditionalGeneration`` always builds the vision tower), so :class:`QwenTextLM`
pairs transformers' own ``Qwen2_5_VLTextModel`` with the ``lm_head`` Linear, exactly the modules
and the forward of ``Qwen2_5_VLForConditionalGeneration`` once ``inputs_embeds`` and 3-row
``position_ids`` are given (no vision input: ``Qwen2_5_VLModel.forward`` then only calls
``language_model`` and the head).

Checkpoint keys read (:func:`qwen_text_key`): ``model.language_model.*`` (transformers 5
``save_pretrained``), ``model.layers.*`` / ``model.embed_tokens.*`` / ``model.norm.*`` (the hub
checkpoints ``Qwen/Qwen2.5-VL-*-Instruct``) and ``lm_head.*``; the vision tower (``visual.*``,
``model.visual.*``) is never read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from infomerge.errors import ArtifactError


def qwen_text_config(checkpoint: str | os.PathLike):
    """The ``Qwen2_5_VLTextConfig`` of a Qwen2.5-VL checkpoint's ``config.json``.

    Raises:
        ArtifactError: no ``config.json``, or not a ``qwen2_5_vl`` checkpoint.
    """
    from transformers import Qwen2_5_VLConfig

    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise ArtifactError(f"{checkpoint}: no config.json; not a Hugging Face checkpoint directory")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != "qwen2_5_vl":
        raise ArtifactError(
            f"{checkpoint}: model_type {raw.get('model_type')!r}, not qwen2_5_vl; pass a Qwen2.5-VL "
            "checkpoint for a qwen2.5-vl backbone"
        )
    config = Qwen2_5_VLConfig.from_pretrained(str(checkpoint))
    text = config.text_config
    text.tie_word_embeddings = bool(raw.get("tie_word_embeddings", text.tie_word_embeddings))
    return text


def qwen_text_key(key: str) -> str | None:
    """Checkpoint key -> :class:`QwenTextLM` key (``model.*``, ``lm_head.*``), or None (vision)."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    if key.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")):
        return key
    return None


class QwenTextLM(nn.Module):
    """Qwen2.5-VL's language model and LM head (the text path of ``Qwen2_5_VLForConditionalGeneration``).

    Attributes:
        model: transformers' ``Qwen2_5_VLTextModel`` (embeddings, decoder layers with M-RoPE, norm).
        lm_head: (V, D) Linear, no bias.
        config: its ``Qwen2_5_VLTextConfig``.
    """

    def __init__(self, config):
        super().__init__()
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

        self.config = config
        self.model = Qwen2_5_VLTextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache=None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
        cache_position: torch.Tensor | None = None,
    ) -> SimpleNamespace:
        """Logits of the last ``logits_to_keep`` rows (0: all).

        Args:
            inputs_embeds: (B, T, D) float.
            position_ids: (3, B, T) int64 M-RoPE positions (t, h, w), or (B, T) for text-only rows
                (expanded to three equal rows, as transformers does).
            cache: a transformers ``DynamicCache`` (extended in place).
            cache_position: unused (the cache knows its length; accepted for the torch backend's
                common call).

        Returns:
            namespace with ``logits`` (B, T', V) and ``cache``.
        """
        out = self.model(
            inputs_embeds=inputs_embeds, position_ids=position_ids, cache=cache, use_cache=use_cache
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return SimpleNamespace(logits=self.lm_head(h), cache=out.cache)


def load_qwen_text_model(
    checkpoint: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    """A :class:`QwenTextLM` (eval mode) holding the checkpoint's language model.

    Built on the meta device and the weights assigned (read with
    :func:`infomerge.backbones.loading.read_tensors`, only the text tensors). ``lm_head.weight`` is
    the embedding matrix when the checkpoint ties them (Qwen2.5-VL-3B). Imports transformers'
    modelling; runs without an inner-LLM stage use :func:`load_qwen_text_decoder`.

    Raises:
        ArtifactError: not a Qwen2.5-VL checkpoint, or no language-model weights.
    """
    return qwen_text_model(qwen_text_config(checkpoint), qwen_text_state_dict(checkpoint, dtype), device)


def qwen_text_state_dict(checkpoint: str | os.PathLike, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The text model's weights under :class:`QwenTextLM` key names, in ``dtype``; ``lm_head.weight``
    is the embedding tensor itself when the checkpoint ties them.

    Raises:
        ArtifactError: no language-model weights.
    """
    from infomerge.backbones.loading import read_tensors

    state, _ = read_tensors(checkpoint, qwen_text_key)
    if "model.embed_tokens.weight" not in state:
        raise ArtifactError(f"{checkpoint}: no language-model weights (model.embed_tokens.weight)")
    tied = "lm_head.weight" not in state
    state = {k: v.to(dtype) for k, v in state.items()}
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # one tensor, not a copy
    return state


def qwen_text_model(config, state: dict[str, torch.Tensor], device: str = "cpu") -> QwenTextLM:
    """:class:`QwenTextLM` (eval) of ``config`` holding ``state`` (assigned on the meta device, no copy)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

    with torch.device("meta"):
        model = QwenTextLM(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = Qwen2_5_VLRotaryEmbedding(config=config)  # buffers: not in the state dict
    return model.to(device).eval()


def load_qwen_text_decoder(
    checkpoint: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    """The text model as a plain-torch M-RoPE
    :class:`~infomerge.backbones.qwen2_decoder.Qwen2Decoder` (eval), or :class:`QwenTextLM`
    (:func:`load_qwen_text_model`) for a config that decoder does not cover. Same weights, same
    logits, without transformers' modelling imports.

    Raises:
        ArtifactError: not a Qwen2.5-VL checkpoint, or no language-model weights.
    """
    from infomerge.backbones.qwen2_decoder import build_decoder, unsupported

    config = qwen_text_config(checkpoint)
    state = qwen_text_state_dict(checkpoint, dtype)
    if unsupported(config) is not None:
        return qwen_text_model(config, state, device)
    return build_decoder(config, state, device)


__all__ = [
    "QwenTextLM",
    "load_qwen_text_decoder",
    "load_qwen_text_model",
    "qwen_text_config",
    "qwen_text_key",
    "qwen_text_model",
    "qwen_text_state_dict",
]
