"""From per-label log-probabilities to the direct-RLAIF reward.

    p_i = P(label i) / sum_j P(label j)          renormalised over the scale's labels
    s   = sum_i value_i * p_i                    expected score, in [lo, hi]
    r   = 2 * (s - lo) / (hi - lo) - 1           reward, in [-1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scale:
    """An integer rating scale ``lo..hi`` whose labels are the decimal numbers."""

    lo: int = 1
    hi: int = 10

    def __post_init__(self) -> None:
        if self.lo < 0 or self.hi <= self.lo:
            raise ValueError(f"a scale needs 0 <= lo < hi, got {self.lo}..{self.hi}")

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(range(self.lo, self.hi + 1))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(str(v) for v in self.values)

    def to_reward(self, score: float) -> float:
        """Map an expected score in [lo, hi] linearly onto [-1, 1]."""
        return 2.0 * (score - self.lo) / (self.hi - self.lo) - 1.0


@dataclass(frozen=True)
class ScoreResult:
    reward: float
    score: float
    distribution: tuple[float, ...]
    label_mass: float


def expected_score(label_logprobs: Sequence[float], scale: Scale) -> ScoreResult:
    """Renormalise the labels' probabilities and take the expectation over the scale.

    ``label_logprobs`` are in the scale's label order. ``label_mass`` is the total
    probability the labeler put on valid labels before renormalising: a low value
    means it is not answering on the scale and the score deserves little trust.
    """
    logp = np.asarray(label_logprobs, dtype=np.float64)
    if logp.shape != (len(scale.values),):
        raise ValueError(f"expected {len(scale.values)} label log-probabilities, got {logp.shape}")
    if np.isnan(logp).any() or (logp > 1e-6).any():
        raise ValueError(f"label log-probabilities must be <= 0 and not NaN, got {logp.tolist()}")
    if not np.isfinite(logp).any():
        raise ValueError("every label has zero probability")
    top = logp.max()
    weights = np.exp(logp - top)
    total = weights.sum()
    distribution = weights / total
    score = float(np.dot(distribution, np.asarray(scale.values, dtype=np.float64)))
    # Clamp rounding noise so the documented ranges hold exactly.
    score = min(max(score, float(scale.lo)), float(scale.hi))
    label_mass = float(min(np.exp(top) * total, 1.0))
    return ScoreResult(
        reward=min(max(scale.to_reward(score), -1.0), 1.0),
        score=score,
        distribution=tuple(float(p) for p in distribution),
        label_mass=label_mass,
    )
