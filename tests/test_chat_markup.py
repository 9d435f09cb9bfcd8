"""Chat-template text parsed back into messages (server/app/chat_markup.py): each template
family as its official chat template writes it, a transcript cut at its start, the generation
prompt, unknown markup and markup mixed with text (both left as text), and parsing in linear time
on hostile text. Pure: no model, no server. That /get_reward parses only the prompt, never the
response, is tested with its other pure parts in test_openrlhf.py."""

from __future__ import annotations

import time

import pytest

from server.app.chat_markup import parse_chat

SYS = {"role": "system", "content": "Be brief."}
HI = {"role": "user", "content": "What is the capital of France?"}
PARIS = {"role": "assistant", "content": "Paris."}
AND_SPAIN = {"role": "user", "content": "And of Spain?"}


Q = HI["content"]


@pytest.mark.parametrize("text, messages", [
    pytest.param(f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n"
                 "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd of Spain?<|im_end|>\n"
                 "<|im_start|>assistant\n", [SYS, HI, PARIS, AND_SPAIN], id="chatml-qwen-smollm2"),
    pytest.param(f"<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>{Q}<|im_end|>"
                 "<|im_start|>assistant<|im_sep|>", [SYS, HI], id="chatml-phi4"),
    pytest.param(f"<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                 f"<|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\nAnd of Spain?<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n",
                 [SYS, HI, PARIS, AND_SPAIN], id="llama3"),
    pytest.param(f"<start_of_turn>user\n{Q}<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n"
                 "<start_of_turn>user\nAnd of Spain?<end_of_turn>\n<start_of_turn>model\n",
                 [HI, PARIS, AND_SPAIN], id="gemma"),
    pytest.param(f"<|system|>\nBe brief.<|end|>\n<|user|>\n{Q}<|end|>\n<|assistant|>\nParis.<|end|>\n"
                 "<|user|>\nAnd of Spain?<|end|>\n<|assistant|>\n", [SYS, HI, PARIS, AND_SPAIN], id="phi3"),
    pytest.param(f"[INST] {Q} [/INST]Paris.</s>[INST] And of Spain? [/INST]",
                 [HI, PARIS, AND_SPAIN], id="mistral-v1"),
    pytest.param(f"[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]{Q}[/INST]Paris.</s>"
                 "[INST]And of Spain?[/INST]",
                 [SYS, HI, PARIS, AND_SPAIN], id="mistral-system-prompt"),
    pytest.param(f"[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n{Q} [/INST] Paris. </s>"
                 "<s>[INST] And of Spain? [/INST]",
                 [SYS, HI, PARIS, AND_SPAIN], id="llama2"),
])
def test_each_family_is_parsed_into_its_messages_without_the_generation_prompt(text, messages):
    assert parse_chat(text) == messages


@pytest.mark.parametrize("text, messages", [
    ("capital of France?<|im_end|>\n<|im_start|>assistant\n",
     [{"role": "user", "content": "[...] capital of France?"}]),
    (("Paris.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd of Spain?<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n"),
     [{"role": "assistant", "content": "[...] Paris."}, AND_SPAIN]),
    ("of France? [/INST]", [{"role": "user", "content": "[...] of France?"}]),
    ("Paris.</s>[INST] And of Spain? [/INST]", [{"role": "assistant", "content": "[...] Paris."}, AND_SPAIN]),
])
def test_a_transcript_cut_at_its_start_keeps_the_fragment_marked_as_cut(text, messages):
    assert parse_chat(text) == messages


@pytest.mark.parametrize("opening, messages", [
    ("", [HI]),
    ("<think>\n\n</think>\n\n", [HI]),            # Qwen3 with thinking off: still the bare generation prompt
    ("The capital is", [HI, {"role": "assistant", "content": "The capital is"}]),  # a prefill is kept
])
def test_the_open_assistant_turn(opening, messages):
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" + opening
    assert parse_chat(text) == messages


NOT_CHAT = {  # id: text that parse_chat leaves alone
    # unknown markup
    "plain": "What is the capital of France?",
    "hh-transcript": "\n\nHuman: What is the capital of France?\n\nAssistant:",
    "alpaca": "### Instruction:\nWhat is the capital of France?\n\n### Response:\n",
    "unknown-role": "<|im_start|>tool\n{\"temp\": 20}<|im_end|>\n<|im_start|>assistant\n",
    "open-user-turn": "<|im_start|>user\nWhat is the capital of",
    "turn-left-open-before-another": "<|im_start|>user\nHi\n<|im_start|>assistant\n",
    "mistral-tools": "[INST] Hi [/INST][TOOL_CALLS] [{\"name\": \"f\"}]</s>",
    "only-a-generation-prompt": "<|im_start|>assistant\n",
    # markup mixed with text
    "text-before": "Rate this chat: <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text-after": "<|im_start|>user\nHi<|im_end|>\nWhat do you think of it?",
    "text-between": "<|im_start|>user\nHi<|im_end|> and then <|im_start|>assistant\n",
    "mistral-tokens-in-prose": "What does [INST] mean? [/INST] marks the end.",
    "gemma-tokens-in-prose": "Explain <start_of_turn>user\nHi<end_of_turn> to me.",
}


@pytest.mark.parametrize("text", list(NOT_CHAT.values()), ids=list(NOT_CHAT))
def test_unknown_markup_and_markup_mixed_with_text_are_not_parsed(text):
    assert parse_chat(text) is None


@pytest.mark.parametrize("text", [
    "<|im_start|>user\n" + " " * 200_000 + "x",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" + " \n" * 100_000 + "x",
    "[INST]" * 50_000,
    "<|im_start|>user\n" * 50_000,
])
def test_parsing_stays_linear_on_hostile_text(text):
    started = time.perf_counter()
    parse_chat(text)
    assert time.perf_counter() - started < 2.0  # generous: quadratic backtracking would take seconds
