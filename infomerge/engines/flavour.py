"""Which TensorRT is installed, and what its builder can do: one code path for every flavour.

Source: the deployment notes of ``docs/tensorrt.md`` ("TensorRT flavours") and NVIDIA's TensorRT 10.x -> 11.x
migration guide: TensorRT 10.x (JetPack 6) builds weakly typed networks and makes fp16 with
``BuilderFlag.FP16``; TensorRT 11.x only builds strongly typed networks (the ONNX carries the
precision, the flag is gone); TensorRT for RTX is strongly typed only, has no timing cache (its
timing-cache calls are no-ops) and builds ahead of time for chosen compute capabilities without a
GPU (``config.set_compute_capability``).

The flavour is a plain record of those facts, so the builder branches on properties, never on names,
and the selection logic is tested with fake modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from infomerge.errors import BackendUnavailableError

#: ``--engine`` choices that build something, and the Python modules that provide each, in order.
FLAVOUR_MODULES: dict[str, tuple[str, ...]] = {
    "trt": ("tensorrt",),
    # the PyPI wheel `tensorrt-rtx` installs `tensorrt_rtx`; the split cu13 wheels the [rtx] extra
    # installs (tensorrt-rtx-cu13-bindings + -libs) install `tensorrt_rtx_bindings`
    "rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings"),
}

#: TensorRT's Python AOT plugins (``tensorrt.plugin`` with ``@trtp.aot_impl``), which the merge
#: plugin is, load from TensorRT 10.9 on (NVIDIA TensorRT 10.9 release notes); JetPack 6's TensorRT
#: 10.3 cannot load it, JetPack 7.2's 10.16 and TensorRT 11 can.
PLUGIN_MIN_TRT = (10, 9)

#: the pip extra that installs each flavour
FLAVOUR_EXTRAS = {"trt": "trt", "rtx": "rtx"}

_INSTALL_HINTS = {
    "trt": (
        "pip install 'infomerge[trt]' (desktop; on Jetson use JetPack's TensorRT: "
        "sudo apt install python3-libnvinfer), or build ahead of time with --engine rtx"
    ),
    "rtx": "pip install 'infomerge[rtx]'",
}


@dataclass(frozen=True)
class Flavour:
    """One installed TensorRT and what its builder supports.

    Attributes:
        name: "trt" (full TensorRT) or "rtx" (TensorRT for RTX).
        version: the module's ``__version__`` (e.g. "10.3.0", "1.7.1.116").
        module: the imported module (``tensorrt``, ``tensorrt_rtx`` or ``tensorrt_rtx_bindings``).
    """

    name: str
    version: str
    module: Any = field(compare=False, repr=False)

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def strongly_typed(self) -> bool:
        """True where only strongly typed networks exist (TensorRT-RTX, TensorRT >= 11)."""
        return self.name == "rtx" or self.major >= 11

    @property
    def fp16_builder_flag(self) -> bool:
        """True where fp16 comes from ``BuilderFlag.FP16`` on a weakly typed network (TensorRT 10.x)."""
        return not self.strongly_typed

    @property
    def merge_plugin(self) -> bool:
        """True where the merge plugin graph can be built (:func:`plugin_supported`)."""
        return plugin_supported(self.version, self.name)

    @property
    def timing_cache(self) -> bool:
        """True where the builder keeps a timing cache (full TensorRT; TensorRT-RTX's is a no-op)."""
        return self.name == "trt"

    @property
    def ahead_of_time(self) -> bool:
        """True where engines are built for a chosen compute capability without that GPU (TensorRT-RTX)."""
        return self.name == "rtx"

    @property
    def extra(self) -> str:
        return FLAVOUR_EXTRAS[self.name]

    @property
    def label(self) -> str:
        """Human name with version, e.g. "TensorRT-RTX 1.7.1.116" or "TensorRT 10.3.0"."""
        return f"{'TensorRT-RTX' if self.name == 'rtx' else 'TensorRT'} {self.version}"


def plugin_supported(version: str, name: str = "trt") -> bool:
    """Whether the merge plugin graph (``compress_plugin.onnx``) can be built by this TensorRT.

    Only full TensorRT >= :data:`PLUGIN_MIN_TRT` loads Python AOT plugins; TensorRT-RTX has no plugin
    API at all. Anything else gets the standard graph (``compress.onnx``, same compression).

    Args:
        version: the TensorRT version string, e.g. "10.3.0.30", "10.16.1", "11.4.1".
        name: flavour name, "trt" or "rtx".

    Returns:
        True for full TensorRT >= 10.9; False otherwise, also for an unparsable version.
    """
    if name != "trt":
        return False
    parts = []
    for field_ in str(version).split(".")[:2]:
        digits = "".join(ch for ch in field_ if ch.isdigit()) if field_[:1].isdigit() else ""
        if not digits:
            return False
        parts.append(int(digits))
    while len(parts) < 2:
        parts.append(0)
    return tuple(parts) >= PLUGIN_MIN_TRT


def load_flavour(name: str, importer: Callable[[str], ModuleType] = importlib.import_module) -> Flavour:
    """Import the TensorRT of flavour ``name``.

    Args:
        name: "trt" or "rtx" (the ``--engine`` value).
        importer: module importer (tests pass a fake).

    Returns:
        the :class:`Flavour`.

    Raises:
        ValueError: for an unknown flavour name.
        BackendUnavailableError: when no module of that flavour imports; the message names the pip
            extra that installs it.
    """
    if name not in FLAVOUR_MODULES:
        raise ValueError(f"unknown TensorRT flavour {name!r}; choose one of {sorted(FLAVOUR_MODULES)}")
    reasons = []
    for module_name in FLAVOUR_MODULES[name]:
        try:
            module = importer(module_name)
        except ImportError as exc:  # also OSError-free: a broken install raises ImportError
            reasons.append(f"{module_name}: {exc}")
            continue
        return Flavour(name=name, version=str(getattr(module, "__version__", "0")), module=module)
    what = "TensorRT for RTX" if name == "rtx" else "TensorRT"
    raise BackendUnavailableError(
        f"{what} is not installed ({'; '.join(reasons)}); install it with {_INSTALL_HINTS[name]}"
    )
