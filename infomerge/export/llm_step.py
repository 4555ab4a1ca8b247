"""``infomerge-export --llm int4|fp32``: the language model as an ONNX graph for the ``ort`` backend.

The graph is built by onnxruntime-genai's model builder (``pip install 'infomerge[genai]'``) from
what the backbone family gives it (``BackboneFamily.llm_builder_input``,
:mod:`infomerge.backbones.family`); the graph form is checked per position scheme
(``BackboneFamily.positions``, :data:`_GRAPH_FORM`):

- LLaVA-OneVision / LLaVA-Video: from the checkpoint's Qwen2 language model, extracted into a
  temporary standalone Qwen2 checkpoint (:func:`infomerge.backbones.text.extract_text_checkpoint`);
  rotary embeddings as ``RotaryEmbedding`` ops fed by a (1, S) ``position_ids`` input;
- Qwen2.5-VL: from the checkpoint itself, through the builder's own Qwen2.5-VL text model
  (``Qwen25VLTextModel``, chosen by the config's ``Qwen2_5_VLForConditionalGeneration``): it loads
  the checkpoint with transformers (so transformers maps the hub's ``model.layers.*`` and
  ``save_pretrained``'s ``model.language_model.*`` key layouts itself), builds only the language
  model, and applies M-RoPE with ``com.microsoft.MRotaryEmbedding`` fed by a (3, 1, S)
  ``position_ids`` input (rows t, h, w; ``mrope_section`` from the config, the sectioned layout of
  Hugging Face's ``apply_multimodal_rotary_pos_emb``). No graph surgery is needed: the runtime
  feeds each token's (t, h, w) as assembled (docs/backbones.md, "Qwen2.5-VL").

Builder options (both families):

- ``exclude_embeds=true``: the graph takes ``inputs_embeds``, not token ids (the runtime splices
  video tokens into the text embeddings itself); the embedding matrix is saved beside the graph
  as ``embed_tokens.npy`` (float32, or float16 for matrices over 256 MiB in fp32);
- rotary embeddings as separate ops fed by ``position_ids`` (LLaVA: the builder's own non-fused
  path, chosen by overriding its ``is_fused_rope_supported``; Qwen2.5-VL's text model never fuses):
  the default fuses RoPE into ``GroupQueryAttention``, which derives a prompt's positions from the
  KV length and reads only the first element of ``position_ids`` during a prompt, so compressed
  tokens could not keep their original positions. ``disable_qkv_fusion=true`` goes with it (the
  separate RoPE ops need separate Q and K);
- ``prune_lm_head=true``: logits of the last position only ((1, 1, V) instead of (1, T, V),
  which would be 6,300 x 152k floats for an uncompressed 7B prompt).

``int4`` is the builder's weight-only RTN quantization (MatMulNBits, 4 bits, block 32, symmetric;
the LM head included); ``fp32`` keeps the weights (the reference for the ORT loop itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from infomerge.artifacts.layout import LLM_DIR
from infomerge.errors import ArtifactError, BackendUnavailableError
from infomerge.export.context import Step

LLM_SUBDIR = LLM_DIR
Precision = Literal["int4", "fp32"]
_EMBED_FP16_ABOVE = 256 * 2**20  # bytes of the fp32 embedding matrix above which it is stored in fp16


@contextlib.contextmanager
def _explicit_position_ids(builder_module):
    """Make the builder emit RotaryEmbedding ops fed by ``position_ids`` (restored afterwards)."""
    import sys

    base = sys.modules.get("builders.base") or sys.modules.get(builder_module.__package__ + ".builders.base")
    if base is None or not hasattr(base.Model, "is_fused_rope_supported"):
        raise BackendUnavailableError(
            "this onnxruntime-genai model builder has no is_fused_rope_supported hook; "
            "install a supported version: `pip install 'infomerge[genai]'`"
        )
    original = base.Model.is_fused_rope_supported
    base.Model.is_fused_rope_supported = lambda self: False
    try:
        yield
    finally:
        base.Model.is_fused_rope_supported = original


#: what the builder's graph must look like per position scheme (``BackboneFamily.positions``):
#: the rank of ``position_ids`` and the rotary op fed by it
_GRAPH_FORM = {
    "1d": (2, "RotaryEmbedding", "(1, S)"),
    "mrope": (3, "MRotaryEmbedding", "(3, 1, S) M-RoPE rows t, h, w"),
}


def embedding_matrix(checkpoint: str | os.PathLike, family=None) -> np.ndarray:
    """The language model's (V, D) token-embedding matrix, float32; only that tensor is read.

    Args:
        checkpoint: checkpoint directory.
        family: its :class:`~infomerge.backbones.family.BackboneFamily` (None: from its
            ``config.json``, :func:`~infomerge.backbones.family.checkpoint_family`), whose
            ``text_key`` maps the checkpoint's keys to ``model.embed_tokens.weight``.

    Raises:
        ArtifactError: the checkpoint holds no embedding matrix.
    """
    from infomerge.backbones.family import checkpoint_family
    from infomerge.backbones.loading import read_tensors

    family = family or checkpoint_family(checkpoint)
    wanted = "model.embed_tokens.weight"
    state, _ = read_tensors(checkpoint, lambda k: wanted if family.text_key(k) == wanted else None)
    if wanted not in state:
        raise ArtifactError(f"{checkpoint}: no language-model embedding matrix (embed_tokens.weight)")
    return state[wanted].float().numpy()


def _position_rank(graph) -> int:
    """Rank of the graph's ``position_ids`` input: 2 ((B, S), RoPE) or 3 ((3, B, S), M-RoPE)."""
    (pos,) = [i for i in graph.graph.input if i.name == "position_ids"]
    return len(pos.type.tensor_type.shape.dim)


def _import_builder():
    try:
        from onnxruntime_genai.models import builder
    except ImportError as exc:
        raise BackendUnavailableError(
            f"--llm needs onnxruntime-genai's model builder ({exc}); "
            "install it: `pip install 'infomerge[genai]'`"
        ) from None
    return builder


def export_llm(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    precision: Precision = "int4",
    execution_provider: str = "cpu",
    *,
    family: str | None = None,
    log_file: str | os.PathLike | None = None,
) -> dict:
    """Build the LLM graph of a checkpoint into ``out_dir`` (usually ``<artifacts>/llm``).

    Args:
        checkpoint: local LLaVA-OneVision / LLaVA-Video checkpoint directory (config, safetensors,
            tokenizer; its Qwen2 language model is extracted first), or a Qwen2.5-VL one (given to
            the builder as is: its M-RoPE text model, ``position_ids`` (3, B, S)).
        out_dir: output directory; replaced atomically (built in a temporary sibling).
        precision: "int4" (MatMulNBits weight-only) or "fp32".
        execution_provider: "cpu" or "cuda" (the builder picks dtypes per EP: fp32 I/O on the CPU,
            fp16 on CUDA).
        family: the backbone family (``Backbone.family``; None: from the checkpoint's
            ``config.json`` ``model_type``, :func:`~infomerge.backbones.family.checkpoint_family`).
            Its ``llm_builder_input`` is what the builder reads, its ``positions`` the graph form
            checked afterwards.
        log_file: where the builder's console output goes (default ``out_dir/builder.log``).

    Returns:
        The manifest entry: precision, EP, builder and its options, graph inputs and op types.

    Raises:
        BackendUnavailableError: onnxruntime-genai is not installed.
        ArtifactError: the built graph lacks ``position_ids`` / ``inputs_embeds``, or its
            ``position_ids`` rank or rotary op is not the family's (builder changed).
        ValueError: an unknown precision or execution provider.
    """
    if precision not in ("int4", "fp32"):
        raise ValueError(f"precision must be 'int4' or 'fp32', got {precision!r}")
    if execution_provider not in ("cpu", "cuda"):
        raise ValueError(f"execution_provider must be 'cpu' or 'cuda', got {execution_provider!r}")
    builder = _import_builder()
    import onnx
    import onnxruntime_genai

    from infomerge.artifacts.atomic import atomic_directory, temporary_prefix
    from infomerge.artifacts.layout import LLM_EMBED as EMBED_FILE
    from infomerge.artifacts.layout import LLM_MODEL as MODEL_FILE
    from infomerge.backbones.family import checkpoint_family, get_family

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = ["exclude_embeds=true", "disable_qkv_fusion=true", "prune_lm_head=true"]
    scratch_prefix = f"{temporary_prefix(out.name)}scratch-"
    with (
        tempfile.TemporaryDirectory(prefix=scratch_prefix, dir=out.parent) as scratch,
        atomic_directory(out, replace=True) as build,
    ):
        work = Path(scratch)
        spec = get_family(family) if family is not None else checkpoint_family(checkpoint)
        # LLaVA: a standalone Qwen2 checkpoint of the language model; Qwen2.5-VL: the checkpoint
        text_dir = spec.llm_builder_input(Path(checkpoint), work)
        log = Path(log_file) if log_file else build / "builder.log"
        quiet = logging.getLogger("onnxruntime.quantization")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with (
                open(log, "w") as fh,
                contextlib.redirect_stdout(fh),
                contextlib.redirect_stderr(fh),
                _explicit_position_ids(builder),
            ):
                opts = builder.parse_extra_options(
                    None,
                    str(text_dir),
                    str(build),
                    precision,
                    execution_provider,
                    str(work / "cache"),
                    options,
                )
                builder.create_model(
                    None,
                    str(text_dir),
                    str(build),
                    precision,
                    execution_provider,
                    str(work / "cache"),
                    **opts,
                )
        finally:
            quiet.setLevel(level)
        graph = onnx.load(str(build / MODEL_FILE), load_external_data=False)
        inputs = [i.name for i in graph.graph.input]
        for needed in ("inputs_embeds", "position_ids"):
            if needed not in inputs:
                raise ArtifactError(f"the model builder's graph has no {needed} input (inputs: {inputs})")
        rank, rotary, positions = _GRAPH_FORM[spec.positions]
        ops = sorted({n.op_type for n in graph.graph.node})
        if _position_rank(graph) != rank or rotary not in ops:
            raise ArtifactError(
                f"the model builder's graph has position_ids of rank {_position_rank(graph)} and ops "
                f"{ops}; expected rank {rank} and {rotary} (onnxruntime-genai changed; install a "
                "supported version: `pip install 'infomerge[genai]'`)"
            )
        embed = embedding_matrix(checkpoint, spec)
        if embed.nbytes > _EMBED_FP16_ABOVE:
            embed = embed.astype(np.float16)
        np.save(build / EMBED_FILE, embed)
        entry = {
            "precision": precision,
            "execution_provider": execution_provider,
            "builder": f"onnxruntime-genai {onnxruntime_genai.__version__}",
            "builder_options": options + [f"rotary={rotary}(position_ids)"],
            "position_ids": positions,
            "inputs": inputs,
            "ops": ops,
            "embed_dtype": str(embed.dtype),
        }
        (build / "llm_export.json").write_text(json.dumps(entry, indent=2) + "\n")
    return entry


# --- the infomerge-export step ---------------------------------------------------------------------
def run_llm_step(ctx) -> None:
    """Export step: build ``<artifacts>/llm`` for ``--llm int4|fp32`` and record it in the manifest.

    With ``--random-weights`` the LLM comes from the full-size random-weight checkpoint of
    :func:`infomerge.backbones.random_weights.random_checkpoint` (same seed; written once).

    Raises:
        BackendUnavailableError: onnxruntime-genai is not installed (names the extra).
    """
    from infomerge.backbones.loading import resolve_checkpoint

    o = ctx.options
    _import_builder()  # fail early, naming the extra
    if o.random_weights:
        from infomerge.backbones.random_weights import random_checkpoint

        checkpoint = random_checkpoint(ctx.backbone.name, o.seed)
    else:
        checkpoint = resolve_checkpoint(ctx.backbone, o.model_path)
    entry = export_llm(checkpoint, ctx.path(LLM_SUBDIR), o.llm, o.llm_ep, family=ctx.backbone.family)
    ctx.manifest["llm"] = {"dir": LLM_SUBDIR, **entry}


LLM_STEPS = [
    Step(
        "build LLM (onnxruntime-genai model builder)",
        run_llm_step,
        when=lambda o: o.llm != "none",
    ),
]


__all__ = ["LLM_STEPS", "LLM_SUBDIR", "export_llm", "run_llm_step"]
