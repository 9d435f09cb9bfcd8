"""The training-run report: paired gain with its interval, gaming indicators, Markdown."""

from __future__ import annotations

import json

import pytest

from trainer.analysis.run_report import (
    Indicators,
    build_report,
    is_rating_like,
    render_terminal,
    write_report,
)


@pytest.mark.parametrize("text", ["Paris.\n\nRating: 10", "I'd give this a score of 9", "10/10, great answer",
                                  "This is 9 out of 10.", "rated 10"])
def test_rating_like_text_is_detected(text):
    assert is_rating_like(text)


@pytest.mark.parametrize("text", ["Paris is the capital of France.", "Boil it for 10 minutes.",
                                  "There are 10 of them.", ""])
def test_ordinary_answers_are_not_rating_like(text):
    assert not is_rating_like(text)


def test_indicators_count_shares():
    ind = Indicators.of(["ok", "", "Rating: 10", "fine"])
    assert (ind.n, ind.rating_like, ind.empty) == (4, 0.25, 0.25)
    assert Indicators.of([]).n == 0


def _evaluation(rewards, responses):
    return {"reward_mean": sum(rewards) / len(rewards), "n": len(rewards),
            "examples": [{"prompt": f"q{i}", "response": r, "reward": x}
                         for i, (r, x) in enumerate(zip(responses, rewards, strict=True))]}


def test_report_flags_a_gain_that_comes_from_rating_text(tmp_path):
    n = 10
    summary = {"before": _evaluation([0.0] * n, ["An answer."] * n),
               "after": _evaluation([0.5] * n, ["An answer. Rating: 10"] * n)}
    rollouts = [{"step": s, "prompt": "q", "response": "Rating: 10" if s > 15 else "An answer.", "reward": 0.0}
                for s in range(1, 21) for _ in range(2)]
    (tmp_path / "rollouts.jsonl").write_text("\n".join(json.dumps(r) for r in rollouts))
    path, report = write_report(tmp_path, summary)
    assert report.gain.mean == pytest.approx(0.5) and report.gain.significant
    assert report.rollouts[0].rating_like == 0.0 and report.rollouts[1].rating_like == 1.0
    assert report.held_out[1].rating_like == 1.0
    assert any("rating-like" in w for w in report.warnings)
    text = path.read_text()
    assert "| +0.000 | +0.500 | +0.500 |" in text and "**Warning:**" in text and "curves.png" in text
    assert "WARNING" in render_terminal(report)


def test_report_of_an_honest_gain_has_no_warning():
    summary = {"before": _evaluation([0.0, 0.1, 0.2], ["a", "b", "c"]),
               "after": _evaluation([0.3, 0.3, 0.4], ["aa", "bb", "cc"])}
    report = build_report(summary, [{"step": 1, "prompt": "q", "response": "fine", "reward": 0.1}])
    assert report.warnings == []
    assert report.examples[0][0] == "q0"  # the largest change first
    assert "not significant" not in render_terminal(report)


def _with_kl(evaluation, kls):
    for example, kl in zip(evaluation["examples"], kls, strict=True):
        example["kl"] = kl
    return evaluation


def test_the_held_out_kl_is_reported_against_the_budget_beside_the_gain():
    n = 12
    summary = {"before": _with_kl(_evaluation([0.0] * n, ["a"] * n), [0.0] * n),
               "after": _with_kl(_evaluation([-0.01, 0.01] * (n // 2), ["b"] * n), [3.0, 5.0] * (n // 2)),
               "kl_budget": 6.0}
    report = build_report(summary, [])
    assert report.kl.mean == pytest.approx(4.0) and 3.0 <= report.kl.ci_low <= 4.0 <= report.kl.ci_high <= 5.0
    assert report.as_dict()["kl_budget"] == 6.0
    text = render_terminal(report)
    assert "held-out KL to the reference: 4.00 nats per response" in text
    assert "within the KL budget of 6" in text
    # The gain (0 on average) is not outside its interval: said plainly.
    assert not report.gain.significant
    assert "this run did not show that the policy improved" in text

    summary["kl_budget"] = 2.0
    summary["after"] = _with_kl(_evaluation([0.5] * n, ["b"] * n), [3.0, 5.0] * (n // 2))
    text = render_terminal(build_report(summary, []))
    assert "OVER the KL budget of 2" in text and "did not show" not in text


def test_a_report_without_per_prompt_kl_says_nothing_of_it():
    summary = {"before": _evaluation([0.0, 0.1], ["a", "b"]), "after": _evaluation([0.2, 0.3], ["a", "b"])}
    report = build_report(summary, [])
    assert report.kl is None and "KL" not in render_terminal(report)
