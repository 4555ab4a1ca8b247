"""Embedding assembly: the LLaVA-OneVision chat template, the video splice and RoPE position ids.

Hugging Face's processor expands the one ``<video>`` placeholder of the templated prompt into
``F * N + 1`` placeholder tokens and ``masked_scatter``s the video features over them. A compressed
video keeps K < F * N tokens, so the runtime builds the LLM input itself (spec ``pipeline.md``,
"splice"; ``infomerge.md`` step 7):

    inputs_embeds = [ text before <video> | kept video tokens (sorted by flat index) | newline | text after ]
    position_ids  = [ 0 .. t-1           | t + index                                | t + F*N | t+F*N+1 ..  ]

``t`` is the number of text tokens before the placeholder, ``index`` a kept token's original flat
position ``l * N + p`` (frame ``l``, pooled patch ``p``). The positions keep the gaps left by the
dropped tokens, and the first generated token takes position ``t + F*N + 1 + len(after)``: the
length of the uncompressed prompt. With every token kept (no compression) the positions are
``0 .. T-1``, exactly those Hugging Face uses.

That is the OneVision video layout (``newline="one"``: one ``image_newline`` vector after all
frames). LLaVA-Video's ``"grid"`` layout closes every row of every frame with a newline; there the
kept tokens keep their positions in that layout and a row's newline is kept with its row
(:func:`grid_layout`, FastVID's rule), so the uncompressed prompt is again positions ``0 .. T-1``.

Qwen2.5-VL has no newline and 3D M-RoPE positions (t, h, w): :func:`assemble_mrope` splices the kept
tokens between ``<|vision_start|>`` and ``<|vision_end|>``, each with its uncompressed (t, h, w), the
text after and decoding continuing from the uncompressed video (docs/backbones.md, "Qwen2.5-VL").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from infomerge.errors import ArtifactError, PromptTooLongError

DEFAULT_PROMPT = "What is happening in this video?"


@dataclass(frozen=True)
class PromptIds:
    """The templated prompt split at its one video placeholder.

    Attributes:
        before: token ids before ``<video>`` (system / user header), t = ``len(before)``.
        after: token ids after it (the question, ``<|im_end|>``, the assistant header).
        text: the templated prompt string, with the single ``<video>`` placeholder.
    """

    before: tuple[int, ...]
    after: tuple[int, ...]
    text: str


@dataclass
class Assembled:
    """The LLM input of one question about one video.

    Attributes:
        inputs_embeds: (1, T, D) float tensor: text, kept video tokens, newline, text.
        position_ids: (1, T) int64 RoPE positions (with gaps where tokens were dropped); Qwen2.5-VL:
            (3, 1, T) M-RoPE positions (t, h, w) (:func:`assemble_mrope`).
        next_position: RoPE position of the first generated token: the uncompressed prompt
            length ``len(before) + F*N + 1 + len(after)``.
        video_tokens: kept video tokens spliced in, newlines included (K + 1; grid: K + rows kept).
        uncompressed_video_tokens: F*N + 1 (grid: F * side * (side + 1)).
        prompt: the :class:`PromptIds` the text came from.
        video_span: ``(start, stop)``, the sequence rows of the kept video tokens (``"one"``: newline
            excluded, it is row ``stop``: what the Unified inner-LLM merge works on; ``"grid"``:
            every video row, the interleaved newlines included).
    """

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    next_position: int
    video_tokens: int
    uncompressed_video_tokens: int
    prompt: PromptIds
    video_span: tuple[int, int] = (0, 0)

    @property
    def length(self) -> int:
        """T, the number of input tokens the LLM prefills."""
        return int(self.inputs_embeds.shape[1])


def load_chat_template(checkpoint: str | Path, tokenizer=None) -> str:
    """The checkpoint's processor chat template (``chat_template.jinja`` / ``chat_template.json`` /
    ``processor_config.json``), else the tokenizer's own.

    Raises:
        ArtifactError: none of them has a chat template.
    """
    import json

    d = Path(checkpoint)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json"):
        if (d / name).is_file():
            template = json.loads((d / name).read_text()).get("chat_template")
            if template:
                return template
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ArtifactError(
            f"{d}: no chat template (chat_template.jinja, processor_config.json or tokenizer)"
        )
    return template


_SLOT = "\u2063infomerge-prompt-slot\u2063"  # stands in for the prompt while templating


def _template(tokenizer, chat_template: str, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of user text, special-token strings included as plain text.

    ``<|im_end|>``, ``<|im_start|>``, ``<|endoftext|>``, ``<image>``, ``<video>`` typed by a user are
    encoded as the characters they are made of (Hugging Face tokenizers' ``split_special_tokens``),
    never as the control tokens: a prompt cannot close its turn or add a video slot.
    """
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def prompt_ids(tokenizer, chat_template: str, prompt: str, video_token_id: int) -> PromptIds:
    """Apply the chat template to one user turn (a video, then ``prompt``) and split at ``<video>``.

    The message is ``[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]``
    with the generation prompt appended, as lmms-eval / the llava-hf model cards build it.

    The prompt is text (:func:`text_ids`): the template is rendered with a placeholder in the
    prompt's place, the template's own text is tokenized with its special tokens, the prompt with
    special-token strings split into plain text. Where the template leaves the prompt untouched,
    a prompt without special-token strings gives the ids of tokenizing the whole rendered text.

    Raises:
        ArtifactError: the templated text does not tokenize to exactly one ``video_token_id``
            (a tokenizer without the ``<video>`` special token, or a template without a video slot).
    """
    text = _template(tokenizer, chat_template, prompt)
    shell = _template(tokenizer, chat_template, _SLOT)
    parts = shell.split(_SLOT)
    head, tail = (parts[0], parts[1]) if len(parts) == 2 else ("", "")
    if len(parts) != 2 or not (text.startswith(head) and text.endswith(tail)) or len(text) < len(head + tail):
        raise ArtifactError(
            "the chat template does not place the prompt once, between fixed text; the runtime cannot "
            "keep special-token strings typed in the prompt plain text with this template"
        )
    middle = text[len(head) : len(text) - len(tail)]  # the prompt as the template wrote it (trimmed, say)
    ids = [
        *tokenizer(head, add_special_tokens=False)["input_ids"],
        *text_ids(tokenizer, middle),
        *tokenizer(tail, add_special_tokens=False)["input_ids"],
    ]
    where = [i for i, t in enumerate(ids) if t == video_token_id]
    if len(where) != 1:
        raise ArtifactError(
            f"the chat template + tokenizer give {len(where)} video placeholder tokens (id {video_token_id}) "
            "for one video; the checkpoint's tokenizer must have <video> as one special token"
        )
    k = where[0]
    return PromptIds(tuple(ids[:k]), tuple(ids[k + 1 :]), text)


def check_context(next_position: int, max_new_tokens: int, context: int) -> None:
    """Raise :class:`PromptTooLongError` unless the prompt and the answer fit in the context.

    Positions continue from the uncompressed length, so ``next_position`` (not the number of kept
    tokens) is what must fit: every RoPE position used is < ``next_position + max_new_tokens``.

    Raises:
        PromptTooLongError: ``next_position + max_new_tokens > context``; nothing is truncated.
    """
    if next_position > context:
        raise PromptTooLongError(
            f"the prompt spans {next_position} positions (text + video tokens, uncompressed length) "
            f"but the LLM's context is {context}; shorten the prompt"
        )
    if next_position + max_new_tokens > context:
        raise PromptTooLongError(
            f"the prompt spans {next_position} positions and max_new_tokens={max_new_tokens} would reach "
            f"position {next_position + max_new_tokens}, beyond the LLM's context of {context}; "
            f"lower --max-new-tokens to at most {context - next_position} or shorten the prompt"
        )


def grid_layout(index: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of kept tokens and of the newlines kept with them in the ``"grid"`` layout.

    The uncompressed LLaVA-Video layout (LLaVA-NeXT ``add_token_per_grid``) is, per frame, each
    row of ``side`` tokens followed by one ``image_newline``: token ``(l, i, j)`` (frame ``l``,
    row ``i``, column ``j``) sits at ``(l * side + i) * (side + 1) + j``, the newline closing row
    ``(l, i)`` at ``(l * side + i) * (side + 1) + side``.

    Under compression a row's newline is kept when at least one token of that row is kept, at its
    original position; rows with nothing kept lose theirs (FastVID's LLaVA-Video code,
    ``fastvid_llavavideo/.../modeling_qwen2.py``: ``newline_index = ((index // 14) + 1) * 14 - 1``,
    then ``unique``). With every token kept this is the whole uncompressed layout.

    Args:
        index: (K,) int64 kept flat indices ``l * side^2 + i * side + j``, strictly increasing.
        side: the pooled grid side (13 for LLaVA-Video).

    Returns:
        (token offsets (K,) int64, newline offsets (R,) int64 of the R rows with a kept token),
        both relative to the first video position and increasing.
    """
    row = index // side  # global row l * side + i
    tokens = row * (side + 1) + index % side
    newlines = torch.unique(row) * (side + 1) + side
    return tokens, newlines



def _checked_index(index: torch.Tensor, device, total: int, where: str) -> torch.Tensor:
    """``index`` as int64 on ``device``, checked strictly increasing within [0, ``total``).

    Raises:
        ValueError: it is not (the message names ``where``).
    """
    index = index.to(device=device, dtype=torch.int64)
    if index.numel() and (
        int(index[0]) < 0 or int(index[-1]) >= total or bool((index[1:] <= index[:-1]).any())
    ):
        raise ValueError(f"{where}: index must be strictly increasing within [0, {total})")
    return index

def assemble(
    embed: Callable[[Sequence[int]], torch.Tensor],
    prompt: PromptIds,
    tokens: torch.Tensor,
    index: torch.Tensor,
    newline: torch.Tensor,
    frames: int,
    tokens_per_frame: int,
    newline_mode: str = "one",
) -> Assembled:
    """Splice kept video tokens and the newline(s) into the text embeddings; compute position ids.

    ``newline_mode="one"`` (LLaVA-OneVision): the one newline follows all kept tokens, at position
    ``t + F*N``. ``"grid"`` (LLaVA-Video): a newline closes every row that keeps a token, each
    token and newline at its position in the uncompressed grid layout (:func:`grid_layout`).

    Args:
        embed: text token ids -> (n, D) embeddings (the LLM's ``embed_tokens``).
        prompt: the templated prompt split at ``<video>``.
        tokens: (K, D) kept video tokens, in the order of ``index``.
        index: (K,) int64 original flat positions ``l * N + p``, strictly increasing, in [0, F*N).
        newline: (D,) the ``image_newline`` vector.
        frames: F.
        tokens_per_frame: N (a square, side^2, for ``"grid"``).
        newline_mode: ``"one"`` or ``"grid"``.

    Returns:
        :class:`Assembled` in the dtype and on the device of ``tokens``.

    Raises:
        ValueError: shapes disagree, ``index`` is not strictly increasing within [0, F*N), an
            unknown ``newline_mode``, or N not a square for ``"grid"``.
    """
    total = frames * tokens_per_frame
    if tokens.dim() != 2 or index.shape != (tokens.shape[0],) or newline.shape != (tokens.shape[1],):
        raise ValueError(
            f"assemble: tokens {tuple(tokens.shape)}, index {tuple(index.shape)}, "
            f"newline {tuple(newline.shape)}"
        )
    index = _checked_index(index, tokens.device, total, "assemble")
    t, a = len(prompt.before), len(prompt.after)
    dtype, device = tokens.dtype, tokens.device
    row = newline.view(1, -1).to(device=device, dtype=dtype)
    if newline_mode == "one":
        video = torch.cat([tokens, row])
        offsets = torch.cat([index, torch.tensor([total], device=device)])
        span = total + 1
        video_span = (t, t + int(index.numel()))  # the newline is row video_span[1]
    elif newline_mode == "grid":
        side = math.isqrt(tokens_per_frame)
        if side * side != tokens_per_frame:
            raise ValueError(f"assemble: grid layout needs a square N, got {tokens_per_frame}")
        tok_pos, nl_pos = grid_layout(index, side)
        offsets, order = torch.sort(torch.cat([tok_pos, nl_pos]))
        video = torch.cat([tokens, row.expand(int(nl_pos.numel()), -1)])[order]
        span = frames * side * (side + 1)
        video_span = (t, t + int(offsets.numel()))  # newlines interleaved: rows of the whole video
    else:
        raise ValueError(f"assemble: unknown newline mode {newline_mode!r}; use 'one' or 'grid'")
    parts = []
    if t:
        parts.append(embed(prompt.before).to(device=device, dtype=dtype))
    parts.append(video)
    if a:
        parts.append(embed(prompt.after).to(device=device, dtype=dtype))
    positions = torch.cat(
        [
            torch.arange(t, device=device),
            t + offsets,
            torch.arange(t + span, t + span + a, device=device),
        ]
    )
    return Assembled(
        inputs_embeds=torch.cat(parts).unsqueeze(0),
        position_ids=positions.unsqueeze(0),
        next_position=t + span + a,
        video_tokens=int(offsets.numel()),
        uncompressed_video_tokens=span,
        prompt=prompt,
        video_span=video_span,
    )


def mrope_video_positions(start: int, groups: int, grid: tuple[int, int], interval: float) -> torch.Tensor:
    """M-RoPE positions (t, h, w) of an uncompressed Qwen2.5-VL video starting at ``start``.

    Qwen2.5-VL (arXiv 2502.13923, "MRoPE aligned to absolute time"; ``get_rope_index`` of
    transformers' ``modeling_qwen2_5_vl.py``): the video token of temporal group ``l``, merged row
    ``i``, column ``j`` (flat index ``(l * h + i) * w + j``) sits at

        t = start + floor(l * interval),   h = start + i,   w = start + j

    with ``interval = tokens_per_second * second_per_grid_t`` (the seconds a temporal patch spans
    times 2 ids per second).

    Args:
        start: the first video position (the number of text positions before it).
        groups: L, temporal groups (F / 2).
        grid: (h, w), merged tokens per column and row of one group.
        interval: temporal id step per group (float; floored after multiplying by ``l``).

    Returns:
        (3, L * h * w) int64.
    """
    h, w = grid
    t_ids = torch.floor(torch.arange(groups, dtype=torch.float64) * float(interval)).to(torch.int64)
    tt, hh, ww = torch.meshgrid(t_ids, torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1) + int(start)


def assemble_mrope(
    embed: Callable[[Sequence[int]], torch.Tensor],
    prompt: PromptIds,
    tokens: torch.Tensor,
    index: torch.Tensor,
    groups: int,
    grid: tuple[int, int],
    interval: float,
) -> Assembled:
    """Splice kept Qwen2.5-VL video tokens into the text embeddings with 3D M-RoPE positions.

    ``prompt.before`` ends with ``<|vision_start|>``, ``prompt.after`` starts with
    ``<|vision_end|>`` (the ``<|video_pad|>`` placeholder sits between them)::

        inputs_embeds = [ text before | kept video tokens (sorted by flat index) | text after ]
        position_ids  = [ (p, p, p)   | V[:, index]                              | (q, q, q) .. ]

    ``V`` = :func:`mrope_video_positions` of the uncompressed video from ``t = len(before)``, so
    every kept token keeps its original (t, h, w) (FastVID's Qwen2.5-VL code gathers
    ``position_ids[:, :, keep_index]`` the same way). The text after the video starts at
    ``q0 = max(V) + 1`` over the UNCOMPRESSED video (Qwen's rule: "the text start position_ids as the
    max vision position_ids plus 1", transformers PR #35569), whatever is kept, and the first
    generated token takes ``q0 + len(after)`` (transformers' ``rope_deltas``): decoding continues as
    in the uncompressed prompt, the analogue of the gapped 1D positions. With every token kept the
    positions are those of ``get_rope_index``.

    Note: transformers 5.24's ``get_rope_index`` starts the text after a video at
    ``t + max(h, w)`` instead of ``max(V) + 1``; the two agree while ``floor((L - 1) * interval) <
    max(h, w)`` (short clips; all our tests), and differ for long videos, where this function keeps
    the original rule (docs/backbones.md).

    Args:
        embed: text token ids -> (n, D) embeddings.
        prompt: the templated prompt split at ``<|video_pad|>``.
        tokens: (K, D) kept video tokens, in the order of ``index``.
        index: (K,) int64 flat positions ``l * h * w + i * w + j``, strictly increasing, < L*h*w.
        groups, grid, interval: as :func:`mrope_video_positions`.

    Returns:
        :class:`Assembled` with ``position_ids`` (3, 1, T) and ``next_position`` = q0 + len(after).

    Raises:
        ValueError: shapes disagree, or ``index`` not strictly increasing within [0, L*h*w).
    """
    total = groups * grid[0] * grid[1]
    if tokens.dim() != 2 or index.shape != (tokens.shape[0],):
        raise ValueError(f"assemble_mrope: tokens {tuple(tokens.shape)}, index {tuple(index.shape)}")
    index = _checked_index(index, tokens.device, total, "assemble_mrope")
    t, a = len(prompt.before), len(prompt.after)
    dtype, device = tokens.dtype, tokens.device
    video = mrope_video_positions(t, groups, grid, interval).to(device)  # (3, L*h*w)
    after_start = int(video.max()) + 1 if total else t
    parts = []
    if t:
        parts.append(embed(prompt.before).to(device=device, dtype=dtype))
    parts.append(tokens)
    if a:
        parts.append(embed(prompt.after).to(device=device, dtype=dtype))
    positions = torch.cat(
        [
            torch.arange(t, device=device).expand(3, -1),
            video[:, index],
            torch.arange(after_start, after_start + a, device=device).expand(3, -1),
        ],
        dim=1,
    )
    return Assembled(
        inputs_embeds=torch.cat(parts).unsqueeze(0),
        position_ids=positions.unsqueeze(1),
        next_position=after_start + a,
        video_tokens=int(index.numel()),
        uncompressed_video_tokens=total,
        prompt=prompt,
        video_span=(t, t + int(index.numel())),
    )


__all__ = [
    "DEFAULT_PROMPT",
    "Assembled",
    "PromptIds",
    "assemble",
    "assemble_mrope",
    "mrope_video_positions",
    "check_context",
    "grid_layout",
    "load_chat_template",
    "prompt_ids",
]
