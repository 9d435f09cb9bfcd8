"""Unit tests for server/scoring/reward.py: the scale, the renormalised expectation and
the reward map, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.scoring import Scale, ScoreResult, expected_score

NEG_INF = -math.inf


def logs(probs):
    """Log-probabilities with exact -inf for zeros."""
    return [math.log(p) if p > 0 else NEG_INF for p in probs]


# --------------------------------------------------------------------------- Scale


def test_default_scale_is_one_to_ten():
    scale = Scale()
    assert (scale.lo, scale.hi) == (1, 10)
    assert scale.values == tuple(range(1, 11))
    assert scale.labels == ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10")


def test_zero_based_scale_labels():
    assert Scale(0, 4).labels == ("0", "1", "2", "3", "4")
    assert Scale(0, 4).values == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(("lo", "hi"), [(5, 5), (5, 4), (10, 1), (-1, 3)])
def test_invalid_scales_are_rejected(lo, hi):
    with pytest.raises(ValueError, match=rf"0 <= lo < hi, got {lo}\.\.{hi}"):
        Scale(lo, hi)


@pytest.mark.parametrize(
    ("scale", "score", "reward"),
    [
        (Scale(1, 10), 1.0, -1.0),
        (Scale(1, 10), 10.0, 1.0),
        (Scale(1, 10), 5.5, 0.0),
        (Scale(1, 10), 7.0, (7.0 - 5.5) / 4.5),
        (Scale(1, 5), 3.0, 0.0),
        (Scale(1, 5), 2.0, -0.5),
        (Scale(0, 4), 1.0, -0.5),
        (Scale(0, 1), 0.25, -0.5),
    ],
)
def test_to_reward_is_linear_onto_minus_one_one(scale, score, reward):
    assert scale.to_reward(score) == pytest.approx(reward, abs=1e-15)


def test_default_reward_formula():
    for s in np.linspace(1, 10, 37):
        assert Scale().to_reward(float(s)) == pytest.approx((s - 5.5) / 4.5, abs=1e-12)


# --------------------------------------------------------------------------- expected_score by hand


def test_hand_computed_one_to_five():
    # Unnormalised probabilities: 0.1, 0.2, 0.1, 0, 0.1 -> mass 0.5
    result = expected_score(logs([0.1, 0.2, 0.1, 0.0, 0.1]), Scale(1, 5))
    assert isinstance(result, ScoreResult)
    assert result.distribution == pytest.approx((0.2, 0.4, 0.2, 0.0, 0.2), rel=1e-12)
    assert result.distribution[3] == 0.0
    assert sum(result.distribution) == pytest.approx(1.0, abs=1e-15)
    # 1*.2 + 2*.4 + 3*.2 + 4*0 + 5*.2 = 2.6
    assert result.score == pytest.approx(2.6, rel=1e-12)
    assert result.reward == pytest.approx(2 * (2.6 - 1) / 4 - 1, rel=1e-12)  # -0.2
    assert result.label_mass == pytest.approx(0.5, rel=1e-12)


def test_hand_computed_zero_to_four():
    # Same distribution on 0..4: the score shifts by one, the reward does not.
    result = expected_score(logs([0.1, 0.2, 0.1, 0.0, 0.1]), Scale(0, 4))
    assert result.score == pytest.approx(1.6, rel=1e-12)  # 0*.2 + 1*.4 + 2*.2 + 4*.2
    assert result.reward == pytest.approx(2 * 1.6 / 4 - 1, rel=1e-12)  # -0.2
    assert result.label_mass == pytest.approx(0.5)


def test_hand_computed_one_to_ten():
    probs = [0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.2, 0.0]  # mass 0.8, on 6..9
    result = expected_score(logs(probs), Scale(1, 10))
    # p = (.125, .25, .375, .25) on 6, 7, 8, 9: s = .75 + 1.75 + 3 + 2.25 = 7.75
    assert result.distribution == pytest.approx((0, 0, 0, 0, 0, 0.125, 0.25, 0.375, 0.25, 0))
    assert result.score == pytest.approx(7.75)
    assert result.reward == pytest.approx((7.75 - 5.5) / 4.5)  # 0.5
    assert result.reward == pytest.approx(0.5)
    assert result.label_mass == pytest.approx(0.8)


def test_uniform_distribution_scores_the_midpoint():
    result = expected_score([math.log(0.01)] * 10, Scale(1, 10))
    assert result.score == pytest.approx(5.5)
    assert result.reward == pytest.approx(0.0, abs=1e-12)
    assert result.distribution == pytest.approx([0.1] * 10)
    assert result.label_mass == pytest.approx(0.1)


def test_only_relative_probabilities_matter_for_score():
    a = expected_score(logs([0.4, 0.3, 0.2, 0.1, 0.0]), Scale(1, 5))
    b = expected_score(logs([0.04, 0.03, 0.02, 0.01, 0.0]), Scale(1, 5))
    assert a.score == pytest.approx(b.score) and a.reward == pytest.approx(b.reward)
    assert a.label_mass == pytest.approx(1.0) and b.label_mass == pytest.approx(0.1)


def test_very_small_log_probabilities_do_not_underflow():
    # exp(-1000) is 0.0 in float64; the renormalisation must still work.
    result = expected_score([-1000.0, -1000.0 - math.log(3)], Scale(0, 1))
    assert result.distribution == pytest.approx((0.75, 0.25))
    assert result.score == pytest.approx(0.25)
    assert result.label_mass == 0.0


def test_label_mass_is_capped_at_one():
    # Inconsistent backend numbers (sum > 1) must not report more than all the mass.
    result = expected_score([0.0, 0.0], Scale(0, 1))
    assert result.label_mass == 1.0
    assert result.score == pytest.approx(0.5)


# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize("scale", [Scale(1, 10), Scale(1, 5), Scale(0, 4), Scale(0, 1)])
def test_all_mass_on_lowest_label_gives_exactly_minus_one(scale):
    n = len(scale.values)
    result = expected_score([0.0] + [NEG_INF] * (n - 1), scale)
    assert result.score == float(scale.lo)
    assert result.reward == -1.0
    assert result.distribution == (1.0,) + (0.0,) * (n - 1)
    assert result.label_mass == 1.0


@pytest.mark.parametrize("scale", [Scale(1, 10), Scale(1, 5), Scale(0, 4), Scale(0, 1)])
def test_all_mass_on_highest_label_gives_exactly_plus_one(scale):
    n = len(scale.values)
    result = expected_score([NEG_INF] * (n - 1) + [math.log(0.3)], scale)
    assert result.score == float(scale.hi)
    assert result.reward == 1.0
    assert result.label_mass == pytest.approx(0.3)


def test_reward_and_score_stay_in_range_with_tiny_other_mass():
    for logp in ([0.0] + [-800.0] * 9, [-800.0] * 9 + [0.0]):
        result = expected_score(logp, Scale(1, 10))
        assert 1.0 <= result.score <= 10.0
        assert -1.0 <= result.reward <= 1.0


def test_random_distributions_stay_in_range_and_match_numpy():
    rng = np.random.default_rng(1)
    scale = Scale(1, 10)
    values = np.arange(1, 11)
    for _ in range(50):
        p = rng.dirichlet(np.full(10, 0.3)) * rng.uniform(0.05, 1.0)
        result = expected_score(np.log(p), scale)
        assert result.label_mass == pytest.approx(p.sum())
        assert result.score == pytest.approx(float(values @ (p / p.sum())))
        assert result.reward == pytest.approx((result.score - 5.5) / 4.5)
        assert sum(result.distribution) == pytest.approx(1.0)
        assert 1.0 <= result.score <= 10.0 and -1.0 <= result.reward <= 1.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("n", [0, 9, 11])
def test_wrong_number_of_log_probabilities(n):
    with pytest.raises(ValueError, match=rf"expected 10 label log-probabilities, got \({n},\)"):
        expected_score([math.log(0.1)] * n, Scale(1, 10))


def test_two_dimensional_input_is_rejected():
    with pytest.raises(ValueError, match="expected 5 label log-probabilities"):
        expected_score([[0.0] * 5], Scale(1, 5))


def test_all_zero_probabilities_are_rejected():
    with pytest.raises(ValueError, match="every label has zero probability"):
        expected_score([NEG_INF] * 10, Scale(1, 10))
