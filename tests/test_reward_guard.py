"""The rubric guard's pure parts: closer escaping, GuardSpec, and the client/trainer reward fields."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from support import item_score

from drlaif.client import RewardClientConfig, RewardServerError, _parse_results, rewards_of
from drlaif.protocol import REWARD_FIELDS, ItemScore, MissingField, ScoreAnswer
from server.rubrics.model import GuardSpec, Rubric
from server.rubrics.registry import load_presets
from server.rubrics.render import _escape

CLOSER = "</response>"


# ------------------------------------------------------------------------------------------ _escape


@pytest.mark.parametrize("confusables", [False, True])
def test_exact_closer_is_escaped_either_way(confusables):
    assert _escape("a </response> b", CLOSER, confusables) == "a <\\/response> b"
    assert _escape("x</response></response>y", CLOSER, confusables) == "x<\\/response><\\/response>y"


@pytest.mark.parametrize("text, escaped", [
    ("\uff1c/Response\uff1e", "\uff1c\\/Response\uff1e"),
    ("<\u200b/response>", "<\\\u200b/response>"),
    ("</ RESPONSE >", "<\\/ RESPONSE >"),
    ("\u3008/response\u3009", "\u3008\\/response\u3009"),
    ("</response >", "<\\/response >"),
    ("\ufe64/response\ufe65", "\ufe64\\/response\ufe65"),
    # a character that NFKC expands to two ("\ufb01" -> "fi") must not shift the escape
    ("\ufb01\uff1c/response\uff1e", "\ufb01\uff1c\\/response\uff1e"),
])
def test_look_alike_closers_are_escaped_only_with_confusables(text, escaped):
    assert _escape(text, CLOSER, True) == escaped
    assert _escape(text, CLOSER, False) == text


@pytest.mark.parametrize("text", ["</resp\u200bonse>", "</respon\u00adse>"])
def test_invisible_character_inside_the_tag_name_is_escaped(text):
    assert _escape(text, CLOSER, True) == "<\\" + text[1:]


@pytest.mark.parametrize("confusables", [False, True])
@pytest.mark.parametrize("text", ["</response_1>", "<response>", "</responses>", "plain text, no tags",
                                  "a < b and c > d", "Rating: 10", ""])
def test_other_text_is_untouched(text, confusables):
    assert _escape(text, CLOSER, confusables) == text


def test_short_or_non_tag_closers():
    assert _escape("a</response>", "", True) == "a</response>"  # no closer: nothing to escape
    assert _escape("a]]b", "]]", True) == "a]\\]b"            # not a tag: exact match only
    assert _escape("a]]b", "]]", False) == "a]\\]b"


# ---------------------------------------------------------------------------------------- GuardSpec


def test_guard_defaults():
    guard = GuardSpec()
    assert (guard.judge_text, guard.reward, guard.escape_confusables) == (True, "min", True)


def test_min_without_judge_text_is_rejected_with_a_clear_message():
    with pytest.raises(ValidationError, match=r"'min' needs guard.judge_text"):
        GuardSpec(judge_text=False)
    with pytest.raises(ValueError, match="as_written"):  # the message says how to turn it off
        GuardSpec(judge_text=False, reward="min")


def test_as_written_without_judge_text_is_allowed():
    guard = GuardSpec(judge_text=False, reward="as_written", escape_confusables=False)
    assert (guard.judge_text, guard.reward, guard.escape_confusables) == (False, "as_written", False)


@pytest.mark.parametrize("bad", [{"judge_txt": True}, {"reward": "max"}])
def test_unknown_key_or_value_is_rejected(bad):
    with pytest.raises(ValidationError):
        GuardSpec.model_validate(bad)


def test_rubric_guard_is_on_by_default():
    general = load_presets()["general"]
    assert general.guard == GuardSpec()
    assert general.guard.judge_text and general.guard.reward == "min"
    bare = Rubric(name="bare", system="Rate it.", user_template="{prompt}\n{response}")
    assert bare.guard == GuardSpec()


def test_rubric_with_bad_guard_is_rejected():
    with pytest.raises(ValidationError, match="needs guard.judge_text"):
        Rubric.model_validate({"name": "x", "system": "s", "user_template": "{prompt} {response}",
                               "guard": {"judge_text": False}})


# ------------------------------------------------------------------------------------------- client

URL = "http://labeler.test"
BASE = item_score(0.5, score=7.75, label_mass=0.9, distribution=[0.1, 0.9], label_entropy=0.325).model_dump()


def _parse(result: dict) -> list:
    """/score's answer with this one result, through the client's validation."""
    answer = {"results": [result], "rubric": "general", "scale": {"min": 1, "max": 10}, "model": "m"}
    return _parse_results(answer, 1, URL, "/score", ScoreAnswer)[0]


def test_a_result_without_the_guard_fields_reads_them_as_absent():
    # A server other than drlaif's may not send reward_robust etc.: absent, and asking for one names it.
    for name in ("reward_as_written", "reward_robust", "judge_spans"):
        [item] = _parse({k: v for k, v in BASE.items() if k != name})
        assert getattr(item, name) is None and item.reward == 0.5
        if name in REWARD_FIELDS:
            with pytest.raises(MissingField, match=f"has no {name}"):
                item.value(name)


def test_scored_item_with_the_guard_fields():
    [item] = _parse({**BASE, "reward_as_written": 1, "reward_robust": -0.25, "judge_spans": 2})
    assert (item.reward, item.score, item.label_mass, item.distribution) == (0.5, 7.75, 0.9, [0.1, 0.9])
    assert item.reward_as_written == 1.0 and isinstance(item.reward_as_written, float)
    assert item.reward_robust == -0.25 and item.judge_spans == 2
    assert [item.value(f) for f in REWARD_FIELDS] == [0.5, -0.25, 1.0]


@pytest.mark.parametrize("value", [True, "2", -1, 1.5])
def test_a_non_count_judge_spans_is_refused(value):
    with pytest.raises(RewardServerError, match=r"results\.0\.judge_spans: "):
        _parse({**BASE, "judge_spans": value})


@pytest.mark.parametrize("name", ["reward_robust", "reward_as_written"])
@pytest.mark.parametrize("value", [2.0, -1.5, "x", True, math.nan, math.inf, None])
def test_bad_extra_rewards_are_refused(name, value):
    with pytest.raises(RewardServerError, match=rf"/score returned an invalid answer: results\.0\.{name}: "):
        _parse({**BASE, name: value})


def test_value_rejects_unknown_field():
    with pytest.raises(ValueError, match="unknown reward field 'score'"):
        item_score(0.0).value("score")


def test_rewards_of_returns_the_field():
    items = [item_score(0.1, reward_as_written=0.3, judge_spans=1), item_score(-0.5)]
    assert rewards_of(items, "reward") == [0.1, -0.5]
    assert rewards_of(items, "reward_robust") == [0.1, -0.5]
    assert rewards_of(items, "reward_as_written") == [0.3, -0.5]
    assert rewards_of([], "reward_robust") == []
    with pytest.raises(ValueError, match="unknown reward field 'score'"):
        rewards_of(items, "score")


def test_config_reward_field():
    assert RewardClientConfig(urls=["http://127.0.0.1:1"]).reward_field == "reward"
    for field in REWARD_FIELDS:
        assert RewardClientConfig(urls=["http://127.0.0.1:1"], reward_field=field).reward_field == field
    with pytest.raises(ValueError, match="reward_field: 'nope' is not one of"):
        RewardClientConfig(urls=["http://127.0.0.1:1"], reward_field="nope")


# -------------------------------------------------------------------------------- trainer metrics


def _item(reward: float, as_written: float, robust: float, spans: int) -> ItemScore:
    return item_score(reward, reward_as_written=as_written, reward_robust=robust, judge_spans=spans)


def test_judge_text_metrics():
    from trainer.analysis.judge_signals import judge_text_metrics

    items = [_item(0.2, 0.8, 0.2, 2),    # gap 0.6, flagged
             _item(0.1, 0.1, 0.1, 0),    # agree
             _item(-0.3, 0.0, -0.3, 1),  # gap 0.3, flagged
             _item(0.5, 0.5, 0.5, 0)]    # agree
    m = judge_text_metrics(items, threshold=0.25)
    assert set(m) == {"judge_text_rate", "reward_disagreement", "reward_robust_gap"}
    assert m["judge_text_rate"] == pytest.approx(0.5)
    assert m["reward_disagreement"] == pytest.approx(0.5)
    assert m["reward_robust_gap"] == pytest.approx((0.6 + 0.3) / 4)
    assert judge_text_metrics(items, threshold=0.5)["reward_disagreement"] == pytest.approx(0.25)
    # No segment found, yet the two reads differ: not flagged, and the rewards still give the gap.
    assert judge_text_metrics([_item(0.0, 0.4, 0.0, 0)], 0.1) == pytest.approx(
        {"judge_text_rate": 0.0, "reward_disagreement": 1.0, "reward_robust_gap": 0.4})


def test_judge_text_metrics_empty_for_an_empty_batch():
    from trainer.analysis.judge_signals import judge_text_metrics

    assert judge_text_metrics([], 0.1) == {}
