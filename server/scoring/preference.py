"""From the labeler's two pairwise-label probabilities to a debiased preference.

A comparison shows the labeler a prompt and two responses and reads the probabilities
of its two answer labels (e.g. "1" / "2"), exactly as the rating labels are read. In
one order:

    p_first = P(label_first) / (P(label_first) + P(label_second))
    mass    = P(label_first) + P(label_second)     (how much it answered on the labels at all)

Small labelers favour a position, so by default both orders are read and averaged:

    ab  = P(A better)  with A shown first   = p_first  of order (A, B)
    ba  = P(A better)  with A shown second  = p_second of order (B, A)
    p_a = (ab + ba) / 2

Swapping A and B turns ab into 1 - ba and ba into 1 - ab, so p_a becomes 1 - p_a.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OrderRead:
    """The labeler's answer for one order of the two responses."""

    p_first: float     # probability that the response shown first is better
    p_second: float    # 1 - p_first, computed on its own so no precision is lost
    label_mass: float  # probability on the two labels before renormalising


@dataclass(frozen=True)
class Preference:
    p_a: float                # P(A better): the mean of both orders, or ab alone
    ab: float                 # P(A better) with A shown first
    ba: float | None          # P(A better) with A shown second; None when only one order was read
    consistent: bool | None   # both orders prefer the same response; None with one order


def read_order(label_logprobs: Sequence[float]) -> OrderRead:
    """Renormalise the (first, second) label log-probabilities of one order."""
    logp = np.asarray(label_logprobs, dtype=np.float64)
    if logp.shape != (2,):
        raise ValueError(f"expected 2 label log-probabilities, got shape {logp.shape}")
    if np.isnan(logp).any() or (logp > 1e-6).any():
        raise ValueError(f"label log-probabilities must be <= 0 and not NaN, got {logp.tolist()}")
    if not np.isfinite(logp).any():
        raise ValueError("both labels have zero probability")
    top = logp.max()
    weights = np.exp(logp - top)
    total = weights.sum()
    return OrderRead(p_first=float(weights[0] / total), p_second=float(weights[1] / total),
                     label_mass=float(min(np.exp(top) * total, 1.0)))


def combine_orders(ab: OrderRead, ba: OrderRead | None) -> Preference:
    """P(A better) from the order (A, B) and, when debiasing, the order (B, A)."""
    if ba is None:
        return Preference(p_a=ab.p_first, ab=ab.p_first, ba=None, consistent=None)
    p_ab, p_ba = ab.p_first, ba.p_second
    consistent = (p_ab > 0.5 and p_ba > 0.5) or (p_ab < 0.5 and p_ba < 0.5)
    return Preference(p_a=0.5 * (p_ab + p_ba), ab=p_ab, ba=p_ba, consistent=consistent)


def mean_order(samples: Sequence[OrderRead]) -> OrderRead:
    """One order read after several rationales: the mean of their renormalised probabilities
    and of their label masses (one sample is returned as it is)."""
    if not samples:
        raise ValueError("mean_order needs at least one sample")
    if len(samples) == 1:
        return samples[0]
    return OrderRead(p_first=float(np.mean([s.p_first for s in samples])),
                     p_second=float(np.mean([s.p_second for s in samples])),
                     label_mass=float(np.mean([s.label_mass for s in samples])))
