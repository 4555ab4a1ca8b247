"""What every LLM backend of the runtime provides, and the decode loop they share.

A backend takes ``inputs_embeds`` with explicit RoPE ``position_ids`` (compressed video tokens
keep their original positions, with gaps), keeps its own KV cache, and returns next-token logits.
:meth:`LLMBackend.prefill` fills the cache and :func:`decode_ids` then runs one
:meth:`LLMBackend.step` per new token, at positions continuing from the uncompressed prompt length,
until EOS or ``max_new_tokens`` (:meth:`infomerge.runtime.pipeline.Pipeline.prefill` checks the
context first).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Sampling:
    """Next-token choice.

    Attributes:
        do_sample: False: greedy (argmax, the lower token id on a tie); True: sample.
        temperature: logits are divided by it before sampling (> 0).
        top_k: keep the k most likely tokens (0: all).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1.0: all).
        seed: seed of the sampler's random generator (None: fresh entropy).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not (0.0 < self.top_p <= 1.0) or self.top_k < 0:
            raise ValueError(
                f"sampling needs temperature > 0, 0 < top_p <= 1, top_k >= 0; got {self.temperature}, "
                f"{self.top_p}, {self.top_k}"
            )


GREEDY = Sampling()


class Sampler:
    """Picks the next token id from (V,) logits according to a :class:`Sampling`.

    Args:
        sampling: greedy or sampling parameters.
        suppress: token ids never picked (their logits set to -inf first, as Hugging Face's
            ``suppress_tokens`` does): the runtime passes the embedding rows that the tokenizer has
            no token for (vocabulary padding), which no text can come from.
    """

    def __init__(self, sampling: Sampling = GREEDY, suppress: Sequence[int] | np.ndarray | None = None):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.suppress = (
            None if suppress is None or len(suppress) == 0 else np.asarray(suppress, dtype=np.int64)
        )

    def __call__(self, logits: np.ndarray) -> int:
        s = self.sampling
        if self.suppress is not None:
            logits = logits.copy()
            logits[self.suppress] = -np.inf
        if not s.do_sample:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / s.temperature
        if 0 < s.top_k < x.size:
            kth = np.partition(x, -s.top_k)[-s.top_k]
            x = np.where(x >= kth, x, -np.inf)
        p = np.exp(x - x.max())
        p /= p.sum()
        if s.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            keep = np.cumsum(p[order]) - p[order] < s.top_p  # the token that crosses top_p stays
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0.0)
            p /= p.sum()
        return int(self.rng.choice(p.size, p=p))


class LLMBackend(ABC):
    """A Qwen2 decoder that takes embeddings and explicit positions and keeps a KV cache.

    Attributes:
        name: ``"torch"`` or ``"ort"``.
        hidden_size: D.
        vocab_size: V.
        context: largest RoPE position + 1 the model supports (``max_position_embeddings``).
        eos_token_ids: ids that end generation.
        device: where it runs (``"cpu"`` / ``"cuda"``).
    """

    name: str
    hidden_size: int
    vocab_size: int
    context: int
    eos_token_ids: tuple[int, ...]
    device: str

    @abstractmethod
    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """(n, D) float32 CPU embeddings of token ids."""

    @abstractmethod
    def prefill(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, capacity: int, visual=None
    ) -> np.ndarray:
        """Start a new sequence: run the prompt and return the last position's logits.

        Args:
            inputs_embeds: (1, T, D) float.
            position_ids: (1, T) int64 RoPE positions; (3, 1, T) M-RoPE (t, h, w) for Qwen2.5-VL.
            capacity: KV slots to reserve: T + the tokens that will follow.
            visual: an :class:`~infomerge.compress.unified_inner.InnerMerge` (the inner-LLM merge of
                the video rows) or None. Only the torch backend runs it; others raise UsageError.

        Returns:
            (V,) float32 logits of the token after the prompt.
        """

    @abstractmethod
    def step(self, token_id: int, position: int) -> np.ndarray:
        """Append one token at RoPE ``position``; return (V,) float32 logits of the next token."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the KV cache and sessions (optional)."""


def decode_ids(
    llm: LLMBackend, logits: np.ndarray, next_position: int, max_new_tokens: int, sampler: Sampler
) -> Iterator[int]:
    """Yield token ids from the prefill's ``logits`` on: one :meth:`LLMBackend.step` per token.

    Token ``i`` (from 0) is fed at RoPE position ``next_position + i``. Stops after an EOS id
    (which is yielded) or after ``max_new_tokens`` ids.
    """
    for i in range(max_new_tokens):
        token = sampler(logits)
        yield token
        if token in llm.eos_token_ids or i == max_new_tokens - 1:
            return
        logits = llm.step(token, next_position + i)


def eos_ids_of(checkpoint: str | Path, tokenizer=None) -> tuple[int, ...]:
    """EOS ids: ``generation_config.json``'s and ``config.json``'s (text config) plus the tokenizer's."""
    d = Path(checkpoint)
    ids: list[int] = []

    def add(v):
        if v is None:
            return
        for x in v if isinstance(v, list) else [v]:
            if int(x) not in ids:
                ids.append(int(x))

    for name in ("generation_config.json", "config.json"):
        if (d / name).is_file():
            cfg = json.loads((d / name).read_text())
            add(cfg.get("eos_token_id"))
            add(cfg.get("text_config", {}).get("eos_token_id"))
    if tokenizer is not None:
        add(tokenizer.eos_token_id)
    return tuple(ids)


class TextStream:
    """Incremental detokenizer: feed token ids, get the newly completed text.

    Decodes the whole answer each time and returns what was added, holding text back while it
    ends in an incomplete UTF-8 sequence (byte-level BPE splits characters across tokens).
    Special tokens (EOS) are skipped.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.text):
            return ""
        new, self.text = text[len(self.text) :], text
        return new


__all__ = [
    "GREEDY",
    "LLMBackend",
    "Sampler",
    "Sampling",
    "TextStream",
    "decode_ids",
    "eos_ids_of",
]
