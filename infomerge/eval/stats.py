"""Accuracy with a 95 % confidence interval: the Wilson score interval.

Wilson (1927), not the normal ("Wald") interval: it stays inside [0, 1] and keeps close to its
nominal coverage for the small sets and extreme accuracies a device evaluation has (a few hundred
questions, or a handful in a smoke test). For k correct answers out of n, p = k/n and z the
standard normal quantile (1.959964 for 95 %)::

    centre = (p + z²/2n) / (1 + z²/n)
    half   = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
    interval = [centre - half, centre + half]

The questions are treated as independent draws; questions about one video are correlated, so for
a set with several questions per video the interval is somewhat too narrow (lmms-eval 0.7.3
clusters its standard error by ``videoID`` for VideoMME for this reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Two-sided 95 % standard normal quantile.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Accuracy:
    """k correct out of n, with its Wilson interval (fractions in [0, 1]; None when n = 0)."""

    correct: int
    total: int
    value: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict:
        return {
            "correct": self.correct,
            "total": self.total,
            "accuracy": self.value,
            "ci95_low": self.low,
            "ci95_high": self.high,
        }

    def percent(self) -> str:
        """``"41.7 % [19.3, 68.0]"``, or ``"-"`` for an empty set."""
        if self.value is None:
            return "-"
        return f"{100 * self.value:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / total``.

    Args:
        correct: k, successes (0 <= k <= n).
        total: n, trials (> 0).
        z: standard normal quantile (default: 95 %, two-sided).

    Returns:
        (low, high), fractions in [0, 1].

    Raises:
        ValueError: n <= 0 or k outside [0, n].
    """
    if total <= 0:
        raise ValueError(f"a confidence interval needs at least one question, got n={total}")
    if not 0 <= correct <= total:
        raise ValueError(f"correct answers must be in [0, {total}], got {correct}")
    n = float(total)
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(correct: int, total: int) -> Accuracy:
    """:class:`Accuracy` of k out of n (value and interval None when n = 0).

    Raises:
        ValueError: k outside [0, n].
    """
    if total == 0:
        return Accuracy(0, 0, None, None, None)
    low, high = wilson_interval(correct, total)
    return Accuracy(correct, total, correct / total, low, high)
