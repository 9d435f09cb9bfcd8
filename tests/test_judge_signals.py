"""trainer/analysis/judge_signals.py: the judge's per-step signals (label entropy and mass, the
within-group length-reward correlation) and length control."""

from __future__ import annotations

import numpy as np
import pytest
from support import item_score

from trainer.analysis.judge_signals import (
    consecutive_groups,
    groups_by_key,
    label_metrics,
    length_controlled,
    length_reward_corr,
)


def test_label_metrics_are_the_batchs_entropy_and_mass():
    items = [item_score(0.0, label_entropy=0.0, label_mass=0.5), item_score(0.0, label_entropy=2.0, label_mass=1.0)]
    assert label_metrics(items) == pytest.approx({"label_entropy": 1.0, "label_mass": 0.75, "label_mass_min": 0.5})
    assert label_metrics([]) == {}


def test_length_reward_corr_is_within_groups():
    # Across groups length and reward move together (an easy prompt: short and high); inside
    # each group the longer answer scores lower. The within-group correlation sees the latter.
    lengths = [10, 12, 50, 52]
    rewards = [0.9, 0.8, -0.5, -0.6]
    groups = consecutive_groups(4, 2)
    assert groups == [0, 0, 1, 1]
    assert length_reward_corr(lengths, rewards, groups) == pytest.approx(-1.0)
    assert np.corrcoef(lengths, rewards)[0, 1] < -0.9  # the pooled one mixes in the prompts
    assert length_reward_corr([5, 5, 7, 7], [0.1, 0.2, 0.3, 0.4], groups) is None  # no length variation
    # One response per prompt: the batch is one group.
    assert length_reward_corr([1, 2, 3], [0.1, 0.2, 0.3], [0, 1, 2]) == pytest.approx(1.0)
    assert groups_by_key(["a", "b", "a"]) == [0, 1, 0]


def test_length_control_removes_the_within_group_length_trend():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, 32).astype(float)
    groups = consecutive_groups(32, 4)
    quality = rng.normal(0, 0.1, 32)
    rewards = 0.01 * lengths + quality + np.repeat(rng.normal(0, 0.3, 8), 4)
    assert length_reward_corr(lengths, rewards, groups) > 0.8
    controlled = length_controlled(list(rewards), list(lengths), groups)
    assert abs(length_reward_corr(lengths, controlled, groups)) < 1e-9
    # Each group keeps its mean reward; only the spread along length inside it goes.
    assert np.allclose(np.reshape(controlled, (8, 4)).mean(1), np.reshape(rewards, (8, 4)).mean(1))
    assert length_controlled([0.1, 0.2], [3, 3], [0, 0]) == [0.1, 0.2]  # nothing to fit
