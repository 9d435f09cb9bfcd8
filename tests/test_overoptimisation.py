"""The over-optimisation alarm (trainer/analysis/overoptimisation_alarm.py): its rule on synthetic
curves, monitor judges' specs, and the run report that opens with an alarm. The judge's per-step
signals are tested in test_judge_signals.py, the drop rules in test_reward_failures.py."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.analysis.overoptimisation_alarm import Alarm, EvalPoint, MonitorSpec, check_alarms, eval_row
from trainer.analysis.run_report import build_report, length_warnings, render_markdown

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
