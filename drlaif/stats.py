"""Pure statistics for the evaluations: outcomes with ties, proportions with a Wilson interval,
summaries of per-item values (e.g. label mass), and paired gains with a bootstrap or Student-t
interval."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

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
    """Mean of per-item differences (after - before) with an interval: 95% paired bootstrap from
    :func:`paired_bootstrap`, Student-t at the level asked for from :func:`paired_t_interval`."""

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


def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df``: the finite series of Abramowitz and Stegun
    26.7.3 (odd df) and 26.7.4 (even df), exact up to rounding."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        # cos θ · (1 + (2/3)cos²θ + (2·4)/(3·5)cos⁴θ + ...), up to cos^(df-2)θ
        j = np.arange(1, (df - 1) // 2)
        terms = np.cumprod(np.concatenate(([1.0], 2 * j / (2 * j + 1) * cos2)))
        central = 2 / math.pi * (theta + (sin * math.cos(theta) * float(terms.sum()) if df > 1 else 0.0))
    else:
        # 1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + ..., up to cos^(df-2)θ
        j = np.arange(1, df // 2)
        terms = np.cumprod(np.concatenate(([1.0], (2 * j - 1) / (2 * j) * cos2)))
        central = sin * float(terms.sum())
    return 0.5 + central / 2


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` (integer) degrees of freedom, by bisection on
    the exact distribution function; cached, since the alarm asks for the same few quantiles."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p and high < 1e300:  # the bound: a p that rounding keeps out of reach
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return high


def paired_t_interval(before: Sequence[float], after: Sequence[float], confidence: float = 0.95) -> PairedGain:
    """Gain of ``after`` over ``before`` on the same items, with a two-sided Student-t interval on
    the per-item differences at ``confidence``.

    It holds at any level, where the bootstrap needs resamples in the tail: at the 99.9% and beyond
    that a multiple-test correction asks for, 10,000 resamples leave a handful in each tail, and on
    8 to 32 items the percentile bootstrap is too narrow (it estimates the spread with divisor n and
    has normal rather than t tails). It assumes the mean difference is close to normal, which a
    mean over 8 or more items of bounded rewards makes reasonable.
    """
    if len(before) != len(after):
        raise ValueError(f"paired values differ in length: {len(before)} before, {len(after)} after")
    if len(before) < 2:
        raise ValueError(f"a t interval needs at least two items, got {len(before)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    mean = float(diff.mean())
    half = t_quantile(1 - (1 - confidence) / 2, diff.size - 1) * float(diff.std(ddof=1)) / math.sqrt(diff.size)
    return PairedGain(n=int(diff.size), mean=mean, ci_low=mean - half, ci_high=mean + half)
