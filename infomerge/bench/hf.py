"""The Hugging Face baseline of ``infomerge-bench``: the checkpoint's own transformers model.

What a user runs without this toolkit: ``LlavaOnevisionForConditionalGeneration.from_pretrained``
with SDPA attention, fp32 on a CPU (bf16 on a GPU, as our torch LLM), uncompressed (every one of
the F * N + 1 video tokens reaches the LLM).
Stages, each through transformers' own code:

- ``vision``: ``model.model.get_video_features`` (SigLIP tower, projector, bilinear pooling,
  newline), pixel values (1, F, 3, S, S) -> (1, F * N + 1, D);
- ``assemble``: the text embeddings and transformers' splice (``get_placeholder_mask`` +
  ``masked_scatter``) of the video features over the ``<video>`` placeholders;
- ``prefill``: ``model(inputs_embeds=..., use_cache=True, logits_to_keep=1)``: first-token logits
  and the KV cache;
- ``token_decode``: ``model(input_ids=[[token]], cache=cache)`` per token;
- TTFT: one request as the user writes it: decode and sample the video, tokenize, then
  ``model.generate(max_new_tokens=1)``.

Inputs: the same ``pixel_values`` and the same token ids as the infomerge pipeline, i.e. the
checkpoint's chat template with its one ``<video>`` expanded to F * N + 1 placeholders, which is what
Hugging Face's processor produces (``tests/test_runtime_hf.py`` checks that ``generate`` on these
ids equals the pipeline's tokens). Feeding identical inputs, rather than running HF's video
processor on the file, keeps the comparison to the model's computation: the processor would
sample and resize frames its own way, and its preprocessing time is not a model stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from infomerge.runtime.decode_thread import decode_video
from infomerge.runtime.embeddings import DEFAULT_PROMPT, PromptIds, load_chat_template, prompt_ids


@dataclass
class HFPrompt:
    """The expanded prompt: ``input_ids`` (1, T) int64 with ``video_tokens`` placeholders."""

    input_ids: torch.Tensor
    video_tokens: int

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


class HFBaseline:
    """One ``LlavaOnevisionForConditionalGeneration`` (SDPA; fp32, bf16 on CUDA) and its stages.

    Args:
        checkpoint: the Hugging Face checkpoint directory (the one every backend is built from).
        device: "cpu" or "cuda".
        frames: F, frames per video.
        tokens_per_frame: N, pooled tokens per frame (196).
    """

    name = "hf"
    variant = "sdpa"

    def __init__(
        self, checkpoint: str | Path, device: str = "cpu", frames: int = 32, tokens_per_frame: int = 196
    ):
        from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

        # fp32 on a CPU, bf16 on a GPU: the dtypes of the torch backend's LLM
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        self.model = (
            LlavaOnevisionForConditionalGeneration.from_pretrained(
                str(checkpoint), attn_implementation="sdpa", dtype=dtype
            )
            .to(device)
            .eval()
        )
        self.device = device
        self.frames, self.tokens_per_frame = int(frames), int(tokens_per_frame)
        cfg = self.model.config
        self.video_token_id = int(cfg.video_token_index)
        self.feature_layer = cfg.vision_feature_layer
        self.select_strategy = cfg.vision_feature_select_strategy
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.chat_template = load_chat_template(checkpoint, self.tokenizer)

    def prompt_ids(self, prompt: str = DEFAULT_PROMPT) -> PromptIds:
        """The checkpoint's chat template around one ``<video>`` and ``prompt`` (the pipeline's ids)."""
        return prompt_ids(self.tokenizer, self.chat_template, prompt, self.video_token_id)

    def prompt(self, ids: PromptIds) -> HFPrompt:
        """The pipeline's templated prompt with ``<video>`` expanded to F * N + 1 placeholders
        (HF's processor expansion for one video: N pooled tokens per frame and one newline)."""
        n = self.frames * self.tokens_per_frame + 1
        flat = [*ids.before, *([self.video_token_id] * n), *ids.after]
        return HFPrompt(torch.tensor([flat], dtype=torch.int64, device=self.device), n)

    @torch.inference_mode()
    def vision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (F, 3, S, S) float32 -> video features (1, F * N + 1, D), the model's dtype."""
        out = self.model.model.get_video_features(
            pixel_values_videos=pixel_values.to(self.device, self.model.dtype)[None],
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
        )
        return out.pooler_output

    @torch.inference_mode()
    def assemble(self, prompt: HFPrompt, features: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the video features scattered over the placeholders: (1, T, D)."""
        embeds = self.model.get_input_embeddings()(prompt.input_ids)
        feats = features.to(embeds.dtype)
        _, mask = self.model.model.get_placeholder_mask(prompt.input_ids, embeds, video_features=feats)
        return embeds.masked_scatter(mask, feats.flatten(0, 1))

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor):
        """(1, T, D) -> (first-token logits (V,) float32 numpy, the KV cache)."""
        out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float().cpu().numpy(), out.cache

    @torch.inference_mode()
    def step(self, token: int, cache) -> torch.Tensor:
        """One decode step on ``cache`` (extended in place) -> next logits (V,)."""
        ids = torch.tensor([[token]], dtype=torch.int64, device=self.device)
        return self.model(input_ids=ids, cache=cache, use_cache=True).logits[0, -1]

    @torch.inference_mode()
    def first_token(self, prompt: HFPrompt, pixel_values: torch.Tensor) -> int:
        """``generate(max_new_tokens=1)`` on the expanded ids and the frames: the first token id."""
        out = self.model.generate(
            input_ids=prompt.input_ids,
            attention_mask=torch.ones_like(prompt.input_ids),
            pixel_values_videos=pixel_values.to(self.device, self.model.dtype)[None],
            max_new_tokens=1,
            do_sample=False,
        )
        return int(out[0, -1])

    def request(self, video: str | Path, prompt: str = DEFAULT_PROMPT, size: int = 384) -> int:
        """One user request up to the first token: decode and sample F frames of ``video``
        (the pipeline's decoder), template and tokenize ``prompt``, ``generate(max_new_tokens=1)``."""
        decoded = decode_video(video, self.frames, size)
        return self.first_token(self.prompt(self.prompt_ids(prompt)), decoded.pixel_values)

    def close(self) -> None:
        self.model = None


__all__ = ["HFBaseline", "HFPrompt"]
