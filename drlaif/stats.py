"""Pure statistics for the evaluations: outcomes with ties, proportions with a Wilson interval,
and summaries of per-item values (e.g. label mass)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def outcome(margin: float) -> float:
    """1 when the expected side wins (margin > 0), 1/2 on an exact tie, 0 when it loses."""
    if math.isnan(margin):
        raise ValueError("an outcome needs a number, got NaN")
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``.

    ``successes`` may be fractional (ties counted as one half); the interval then treats the
    proportion as if it came from ``n`` Bernoulli trials, which is conservative: a tie
    varies less than a win or a loss.
    """
    if n <= 0:
        raise ValueError("a proportion needs at least one item")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 (or 1) the bound is 0 (or 1) exactly; rounding would leave ~1e-17 off it.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Proportion:
    """Wins, ties and losses, the rate with ties as one half, and its 95% Wilson interval."""

    n: int
    wins: int
    ties: int
    losses: int
    rate: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.rate:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def proportion(outcomes: Iterable[float], z: float = Z95) -> Proportion:
    """Summarise outcomes in {0, 1/2, 1} (see :func:`outcome`)."""
    values = list(outcomes)
    if any(v not in (0.0, 0.5, 1.0) for v in values):
        raise ValueError("outcomes must be 0, 0.5 or 1")
    n = len(values)
    wins, ties = values.count(1.0), values.count(0.5)
    successes = wins + 0.5 * ties
    low, high = wilson_interval(successes, n, z)
    return Proportion(n=n, wins=wins, ties=ties, losses=n - wins - ties, rate=successes / n,
                      ci_low=low, ci_high=high)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, spread and quantiles of per-item values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("nothing to summarize")
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "p10": float(np.quantile(x, 0.1)), "median": float(np.median(x)),
            "p90": float(np.quantile(x, 0.9)), "max": float(x.max())}


@dataclass(frozen=True)
class PairedGain:
    """Mean of per-item differences (after - before) with a 95% paired-bootstrap interval."""

    n: int
    mean: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.ci_low > 0 or self.ci_high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"


def paired_bootstrap(before: Sequence[float], after: Sequence[float], resamples: int = 10_000,
                     seed: int = 0) -> PairedGain:
    """Gain of ``after`` over ``before`` on the same items, resampling items (percentile bootstrap).

    Pairing matters: the items differ far more from one another than a policy update moves any
    one of them, and resampling the differences keeps that spread out of the interval.
    """
    if len(before) != len(after):
        raise ValueError(f"paired values differ in length: {len(before)} before, {len(after)} after")
    if not before:
        raise ValueError("a paired gain needs at least one item")
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return PairedGain(n=int(diff.size), mean=float(diff.mean()), ci_low=float(low), ci_high=float(high))
