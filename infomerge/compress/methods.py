"""The compressor registry: every compression method by name, with what each part of the toolkit
needs of it.

A :class:`Method` maps a name (``--method NAME`` in every CLI) to:

- ``config(retention)``: its hyperparameters for a retention ratio r (a :class:`MethodConfig`);
- ``reference(H, A, g, config)``: its paper-exact PyTorch reference (what the ``torch`` compress
  backend runs), returning a :class:`CompressedTokens`;
- ``fixed_budget(config, frames, tokens_per_frame, hidden)``: its fixed-budget, shape-static
  ``nn.Module`` (``forward(H, A, g) -> (tokens (B, D), index (B,))``) that ``infomerge-export``
  traces to ``compress.onnx``; or None with ``not_exportable`` saying why;
- ``vision_outputs``: optional vision-encoder outputs it reads besides (H, A, g), by name (the
  names of :data:`infomerge.backbones.vision.EXTRA_OUTPUTS`, e.g. ``("attention", "keys")``).
  The vision stage then produces them in the same pass, the reference receives them as keyword
  arguments (``reference(H, A, g, config, attention=..., keys=...)``), the fixed-budget module as
  further positional inputs in this order (``forward(H, A, g, attention, keys)``), and the
  exported ``vision.onnx`` / ``compress.onnx`` carry them as outputs / inputs of the same names.
  Default ``()``: the default graphs, unchanged.

Adding a method: write one module that defines ``METHOD = Method(...)`` (or ``METHODS``, a tuple)
and add its module name to :data:`MODULES` below. Nothing else in the package names a method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from infomerge.errors import UnknownMethodError


class MethodConfig(Protocol):
    """What the toolkit reads of a method's configuration."""

    retention: float

    def total_budget(self, frames: int, n: int) -> int:
        """B, the number of video tokens kept of ``frames * n`` (exactly, by the fixed-budget
        graph; the reference may keep a few more or fewer where the method is data-dependent)."""

    def to_dict(self) -> dict:
        """JSON-ready fields (recorded in the artifact manifest)."""


class CompressedTokens(Protocol):
    """What a reference returns (it may carry more, e.g. the InfoMerge ``Compressed`` record)."""

    tokens: torch.Tensor  # (K, D), in index order
    index: torch.Tensor  # (K,) int64 original flat positions l * N + p, sorted, unique


@dataclass(frozen=True)
class Method:
    """One registered compression method.

    Attributes:
        name: the registry key (``--method NAME``).
        summary: one line for ``--help`` and the docs.
        config: ``config(retention) -> MethodConfig``; raises
            :class:`~infomerge.errors.BudgetError` for a retention the method cannot meet.
        reference: ``reference(H (L, N, D), A (L, N), g (L, G), config) -> CompressedTokens``.
        fixed_budget: ``fixed_budget(config, frames, tokens_per_frame, hidden) -> nn.Module``, or
            None when the method has no shape-static form.
        not_exportable: why there is no fixed-budget form (None when there is one).
        vision_outputs: names of the optional vision outputs the method reads, in the order its
            fixed-budget module takes them after (H, A, g) (default: none).
    """

    name: str
    summary: str
    config: Callable[[float], Any]
    reference: Callable[..., Any]
    fixed_budget: Callable[..., torch.nn.Module] | None = None
    not_exportable: str | None = None
    vision_outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.fixed_budget is None) == (self.not_exportable is None):
            raise ValueError(f"method {self.name!r}: give exactly one of fixed_budget and not_exportable")

    def budget(self, retention: float, frames: int, n: int) -> int:
        """B = ``config(retention).total_budget(frames, n)``. Raises BudgetError."""
        return int(self.config(retention).total_budget(frames, n))


#: One line per method module; each defines ``METHOD`` or ``METHODS``.
# fmt: off
MODULES = (
    "infomerge.compress.presets",
    "infomerge.compress.unified",
    "infomerge.compress.divprune",
    "infomerge.compress.dycoke",
    "infomerge.compress.visionzip",
    "infomerge.compress.flashvid",
    "infomerge.compress.holitom",
)
# fmt: on


def _load() -> dict[str, Method]:
    found: dict[str, Method] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for m in getattr(module, "METHODS", ()) or (module.METHOD,):
            if m.name in found:
                raise ValueError(f"method {m.name!r} is registered twice ({module_name})")
            found[m.name] = m
    return found


#: name -> :class:`Method`, in registration order
METHODS: dict[str, Method] = _load()


def method_names() -> tuple[str, ...]:
    """The registered method names (``choices=`` of every ``--method``)."""
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The registered :class:`Method` called ``name``.

    Raises:
        UnknownMethodError: no such method (the message lists the choices).
    """
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown compression method {name!r}; choose one of: {', '.join(METHODS)}"
        ) from None


def vision_outputs_of(names) -> tuple[str, ...]:
    """The union of the named methods' :attr:`Method.vision_outputs`, in first-seen order (what one
    vision pass must produce to serve all of them). Raises UnknownMethodError."""
    return tuple(dict.fromkeys(x for name in names for x in get_method(name).vision_outputs))


__all__ = [
    "METHODS",
    "MODULES",
    "CompressedTokens",
    "Method",
    "MethodConfig",
    "get_method",
    "method_names",
    "vision_outputs_of",
]
