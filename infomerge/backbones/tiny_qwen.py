"""The ``tiny-qwen`` backbone: a real Qwen2.5-VL checkpoint, built locally, no download.

:func:`build_tiny_qwen_checkpoint` writes a Hugging Face checkpoint directory that
``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load
offline:

- ``config.json`` / ``model.safetensors``: :data:`infomerge.backbones.registry.TINY_QWEN`'s
  ``Qwen2_5_VLConfig`` (real patch 14, temporal patch 2, 2 x 2 merge and 112-pixel windows; tiny
  widths and depths), deterministic random weights from ``seed``; RMSNorm gains randomised too;
- the tiny byte-level BPE tokenizer (:func:`infomerge.backbones.tiny.build_tokenizer`) with
  Qwen2.5-VL's special tokens at ids 0-6 (:data:`SPECIAL_TOKENS`) and the ChatML chat template
  with Qwen2.5-VL's video slot ``<|vision_start|><|video_pad|><|vision_end|>`` and its default
  system turn (:data:`CHAT_TEMPLATE`, the behaviour of the template shipped with
  ``Qwen/Qwen2.5-VL-7B-Instruct``);
- the processor files (``preprocessor_config.json``, ``video_preprocessor_config.json``) of a
  ``Qwen2_5_VLProcessor`` at the registry's fixed frame size (min = max pixels = H x W).
  transformers 5 needs ``torchvision`` to instantiate Qwen's video processor; the files are
  written without it.

The directory is built in a temporary sibling and renamed into place, and reused when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from infomerge.artifacts.atomic import atomic_directory
from infomerge.backbones.registry import TINY_QWEN

TINY_QWEN_VERSION = "tiny-qwen-v1"
_COMPLETE = ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja")

# ids 0..6; <|vision_start|> 3, <|vision_end|> 4, <|image_pad|> 5, <|video_pad|> 6 (the registry's)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# ChatML with Qwen2-VL's default system turn and vision slots (images and videos where they occur).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_cache_dir(seed: int = 0) -> Path:
    """``$INFOMERGE_CACHE/tiny-qwen-v1`` if the variable is set, else
    ``~/.cache/infomerge/tiny-qwen-v1`` (``tiny-qwen-v1-seed<N>`` for a seed other than 0)."""
    root = os.environ.get("INFOMERGE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "infomerge"
    return base / (TINY_QWEN_VERSION if seed == 0 else f"{TINY_QWEN_VERSION}-seed{seed}")


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a complete tiny Qwen2.5-VL checkpoint."""
    d = Path(directory)
    return all((d / f).is_file() for f in _COMPLETE)


def build_tiny_qwen_checkpoint(directory: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Write (or reuse) the tiny Qwen2.5-VL checkpoint; return its directory.

    Args:
        directory: where to put it; default :func:`default_cache_dir`. Reused as is when complete.
        seed: seed of the random weights (the same seed gives the same weights).

    Returns:
        The checkpoint directory (see the module docstring for its files).

    Raises:
        OSError: the directory cannot be written.
    """
    target = Path(directory) if directory is not None else default_cache_dir(seed)
    if is_complete(target):
        return target
    try:
        with atomic_directory(target, replace=True) as tmp:
            _write_checkpoint(tmp, seed)
    except OSError:
        if is_complete(target):  # a concurrent builder finished first: its copy is identical
            return target
        raise
    return target


def build_tokenizer():
    """The tiny tokenizer with Qwen2.5-VL's special tokens (:data:`SPECIAL_TOKENS` at ids 0-6)."""
    from infomerge.backbones.tiny import build_tokenizer as build_bpe

    tok = build_bpe(SPECIAL_TOKENS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(seed: int = 0):
    """The tiny ``Qwen2_5_VLForConditionalGeneration`` with deterministic random weights (fp32, eval)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from infomerge.backbones.tiny import build_random_model

    return build_random_model(Qwen2_5_VLForConditionalGeneration, TINY_QWEN.qwen_config(), seed)


def _processor_files() -> dict[str, dict]:
    """The JSON files of a ``Qwen2_5_VLProcessor`` pinned to the registry's frame size."""
    pixels = TINY_QWEN.frame_height * TINY_QWEN.frame_width
    common = {
        "do_resize": True,
        "size": {"shortest_edge": pixels, "longest_edge": pixels},
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],  # OPENAI_CLIP_MEAN
        "image_std": [0.26862954, 0.26130258, 0.27577711],  # OPENAI_CLIP_STD
        "do_convert_rgb": True,
        "patch_size": TINY_QWEN.patch,
        "temporal_patch_size": TINY_QWEN.temporal_patch,
        "merge_size": TINY_QWEN.spatial_merge,
        "processor_class": "Qwen2_5_VLProcessor",
    }
    return {
        "preprocessor_config.json": {"image_processor_type": "Qwen2VLImageProcessor", **common},
        "video_preprocessor_config.json": {"video_processor_type": "Qwen2VLVideoProcessor", **common},
    }


def _write_checkpoint(out: Path, seed: int) -> None:
    model = build_model(seed)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"  # as the real checkpoints; encodes as tokenizer.json
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    for name, content in _processor_files().items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "README.md").write_text(
        "# infomerge tiny Qwen2.5-VL\n\nRandom weights (seed "
        f"{seed}), real patch / merge / window geometry, tiny widths. Built by "
        "infomerge.backbones.tiny_qwen.build_tiny_qwen_checkpoint.\n"
    )


__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_QWEN_VERSION",
    "build_model",
    "build_tiny_qwen_checkpoint",
    "build_tokenizer",
    "default_cache_dir",
    "is_complete",
]
