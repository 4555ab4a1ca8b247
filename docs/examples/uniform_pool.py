"""Uniform temporal pooling: a toy compressor that shows how a method joins the toolkit.

Copied to ``infomerge/compress/uniform_pool.py`` and named in
``infomerge.compress.methods.MODULES``, it runs through ``infomerge-run``, ``infomerge-export``
(its fixed-budget graph) and ``infomerge-bench`` with no other file touched
(``tests/test_architecture.py`` does exactly that).

The method: frames are cut into windows of ``w = round(1 / r)`` consecutive frames; every spatial
position keeps the mean of its tokens over the window, at the position of the window's first frame:

    t[s, p] = mean_{l in window s} H[l, p]          (ceil(L / w) * N tokens kept)

Not a method to use: it ignores A and g (but takes them, as every compressor does).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
from torch import nn

from infomerge.compress.methods import Method
from infomerge.errors import BudgetError


@dataclass(frozen=True)
class PoolConfig:
    """Retention ratio r in (0, 1]; the window is ``max(1, round(1 / r))`` frames."""

    retention: float

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"retention must be in (0, 1], got {self.retention}")

    @property
    def window(self) -> int:
        return max(1, round(1.0 / float(self.retention)))

    def total_budget(self, frames: int, n: int) -> int:
        return math.ceil(frames / self.window) * n

    def to_dict(self) -> dict:
        return {**asdict(self), "window": self.window}


def _pool(H: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """H (L, N, D) -> tokens (ceil(L/w) * N, D), index (ceil(L/w) * N,) int64 (sorted)."""
    L, N, D = H.shape
    starts = list(range(0, L, window))
    tokens = torch.stack([H[s : s + window].mean(0) for s in starts])  # (S, N, D)
    index = torch.tensor(starts, dtype=torch.int64)[:, None] * N + torch.arange(N, dtype=torch.int64)
    return tokens.reshape(-1, D), index.reshape(-1)


def reference(H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, config: PoolConfig):
    """The reference: ``.tokens`` (K, D) in H's dtype, ``.index`` (K,) int64 sorted."""
    tokens, index = _pool(H, config.window)
    return SimpleNamespace(tokens=tokens, index=index)


class FixedBudgetPool(nn.Module):
    """The same computation with static shapes (the window loop depends on L only)."""

    def __init__(self, config: PoolConfig, frames: int, tokens_per_frame: int, hidden: int):
        super().__init__()
        self.config = config
        self.budget = config.total_budget(frames, tokens_per_frame)

    def forward(self, H, A, g):
        tokens, index = _pool(H, self.config.window)
        # A and g take part so that the graph keeps the common inputs (weight 0: no effect)
        tokens = tokens + 0.0 * (A.sum() + g.sum()).to(tokens.dtype)
        return tokens, index


METHOD = Method(
    name="uniform_pool",
    summary="toy: mean over windows of round(1/r) frames per position",
    config=PoolConfig,
    reference=reference,
    fixed_budget=FixedBudgetPool,
)
