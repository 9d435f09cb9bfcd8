"""From per-label log-probabilities to the direct-RLAIF reward.

    p_i = P(label i) / sum_j P(label j)          renormalised over the scale's labels
    s   = sum_i value_i * p_i                    expected score, in [lo, hi]
    r   = 2 * (s - lo) / (hi - lo) - 1           reward, in [-1, 1]
    H   = -sum_i p_i ln p_i                      label entropy, in [0, ln(labels)]: the judge's doubt

With k reasoned samples (rationales) of one item, each read this way to p^(1..k):

    p_i = (1/k) sum_s p^(s)_i                    the mean distribution; s and r follow from it
    mass = (1/k) sum_s mass^(s)
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
    """A read as a score. Its field names are the wire's (``drlaif.protocol.LabelRead``): the
    server sends each field as it is."""

    reward: float
    score: float
    distribution: tuple[float, ...]
    label_mass: float
    label_entropy: float


def result_of(distribution: np.ndarray, label_mass: float, scale: Scale) -> ScoreResult:
    """The score, reward and entropy of a renormalised label distribution over ``scale``."""
    score = float(np.dot(distribution, np.asarray(scale.values, dtype=np.float64)))
    # Clamp rounding noise so the documented ranges hold exactly.
    score = min(max(score, float(scale.lo)), float(scale.hi))
    nonzero = distribution[distribution > 0]
    entropy = float(-np.dot(nonzero, np.log(nonzero)))
    return ScoreResult(reward=min(max(scale.to_reward(score), -1.0), 1.0), score=score,
                       distribution=tuple(float(p) for p in distribution), label_mass=float(label_mass),
                       label_entropy=max(entropy, 0.0))


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
    return result_of(weights / total, min(np.exp(top) * total, 1.0), scale)


def mean_of_samples(samples: Sequence[ScoreResult], scale: Scale) -> ScoreResult:
    """The result of an item read after several rationales: the mean of their renormalised
    distributions, the expected score and reward of that mean, and the mean label mass.
    One sample is returned as it is."""
    if not samples:
        raise ValueError("mean_of_samples needs at least one sample")
    if len(samples) == 1:
        return samples[0]
    distribution = np.mean([s.distribution for s in samples], axis=0)
    if distribution.shape != (len(scale.values),):
        raise ValueError(f"expected distributions over {len(scale.values)} labels, got {distribution.shape}")
    return result_of(distribution, float(np.mean([s.label_mass for s in samples])), scale)


def score_spread(samples: Sequence[ScoreResult]) -> float:
    """How much the samples' expected scores disagree: their standard deviation (0 for one)."""
    return float(np.std([s.score for s in samples])) if len(samples) > 1 else 0.0
