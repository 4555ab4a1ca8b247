"""Full-size random-weight checkpoints (``infomerge-bench --random-weights``,
``infomerge-export --random-weights --llm``).

Timing does not need trained weights, but every backend has to run the SAME weights: the torch
pipeline, ``vision.onnx`` and the onnxruntime-genai LLM graph are all built from one checkpoint
directory. :func:`random_checkpoint` writes one in the layout of the ``tiny`` checkpoint
(:mod:`infomerge.backbones.tiny`), with the real backbone's sizes:

- ``config.json`` + ``model.safetensors``: ``LlavaOnevisionForConditionalGeneration`` built from
  :meth:`Backbone.llava_config` with transformers' random initialisation (seeded), on a CUDA GPU
  when one is visible (the CPU draws about 27 M random weights/s single-threaded, 5 min for a 7B
  model; a GPU takes seconds, from its own generator, so the same seed gives other weights there);
- the tiny tokenizer and chat template (a 1,024-token byte-level BPE: the prompt's token count
  differs from Qwen2's by a few tokens, which does not matter for timing); the config's
  ``image_token_index`` / ``video_token_index`` are set to its ``<image>`` / ``<video>`` ids;
- ``siglip_head/``: a random SigLIP post_layernorm + MAP head of the backbone's width.

Qwen2.5-VL backbones: ``Qwen2_5_VLForConditionalGeneration`` from :meth:`Backbone.qwen_config`, the
tiny Qwen tokenizer and chat template (:mod:`infomerge.backbones.tiny_qwen`, its special-token ids
written into the config), no ``siglip_head/``.

The directory is built in a temporary sibling and renamed into place, and reused when complete
(``$INFOMERGE_CACHE`` or ``~/.cache/infomerge``, subfolder ``random-<backbone>-seed<seed>``).
Size on disk: about 3.6 GB for ``ov-0.5b`` (fp32); the 7B backbones are stored in bf16 (~16 GB).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from infomerge.artifacts.atomic import atomic_directory
from infomerge.backbones.registry import TINY, Backbone, get_backbone

# above this many parameters the checkpoint is written in bf16 (the torch backend casts on load)
_BF16_ABOVE = 2_000_000_000


def default_directory(backbone: str, seed: int = 0) -> Path:
    """``$INFOMERGE_CACHE/random-<backbone>-seed<seed>`` (default cache ``~/.cache/infomerge``)."""
    root = os.environ.get("INFOMERGE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "infomerge"
    return base / f"random-{backbone}-seed{seed}"


def _is_complete(d: Path, siglip_head: bool = True) -> bool:
    return (
        (d / "config.json").is_file()
        and (d / "tokenizer.json").is_file()
        and ((d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file())
        and (not siglip_head or (d / "siglip_head" / "model.safetensors").is_file())
    )


def write_qwen(out: Path, bb: Backbone, seed: int, device: str) -> None:
    """A random-weight Qwen2.5-VL checkpoint of ``bb``'s sizes with the tiny Qwen tokenizer."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from infomerge.backbones.tiny_qwen import CHAT_TEMPLATE, TINY_QWEN, build_tokenizer

    tokenizer = build_tokenizer()
    ids = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")
    spec = dataclasses.replace(bb, **{k: getattr(TINY_QWEN, k) for k in ids})
    config = spec.qwen_config()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.text_config.eos_token_id, config.text_config.pad_token_id = eos, tokenizer.pad_token_id
    config.text_config.bos_token_id = None
    where = torch.device(device)
    gpus = []  # CUDA generators whose state the seed must not leak out of this call
    if where.type == "cuda":
        gpus = [torch.cuda.current_device() if where.index is None else where.index]
    with torch.random.fork_rng(devices=gpus), where:
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    if sum(p.numel() for p in model.parameters()) > _BF16_ABOVE:
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "README.md").write_text(
        f"# random-weight {bb.name}\n\nFull-size random weights (seed {seed}) for timing only; "
        f"tokenizer and chat template of the infomerge tiny Qwen2.5-VL checkpoint; initialised on {device}.\n"
    )


def write_llava(out: Path, bb: Backbone, seed: int, device: str) -> None:
    from safetensors.torch import save_file

    from infomerge.backbones.loading import load_llava_model
    from infomerge.backbones.tiny import (
        PROCESSOR_CHAT_TEMPLATE,
        SIGLIP_HEAD_SUBDIR,
        build_siglip_head,
        build_tokenizer,
    )

    tokenizer = build_tokenizer()
    spec = dataclasses.replace(bb, image_token_id=TINY.image_token_id, video_token_id=TINY.video_token_id)
    model = load_llava_model(spec, random_weights=True, seed=seed, device=device)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for cfg in (model.config.text_config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = eos, tokenizer.pad_token_id, None
    if sum(p.numel() for p in model.parameters()) > _BF16_ABOVE:
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(PROCESSOR_CHAT_TEMPLATE)
    head = out / SIGLIP_HEAD_SUBDIR
    head.mkdir()
    bb.siglip_head_config().save_pretrained(head)
    save_file(build_siglip_head(seed, bb), str(head / "model.safetensors"), metadata={"format": "pt"})
    (out / "README.md").write_text(
        f"# random-weight {bb.name}\n\nFull-size random weights (seed {seed}) for timing only; "
        f"tokenizer and chat template of the infomerge tiny checkpoint; initialised on {device}.\n"
    )


def random_checkpoint(
    backbone: str,
    seed: int = 0,
    directory: str | os.PathLike | None = None,
    device: str | None = None,
) -> Path:
    """Write (or reuse) a full-size random-weight LLaVA-OneVision checkpoint of ``backbone``.

    Args:
        backbone: registry name (``ov-0.5b``, ``ov-7b``; ``tiny`` returns the tiny checkpoint).
        seed: seed of the weights.
        directory: where to write it (default :func:`default_directory`).
        device: where the weights are drawn: None = ``cuda`` when a GPU is visible, else ``cpu``.
            The file is the same size and layout either way; the values differ (two generators).

    Returns:
        The checkpoint directory (loadable by :class:`infomerge.runtime.pipeline.Pipeline` through
        ``model_path`` and by ``infomerge-export --model-path``).

    Raises:
        UnknownBackboneError: ``backbone`` is not registered.
        OSError: the directory cannot be written (nothing half-written is left).
    """
    bb = get_backbone(backbone)
    if bb.hf_id is None:
        from infomerge.backbones.loading import resolve_checkpoint

        return resolve_checkpoint(bb)  # the locally built tiny / tiny-qwen checkpoint
    target = Path(directory) if directory is not None else default_directory(bb.name, seed)
    family = bb.family_spec
    if _is_complete(target, family.siglip_head):
        return target
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with atomic_directory(target, replace=True) as tmp:  # an incomplete leftover is replaced
        family.write_random_weights(tmp, bb, seed, device)
    return target


__all__ = ["default_directory", "random_checkpoint"]
