"""Group-relative pairwise rewards: the responses to one prompt judged against each other.

A group of n responses is judged on a fixed set of unordered pairs (:func:`pair_schedule`):
every pair when k >= n - 1, else each response meets its m = ceil(k/2) neighbours on either
side of a circle of the group (2m opponents each). Each pair (i, j) is one debiased /compare
read, q_ij = P(i better) averaged over both orders, and q_ji = 1 - q_ij exactly. Then

    w_i = (1/|O_i|) sum_{j in O_i} q_ij        mean win probability over i's opponents O_i
    r_i = 2 * w_i - 1                          reward, in [-1, 1]

The mean win probability (a soft Borda count) rather than Bradley-Terry strengths: it is a
linear, closed-form function of the exact pair probabilities (auditable, no fit that can fail
to converge on near-certain outcomes), it is what a group-relative trainer (GRPO, RLOO) needs,
a ranking inside the group, and on a full round robin it orders responses as their
Bradley-Terry strengths do whenever the outcomes are consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def pair_schedule(n: int, k: int | None = None) -> list[tuple[int, int]]:
    """The unordered pairs (i < j) a group of ``n`` responses is judged on, each once.

    ``k``: opponents per response; None (or k >= n - 1) for every pair. Otherwise each
    response meets the m = ceil(k/2) next and m previous members of the group taken as a
    circle, so cost is n * m pairs (two reads each, one per order) instead of n(n-1)/2.
    """
    if n < 2:
        return []
    if k is not None and k < 1:
        raise ValueError(f"a response needs at least 1 opponent, got k={k}")
    if k is None or k >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    m = (k + 1) // 2
    return sorted({(min(i, (i + d) % n), max(i, (i + d) % n)) for i in range(n) for d in range(1, m + 1)})


@dataclass(frozen=True)
class GroupReward:
    """One response's reward from its pairs: ``win_rate`` is w_i, ``reward`` 2 w_i - 1."""

    reward: float
    win_rate: float
    opponents: int


def group_rewards(n: int, pairs: Sequence[tuple[int, int]], p_first: Sequence[float]) -> list[GroupReward]:
    """Each response's reward, from ``p_first[t]`` = P(i better) of ``pairs[t]`` = (i, j)."""
    if len(pairs) != len(p_first):
        raise ValueError(f"{len(pairs)} pairs but {len(p_first)} probabilities")
    wins: list[list[float]] = [[] for _ in range(n)]
    for (i, j), p in zip(pairs, p_first, strict=True):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"P(better) of pair ({i}, {j}) is {p}, outside [0, 1]")
        wins[i].append(p)
        wins[j].append(1.0 - p)
    out = []
    for i, w in enumerate(wins):
        if not w:
            raise ValueError(f"response {i} of the group meets no opponent")
        rate = sum(w) / len(w)
        out.append(GroupReward(reward=min(max(2.0 * rate - 1.0, -1.0), 1.0), win_rate=rate, opponents=len(w)))
    return out
