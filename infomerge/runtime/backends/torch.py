"""The ``torch`` backend: the checkpoint in PyTorch for every stage.

- vision: :class:`~infomerge.backbones.vision.VisionEncoder` (tower, projector, pooling, SigLIP head);
- compress: the method's paper-exact reference (data-dependent token count);
- LLM: :class:`~infomerge.runtime.llm_torch.TorchLLM` (Qwen2 in transformers, KV cache).

Options: ``siglip_path`` (SigLIP head checkpoint), ``compile_mode`` (``torch.compile`` the tower
and the LLM: None off, "default", "reduce-overhead"), ``vision_dtype`` ("fp32", or "bf16": tower
and projector in bfloat16, LayerNorms, softmax and the SigLIP head in fp32; measured in
docs/benchmarks.md, "Vision tower in bf16").
"""

from __future__ import annotations

import torch

from infomerge.errors import UsageError
from infomerge.runtime.backends.base import BackendSource, VideoTokens, VisionFeatures, method_inputs

#: ``vision_dtype`` option -> the tower's compute dtype
VISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_vision_dtype(vision_dtype: str, vision_backend: str) -> None:
    """Raise :class:`UsageError` for an unknown ``vision_dtype`` or bf16 on a non-torch backend."""
    if vision_dtype not in VISION_DTYPES:
        raise UsageError(f"vision dtype must be one of {', '.join(VISION_DTYPES)}, got {vision_dtype!r}")
    if vision_dtype != "fp32" and vision_backend != "torch":
        raise UsageError(
            f"--vision-dtype {vision_dtype} applies to the torch vision backend only, not "
            f"{vision_backend!r}: drop it or use --vision-backend torch"
        )


class TorchVision:
    """The checkpoint's vision tower, projector and SigLIP head in PyTorch, on the source's device;
    the optional outputs ``extra_outputs`` are computed in the same pass
    (:attr:`~infomerge.backbones.vision.VisionEncoder.extra_outputs`)."""

    name = "torch"
    any_frame_count = True  # the tower runs on any number of frames (repeats encoded once)

    def __init__(self, encoder, device: str = "cpu", extra_outputs: tuple[str, ...] = ()):
        self.encoder = encoder.to(device).eval()
        self.encoder.extra_outputs = self.extra_outputs = tuple(extra_outputs)
        self.device = device
        self.image_newline = encoder.image_newline.detach().float()

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> VisionFeatures:
        h, a, g, *extra = self.encoder(pixel_values.to(self.device))
        named = {k: v.float() for k, v in zip(self.extra_outputs, extra)}
        return VisionFeatures(h.float(), a.float(), g.float(), named)


class TorchCompressor:
    """A method's paper-exact reference, run on the device its inputs are on."""

    name = "torch"

    def __init__(self, method, config):
        self.method = method
        self.config = config

    def __call__(self, f: VisionFeatures) -> VideoTokens:
        extra = method_inputs(self.method, f, "this vision backend")
        c = self.method.reference(f.H, f.A, f.g, self.config, **extra)
        return VideoTokens(c.tokens, c.index.to(torch.int64), detail=c)


def vision(source: BackendSource) -> TorchVision:
    """The backbone family's vision encoder
    (:meth:`~infomerge.backbones.family.BackboneFamily.vision_encoder`) on the source's device. A
    static-grid encoder (Qwen2.5-VL's window-attention ViT) is built at F = ``source.frames``: frames
    are not deduplicated, a repeated frame still fills its temporal pair.

    Raises:
        UsageError: a ``vision_dtype`` the family's torch encoder does not run.
    """
    family = source.backbone.family_spec
    dtype_name = source.options.get("vision_dtype") or "fp32"
    if dtype_name not in family.vision_dtypes:
        raise UsageError(
            f"--vision-dtype {dtype_name} applies to the SigLIP tower; drop it for {family.title} (its "
            f"torch encoder runs {' / '.join(family.vision_dtypes)})"
        )
    encoder = family.vision_encoder(  # no fingerprint: a run writes no manifest
        source.backbone,
        source.need_checkpoint("torch vision"),
        frames=source.frames,
        siglip_path=source.options.get("siglip_path"),
        dtype=VISION_DTYPES[dtype_name],
        fingerprint=False,
    )
    backend = TorchVision(encoder, source.device, source.vision_outputs)
    if family.static_frame_count:
        backend.any_frame_count = False
    if source.options.get("compile_mode", False) is not False:
        backend.encoder = torch.compile(backend.encoder, mode=source.options["compile_mode"])
    return backend


def compress(source: BackendSource) -> TorchCompressor:
    return TorchCompressor(source.method, source.config)


def llm(source: BackendSource, eos_token_ids):
    from infomerge.runtime.llm_torch import TorchLLM

    backend = TorchLLM.from_checkpoint(source.need_checkpoint("torch LLM"), eos_token_ids, source.device)
    if source.options.get("compile_mode", False) is not False:
        backend.model = torch.compile(backend.model, mode=source.options["compile_mode"])
    return backend


VISION, COMPRESS, LLM = vision, compress, llm
