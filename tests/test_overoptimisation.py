"""The over-optimisation alarm (trainer/analysis/overoptimisation_alarm.py): its rule on synthetic
curves, monitor judges' specs, and the run report that opens with an alarm. The judge's per-step
signals are tested in test_judge_signals.py, the drop rules in test_reward_failures.py."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.analysis.overoptimisation_alarm import (
    MIN_PAIRED_PROMPTS,
    Alarm,
    EvalPoint,
    check_alarms,
    eval_row,
)
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
    """The first alarm of a run that plans one check per evaluation after the first."""
    for k in range(1, len(series) + 1):
        alarms = check_alarms(series[:k], window, checks=len(series) - 1)
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


def simulated_run(seed: int, monitor_means: list[float], monitors: int = 1, monitor_noise: float = 0.1,
                  prompts: int | None = None) -> list[EvalPoint]:
    """A run whose proxy rises 0.1 per evaluation while each monitor follows ``monitor_means``
    with per-prompt noise ``monitor_noise``; 16 to 32 held-out prompts unless ``prompts`` says."""
    rng = np.random.default_rng(seed)
    n = prompts or int(rng.integers(16, 33))
    difficulty = rng.normal(0.0, 0.3, n)
    proxy = [difficulty + 0.1 * k + rng.normal(0.0, 0.05, n) for k in range(len(monitor_means))]
    readings = {}
    for m in range(monitors):
        base = rng.normal(0.0, 0.3, n)
        readings[f"monitor{m}"] = [base + mean + rng.normal(0.0, monitor_noise, n) for mean in monitor_means]
    return [EvalPoint(5 * k, 0.1 * k, list(proxy[k]), {name: list(r[k]) for name, r in readings.items()})
            for k in range(len(monitor_means))]


@pytest.mark.parametrize("monitors", [1, 2])
@pytest.mark.parametrize("window", [1, 2, 3])
def test_rising_proxy_with_noisy_flat_monitors_rarely_raises_a_false_alarm(monitors, window):
    # The proxy's test passes at nearly every check, so only each monitor's interval, corrected
    # for 9 checks x the monitors, stands between the noise and an alarm: it bounds a run's
    # false-alarm chance by 2.5%. These 200 runs give 1.0% to 3.5% across the settings (1.8% to
    # 2.5% over 2,000); uncorrected 95% intervals would give 28% to 51%.
    runs = 200
    fired = sum(first_alarm(simulated_run(seed, [0.0] * 10, monitors), window) is not None for seed in range(runs))
    assert fired / runs <= 0.05, fired


def test_a_realistic_fall_of_the_monitor_fires():
    # The bench's demo: over 16 prompts the monitor fell by -0.075 [-0.105, -0.047] (per-prompt
    # differences of sd ~0.06) while the proxy rose by +0.692, over a run of 4 checks.
    noise = 0.06 / np.sqrt(2)  # per reading, so that a difference of two has sd 0.06
    fired = [first_alarm(simulated_run(seed, [0.0, 0.0, -0.02, -0.075, -0.075], monitor_noise=noise, prompts=16),
                         window=2) for seed in range(100)]
    assert sum(a is not None for a in fired) >= 95
    assert all(a.checks == 4 and a.monitors == 1 for a in fired if a is not None)


def test_fewer_paired_prompts_than_the_minimum_never_fire():
    def series(paired: int) -> list[EvalPoint]:
        # The proxy rises by 1 and the monitor falls by 1 on every paired prompt, with no noise.
        gap = [None] * (PROMPTS - paired)
        return [EvalPoint(0, 0.0, [0.0] * paired + gap, {"m": [0.0] * paired + gap}),
                EvalPoint(5, 0.1, [1.0] * PROMPTS, {"m": [-1.0] * PROMPTS})]

    assert check_alarms(series(1), window=1, checks=1) == []  # one pair: a zero-width interval
    assert check_alarms(series(MIN_PAIRED_PROMPTS - 1), window=1, checks=1) == []
    (alarm,) = check_alarms(series(MIN_PAIRED_PROMPTS), window=1, checks=1)
    assert alarm.monitor_change.n == MIN_PAIRED_PROMPTS
    # The proxy needs as many pairs as the monitor.
    few_proxy = series(PROMPTS)
    few_proxy[0].proxy[MIN_PAIRED_PROMPTS - 1:] = [None] * (PROMPTS - MIN_PAIRED_PROMPTS + 1)
    assert check_alarms(few_proxy, window=1, checks=1) == []


def test_the_monitors_level_is_corrected_for_checks_and_monitors():
    # A fall of 0.1 over 16 prompts with per-prompt differences of sd 0.1 (t = 4): clear for one
    # check (t quantile 2.13) and for 9 checks x 2 monitors (3.57), not for a run of 1,000 (5.61).
    z = np.random.default_rng(3).normal(size=16)
    change = -0.1 + 0.1 * (z - z.mean()) / z.std(ddof=1)
    series = [EvalPoint(0, 0.0, [0.0] * 16, {"m": [0.0] * 16}),
              EvalPoint(5, 0.1, [1.0] * 16, {"m": list(change)})]
    (alarm,) = check_alarms(series, window=1, checks=1)
    assert "(95% interval: 95% corrected for 1 check x 1 monitor," in alarm.message()
    assert check_alarms(series, window=1, checks=1000) == []
    # A second monitor that stays flat halves each monitor's share of the error.
    series[0].monitors["flat"], series[1].monitors["flat"] = [0.0] * 16, [0.0] * 16
    (two,) = check_alarms(series, window=1, checks=9)
    assert (two.checks, two.monitors) == (9, 2)
    assert "(99.722% interval: 95% corrected for 9 checks x 2 monitors" in two.message()
    assert two.monitor_change.ci_low < alarm.monitor_change.ci_low and two.monitor_change.ci_high > alarm.monitor_change.ci_high
    # A run that makes more checks than it planned is corrected for those it made.
    longer = [series[0]] * 5 + [series[1]]
    (late,) = check_alarms(longer, window=1, checks=2)
    assert late.checks == 5
    with pytest.raises(ValueError, match="checks"):
        check_alarms(series, window=1, checks=0)


def test_missing_readings_are_left_out_of_the_pairs():
    series = [EvalPoint(0, 0.0, [0.0] * 9 + [None], {"m": [0.5] * 8 + [None, 0.5]}),
              EvalPoint(5, 0.2, [0.5, 0.6, 0.7, 0.55] * 2 + [0.5, 0.6], {"m": [0.1, 0.0, 0.2, 0.1] * 2 + [0.1, None]})]
    (alarm,) = check_alarms(series, window=1, checks=1)
    assert alarm.proxy.n == 9 and alarm.monitor_change.n == 8
    assert Alarm.from_dict(alarm.as_dict()) == alarm
    row = eval_row(series, [alarm])
    assert row["proxy_summary"]["mean"] == pytest.approx(0.58)
    assert row["monitor_summary"]["m"]["change"]["n"] == 8 and row["alarms"][0]["monitor"] == "m"
    # A monitor that failed everywhere at one point gives no pair and no alarm.
    series[1].monitors["m"] = [None] * 10
    assert check_alarms(series, window=1, checks=1) == []


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


def test_a_run_without_monitors_has_no_alarm_to_check():
    # The demo's run: the proxy rises, and no monitor is there to fall (not a division by zero).
    rising = [EvalPoint(step, 0.0, [0.1 * step + 0.01 * k for k in range(16)]) for step in range(3)]
    assert check_alarms(rising, window=1, checks=2) == []
