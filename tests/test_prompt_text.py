"""drlaif/prompt_text.py: the prompt forms (string, chat messages, HH transcript), the prompt
slot's text, and the one definition of "the same prompt" that the server's grouping, the reward
client's chunking and drop mode share."""

from __future__ import annotations

import concurrent.futures

import pytest

from drlaif.client import RewardClientConfig, RewardServerError, _chunk_order
from drlaif.prompt_text import format_conversation, parse_hh_transcript, prompt_text, same_prompt_key
from drlaif.reward_failures import score_items_or_drop
from server.scorer import prompt_groups

# --------------------------------------------------------------------------- prompt forms


def test_plain_string_prompt_is_unchanged():
    assert prompt_text("What is 2+2?") == "What is 2+2?"
    text = "Tell me about Human: history\n\nand Assistant: roles"
    assert prompt_text(text) == text  # not a transcript: does not start with "Human:"


def test_single_user_message_is_its_content():
    assert prompt_text([{"role": "user", "content": "hi there"}]) == "hi there"


def test_multi_turn_messages_become_labelled_turns():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
    ]
    assert prompt_text(messages) == "System: Be brief.\n\nUser: hi\n\nAssistant: hello\n\nUser: how?"


def test_single_non_user_message_is_labelled():
    assert format_conversation([{"role": "assistant", "content": "x"}]) == "Assistant: x"
    assert format_conversation([{"role": "tool", "content": "42"}]) == "Tool: 42"
    assert format_conversation([{"role": "human", "content": "q"}]) == "q"


def test_hh_transcript_drops_trailing_empty_assistant():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
    ]
    assert prompt_text(text) == "User: hi\n\nAssistant: hello\n\nUser: how?"


def test_hh_single_turn_is_the_question():
    assert prompt_text("\n\nHuman: What is the capital of France?\n\nAssistant:") == (
        "What is the capital of France?"
    )
    assert prompt_text("Human: hi\n\nAssistant: ") == "hi"


def test_hh_keeps_multiline_turns_and_a_final_assistant_turn():
    text = "Human: line one\nline two\n\nAssistant: sure\nthing"
    assert prompt_text(text) == "User: line one\nline two\n\nAssistant: sure\nthing"


def test_not_a_transcript():
    assert parse_hh_transcript("hello\n\nHuman: hi") is None
    assert parse_hh_transcript("") is None


# --------------------------------------------------------------------------- the same prompt

# One prompt written three ways (the labeler reads "hi" for each), and another prompt.
HI = ["hi", [{"role": "user", "content": "hi"}], "Human: hi\n\nAssistant:", "\n\nHuman: hi\n\nAssistant:"]
BYE = "bye"


def test_one_prompt_written_as_text_messages_or_transcript_has_one_key():
    assert {same_prompt_key(p) for p in HI} == {"hi"}
    assert same_prompt_key(BYE) != same_prompt_key("hi")
    # Whatever reads differently to the labeler is another prompt.
    assert same_prompt_key("Human: hi\n\nAssistant: hello\n\nHuman: more?") != same_prompt_key("hi")
    assert same_prompt_key([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]) \
        != same_prompt_key("hi")


@pytest.mark.parametrize("other", HI[1:], ids=["messages", "transcript", "hh-transcript"])
def test_the_server_the_clients_chunking_and_drop_mode_see_one_group(other):
    prompts = ["hi", BYE, other]
    # The server: group-pairwise judging compares items 0 and 2 with each other.
    assert prompt_groups([(p, f"r{i}") for i, p in enumerate(prompts)]) == [[0, 2], [1]]
    # The client: two items per request keep that group in one request (in order it would be
    # [0, 1] and [2], the group split over two requests and judged as two).
    items = [{"prompt": p, "response": f"r{i}"} for i, p in enumerate(prompts)]
    assert _chunk_order(items, limit=2, whole_groups=True) == [[0, 2], [1]]
    # Drop mode: after the batch call fails, the group is rescored as one unit.
    source = FailingBatch(RewardClientConfig(urls=["http://127.0.0.1:1"], reward_mode="group-pairwise"))
    assert score_items_or_drop(source, prompts, ["r0", "r1", "r2"]) == ["item:r0", "item:r1", "item:r2"]
    assert source.calls == [["r0", "r1", "r2"], ["r0", "r2"], ["r1"]]


class FailingBatch:
    """A reward source whose first call (the whole batch) fails and whose later calls succeed."""

    def __init__(self, config: RewardClientConfig):
        self.config = config
        self.calls: list[list[str]] = []

    def submit_score_items(self, prompts, responses, rubric=None, references=None):
        self.calls.append(list(responses))
        future: concurrent.futures.Future = concurrent.futures.Future()
        if len(self.calls) == 1:
            future.set_exception(RewardServerError("no answer within the deadline"))
        else:
            future.set_result([f"item:{r}" for r in responses])
        return future
