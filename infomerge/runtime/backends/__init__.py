"""One backend seam per stage: registries of factories for the vision, compress and LLM stages.

A backend is one module that defines any of ``VISION``, ``COMPRESS`` and ``LLM``: factories
``VISION(source) -> VisionBackend``, ``COMPRESS(source) -> CompressBackend`` and
``LLM(source, eos_token_ids) -> LLMBackend`` (:class:`~infomerge.runtime.backends.base.BackendSource`
says what they build from). Adding a backend is that module plus one line in :data:`MODULES`.

| backend | vision | compress | LLM |
|---|---|---|---|
| torch | ``VisionEncoder`` on the checkpoint | the method's paper-exact reference | Qwen2 in transformers |
| ort | ``vision.onnx`` | ``compress.onnx`` (fixed budget) | onnxruntime-genai graph (int4 / fp32) |
| trt | the vision engine | the compression engine | - |
| none | - | keeps every token | - |
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from infomerge.errors import UnknownBackendError
from infomerge.runtime.backends.base import (
    BackendSource,
    CompressBackend,
    NoCompression,
    VideoTokens,
    VisionBackend,
    VisionFeatures,
    no_compression,
)

#: One line per backend module.
MODULES = (
    "infomerge.runtime.backends.torch",
    "infomerge.runtime.backends.ort",
    "infomerge.runtime.backends.trt",
)

VISION_BACKENDS: dict[str, Callable] = {}
COMPRESS_BACKENDS: dict[str, Callable] = {"none": no_compression}
LLM_BACKENDS: dict[str, Callable] = {}
for _module_name in MODULES:
    _module = importlib.import_module(_module_name)
    _name = _module_name.rsplit(".", 1)[1]
    for _registry, _attr in (
        (VISION_BACKENDS, "VISION"),
        (COMPRESS_BACKENDS, "COMPRESS"),
        (LLM_BACKENDS, "LLM"),
    ):
        if hasattr(_module, _attr):
            _registry[_name] = getattr(_module, _attr)

_STAGES = {"vision": VISION_BACKENDS, "compress": COMPRESS_BACKENDS, "llm": LLM_BACKENDS}


def backend_factory(stage: str, name: str) -> Callable:
    """The factory of backend ``name`` for ``stage`` ("vision", "compress" or "llm").

    Raises:
        UnknownBackendError: no such backend for that stage (the message lists the choices).
    """
    registry = _STAGES[stage]
    if name not in registry:
        raise UnknownBackendError(f"{stage} backend must be one of {', '.join(registry)}; got {name!r}")
    return registry[name]


__all__ = [
    "COMPRESS_BACKENDS",
    "LLM_BACKENDS",
    "MODULES",
    "VISION_BACKENDS",
    "BackendSource",
    "CompressBackend",
    "NoCompression",
    "VideoTokens",
    "VisionBackend",
    "VisionFeatures",
    "backend_factory",
]
