"""The over-optimisation alarm rule on synthetic curves, the judge's per-step signals
(label entropy, within-group length-reward correlation, length control) and the drop rules."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import torch
from items import item_score

from drlaif.client import RewardClientConfig, RewardServerError
from drlaif.reward_failures import TooManyDropped, check_dropped, score_items_or_drop
from trainer.judge_signals import (
    consecutive_groups,
    groups_by_key,
    label_metrics,
    length_controlled,
    length_reward_corr,
)
from trainer.overoptimisation import Alarm, EvalPoint, MonitorSpec, check_alarms, eval_row
from trainer.ppo_math import leave_one_out_centred
from trainer.run_report import build_report, length_warnings, render_markdown

PROMPTS = 32


def curve(rng: np.random.Generator, means: list[float], prompt_spread: float = 0.3,
          noise: float = 0.05) -> list[list[float]]:
    """Per-prompt held-out rewards at each evaluation: a fixed difficulty per prompt plus noise."""
    difficulty = rng.normal(0.0, prompt_spread, PROMPTS)
    return [list(difficulty + m + rng.normal(0.0, noise, PROMPTS)) for m in means]


def points(proxy: list[list[float]], monitor: list[list[float]]) -> list[EvalPoint]:
    return [EvalPoint(5 * i, 0.1 * i, p, {"labeler": m}) for i, (p, m) in enumerate(zip(proxy, monitor, strict=True))]


def first_alarm(series: list[EvalPoint], window: int) -> Alarm | None:
    for k in range(1, len(series) + 1):
        alarms = check_alarms(series[:k], window)
        if alarms:
            return alarms[0]
    return None


def test_fires_when_the_proxy_rises_and_the_monitor_falls():
    rng = np.random.default_rng(0)
    # Gao et al.'s shape: the gold score rises a little, peaks, then falls as the proxy keeps climbing.
    proxy = curve(rng, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    monitor = curve(rng, [0.0, 0.03, 0.03, -0.05, -0.15, -0.25])
    alarm = first_alarm(points(proxy, monitor), window=2)
    assert alarm is not None and alarm.monitor == "labeler"
    # At step 15 the monitor is 0.08 below step 5 (2 evaluations back), far beyond its interval.
    assert alarm.step == 15 and alarm.since_step == 5
    assert alarm.proxy.ci_low > 0 and alarm.monitor_change.ci_high < 0
    assert "monitor labeler fell" in alarm.message()
    assert Alarm.from_dict(alarm.as_dict()) == alarm


def test_does_not_fire_when_both_rise_or_the_proxy_is_flat():
    rng = np.random.default_rng(1)
    both_rise = points(curve(rng, [0.0, 0.1, 0.2, 0.3]), curve(rng, [0.0, 0.05, 0.1, 0.15]))
    assert first_alarm(both_rise, window=2) is None
    # The monitor falls, but the proxy does not rise: a worse policy, not a gamed judge.
    flat_proxy = points(curve(rng, [0.0, 0.0, 0.0, 0.0]), curve(rng, [0.0, -0.1, -0.2, -0.3]))
    assert first_alarm(flat_proxy, window=2) is None


def test_noisy_flat_curves_almost_never_fire():
    fired = 0
    for seed in range(50):
        rng = np.random.default_rng(100 + seed)
        flat = [0.0] * 5
        if first_alarm(points(curve(rng, flat, noise=0.1), curve(rng, flat, noise=0.1)), window=2):
            fired += 1
    # Both intervals must exclude zero in opposite directions: ~0.025^2 per check if independent.
    assert fired <= 1, fired


def test_rising_proxy_with_a_noisy_flat_monitor_fires_rarely():
    fired = sum(first_alarm(points(curve(np.random.default_rng(s), [0.0, 0.1, 0.2, 0.3, 0.4]),
                                   curve(np.random.default_rng(10_000 + s), [0.0] * 5, noise=0.1)), window=2)
                is not None for s in range(50))
    # The monitor's interval excludes zero from below in 2.5% of checks by chance, and a run
    # makes four (correlated) checks: 6 of these 50 runs fire, the price of one-check alarms
    # that the documentation states.
    assert fired / 50 <= 0.15, fired


def test_missing_readings_are_left_out_of_the_pairs():
    series = [EvalPoint(0, 0.0, [0.0, 0.0, None, 0.1], {"m": [0.5, 0.5, 0.5, None]}),
              EvalPoint(5, 0.2, [0.5, 0.6, 0.7, 0.55], {"m": [0.1, 0.0, None, 0.2]})]
    (alarm,) = check_alarms(series, window=1)
    assert alarm.proxy.n == 3 and alarm.monitor_change.n == 2
    row = eval_row(series, [alarm])
    assert row["proxy_summary"]["mean"] == pytest.approx(0.5875)
    assert row["monitor_summary"]["m"]["change"]["n"] == 2 and row["alarms"][0]["monitor"] == "m"
    # A monitor that failed everywhere at one point gives no pair and no alarm.
    series[1].monitors["m"] = [None] * 4
    assert check_alarms(series, window=1) == []


def test_monitor_specs():
    spec = MonitorSpec.parse("http://judge:8001/#harmless")
    assert (spec.url, spec.rubric, spec.name) == ("http://judge:8001", "harmless", "judge:8001#harmless")
    assert MonitorSpec.parse("https://a.example").rubric is None
    with pytest.raises(ValueError):
        MonitorSpec.parse("judge:8001")


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


def test_leave_one_out_skips_dropped_samples():
    scores = torch.tensor([1.0, 0.0, 0.5, 0.9, 0.2, 0.4])
    kept = torch.tensor([True, True, False, True, False, False])
    centred = leave_one_out_centred(scores, 3, kept)
    # Group 1: the dropped 0.5 is in no baseline; group 2: 0.9 has no kept sibling.
    assert centred.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    assert leave_one_out_centred(scores, 3).tolist() == leave_one_out_centred(scores, 3, torch.ones(6) > 0).tolist()


def test_check_dropped():
    check_dropped(1, 10, 0.1)
    with pytest.raises(TooManyDropped, match=r"2 of 10 samples \(20%"):
        check_dropped(2, 10, 0.1)
    with pytest.raises(TooManyDropped):  # everything dropped stops whatever the cap
        check_dropped(4, 4, 1.0)
    assert issubclass(TooManyDropped, RewardServerError)  # so the trainers save and stop on it


class ItemRefusing:
    """A reward source whose batch call fails, and which cannot score responses containing 'x'."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def submit_score_items(self, prompts, responses, rubric=None):
        self.calls.append(list(responses))
        future: concurrent.futures.Future = concurrent.futures.Future()
        if any("x" in r for r in responses):
            future.set_exception(RewardServerError("no answer within the deadline"))
        else:
            future.set_result([f"item:{r}" for r in responses])
        return future


def test_with_group_pairwise_rewards_a_failed_batch_is_rescored_group_by_group():
    source = ItemRefusing()
    source.config = RewardClientConfig(urls=["http://127.0.0.1:1"], reward_mode="group-pairwise")
    prompts, responses = ["p", "q", "p", "q"], ["a", "x", "b", "c"]
    assert score_items_or_drop(source, prompts, responses) == ["item:a", None, "item:b", None]
    assert source.calls == [responses, ["a", "b"], ["x", "c"]]  # a group is judged whole or not at all


def test_score_items_or_drop_rescores_each_sample_and_drops_only_the_failures():
    source = ItemRefusing()
    assert score_items_or_drop(source, ["p"] * 3, ["a", "x", "b"]) == ["item:a", None, "item:b"]
    assert source.calls == [["a", "x", "b"], ["a"], ["x"], ["b"]]
    source = ItemRefusing()
    assert score_items_or_drop(source, ["p"] * 2, ["a", "b"]) == ["item:a", "item:b"]
    assert source.calls == [["a", "b"]]  # no failure, no second pass


def test_report_warns_on_a_climbing_length_correlation_and_opens_with_alarms():
    rising = [(s, c) for s, c in enumerate([0.0, 0.1, 0.0, 0.1, 0.0, 0.7, 0.8, 0.7, 0.9, 0.8], start=1)]
    (warning,) = length_warnings(rising)
    assert "0.78" in warning
    assert length_warnings([(s, 0.1) for s in range(1, 11)]) == []
    assert length_warnings([(s, None) for s in range(1, 11)]) == []
    alarm = first_alarm(points(curve(np.random.default_rng(0), [0.0, 0.3, 0.6]),
                               curve(np.random.default_rng(1), [0.0, -0.3, -0.6])), window=1)
    summary = {"alarms": [alarm.as_dict()], "evaluations": []}
    metrics = [{"step": s, "length_reward_corr": c} for s, c in rising]
    text = render_markdown(build_report(summary, [], metrics=metrics))
    lines = text.splitlines()
    assert lines[2].startswith("> **Over-optimisation alarm:** over-optimisation at step 5")
    assert "## Length and reward" in text and "+0.70" in text
    assert any(line.startswith("**Warning:** inside groups, reward correlates with response length") for line in lines)
