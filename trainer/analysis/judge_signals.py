"""Per-step signals of the judge's state and of one classic bias, for every trainer's metrics rows.

- ``label_entropy`` and ``label_mass``: how unsure the labeler is (the server's entropy of its
  renormalised label distribution, in nats; ln 10 = 2.303 is an even spread over ten labels)
  and how much of its probability went to the scale at all. A judge growing unsure on the policy's answers is
  the first sign that the policy has left the ground the judge knows.
- ``length_reward_corr``: the correlation between response length and reward *inside groups*
  (responses to the same prompt), so that the prompt's difficulty, which moves both, drops
  out. LLM judges favour longer answers; a policy that learns this climbs the reward by
  writing more. With one response per prompt the batch is one group.
- :func:`length_controlled`: an optional reward with that length trend taken out.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from drlaif.protocol import ItemAnswer


def label_metrics(items: Sequence[ItemAnswer]) -> dict[str, float]:
    """Mean label entropy, mean and minimum label mass of a scored batch, each over the items
    that carry it (a server other than drlaif's may not) and left out when none does."""
    entropies = [i.label_entropy for i in items if i.label_entropy is not None]
    masses = [i.label_mass for i in items if i.label_mass is not None]
    metrics = {"label_entropy": float(np.mean(entropies))} if entropies else {}
    if masses:
        metrics.update(label_mass=float(np.mean(masses)), label_mass_min=float(min(masses)))
    return metrics


def consecutive_groups(n: int, group_size: int) -> list[int]:
    """Group id of each of ``n`` items laid out ``group_size`` at a time (PPO's batches)."""
    return [i // max(1, group_size) for i in range(n)]


def groups_by_key(keys: Sequence[Hashable]) -> list[int]:
    """Group id of each item: items with equal keys (e.g. the same prompt) share one."""
    ids: dict[Hashable, int] = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


def _within(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each value minus its group's mean."""
    out = values.astype(np.float64).copy()
    for g in np.unique(groups):
        rows = groups == g
        out[rows] -= out[rows].mean()
    return out


def length_reward_corr(lengths: Sequence[float], rewards: Sequence[float], groups: Sequence[int]) -> float | None:
    """Pearson correlation of length and reward after removing each group's means (the pooled
    within-group correlation). None when it is undefined: no group with two different lengths
    and two different rewards. When every group has one member, the whole batch is one group."""
    length, reward, group = np.asarray(lengths, float), np.asarray(rewards, float), np.asarray(groups)
    if len(length) < 2:
        return None
    if len(np.unique(group)) == len(group):
        group = np.zeros(len(group), dtype=int)
    dl, dr = _within(length, group), _within(reward, group)
    denom = math.sqrt(float((dl ** 2).sum()) * float((dr ** 2).sum()))
    if denom < 1e-12:
        return None
    return float((dl * dr).sum() / denom)


def length_controlled(rewards: Sequence[float], lengths: Sequence[float], groups: Sequence[int]) -> list[float]:
    """Rewards with the within-group length trend removed: r - slope * (length - group mean length).

    ``slope`` is the least-squares slope of reward on length fitted on within-group deviations
    (one slope for the batch, every group its own intercept). Every group keeps its mean
    reward, and inside a group the result is the group mean plus the residual of that fit,
    so a group-relative advantage sees only the residual: how a response did against its
    siblings beyond what its length predicts. When every group has one member, the batch is
    one group. Undefined fits (no length variation) leave the rewards as they are.
    """
    reward, length, group = np.asarray(rewards, float), np.asarray(lengths, float), np.asarray(groups)
    if len(np.unique(group)) == len(group):
        group = np.zeros(len(group), dtype=int)
    dl, dr = _within(length, group), _within(reward, group)
    ss = float((dl ** 2).sum())
    if ss < 1e-12:
        return [float(r) for r in reward]
    slope = float((dl * dr).sum()) / ss
    return [float(r) for r in reward - slope * dl]


def judge_text_metrics(items: Sequence[ItemAnswer], threshold: float) -> dict[str, float]:
    """How much of a batch talks to the judge, and how often that moved the labeler.

    ``judge_text_rate``: share of responses with text addressed to the judge. ``reward_disagreement``:
    share whose reward as written and robust reward differ by more than ``threshold``;
    ``reward_robust_gap``: the mean of (as written - robust), positive when such text lifts the read.
    Each is over the items that carry its fields (a server other than drlaif's may send none of
    them), and left out when none does, as for an empty batch.
    """
    spans = [i.judge_spans for i in items if i.judge_spans is not None]
    pairs = [(i.reward_as_written, i.reward_robust) for i in items
             if i.reward_as_written is not None and i.reward_robust is not None]
    metrics = {"judge_text_rate": sum(n > 0 for n in spans) / len(spans)} if spans else {}
    if pairs:
        metrics["reward_disagreement"] = sum(abs(a - r) > threshold for a, r in pairs) / len(pairs)
        metrics["reward_robust_gap"] = float(np.mean([a - r for a, r in pairs]))
    return metrics
