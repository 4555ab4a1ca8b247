"""The ``ort`` LLM backend: our own ONNX Runtime generation loop over the model builder's graph.

The graph is written by ``infomerge-export --llm int4|fp32`` (:mod:`infomerge.export.llm_step`)
with onnxruntime-genai's model builder. onnxruntime-genai's own ``Generator`` cannot be fed
embeddings for Qwen2 (its issues #1163, #1325, #1644), so this module drives the graph directly:

- inputs: ``inputs_embeds`` (1, S, D), ``position_ids`` int64 (explicit RoPE positions: the
  export builds separate rotary ops instead of rotary inside ``GroupQueryAttention``, whose
  ``position_ids`` input only honours the first element during a prompt): (1, S) for LLaVA's Qwen2
  (``RotaryEmbedding``), (3, 1, S) for Qwen2.5-VL (rows t, h, w; ``MRotaryEmbedding``, the graph's
  rank says which); ``attention_mask`` (1, past + S) int64 of ones,
  ``past_key_values.{i}.{key,value}``;
- outputs: ``logits`` (1, 1, V) (the builder's ``prune_lm_head``: last position only),
  ``present.{i}.{key,value}``.

M-RoPE decoding: each generated token gets the same position in all three rows (``next_position``
+ i, continuing from the uncompressed prompt), as Hugging Face's ``Qwen2_5_VLModel`` does once
``rope_deltas`` is known.

KV cache in place: each layer's key and value live in one preallocated OrtValue of shape
(1, kv_heads, capacity, head_size), bound through IO binding as both ``past_key_values.i.*`` and
``present.i.*``; GroupQueryAttention then writes the new entries into the shared buffer (the
``past_present_share_buffer`` mode of onnxruntime-genai), so nothing is re-concatenated or copied
per step. The logits OrtValue is preallocated and bound once too.

Text embeddings come from ``embed_tokens.npy`` beside the graph (the builder was run with
``exclude_embeds=true``), memory-mapped so only the rows used are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from infomerge.artifacts.layout import LLM_EMBED, LLM_GENAI_CONFIG, LLM_MODEL
from infomerge.engines.ort import ort_session, providers_for
from infomerge.errors import ArtifactError, UsageError
from infomerge.runtime.llm import LLMBackend

MODEL_FILE, EMBED_FILE, GENAI_CONFIG = LLM_MODEL, LLM_EMBED, LLM_GENAI_CONFIG

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OrtLLM(LLMBackend):
    """An exported Qwen2 decoder (int4 MatMulNBits or fp32) run by ONNX Runtime with IO binding.

    Attributes:
        mrope: the graph takes (3, 1, S) M-RoPE ``position_ids`` (Qwen2.5-VL), not (1, S).

    Args:
        model_dir: the directory ``infomerge-export --llm`` wrote (``model.onnx``, ``genai_config.json``,
            ``embed_tokens.npy``).
        eos_token_ids: ids that end generation (default: ``genai_config.json``'s).
        device: "cpu" or "cuda[:i]".
        threads: intra-op threads (0: ONNX Runtime's default).

    Raises:
        ArtifactError: a missing file, a graph built for the other execution provider, or a graph
            without an explicit ``position_ids`` input or with full-sequence logits (exported by
            something other than ``infomerge-export``).
        BackendUnavailableError: see :func:`providers_for`.
    """

    name = "ort"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        eos_token_ids: Sequence[int] | None = None,
        device: str = "cpu",
        threads: int = 0,
    ):
        import onnxruntime as ort

        d = Path(model_dir)
        for f in (MODEL_FILE, GENAI_CONFIG, EMBED_FILE):
            if not (d / f).is_file():
                raise ArtifactError(
                    f"{d}: missing {f}; re-run `infomerge-export --llm int4` for these artifacts"
                )
        providers_for(device)  # first: a missing CUDA EP is the more basic problem
        built = d / "llm_export.json"
        built_for = json.loads(built.read_text()).get("execution_provider") if built.is_file() else None
        wanted = "cuda" if str(device).startswith("cuda") else "cpu"
        if built_for not in (None, wanted):
            raise ArtifactError(
                f"{d} was built for the {built_for} execution provider, not {wanted}; run with --device "
                f"{built_for}, or re-export with `infomerge-export --llm ... --llm-ep {wanted}`"
            )
        cfg = json.loads((d / GENAI_CONFIG).read_text())["model"]
        dec = cfg["decoder"]
        self.layers = int(dec["num_hidden_layers"])
        self.kv_heads = int(dec["num_key_value_heads"])
        self.head_size = int(dec["head_size"])
        self.hidden_size = int(dec["hidden_size"])
        self.vocab_size = int(cfg["vocab_size"])
        self.context = int(cfg["context_length"])
        eos = cfg.get("eos_token_id") if eos_token_ids is None else list(eos_token_ids)
        self.eos_token_ids = tuple(int(i) for i in (eos if isinstance(eos, list) else [eos]))
        self.device = str(device)

        self.session = ort_session(d / MODEL_FILE, device, threads=threads or None)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "position_ids" not in inputs:
            raise ArtifactError(
                f"{d / MODEL_FILE} takes no position_ids input (rotary inside GroupQueryAttention): "
                "compressed "
                "tokens could not keep their original positions; re-export with `infomerge-export --llm int4`"
            )
        if "inputs_embeds" not in inputs:
            raise ArtifactError(
                f"{d / MODEL_FILE} takes token ids, not inputs_embeds; export with exclude_embeds"
            )
        if outputs["logits"].shape[1] != 1:
            raise ArtifactError(
                f"{d / MODEL_FILE} returns logits for every position; export with prune_lm_head"
            )
        self.mrope = len(inputs["position_ids"].shape) == 3
        self.io_dtype = _NP_TYPES[inputs["inputs_embeds"].type]
        self.kv_dtype = _NP_TYPES[inputs["past_key_values.0.key"].type]
        self._ort = ort
        self._ort_device = "cuda" if self.device.startswith("cuda") else "cpu"
        self._device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
        self.embed_table = np.load(d / EMBED_FILE, mmap_mode="r")
        if self.embed_table.shape != (self.vocab_size, self.hidden_size):
            raise ArtifactError(
                f"{d / EMBED_FILE} has shape {self.embed_table.shape}, "
                f"expected {(self.vocab_size, self.hidden_size)}"
            )
        self._binding = None
        self._kv: list = []
        self._capacity = 0
        self._filled = 0
        self._mask = np.ones((1, 0), np.int64)
        self._logits = None

    def _ortvalue(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(array, self._ort_device, self._device_id)

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(
            np.asarray(self.embed_table[np.asarray(list(ids), dtype=np.int64)], np.float32)
        )

    def _allocate(self, capacity: int) -> None:
        """KV buffers (one per layer and kind, shared as past and present) and the output binding."""
        binding = self.session.io_binding()
        if capacity > self._capacity:
            shape = (1, self.kv_heads, capacity, self.head_size)
            self._kv = [self._ortvalue(np.zeros(shape, self.kv_dtype)) for _ in range(2 * self.layers)]
            self._mask = np.ones((1, capacity), np.int64)
            self._capacity = capacity
        for i in range(self.layers):
            for j, kind in enumerate(("key", "value")):
                value = self._kv[2 * i + j]
                binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
        if self._logits is None:  # host memory on every EP: ORT copies the (1, 1, V) row out
            self._logits = self._ort.OrtValue.ortvalue_from_numpy(
                np.zeros((1, 1, self.vocab_size), self.io_dtype)
            )
        binding.bind_ortvalue_output("logits", self._logits)
        self._binding = binding

    def _run(self, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        n = embeds.shape[1]
        if self._filled + n > self._capacity:
            raise RuntimeError(f"KV capacity {self._capacity} exceeded ({self._filled} + {n})")
        b = self._binding
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, self.io_dtype))
        b.bind_cpu_input("position_ids", np.ascontiguousarray(positions, np.int64))
        b.bind_cpu_input("attention_mask", self._mask[:, : self._filled + n])
        self.session.run_with_iobinding(b)
        self._filled += n
        return self._logits.numpy()[0, -1].astype(np.float32)

    def prefill(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, capacity: int, visual=None
    ) -> np.ndarray:
        """See :meth:`LLMBackend.prefill`.

        ``position_ids`` (3, 1, T) need an M-RoPE graph (:attr:`mrope`); (1, T) given to an M-RoPE
        graph are text-only positions, fed as three equal rows (transformers' rule for 2D
        ``position_ids``).

        Raises:
            ArtifactError: (3, 1, T) positions for a graph with 1D RoPE (exported from a LLaVA
                checkpoint): the message names the export that fixes it.
            UsageError: ``visual`` given: the inner-LLM merge (Unified, arXiv 2603.21957 Eq. 9) needs
                the torch LLM backend; this graph runs all layers at once. The pipeline never asks
                (it runs the outer stage only and prints a note, ``docs/compression.md``).
        """
        if visual is not None:
            raise UsageError(
                "the inner-LLM merge needs the torch LLM backend (--llm torch): the ONNX Runtime LLM is one "
                "graph over all layers and cannot shorten the sequence before layer K"
            )
        positions = position_ids.cpu().numpy()
        if positions.ndim == 3 and not self.mrope:
            raise ArtifactError(
                "M-RoPE position_ids (3, 1, T) given to an LLM graph with 1D RoPE (exported from a "
                "LLaVA checkpoint); export the LLM of the Qwen2.5-VL checkpoint: "
                "`infomerge-export --backbone qwen2.5-vl-... --llm int4`"
            )
        if self.mrope and positions.ndim == 2:
            positions = np.broadcast_to(positions, (3, *positions.shape))
        self._allocate(int(capacity))
        self._filled = 0
        return self._run(inputs_embeds.detach().float().cpu().numpy(), positions)

    def step(self, token_id: int, position: int) -> np.ndarray:
        if self._binding is None:
            raise RuntimeError("step() before prefill()")
        emb = np.asarray(self.embed_table[int(token_id)], self.io_dtype).reshape(1, 1, -1)
        shape = (3, 1, 1) if self.mrope else (1, 1)  # M-RoPE: t = h = w = position
        return self._run(emb, np.full(shape, position, np.int64))

    def close(self) -> None:
        self._binding = None
        self._kv = []
        self._capacity = 0
        self._filled = 0


__all__ = ["EMBED_FILE", "GENAI_CONFIG", "MODEL_FILE", "OrtLLM"]
