"""The ``tiny`` backbone: a real LLaVA-OneVision checkpoint, built locally, no download.

:func:`build_tiny_checkpoint` writes a Hugging Face checkpoint directory that
``LlavaOnevisionForConditionalGeneration.from_pretrained`` and ``AutoTokenizer.from_pretrained``
load offline:

- ``config.json`` / ``model.safetensors``: the real geometry (384 px, patch 14 -> 27 x 27 patches,
  pooled to 14 x 14) with tiny widths and depths (see :data:`infomerge.backbones.registry.TINY`),
  deterministic random weights from ``seed``. LayerNorm / RMSNorm gains and biases are randomised
  too, so a test that swaps two norms notices;
- a byte-level BPE tokenizer trained with the ``tokenizers`` library on :data:`_CORPUS` (Qwen2's
  pre-tokenizer, special tokens ``<|endoftext|>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2,
  ``<image>`` 3, ``<video>`` 4, a Qwen2-style ChatML chat template), saved as ``tokenizer.json``,
  ``tokenizer_config.json`` and friends;
- the processor files (``preprocessor_config.json``, ``video_preprocessor_config.json``,
  ``processor_config.json``, ``chat_template.jinja``) of a ``LlavaOnevisionProcessor``.
  transformers 5 needs ``torchvision`` to instantiate the video processor; the files are written
  without it;
- ``siglip_head/``: the stand-in for ``google/siglip-so400m-patch14-384``: a ``SiglipVisionConfig``
  with ``vision_use_head=True`` and a ``model.safetensors`` holding only ``vision_model.post_layernorm.*``
  and ``vision_model.head.*`` (the key names of the original checkpoint).

The directory is built in a temporary sibling and renamed into place, and reused when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from infomerge.artifacts.atomic import atomic_directory
from infomerge.backbones.registry import TINY, Backbone

TINY_VERSION = "tiny-v1"
SIGLIP_HEAD_SUBDIR = "siglip_head"
# Files whose presence marks a complete tiny checkpoint (written last: the rename is atomic anyway).
_COMPLETE = ("config.json", "model.safetensors", "tokenizer.json", f"{SIGLIP_HEAD_SUBDIR}/model.safetensors")

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

# Qwen2's pre-tokenizer split pattern (tokenizer.json of Qwen/Qwen2-7B-Instruct).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Text-only chat template (ChatML, as Qwen2-Instruct; string or list-of-parts content).
TOKENIZER_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Processor chat template, as llava-hf's OneVision processors: images, then videos, then text.
PROCESSOR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Small English text the tokenizer is trained on (prompts about videos encode in few tokens).
_CORPUS = """\
The video shows a big rabbit in a green forest. A bird flies over the river and lands on a tree.
What is happening in this video? Describe the video in detail. What colour is the car?
The man rides a bike down the street. Two people are walking in the park on a sunny day.
How many animals appear in the clip? Answer the question using a single word or phrase.
A butterfly sits on a flower near the rabbit; the squirrels throw nuts at him and laugh.
The camera moves slowly from left to right. At the end of the video the screen turns black.
Please describe what the person is doing, where the scene takes place and what happens next.
Yes. No. Maybe. The answer is A, B, C or D. First, second, third, and finally the last frame.
User: Why is this video funny? Assistant: Because the rabbit is surprised by the falling apple.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 and symbols ( ) [ ] { } < > + - * / = , . ! ? : ;
The quick brown fox jumps over the lazy dog. A cat, a dog and a horse stand in the field.
Objects: tree, grass, sky, cloud, water, road, house, window, door, table, chair, ball, hand.
Actions: running, jumping, eating, sleeping, talking, driving, cooking, playing, reading, sitting.
"""


def default_cache_dir(seed: int = 0) -> Path:
    """``$INFOMERGE_CACHE/tiny-v1`` if the variable is set, else ``~/.cache/infomerge/tiny-v1``
    (``tiny-v1-seed<N>`` for a seed other than 0)."""
    root = os.environ.get("INFOMERGE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "infomerge"
    return base / (TINY_VERSION if seed == 0 else f"{TINY_VERSION}-seed{seed}")


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a complete tiny checkpoint."""
    d = Path(directory)
    return all((d / f).is_file() for f in _COMPLETE)


def build_tiny_checkpoint(directory: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Write (or reuse) the tiny LLaVA-OneVision checkpoint; return its directory.

    Args:
        directory: where to put it; default :func:`default_cache_dir` (``$INFOMERGE_CACHE`` or
            ``~/.cache/infomerge``, subfolder ``tiny-v1``, ``tiny-v1-seed<N>`` for other seeds).
            Reused as is when already complete (whatever seed built it).
        seed: seed of the random weights (the same seed gives the same bytes of weights).

    Returns:
        The checkpoint directory (see the module docstring for its files).

    Raises:
        OSError: the directory cannot be written.
    """
    target = Path(directory) if directory is not None else default_cache_dir(seed)
    if is_complete(target):
        return target
    try:
        # an incomplete leftover is replaced; a complete one made meanwhile by a concurrent builder is
        # replaced by an identical one (the checkpoint is deterministic in the seed)
        with atomic_directory(target, replace=True) as tmp:
            _write_checkpoint(tmp, seed)
    except OSError:
        if is_complete(target):  # lost a race to a concurrent builder: theirs is as good
            return target
        raise
    return target


# --- pieces --------------------------------------------------------------------------------------
def build_tokenizer(special_tokens: tuple[str, ...] = SPECIAL_TOKENS):
    """The tiny tokenizer as a transformers fast tokenizer (byte-level BPE, Qwen2 pre-tokenizer).

    Deterministic: trained on :data:`_CORPUS` with a 1024-entry budget, the ``special_tokens`` at
    ids 0, 1, ... (default :data:`SPECIAL_TOKENS`, ids 0-4; the tiny Qwen2.5-VL passes its own,
    :mod:`infomerge.backbones.tiny_qwen`). The first three must be ``<|endoftext|>``,
    ``<|im_start|>``, ``<|im_end|>``.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(t, special=True, normalized=False) for t in special_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=TINY.text_vocab,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    for i, t in enumerate(special_tokens):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    if special_tokens == SPECIAL_TOKENS:
        assert (
            tok.token_to_id("<image>") == TINY.image_token_id
            and tok.token_to_id("<video>") == TINY.video_token_id
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(special_tokens[1:]),
        model_max_length=TINY.text_max_positions,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TOKENIZER_CHAT_TEMPLATE
    return fast


def build_model(seed: int = 0):
    """The tiny ``LlavaOnevisionForConditionalGeneration`` with deterministic random weights (fp32)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return build_random_model(LlavaOnevisionForConditionalGeneration, TINY.llava_config(), seed)


def build_random_model(model_cls, config, seed: int = 0):
    """``model_cls(config)`` with deterministic random weights (fp32, eval), for the tiny backbones.

    The text config gets the tiny tokenizer's ids (no BOS, EOS 2 = ``<|im_end|>``, PAD 0 =
    ``<|endoftext|>``), and so does the generation config. transformers initialises every LayerNorm /
    RMSNorm to weight 1 (bias 0); these are drawn around it (weight 1 + 0.1 N(0, 1), bias 0.1 N(0, 1))
    from a generator seeded with ``seed + 1``, so the tests' comparisons see non-trivial norms.
    """
    import torch
    from torch import nn

    config.text_config.bos_token_id = None
    config.text_config.eos_token_id = 2  # <|im_end|>
    config.text_config.pad_token_id = 0  # <|endoftext|>
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                    module.weight.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                    if getattr(module, "bias", None) is not None:
                        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = None
    return model.eval()


def build_siglip_head(seed: int = 0, backbone: Backbone = TINY) -> dict:
    """Random SigLIP post_layernorm + MAP head of ``backbone`` (default tiny), keys as in the
    original SigLIP checkpoint; deterministic from ``seed``.

    Keys: ``vision_model.post_layernorm.{weight,bias}``, ``vision_model.head.probe``,
    ``vision_model.head.attention.{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}``,
    ``vision_model.head.layernorm.{weight,bias}``, ``vision_model.head.mlp.fc{1,2}.{weight,bias}``.
    """
    import torch
    from torch import nn
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    cfg = backbone.siglip_head_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        head = SiglipMultiheadAttentionPoolingHead(cfg)
        post = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        with torch.no_grad():
            for ln in (post, head.layernorm):
                ln.weight.copy_(1.0 + 0.1 * torch.randn(ln.weight.shape))
                ln.bias.copy_(0.1 * torch.randn(ln.bias.shape))
            head.attention.in_proj_bias.normal_(0.0, 0.02)
            head.attention.out_proj.bias.normal_(0.0, 0.02)
    state = {f"vision_model.post_layernorm.{k}": v for k, v in post.state_dict().items()}
    state.update({f"vision_model.head.{k}": v for k, v in head.state_dict().items()})
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def _processor_files() -> dict[str, dict]:
    """The JSON files of a ``LlavaOnevisionProcessor`` (image + video processors)."""
    size = TINY.image_size
    norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    image = {
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "processor_class": "LlavaOnevisionProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        **norm,
        "do_pad": True,
        "do_convert_rgb": True,
        "image_grid_pinpoints": TINY.llava_config().image_grid_pinpoints,
    }
    video = {
        "video_processor_type": "LlavaOnevisionVideoProcessor",
        "processor_class": "LlavaOnevisionProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        **norm,
        "do_convert_rgb": True,
        "do_sample_frames": False,
    }
    processor = {
        "processor_class": "LlavaOnevisionProcessor",
        "num_image_tokens": TINY.num_patches,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
    }
    return {
        "preprocessor_config.json": image,
        "video_preprocessor_config.json": video,
        "processor_config.json": processor,
    }


def _write_checkpoint(out: Path, seed: int) -> None:
    from safetensors.torch import save_file

    model = build_model(seed)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    # Name the class of the real checkpoints: AutoTokenizer, older transformers and
    # onnxruntime-genai's tokenizer all know it; it encodes exactly as the saved tokenizer.json.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    for name, content in _processor_files().items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(PROCESSOR_CHAT_TEMPLATE)
    head_dir = out / SIGLIP_HEAD_SUBDIR
    head_dir.mkdir()
    TINY.siglip_head_config().save_pretrained(head_dir)
    save_file(build_siglip_head(seed), str(head_dir / "model.safetensors"), metadata={"format": "pt"})
    (out / "README.md").write_text(
        "# infomerge tiny LLaVA-OneVision\n\nRandom weights (seed "
        f"{seed}), real geometry, tiny widths. Built by infomerge.backbones.tiny.build_tiny_checkpoint.\n"
    )


__all__ = [
    "PROCESSOR_CHAT_TEMPLATE",
    "SIGLIP_HEAD_SUBDIR",
    "SPECIAL_TOKENS",
    "TINY_VERSION",
    "TOKENIZER_CHAT_TEMPLATE",
    "build_model",
    "build_random_model",
    "build_siglip_head",
    "build_tiny_checkpoint",
    "build_tokenizer",
    "default_cache_dir",
    "is_complete",
]
