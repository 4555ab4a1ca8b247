"""The video question-answering pipeline: video + question -> streamed answer, with stage timings.

Stages (each a method, so a benchmark can time them one by one)::

    decode()        video file -> sampled frames, pixel_values (F, 3, 384, 384)   [background thread]
                    (Qwen2.5-VL: (F, 3, H, W) at the backbone's fixed frame size)
    encode()        pixel_values -> H (F, N, D), A (F, N), g (F, G) [+ extra]       [vision backend]
    compress()      (H, A, g [, extra]) -> kept tokens (K, D) + flat indices (K,)   [compress backend]

``extra``: the optional vision outputs the method reads (``Method.vision_outputs``; VisionZip's
last-layer ``attention`` and ``keys``), produced in the same vision pass.
    assemble()      chat template + text embeddings + kept tokens + newline, RoPE positions
    prefill()       LLM over the assembled prompt -> first logits, KV cache         [LLM backend]
    decode_tokens() one LLM step per token, positions continuing from the uncompressed length

:meth:`Pipeline.generate` runs them all for one request and returns an :class:`Answer` with the
text, the token ids and the :class:`~infomerge.timing.Timings`.

Construction: :meth:`Pipeline.from_backbone` (a checkpoint; torch backends by default, no export
needed: the ``tiny`` backbone is built locally) or :meth:`Pipeline.from_artifacts` (an
``infomerge-export`` directory; ONNX Runtime backends by default).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infomerge.artifacts.layout import COMPRESS_ONNX, LLM_DIR, LLM_GENAI_CONFIG, LLM_TOKENIZER
from infomerge.compress.methods import get_method
from infomerge.compress.unified_inner import InnerMerge, inner_keep
from infomerge.engines.threads import apply_threads
from infomerge.errors import ArtifactError, BackendUnavailableError, BudgetError, UsageError
from infomerge.runtime.backends import BackendSource, VideoTokens, VisionFeatures, backend_factory
from infomerge.runtime.backends.base import encode_unique_frames
from infomerge.runtime.backends.torch import check_vision_dtype
from infomerge.runtime.decode_thread import DecodedVideo, DecodeJob, decode_options, decode_video
from infomerge.runtime.embeddings import (
    DEFAULT_PROMPT,
    Assembled,
    PromptIds,
    assemble,
    assemble_mrope,
    check_context,
    load_chat_template,
    prompt_ids,
)
from infomerge.runtime.llm import GREEDY, LLMBackend, Sampler, Sampling, TextStream, decode_ids, eos_ids_of
from infomerge.timing import StageClock, Timings

DEFAULT_RETENTION = 0.15


def make_config(
    method: str = "infomerge", retention: float = DEFAULT_RETENTION, inner_merge: bool | None = None
):
    """The registered method's configuration for ``retention`` (see :mod:`infomerge.compress.methods`).

    Args:
        method, retention: the registered method and r.
        inner_merge: switch the method's inner-LLM stage on or off (its ``inner_merge`` field:
            Unified, HoliTom, FlashVID); None: the method's default.

    Raises:
        UnknownMethodError: unknown method. BudgetError: retention outside (0, 1].
        UsageError: ``inner_merge`` given for a method without an inner-LLM stage.
    """
    config = get_method(method).config(retention)
    if inner_merge is None:
        return config
    if "inner_merge" not in getattr(type(config), "__dataclass_fields__", {}):
        raise UsageError(
            f"--inner-merge / --no-inner-merge: method {method!r} has no inner-LLM stage; the methods with "
            f"one: {', '.join(_inner_methods(retention))}"
        )
    return replace(config, inner_merge=bool(inner_merge))


def _inner_methods(retention: float) -> list[str]:
    from infomerge.compress.methods import method_names

    names = []
    for name in method_names():
        try:
            config = get_method(name).config(retention)
        except BudgetError:
            continue
        if "inner_merge" in getattr(type(config), "__dataclass_fields__", {}):
            names.append(name)
    return names


def check_inner_stage(config, method: str, llm: str, compress_backend: str, bb) -> None:
    """A method whose vision-side budget counts on its inner-LLM stage (FlashVID with
    ``inner_merge``: e = 1.25, then 30% at layer 20) must be able to run that stage here.

    Checked before anything loads. Methods whose inner stage leaves the vision budget alone
    (Unified, HoliTom) are not refused: where they cannot run it they run the outer stage only, with
    a printed note (:meth:`Pipeline._compression_info`).

    Raises:
        UsageError: a non-torch LLM (the ONNX Runtime / TensorRT LLM is one graph, nothing to stop
            inside), a non-torch compress backend (its exported graph keeps the default budget, not
            e r), or a backbone whose newlines interleave the video rows ("grid").
    """
    if config is None or not getattr(config, "needs_inner_stage", False):
        return
    why = None
    if llm != "torch":
        why = f"the {llm} LLM is one graph and cannot drop video rows at layer {config.inner_layer}"
    elif compress_backend != "torch":
        why = f"the {compress_backend} compress graph was exported with the default vision budget (e = 1)"
    elif bb.newline == "grid":
        why = f"backbone {bb.name!r} puts a newline after every row ('grid'), for which it has no rule"
    if why is not None:
        raise UsageError(
            f"{method} with its inner-LLM stage (--inner-merge) keeps {config.vision_expansion:g} x r of the "
            f"video tokens at the vision side and relies on the torch LLM to prune them inside; {why}. Use "
            "--llm torch --compress-backend torch on a LLaVA-OneVision or Qwen2.5-VL backbone, or drop "
            "--inner-merge"
        )


def compression_wanted(retention: float | None) -> bool:
    """Whether a retention ratio asks for compression: None and 1.0 mean every token is kept.

    Raises:
        BudgetError: a ratio outside (0, 1].
    """
    if retention is None:
        return False
    r = float(retention)
    if not (0.0 < r <= 1.0):
        raise BudgetError(f"retention must be in (0, 1] (the kept share of video tokens), got {retention}")
    return r < 1.0


@dataclass
class Answer:
    """The result of :meth:`Pipeline.generate`.

    Attributes:
        text: the answer (special tokens removed).
        token_ids: generated ids (EOS included when produced).
        timings: stage timings, counts, peak memory.
        video: the decoded video (frames, indices, timestamps, pixel values).
        features: the vision features (H, A, g).
        video_tokens: what the compressor kept (tokens, indices, reference detail).
        position_ids: (T,) int64 RoPE positions of the prompt.
        info: the pipeline's description (backbone, backends, method, retention, device).
    """

    text: str
    token_ids: list[int]
    timings: Timings
    video: DecodedVideo
    features: VisionFeatures
    video_tokens: VideoTokens
    position_ids: torch.Tensor
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready record: answer, tokens, timings, pipeline info and the video's sampling."""
        clip = self.video.clip
        return {
            "answer": self.text,
            "token_ids": list(self.token_ids),
            "timings": self.timings.to_dict(),
            "pipeline": self.info,
            "video": {
                "path": str(clip.path),
                "frames": int(len(clip.indices)),
                "decoded_frames": int(clip.total_frames),
                "fps": float(clip.fps),
                "frame_indices": [int(i) for i in clip.indices],
                # each sampled frame's own presentation time (None where the stream has none)
                "timestamps_s": [float(t) if math.isfinite(t) else None for t in clip.timestamps],
                "sampling": clip.sampling,
                "sampling_fps": clip.sampling_fps,  # the rate asked for (sampling "fps"), else None
                "window_s": clip.window,
                "live": clip.live,
                "read_by": clip.method,
                "notes": list(clip.warnings),
            },
            "kept_index": [int(i) for i in self.video_tokens.index],
        }


class Pipeline:
    """Video QA with compressed video tokens (see the module docstring for the stages).

    Args:
        backbone: the :class:`~infomerge.backbones.registry.Backbone`.
        tokenizer: its Hugging Face tokenizer.
        chat_template: the processor's chat template (jinja).
        vision: a vision backend (``__call__(pixel_values) -> VisionFeatures``, ``image_newline``).
        compressor: a compression backend (``__call__(VisionFeatures) -> VideoTokens``).
        llm: an :class:`~infomerge.runtime.llm.LLMBackend`.
        config: the compression method's configuration (None: no compression).
        video_token_id: the ``<video>`` placeholder id.
        device: "cpu" or "cuda".
        info: free description recorded in :attr:`Answer.info`.
        frames: F, frames sampled per video (default: the backbone's).
        source: what the backends were built from (for :meth:`with_compression`).
        fps: sample each video at this rate (Qwen2.5-VL's rule,
            :func:`~infomerge.video.sampling.sample_by_fps`) instead of F frames; None: F frames.
        fixed_frames: the backends take exactly F frames (exported graphs): with ``fps``, a video
            whose rate gives another count is refused before decoding (FrameCountError).
    """

    def __init__(
        self,
        backbone,
        tokenizer,
        chat_template: str,
        vision,
        compressor,
        llm: LLMBackend,
        config=None,
        *,
        video_token_id: int,
        device: str = "cpu",
        info: dict | None = None,
        frames: int | None = None,
        source: BackendSource | None = None,
        fps: float | None = None,
        fixed_frames: bool = False,
    ):
        _check_layout(backbone)
        check_fps(backbone, fps)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.vision = vision
        self.compressor = compressor
        self.llm = llm
        self.config = config
        self.video_token_id = int(video_token_id)
        self.device = device
        self.frames = int(frames or backbone.frames)
        self.fps = None if fps is None else float(fps)
        self.fixed_frames = bool(fixed_frames)
        self.source = source or BackendSource(backbone=backbone, device=device, frames=self.frames)
        self.tokens_per_frame = backbone.tokens_per_frame
        self.info = dict(info or {})
        self.load_ms: float | None = None  # set by from_backbone / from_artifacts: checks and loading
        # embedding rows without a token in the tokenizer (vocabulary padding): never generated
        self.suppress_ids = (
            np.arange(len(tokenizer), llm.vocab_size) if len(tokenizer) < llm.vocab_size else None
        )

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        name: str = "tiny",
        *,
        model_path: str | os.PathLike | None = None,
        vision_backend: str = "torch",
        compress_backend: str = "torch",
        llm: str = "torch",
        method: str = "infomerge",
        retention: float | None = DEFAULT_RETENTION,
        artifacts: str | os.PathLike | None = None,
        device: str = "cpu",
        siglip_path: str | os.PathLike | None = None,
        frames: int | None = None,
        compile_mode: str | None | bool = False,
        threads: int | None = None,
        vision_outputs: tuple[str, ...] = (),
        vision_dtype: str = "fp32",
        inner_merge: bool | None = None,
        fps: float | None = None,
    ) -> Pipeline:
        """A pipeline over the checkpoint of backbone ``name`` (``tiny`` is built locally).

        Args:
            name: registry name (``tiny``, ``tiny-video``, ``ov-0.5b``, ``ov-7b``, ``llava-video-7b``).
            model_path: local checkpoint directory (default: resolved by
                :func:`infomerge.backbones.loading.resolve_checkpoint`).
            vision_backend, compress_backend, llm: names in the backend registries
                (:mod:`infomerge.runtime.backends`); ``ort`` / ``trt`` ones read ``artifacts``.
                ``compress_backend="none"``, ``retention=None`` or ``retention=1.0``: no compression.
            method: a registered method (:mod:`infomerge.compress.methods`).
            retention: kept share of the video tokens, in (0, 1].
            artifacts: an ``infomerge-export`` directory (needed by ort/trt backends).
            device: "cpu" or "cuda".
            siglip_path: SigLIP head checkpoint for the torch vision backend.
            frames: F, frames sampled per video (default: the backbone's; exported graphs must
                have been exported for the same F).
            compile_mode: ``torch.compile`` the torch vision tower and LLM with this mode (None:
                torch's default mode; False: no compilation).
            threads: intra-op threads of torch and of every ONNX Runtime session, for the whole
                process (:func:`infomerge.engines.threads.apply_threads`; None: leave torch's
                setting, sessions get one per core).
            vision_outputs: optional vision outputs the vision stage produces besides those the
                method reads (``Method.vision_outputs``, always produced): for
                :meth:`with_compression` to other methods (``infomerge-bench`` passes the union).
            vision_dtype: ``"fp32"`` (default) or ``"bf16"``: the torch vision tower and projector
                in bfloat16 (LayerNorms, softmax and the SigLIP head stay fp32; measured error and
                speed in docs/benchmarks.md, "Vision tower in bf16").
            inner_merge: switch the method's inner-LLM stage on or off (:func:`make_config`);
                None: the method's default.
            fps: sample every video at this rate by Qwen2.5-VL's rule (qwen-vl-utils: duration x
                fps floored to even, in [4, 768]) instead of ``frames`` frames; the frame count,
                hence the budget and the M-RoPE time step, follow each video (Qwen2.5-VL only).

        Raises:
            UnknownBackboneError, CheckpointNotFoundError: from the backbone registry / loader.
            UsageError: ``vision_dtype`` other than fp32 / bf16, or bf16 with a non-torch vision
                backend; ``inner_merge`` for a method without an inner stage, or one this pipeline
                cannot run (:func:`check_inner_stage`); ``fps`` on a LLaVA backbone or not > 0
                (:func:`check_fps`).
            ArtifactError: an ort/trt backend without ``artifacts``, or a mismatched directory.
            BackendUnavailableError: a backend whose package is not installed (names the extra).
            UnknownBackendError, UnknownMethodError, BudgetError: bad names or retention (checked
                before anything is loaded).
        """
        from infomerge.backbones.loading import resolve_checkpoint
        from infomerge.backbones.registry import get_backbone

        t0 = time.perf_counter()
        check_device(device)
        if threads is not None:
            apply_threads(threads)
        bb = get_backbone(name)
        _check_layout(bb)  # before any download
        check_fps(bb, fps)
        _check_names(vision_backend, compress_backend, llm, method, retention, inner_merge, bb)
        check_backbone_support(bb, vision_backend, compress_backend, llm, method, retention, frames)
        check_vision_dtype(vision_dtype, vision_backend)
        checkpoint = resolve_checkpoint(bb, model_path)
        pipe = cls._build(
            bb,
            checkpoint=checkpoint,
            artifacts=Path(artifacts) if artifacts is not None else None,
            manifest=None,
            vision_backend=vision_backend,
            compress_backend=compress_backend,
            llm=llm,
            method=method,
            retention=retention,
            device=device,
            frames=frames,
            options={
                "siglip_path": siglip_path,
                "compile_mode": compile_mode,
                "threads": threads,
                "vision_dtype": vision_dtype,
            },
            vision_outputs=vision_outputs,
            inner_merge=inner_merge,
            fps=fps,
        )
        pipe.load_ms = (time.perf_counter() - t0) * 1000.0
        return pipe

    @classmethod
    def from_artifacts(
        cls,
        directory: str | os.PathLike,
        *,
        backbone: str | None = None,
        model_path: str | os.PathLike | None = None,
        vision_backend: str = "ort",
        compress_backend: str | None = None,
        llm: str | None = None,
        method: str | None = None,
        retention: float | None | str = "manifest",
        device: str = "cpu",
        verify_hashes: bool = True,
        rehash: bool = False,
        compile_mode: str | None | bool = False,
        threads: int | None = None,
        vision_outputs: tuple[str, ...] = (),
        fps: float | None = None,
    ) -> Pipeline:
        """A pipeline over an ``infomerge-export`` artifact directory.

        Defaults: vision ``ort``; compression ``ort`` when the directory has ``compress.onnx``,
        else ``torch`` with the manifest's method and retention; LLM ``ort`` when it has ``llm/``,
        else ``torch`` (which then reads the checkpoint).

        Args:
            directory: the artifact directory (with ``manifest.json``).
            backbone: expected backbone name (checked against the manifest).
            retention: "manifest" (the exported one), a ratio, or None (no compression).
            verify_hashes: check every file's sha256 against the manifest (else sizes only); a
                file verified before and unchanged since is not hashed again
                (:func:`infomerge.artifacts.manifest.verify_manifest`).
            rehash: hash every file even if it was verified before.
            threads: as in :meth:`from_backbone`.
            vision_outputs: as :meth:`from_backbone` (an ``ort`` / ``trt`` vision graph must have
                been exported with them).
            fps: as :meth:`from_backbone`, but the graphs take the exported F frames: a video whose
                rate gives another count is refused after its demux scan, before decoding
                (:class:`~infomerge.errors.FrameCountError`, naming both counts and the fix).

        Raises:
            ArtifactError: missing / mismatched manifest (backbone, frames, infomerge version,
                files), a file whose contents do not match its sha256 (named, with the re-export
                command), a manifest edited after export, or a compress graph exported for another
                method or retention (checked against the graph's own output shape too), or a
                vision graph without the optional outputs the method reads (VisionZip's
                ``attention`` and ``keys``: re-export with ``--method visionzip``).
            BackendUnavailableError, EngineMismatchError: from the ort / trt backends.
        """
        from infomerge.artifacts.manifest import verify_manifest
        from infomerge.backbones.registry import get_backbone

        t0 = time.perf_counter()
        check_device(device)
        if threads is not None:
            apply_threads(threads)
        root = Path(directory)
        manifest = verify_manifest(
            root, backbone=backbone, hashes=verify_hashes, rehash=rehash, versions=("infomerge",)
        )
        bb = get_backbone(manifest["backbone"]["name"])
        _check_layout(bb)
        check_fps(bb, fps)
        _check_manifest_layout(root, manifest, bb)
        has_compress = (root / COMPRESS_ONNX).is_file()
        has_llm = (root / LLM_DIR).is_dir()
        if compress_backend is None:
            compress_backend = "ort" if has_compress and retention == "manifest" else "torch"
        if retention == "manifest":
            retention = manifest.get("retention") or DEFAULT_RETENTION
        method = method or manifest.get("method") or "infomerge"
        if llm is None:
            llm = "ort" if has_llm else "torch"
        _check_names(vision_backend, compress_backend, llm, method, retention)
        frames = manifest.get("frames")
        check_backbone_support(bb, vision_backend, compress_backend, llm, method, retention, frames)
        checkpoint = None
        if llm == "torch" or vision_backend == "torch" or not (root / LLM_DIR / LLM_TOKENIZER).is_file():
            from infomerge.backbones.loading import resolve_checkpoint

            checkpoint = resolve_checkpoint(bb, model_path)
        pipe = cls._build(
            bb,
            checkpoint=checkpoint,
            artifacts=root,
            manifest=manifest,
            vision_backend=vision_backend,
            compress_backend=compress_backend,
            llm=llm,
            method=method,
            retention=retention,
            device=device,
            frames=manifest.get("frames"),
            options={"compile_mode": compile_mode, "threads": threads},
            vision_outputs=vision_outputs,
            fps=fps,
            fixed_frames=True,
        )
        pipe.load_ms = (time.perf_counter() - t0) * 1000.0
        return pipe

    @classmethod
    def _build(
        cls,
        bb,
        *,
        checkpoint: Path | None,
        artifacts: Path | None,
        manifest: dict | None,
        vision_backend: str,
        compress_backend: str,
        llm: str,
        method: str,
        retention: float | None,
        device: str,
        frames: int | None,
        options: dict,
        vision_outputs: tuple[str, ...] = (),
        inner_merge: bool | None = None,
        fps: float | None = None,
        fixed_frames: bool = False,
    ) -> Pipeline:
        """Look every stage's backend up in its registry and build it from one :class:`BackendSource`.

        The vision backend produces ``vision_outputs`` and the optional outputs the method reads
        (when it compresses); a vision graph without the latter is refused (ArtifactError).
        """
        from transformers import AutoTokenizer

        if device.startswith("cuda") and "torch" in (vision_backend, llm) and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "device cuda asked for, but this torch build sees no CUDA GPU (torch backends); install a "
                "CUDA build of torch, or run with --device cpu"
            )
        source = BackendSource(
            backbone=bb,
            device=device,
            checkpoint=checkpoint,
            artifacts=artifacts,
            manifest=manifest,
            frames=frames or bb.frames,
            options=dict(options),
            vision_outputs=_vision_outputs(compress_backend, method, retention, vision_outputs),
        )
        vision = backend_factory("vision", vision_backend)(source)
        compressor, config = _compressor(source, compress_backend, method, retention, inner_merge)
        if config is not None:
            check_vision_outputs(vision, method, artifacts)

        # --- tokenizer, chat template, LLM
        text_source = checkpoint if checkpoint is not None else artifacts / LLM_DIR
        tokenizer = AutoTokenizer.from_pretrained(str(text_source))
        chat_template = load_chat_template(text_source, tokenizer)
        eos = eos_ids_of(text_source, tokenizer)
        backend: LLMBackend = backend_factory("llm", llm)(source, eos)
        if backend.hidden_size != bb.text_hidden:
            raise ArtifactError(
                f"the LLM has hidden size {backend.hidden_size}, backbone {bb.name!r} has {bb.text_hidden}: "
                "artifacts and checkpoint are of different models"
            )
        placeholder_id = video_token_id(checkpoint, bb, tokenizer)
        info = {
            "backbone": bb.name,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "artifacts": str(artifacts) if artifacts is not None else None,
            "vision_backend": vision.name,
            "llm_backend": backend.name,
            "llm_precision": (manifest or {}).get("llm", {}).get("precision")
            if llm == "ort"
            else str(backend.dtype),
            "device": device,
            "frames": source.frames,
            "fps": fps,
        }
        pipe = cls(
            bb,
            tokenizer,
            chat_template,
            vision,
            compressor,
            backend,
            config,
            video_token_id=placeholder_id,
            device=device,
            info=info,
            frames=source.frames,
            source=source,
            fps=fps,
            fixed_frames=fixed_frames,
        )
        pipe.info.update(pipe._compression_info(method))
        return pipe

    def with_compression(
        self,
        method: str = "infomerge",
        retention: float | None = DEFAULT_RETENTION,
        backend: str = "torch",
        artifacts: str | os.PathLike | None = None,
        inner_merge: bool | None = None,
    ) -> Pipeline:
        """A pipeline sharing this one's vision backend, tokenizer and LLM, with another compressor.

        Args:
            method: a registered method.
            retention: kept share in (0, 1]; None or 1.0: no compression.
            backend: a compress backend name (``torch``, ``ort``, ``trt``, ``none``).
            artifacts: the directory the ``ort`` / ``trt`` compressor reads (default: this
                pipeline's); its manifest is verified (sizes and, once, contents).
            inner_merge: the method's inner-LLM stage on / off (None: its default), as
                :meth:`from_backbone`.

        Raises:
            UnknownBackendError, UnknownMethodError, BudgetError, ArtifactError: as the constructors
                (ArtifactError also: this pipeline's vision stage lacks an optional output the
                method reads; build it with ``vision_outputs``).
        """
        import copy

        _check_names(None, backend, None, method, retention, inner_merge)
        check_backbone_support(self.backbone, None, backend, None, method, retention)
        if backend != "none" and compression_wanted(retention):
            config = make_config(method, float(retention), inner_merge)
            check_inner_stage(config, method, self.llm.name, backend, self.backbone)
        source = self.source
        if artifacts is not None:
            from infomerge.artifacts.manifest import verify_manifest

            root = Path(artifacts)
            manifest = verify_manifest(root, backbone=self.backbone.name, frames=self.frames)
            source = replace(source, artifacts=root, manifest=manifest)
        compressor, config = _compressor(source, backend, method, retention, inner_merge)
        if config is not None:
            check_vision_outputs(self.vision, method, self.source.artifacts)
        pipe = copy.copy(self)
        pipe.compressor, pipe.config = compressor, config
        stale = ("inner_layer", "inner_merge_note")  # this pipeline's inner stage, not the new one's
        base = {k: v for k, v in self.info.items() if k not in stale}
        pipe.info = {**base, **pipe._compression_info(method)}
        return pipe

    def _compression_info(self, method: str) -> dict:
        info = {
            "compress_backend": self.compressor.name,
            "method": method if self.config is not None else None,
            "retention": float(self.config.retention) if self.config is not None else None,
        }
        if getattr(self.config, "inner_merge", False):
            info["inner_layer"] = self.inner_layer()
            if self.backbone.newline == "grid":
                note = (
                    f"{method}: the inner-LLM merge is defined on one contiguous run of video tokens "
                    f"(LLaVA-OneVision); backbone {self.backbone.name!r} interleaves a newline after "
                    "every row ('grid'), for which it has no rule; running the outer stage only"
                )
                info["inner_merge_note"] = note
                print(f"note: {note}", file=sys.stderr)
            elif self.llm.name != "torch":
                note = (
                    f"{method}: the inner-LLM merge needs the torch LLM backend (the {self.llm.name} "
                    "LLM is one graph); running the outer stage only"
                )
                info["inner_merge_note"] = note
                print(f"note: {note}", file=sys.stderr)
        return info

    # --- stages --------------------------------------------------------------------------------
    def start_decode(self, video: str | os.PathLike, **options) -> DecodeJob:
        """Start decoding ``video`` in a background thread (F frames, or :attr:`fps` sampling;
        preprocessing per :func:`~infomerge.runtime.decode_thread.decode_options`; ``options``:
        ``sampling``, ``window``, ``decode_device`` for :func:`~infomerge.video.read_video`)."""
        sampling = {**self.sampling_options(), **options}
        return DecodeJob(video, self.frames, **sampling, **decode_options(self.backbone))

    def decode(self, video: str | os.PathLike) -> DecodedVideo:
        """Decode, sample and preprocess ``video`` in this thread. Raises VideoError subclasses
        (and FrameCountError: :attr:`fps` sampling that misses the fixed frame count)."""
        return decode_video(video, self.frames, **self.sampling_options(), **decode_options(self.backbone))

    def sampling_options(self) -> dict:
        """``read_video`` keywords of this pipeline's frame sampling: ``{}`` (F frames) or ``fps``,
        with ``require_frames = F`` where the backends take exactly F frames."""
        if self.fps is None:
            return {}
        return {"fps": self.fps, "require_frames": self.frames if self.fixed_frames else None}

    def encode(self, pixel_values: torch.Tensor, frame_indices=None) -> VisionFeatures:
        """Vision stage: (F, 3, 384, 384) float32 -> H (F, N, D), A (F, N), g (F, G).

        ``frame_indices`` (F,) (the decoded frames' indices, ``VideoClip.indices``): frames sampled
        more than once (a video shorter than F frames) are encoded once, on backends that take any
        frame count (:func:`~infomerge.runtime.backends.base.encode_unique_frames`).
        """
        return encode_unique_frames(self.vision, pixel_values, frame_indices)

    def compress(self, features: VisionFeatures) -> VideoTokens:
        """Compression stage: kept tokens (K, D) and their sorted original flat indices (K,)."""
        return self.compressor(features)

    def prompt_ids(self, prompt: str = DEFAULT_PROMPT) -> PromptIds:
        """The chat-templated prompt's token ids, split at the ``<video>`` placeholder."""
        return prompt_ids(self.tokenizer, self.chat_template, prompt, self.video_token_id)

    def mrope_interval(self, video: DecodedVideo | None) -> float:
        """Qwen2.5-VL's temporal M-RoPE step per temporal group: ``tokens_per_second *
        second_per_grid_t`` (:func:`~infomerge.video.qwen_preprocess.second_per_grid` of the decoded
        clip's frame count and rate, as ``Qwen2_5_VLProcessor`` computes it). Without a video: one
        temporal patch per second (``second_per_grid_t = 1``)."""
        from infomerge.video.qwen_preprocess import second_per_grid

        bb = self.backbone
        if video is None:
            return float(bb.tokens_per_second)
        clip = video.clip
        seconds = second_per_grid(clip.total_frames, clip.fps, len(clip.indices), bb.temporal_patch)
        return bb.tokens_per_second * seconds

    def assemble(
        self,
        video_tokens: VideoTokens,
        prompt: str | PromptIds = DEFAULT_PROMPT,
        video: DecodedVideo | None = None,
    ) -> Assembled:
        """Embedding assembly: text | kept video tokens | newline | text, with RoPE positions.

        Qwen2.5-VL: text | kept video tokens | text with 3D M-RoPE positions
        (:func:`~infomerge.runtime.embeddings.assemble_mrope`), the temporal step taken from
        ``video`` (:meth:`mrope_interval`).

        The kept tokens (K x D, after compression: the one transfer of the request) come to the host,
        where the text embeddings are; the LLM backend moves the assembled prompt to its device.
        """
        ids = prompt if isinstance(prompt, PromptIds) else self.prompt_ids(prompt)
        return _ASSEMBLERS[self.backbone.family_spec.positions](self, ids, video_tokens, video)

    def _assemble_1d(self, ids: PromptIds, video_tokens: VideoTokens, video) -> Assembled:
        """Gapped 1D RoPE positions, the newline layout of the backbone (LLaVA)."""
        return assemble(
            self.llm.embed,
            ids,
            video_tokens.tokens.float().cpu(),
            video_tokens.index.cpu(),
            self.vision.image_newline.cpu(),
            self.frames,
            self.tokens_per_frame,
            self.backbone.newline,
        )

    def _assemble_mrope(self, ids: PromptIds, video_tokens: VideoTokens, video) -> Assembled:
        """3-row M-RoPE positions over (L groups, token grid) (Qwen2.5-VL); L from the video's own
        frame count (sampling by fps: each video's)."""
        frames = self.frames if video is None else len(video.clip.indices)
        return assemble_mrope(
            self.llm.embed,
            ids,
            video_tokens.tokens.float().cpu(),
            video_tokens.index.cpu(),
            self.backbone.groups_for(frames),
            self.backbone.token_grid,
            self.mrope_interval(video),
        )

    def prefill(self, assembled: Assembled, max_new_tokens: int = 1) -> np.ndarray:
        """LLM prefill: fills the KV cache, returns the (V,) logits of the first new token.

        Raises:
            PromptTooLongError: the prompt's positions + ``max_new_tokens`` exceed the context.
        """
        check_context(assembled.next_position, max_new_tokens, self.llm.context)
        inner = self.inner_merge(assembled)
        return self.llm.prefill(
            assembled.inputs_embeds,
            assembled.position_ids,
            assembled.length + max_new_tokens,
            **({} if inner is None else {"visual": inner}),
        )

    def inner_layer(self) -> int | None:
        """K of the method's inner-LLM merge on this LLM, or None when there is none.

        None: the method has no inner stage or it is switched off (``inner_merge=False``), or the LLM
        backend is not ``torch`` (only it runs the layer loop; the ``ort`` graph is one piece). K is
        ``config.inner_layer`` clamped to depth - 1 (the tiny backbone has 2 layers: K = 1). None on a
        ``"grid"`` backbone (LLaVA-Video): its newlines interleave the video rows. Qwen2.5-VL's video
        rows are contiguous (``<|vision_start|>`` before, ``<|vision_end|>`` after): merged as
        OneVision's, the queries being the rows after ``<|vision_end|>``.
        """
        if not getattr(self.config, "inner_merge", False) or self.llm.name != "torch":
            return None
        if self.backbone.newline == "grid":  # grid newlines interleave the video rows
            return None
        depth = int(getattr(self.llm, "num_layers", 0))
        return min(int(self.config.inner_layer), depth - 1) if depth >= 2 else None

    def inner_merge(self, assembled: Assembled) -> InnerMerge | None:
        """The :class:`~infomerge.compress.unified_inner.InnerMerge` for this prompt, or None.

        Video rows: ``assembled.video_span``; queries T: the rows after the newline, or only the
        last prompt row where ``config.inner_queries == "last"`` (HoliTom, FlashVID); kept:
        ``round(inner_ratio |V|)`` (half to even), or ``ceil`` where ``config.inner_rounding ==
        "ceil"`` (FlashVID); ``prune`` from ``config.inner_prune`` (FlashVID's FastV: no merge);
        None also when fewer than 2 video tokens.
        """
        layer = self.inner_layer()
        start, stop = assembled.video_span
        if layer is None or stop - start < 2 or stop + 1 >= assembled.length:
            return None
        rounding = getattr(self.config, "inner_rounding", "round")
        keep = inner_keep(stop - start, self.config.inner_ratio, rounding)
        last = getattr(self.config, "inner_queries", "text") == "last"
        queries = assembled.length - 1 if last else stop + 1
        prune = bool(getattr(self.config, "inner_prune", False))
        return InnerMerge(start, stop, queries, layer, keep, float(self.config.inner_lambda), prune)

    def decode_tokens(
        self,
        assembled: Assembled,
        logits: np.ndarray,
        max_new_tokens: int,
        sampling: Sampling = GREEDY,
    ) -> Iterator[int]:
        """Streamed decode after :meth:`prefill`: yields token ids until EOS or the limit.

        Ids in :attr:`suppress_ids` (embedding rows the tokenizer has no token for) are never
        picked, as with Hugging Face ``generate(suppress_tokens=...)``.
        """
        return decode_ids(
            self.llm, logits, assembled.next_position, max_new_tokens, Sampler(sampling, self.suppress_ids)
        )

    # --- one request ---------------------------------------------------------------------------
    def generate(
        self,
        video: str | os.PathLike | DecodeJob | DecodedVideo,
        prompt: str = DEFAULT_PROMPT,
        *,
        max_new_tokens: int = 64,
        sampling: Sampling = GREEDY,
        on_text: Callable[[str], Any] | None = None,
    ) -> Answer:
        """Answer ``prompt`` about ``video``; stream text pieces to ``on_text`` as they decode.

        Args:
            video: a video path, a :class:`DecodeJob` already running (see :meth:`start_decode`), or
                a :class:`DecodedVideo` (from :meth:`decode`; its decode time is reported as is).
            prompt: the question.
            max_new_tokens: generation limit (>= 1).
            sampling: greedy by default.
            on_text: called with each newly decoded piece of text.

        Raises:
            VideoError: (subclasses) from decoding, unchanged.
            PromptTooLongError: the prompt does not fit the LLM's context (checked before prefill).
            ValueError: ``max_new_tokens < 1``.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        timings = Timings()
        cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        clock = StageClock(timings, cuda=cuda)
        if isinstance(video, DecodedVideo):
            job = None
        else:
            job = video if isinstance(video, DecodeJob) else self.start_decode(video)
        try:
            return self._run(job or video, prompt, max_new_tokens, sampling, on_text, timings, clock)
        finally:
            if job is not None:
                job.join()  # never leave the decoder running (an error before result())

    def _run(
        self,
        video: DecodeJob | DecodedVideo,
        prompt: str,
        max_new_tokens: int,
        sampling: Sampling,
        on_text: Callable[[str], Any] | None,
        timings: Timings,
        clock: StageClock,
    ) -> Answer:
        """The stages of :meth:`generate` for a decode already started (or done)."""
        with clock.stage("assemble"):
            ids = self.prompt_ids(prompt)  # overlaps with the decode thread
        # the prompt spans the uncompressed positions whatever is kept: fail before any video work
        # (sampling by fps: the count is the video's, known once decoded)
        if self.fps is None or self.fixed_frames:
            span = len(ids.before) + self.backbone.video_tokens_for(self.frames) + len(ids.after)
            check_context(span, max_new_tokens, self.llm.context)
        with clock.stage("video_decode_wait"):
            decoded = video.result() if isinstance(video, DecodeJob) else video
        timings.stages_ms["video_decode"] = decoded.decode_ms
        if self.fps is not None and not self.fixed_frames:
            frames = len(decoded.clip.indices)
            span = len(ids.before) + self.backbone.video_tokens_for(frames) + len(ids.after)
            check_context(span, max_new_tokens, self.llm.context)
        with clock.stage("vision"):
            features = self.encode(decoded.pixel_values, decoded.clip.indices)
        with clock.stage("compress"):
            kept = self.compress(features)
        with clock.stage("assemble"):
            assembled = self.assemble(kept, ids, decoded)
        timings.prompt_tokens = assembled.length
        timings.video_tokens = assembled.video_tokens
        timings.uncompressed_video_tokens = assembled.uncompressed_video_tokens
        timings.next_position = assembled.next_position
        with clock.stage("prefill"):
            logits = self.prefill(assembled, max_new_tokens)
        stream = TextStream(self.tokenizer)
        token_ids: list[int] = []
        t_first = None
        for token in self.decode_tokens(assembled, logits, max_new_tokens, sampling):
            if t_first is None:
                timings.ttft_ms = clock.elapsed_ms()
                t_first = time.perf_counter()
            token_ids.append(token)
            piece = stream.push(token)
            if piece and on_text is not None:
                on_text(piece)
        timings.stages_ms["token_decode"] = (time.perf_counter() - t_first) * 1000.0
        timings.new_tokens = len(token_ids)
        timings.total_ms = clock.elapsed_ms()
        if self.load_ms is not None:
            timings.stages_ms["load"] = self.load_ms
        timings.finish()
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Answer(
            text=text,
            token_ids=token_ids,
            timings=timings,
            video=decoded,
            features=features,
            video_tokens=kept,
            position_ids=assembled.position_ids[0].cpu(),
            info=dict(self.info),
        )

    def close(self) -> None:
        """Free the LLM's KV cache and sessions."""
        self.llm.close()


#: embedding assembly per position scheme (``BackboneFamily.positions``): gapped 1D RoPE ids, or
#: Qwen2.5-VL's 3-row M-RoPE ids
_ASSEMBLERS: dict[str, Callable[..., Assembled]] = {
    "1d": Pipeline._assemble_1d,
    "mrope": Pipeline._assemble_mrope,
}


def _check_layout(bb) -> None:
    """Raise :class:`ArtifactError` for a backbone whose video layout the runtime cannot assemble
    (the runtime assembles ``"one"``, LLaVA-OneVision, and ``"grid"``, LLaVA-Video; ``"none"``,
    Qwen2.5-VL: the family's ``newline_modes``)."""
    if bb.newline not in bb.family_spec.newline_modes:
        raise ArtifactError(
            f"backbone {bb.name!r} has newline layout {bb.newline!r}; the runtime assembles 'one' "
            "(one newline after all frames), 'grid' (one after every row of every frame) and "
            "Qwen2.5-VL's 'none' only"
        )


def _check_manifest_layout(root: Path, manifest: dict, bb) -> None:
    """Raise :class:`ArtifactError` when the artifacts' token grid or newline layout is not the
    backbone's (e.g. a ``llava-video-7b`` export made before its 13 x 13 average pooling)."""
    from infomerge.artifacts.manifest import reexport_command

    got = manifest.get("backbone", {})
    want = {"tokens_per_frame": bb.tokens_per_frame, "newline": bb.newline}
    wrong = {k: got.get(k) for k, v in want.items() if k in got and got.get(k) != v}
    if wrong:
        raise ArtifactError(
            f"{root}: artifacts have {wrong}, backbone {bb.name!r} has "
            f"{ {k: want[k] for k in wrong} }; {reexport_command(manifest, root)}"
        )


VIDEO_TOKEN = "<video>"


def video_token_id(checkpoint: Path | None, bb, tokenizer=None) -> int:
    """The ``<video>`` placeholder id: ``video_token_index`` of the checkpoint's config.json, else the
    tokenizer's own ``<video>`` token (an artifact directory's ``llm/`` has a tokenizer but no LLaVA
    config), else the backbone registry's."""
    import json

    if checkpoint is not None and (Path(checkpoint) / "config.json").is_file():
        cfg = json.loads((Path(checkpoint) / "config.json").read_text())
        for key in ("video_token_index", "video_token_id"):
            if key in cfg:
                return int(cfg[key])
    if tokenizer is not None and VIDEO_TOKEN in tokenizer.get_vocab():
        return int(tokenizer.convert_tokens_to_ids(VIDEO_TOKEN))
    return int(bb.video_token_id)


def check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        UsageError: any other device name (checked before anything loads).
    """
    d = str(device)
    if d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        return
    raise UsageError(f"--device {device!r}: unknown device; use cpu, cuda or cuda:N")


def check_prompt_fits(
    text_source: str | os.PathLike,
    prompt: str,
    frames: int,
    tokens_per_frame: int,
    max_new_tokens: int,
    bb,
) -> int:
    """Tokenize ``prompt`` with the chat template and check it fits the LLM's context, before any
    model is loaded or any video decoded (only the tokenizer and the config files are read).

    The span is the uncompressed one whatever is kept (positions continue from it): text before the
    video + ``frames * tokens_per_frame`` + the newline(s) of ``bb.newline`` (1, or one per row of
    every frame) + text after.

    Args:
        text_source: the checkpoint directory or ``<artifacts>/llm`` (tokenizer, chat template,
            ``config.json`` / ``genai_config.json``).
        prompt: the user's question (plain text).
        frames, tokens_per_frame: F and N of the video.
        max_new_tokens: the generation limit.
        bb: the :class:`~infomerge.backbones.registry.Backbone` (for the ``<video>`` placeholder id,
            :func:`video_token_id`).

    Returns:
        The span (the RoPE position of the first generated token).

    Raises:
        PromptTooLongError: the prompt and ``max_new_tokens`` do not fit (says by how much).
        ArtifactError: no tokenizer, chat template or context length in ``text_source``.
    """
    import json

    from transformers import AutoTokenizer

    src = Path(text_source)
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    placeholder = video_token_id(src, bb, tokenizer)
    ids = prompt_ids(tokenizer, load_chat_template(src, tokenizer), prompt, placeholder)
    # LLaVA: F * N (+ newlines); Qwen2.5-VL: L * N pad tokens (positions may span more: M-RoPE
    # time ids; prefill checks them)
    video = bb.family_spec.video_tokens_for(bb, frames, tokens_per_frame)
    span = len(ids.before) + video + len(ids.after)
    context = None
    if (src / "config.json").is_file():
        cfg = json.loads((src / "config.json").read_text())
        context = cfg.get("text_config", cfg).get("max_position_embeddings")
    if context is None and (src / LLM_GENAI_CONFIG).is_file():
        context = json.loads((src / LLM_GENAI_CONFIG).read_text())["model"].get("context_length")
    if context is None:
        raise ArtifactError(f"{src}: no max_position_embeddings / context_length; cannot check the prompt")
    check_context(span, max_new_tokens, int(context))
    return span


_FLAGS = {"vision": "--vision-backend", "compress": "--compress-backend", "llm": "--llm"}


def check_fps(bb, fps: float | None) -> None:
    """Sampling by fps where the family has it (``BackboneFamily.fps_sampling``: Qwen2.5-VL);
    refuse it elsewhere, and a rate that is not > 0.

    LLaVA-OneVision and LLaVA-Video take a fixed frame count (lmms-eval's ``max_frames_num``: 32 /
    64 frames uniform in index) and their RoPE positions carry no time, so a rate would only
    change how many frames are sampled; ``--frames`` says that directly. Qwen2.5-VL samples by fps
    (qwen-vl-utils, 2 fps by default) and its M-RoPE temporal ids follow the sampled rate.

    Raises:
        UsageError: ``fps`` on a backbone without it, or ``fps <= 0``.
    """
    if fps is None:
        return
    family = bb.family_spec
    if not family.fps_sampling:
        raise UsageError(
            f"--fps: backbone {bb.name!r} ({family.title}) has no notion of a sampling rate: it takes a "
            f"fixed frame count ({bb.frames} frames uniform in index, lmms-eval's setting) and its "
            "positions carry no time; sample a frame count with --frames (fps sampling is Qwen2.5-VL's)"
        )
    if not fps > 0:
        raise UsageError(f"--fps must be > 0 frames per second, got {fps}")


def check_backbone_support(
    bb, vision_backend, compress_backend, llm, method, retention, frames: int | None = None
) -> None:
    """Refuse, before anything loads, a backend, method or frame count the backbone cannot run.

    The limits are the family's (:class:`~infomerge.backbones.family.BackboneFamily`): backends
    outside its ``backends`` (a backend given as None is not checked), methods that read vision
    outputs outside its ``vision_outputs``, and a frame count that is not a multiple of its
    ``frame_step`` (Qwen2.5-VL: the temporal patch, 2). Only Qwen2.5-VL has limits today.

    Raises:
        UsageError: names what is missing and what runs instead.
    """
    family = bb.family_spec
    backends = family.backends or {}
    for stage, name in (("vision", vision_backend), ("compress", compress_backend), ("llm", llm)):
        if name is not None and stage in backends and name not in backends[stage]:
            raise UsageError(
                f"backbone {bb.name!r} ({family.title}) cannot run the {name!r} {stage} backend: "
                f"{family.missing_backend[stage]}; use {_FLAGS[stage]} {' / '.join(backends[stage])}"
            )
    step = family.frame_step(bb)
    if frames is not None and int(frames) % step:
        raise UsageError(
            f"{frames} frames: {bb.name} groups frames in temporal patches of {step}; "
            f"sample a multiple of {step}"
        )
    produced = family.vision_outputs
    if produced is None or compress_backend == "none" or not compression_wanted(retention):
        return
    missing = [k for k in get_method(method).vision_outputs if k not in produced]
    if missing:
        from infomerge.compress.methods import method_names

        ok = [m for m in method_names() if set(get_method(m).vision_outputs) <= set(produced)]
        raise UsageError(
            f"method {method!r} reads the vision outputs {', '.join(missing)} (the vision tower's "
            f"last-layer attention), which the {family.title} vision stage does not produce yet; on "
            f"{bb.name!r} use one of: {', '.join(ok)}"
        )


def _check_names(vision_backend, compress_backend, llm, method, retention, inner_merge=None, bb=None) -> None:
    """Every name and the retention (and the inner-stage switch), checked before anything is loaded.

    Raises:
        UnknownBackendError, UnknownMethodError, BudgetError, UsageError (:func:`make_config`,
        :func:`check_inner_stage`).
    """
    for stage, name in (("vision", vision_backend), ("compress", compress_backend), ("llm", llm)):
        if name is not None:
            backend_factory(stage, name)
    if compress_backend != "none" and compression_wanted(retention):
        config = make_config(method, float(retention), inner_merge)
        if bb is not None:
            check_inner_stage(config, method, llm, compress_backend, bb)


def _vision_outputs(compress_backend, method, retention, extra) -> tuple[str, ...]:
    """The optional vision outputs to produce: the method's (when it compresses), then ``extra``."""
    own = ()
    if compress_backend != "none" and compression_wanted(retention):
        own = get_method(method).vision_outputs
    return tuple(dict.fromkeys((*own, *extra)))


def check_vision_outputs(vision, method: str, artifacts: Path | None) -> None:
    """The vision backend must produce the optional outputs ``method`` reads.

    Raises:
        ArtifactError: it lacks some (an ``ort`` / ``trt`` graph exported for another method or
            before they existed; the message names the re-export command).
    """
    from infomerge.runtime.backends.base import missing_outputs_message

    have = getattr(vision, "extra_outputs", ())
    missing = [k for k in get_method(method).vision_outputs if k not in have]
    if missing:
        where = f"the {vision.name} vision backend" + (f" of {artifacts}" if vision.name != "torch" else "")
        raise ArtifactError(missing_outputs_message(method, missing, where))


def _compressor(
    source: BackendSource, backend: str, method: str, retention: float | None, inner_merge: bool | None = None
):
    """(compress backend, config) for a method and retention; ``none`` where nothing is compressed."""
    if backend == "none" or not compression_wanted(retention):
        return backend_factory("compress", "none")(source), None
    m = get_method(method)
    config = make_config(method, float(retention), inner_merge)
    return backend_factory("compress", backend)(replace(source, method=m, config=config)), config


__all__ = [
    "DEFAULT_RETENTION",
    "Answer",
    "Pipeline",
    "check_backbone_support",
    "check_device",
    "check_fps",
    "check_inner_stage",
    "check_vision_outputs",
    "check_prompt_fits",
    "compression_wanted",
    "make_config",
    "video_token_id",
]
