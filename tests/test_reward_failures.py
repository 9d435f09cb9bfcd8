"""drlaif/reward_failures.py: the cap on dropped samples, and drop mode's second pass that
rescores each sample (or each prompt group) of a failed batch and drops only the failures."""

from __future__ import annotations

import concurrent.futures

import pytest

from drlaif.client import RewardClientConfig, RewardServerError
from drlaif.reward_failures import TooManyDropped, check_dropped, score_items_or_drop


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

    def submit_score_items(self, prompts, responses, rubric=None, references=None):
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


class RubricGrouping(ItemRefusing):
    """A client whose mode is unset: the rubric decides, as a real client reads it from /info."""

    def __init__(self, groups: bool):
        super().__init__()
        self.groups, self.asked = groups, []

    def reward_mode(self, rubric=None):
        self.asked.append(rubric)
        return "group-pairwise" if self.groups else "direct"


@pytest.mark.parametrize("groups, calls", [(True, [["a", "b"], ["x", "c"]]), (False, [["a"], ["x"], ["b"], ["c"]])])
def test_with_the_rubrics_choice_a_failed_batch_is_rescored_as_the_rubric_judges(groups, calls):
    source = RubricGrouping(groups)
    prompts, responses = ["p", "q", "p", "q"], ["a", "x", "b", "c"]
    want = ["item:a", None, "item:b", None] if groups else ["item:a", None, "item:b", "item:c"]
    assert score_items_or_drop(source, prompts, responses, "general-groups") == want
    assert source.calls[1:] == calls and source.asked == ["general-groups"]


def test_score_items_or_drop_rescores_each_sample_and_drops_only_the_failures():
    source = ItemRefusing()
    assert score_items_or_drop(source, ["p"] * 3, ["a", "x", "b"]) == ["item:a", None, "item:b"]
    assert source.calls == [["a", "x", "b"], ["a"], ["x"], ["b"]]
    source = ItemRefusing()
    assert score_items_or_drop(source, ["p"] * 2, ["a", "b"]) == ["item:a", "item:b"]
    assert source.calls == [["a", "b"]]  # no failure, no second pass
