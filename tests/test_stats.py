"""drlaif/stats.py: Wilson intervals, win rates with ties counted one half, summaries, and the
paired bootstrap and Student-t interval of a gain."""

from __future__ import annotations

import pytest

from drlaif.stats import (
    Z95,
    outcome,
    paired_bootstrap,
    paired_t_interval,
    proportion,
    summarize,
    t_quantile,
    wilson_interval,
)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    low, high = wilson_interval(250, 500)
    assert low == pytest.approx(0.5 - 0.0437, abs=1e-3) and high == pytest.approx(0.5 + 0.0437, abs=1e-3)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


def test_ties_count_one_half():
    assert [outcome(m) for m in (0.3, 0.0, -1e-9)] == [1.0, 0.5, 0.0]
    result = proportion([1.0, 1.0, 0.5, 0.0])
    assert (result.n, result.wins, result.ties, result.losses) == (4, 2, 1, 1)
    assert result.rate == 0.625
    assert (result.ci_low, result.ci_high) == wilson_interval(2.5, 4)
    assert result.ci_low < result.rate < result.ci_high
    assert str(result).startswith("0.625 [")
    with pytest.raises(ValueError):
        proportion([0.3])
    with pytest.raises(ValueError):
        outcome(float("nan"))


def test_summarize():
    s = summarize([0.2, 0.4, 0.6, 0.8, 1.0])
    assert s["mean"] == pytest.approx(0.6) and s["min"] == 0.2 and s["max"] == 1.0 and s["median"] == 0.6
    with pytest.raises(ValueError):
        summarize([])


def test_paired_bootstrap_interval_covers_a_clear_gain_and_excludes_zero():
    before = [0.1 * i for i in range(20)]
    after = [b + 0.2 + (0.01 if i % 2 else -0.01) for i, b in enumerate(before)]
    gain = paired_bootstrap(before, after)
    assert gain.mean == pytest.approx(0.2)
    assert 0.19 <= gain.ci_low < 0.2 < gain.ci_high <= 0.21
    assert gain.significant


def test_paired_bootstrap_of_noise_includes_zero():
    before = [0.0] * 10
    after = [0.1, -0.1] * 5
    gain = paired_bootstrap(before, after)
    assert gain.ci_low < 0 < gain.ci_high and not gain.significant


def test_paired_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([0.0, 1.0], [0.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 10, 2.2281), (0.975, 30, 2.0423),
    (0.995, 15, 2.9467), (0.999, 3, 10.2145), (0.999, 7, 4.7853), (0.9995, 5, 6.8688), (0.6, 3, 0.2767),
])
def test_t_quantile_known_values(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-4)


def test_t_quantile_tends_to_the_normal_and_rejects_nonsense():
    assert t_quantile(0.975, 100_000) == pytest.approx(Z95, abs=1e-4)
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-12)
    for p, df in [(0.0, 5), (1.0, 5), (0.9, 0)]:
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_paired_t_interval():
    gain = paired_t_interval([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    # mean 2, sd 1, so the half-width is t(0.975, 2) / sqrt(3)
    assert (gain.n, gain.mean) == (3, 2.0)
    assert gain.ci_low == pytest.approx(2 - 4.302653 / 3**0.5) and gain.ci_high == pytest.approx(2 + 4.302653 / 3**0.5)
    wider = paired_t_interval([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], confidence=0.999)
    assert wider.ci_low < gain.ci_low and wider.ci_high > gain.ci_high
    # Equal differences leave no spread: the interval is the mean.
    same = paired_t_interval([0.0, 1.0], [0.5, 1.5])
    assert (same.ci_low, same.ci_high) == (0.5, 0.5) and same.significant
    with pytest.raises(ValueError, match="length"):
        paired_t_interval([0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="two items"):
        paired_t_interval([0.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_t_interval([0.0, 1.0], [1.0, 1.0], confidence=1.0)
