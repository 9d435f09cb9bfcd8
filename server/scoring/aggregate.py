"""Constitutions: one exact read per principle, combined into one reward.

With principles i = 1..k, weights w_i (normalised to sum to 1 over the principles read),
and each principle's renormalised label distribution p^(i) and expected score s_i:

    weighted_mean    p = sum_i w_i p^(i)        so  s = sum_i w_i s_i   (mass: sum_i w_i mass_i)
    min              the principle with the lowest reward decides (its whole result)
    geometric_mean   p ∝ prod_i (p^(i))^w_i     a label is likely only if every principle finds it
                                                likely (mass: prod_i mass_i^w_i)
    sample           one principle per item, drawn with probability w_i by a seeded,
                     per-item draw (Constitutional AI samples one principle per comparison)

Pairwise, on P(A better) per principle (each already debiased over both orders):

    weighted_mean    p_a = sum_i w_i p_a^(i)
    geometric_mean   p_a = prod p_a^w / (prod p_a^w + prod (1 - p_a)^w)
    min              the principle on which the responses differ most decides (largest
                     |p_a - 1/2|): swapping A and B still turns p_a into 1 - p_a
    sample           as above

P(A better) in each order (ab, ba) combines the same way as p_a, each on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from server.scoring.preference import Preference
from server.scoring.reward import Scale, ScoreResult, result_of

T = TypeVar("T")


def normalised(weights: Sequence[float]) -> np.ndarray:
    """Weights scaled to sum to 1 (the principles a request reads may be a subset)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w) or (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be positive finite numbers, got {list(weights)}")
    return w / w.sum()


def sample_principle(weights: Sequence[float], seed: int, key: bytes) -> int:
    """The index drawn for one item: a uniform number from (seed, key) against the cumulative weights."""
    h = hashlib.blake2b(seed.to_bytes(8, "little", signed=False) + key, digest_size=8).digest()
    u = int.from_bytes(h, "little") / 2**64
    return min(int(np.searchsorted(np.cumsum(normalised(weights)), u, side="right")), len(weights) - 1)


def _deciding(parts: Sequence[T], weights: Sequence[float], how: str, pick: int | None, what: str,
              worst: Callable[[T], float]) -> tuple[np.ndarray, T | None]:
    """The normalised weights, and the one part that decides alone: the only one, the one
    ``worst`` ranks lowest under ``min``, or the drawn one under ``sample``; None when the parts
    combine."""
    if len(parts) != len(weights):
        raise ValueError(f"{len(parts)} {what} for {len(weights)} weights")
    w = normalised(weights)
    if len(parts) == 1:
        return w, parts[0]
    if how == "min":
        return w, min(parts, key=worst)
    if how == "sample":
        if pick is None or not 0 <= pick < len(parts):
            raise ValueError(f"sample needs the drawn principle's index, got {pick!r}")
        return w, parts[pick]
    return w, None


def aggregate_scores(results: Sequence[ScoreResult], weights: Sequence[float], how: str, scale: Scale,
                     pick: int | None = None) -> ScoreResult:
    """One result from the principles' results (see the module docstring); ``pick`` is the
    drawn index for ``sample``. A single principle is returned as it is."""
    w, alone = _deciding(results, weights, how, pick, "results", worst=lambda r: r.reward)
    if alone is not None:
        return alone
    p = np.array([r.distribution for r in results], dtype=np.float64)
    mass = np.array([r.label_mass for r in results], dtype=np.float64)
    if how == "weighted_mean":
        return result_of(w @ p, float(w @ mass), scale)
    if how == "geometric_mean":
        with np.errstate(divide="ignore"):
            logp = w @ np.log(p)
            log_mass = float(w @ np.log(mass))
        if not np.isfinite(logp).any():
            raise ValueError("geometric_mean: no label is possible under every principle")
        q = np.exp(logp - logp.max())
        return result_of(q / q.sum(), float(np.exp(log_mass)), scale)
    raise ValueError(f"unknown aggregate {how!r}")


def aggregate_preferences(prefs: Sequence[Preference], weights: Sequence[float], how: str,
                          pick: int | None = None) -> Preference:
    """One preference from the principles' (see the module docstring); orders combine alike."""
    # min: the most decided principle, i.e. the lowest -|p_a - 1/2|.
    w, alone = _deciding(prefs, weights, how, pick, "preferences", worst=lambda p: -abs(p.p_a - 0.5))
    if alone is not None:
        return alone

    def combine(values: Sequence[float]) -> float:
        v = np.asarray(values, dtype=np.float64)
        if how == "weighted_mean":
            return float(w @ v)
        if how == "geometric_mean":
            with np.errstate(divide="ignore"):
                yes, no = w @ np.log(v), w @ np.log1p(-v)
            top = max(yes, no)
            if not np.isfinite(top):  # certain principles that contradict each other: no preference
                return 0.5
            return float(np.exp(yes - top) / (np.exp(yes - top) + np.exp(no - top)))
        raise ValueError(f"unknown aggregate {how!r}")

    ab = combine([p.ab for p in prefs])
    has_ba = all(p.ba is not None for p in prefs)
    ba = combine([p.ba for p in prefs]) if has_ba else None
    p_a = combine([p.p_a for p in prefs])
    consistent = None if ba is None else (ab > 0.5 and ba > 0.5) or (ab < 0.5 and ba < 0.5)
    return Preference(p_a=p_a, ab=ab, ba=ba, consistent=consistent)
