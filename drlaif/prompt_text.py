"""The prompt forms a request may carry (a plain string, chat messages, an HH-RLHF transcript),
the text of the prompt slot that a labeler reads, and the one definition of "the same prompt".

Two prompts are the same prompt when a labeler reads the same text for them: ``"hi"``,
``[{"role": "user", "content": "hi"}]`` and ``"Human: hi\n\nAssistant:"`` are one prompt.
:func:`same_prompt_key` is that rule; the server groups a request's items by it (group-pairwise
judging, shared prefixes), the reward client keeps a group in one request by it, and drop mode
(``drlaif/reward_failures.py``) retries a group together by it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_ROLE_NAMES = {"system": "System", "user": "User", "human": "User", "assistant": "Assistant"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def parse_hh_transcript(text: str) -> list[dict[str, str]] | None:
    """Split an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into messages.

    Returns None when the text is not such a transcript. A trailing empty
    "Assistant:" turn (how HH prompts end) is dropped.
    """
    if not (text.startswith("Human:") or text.lstrip("\n").startswith("Human:")):
        return None
    parts = _HH_TURN.split(text.lstrip("\n"))
    # parts = ["", role, content, role, content, ...]
    messages = [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages or None


def format_conversation(messages: Sequence[Mapping[str, str]]) -> str:
    """A conversation as plain text for the labeler to read.

    A single user message is shown as is; longer dialogues as "User: ..." /
    "Assistant: ..." turns. This is data for the prompt slot, not chat markup.
    """
    if len(messages) == 1 and messages[0]["role"] in ("user", "human"):
        return messages[0]["content"]
    return "\n\n".join(
        f"{_ROLE_NAMES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages
    )


def prompt_text(prompt: str | Sequence[Mapping[str, str]]) -> str:
    """The prompt slot's text for a plain string, chat messages, or an HH transcript."""
    if isinstance(prompt, str):
        messages = parse_hh_transcript(prompt)
        return prompt if messages is None else format_conversation(messages)
    return format_conversation(prompt)


def same_prompt_key(prompt: str | Sequence[Mapping[str, str]]) -> str:
    """The key under which prompts are one prompt: the prompt slot's text (:func:`prompt_text`).
    Items whose prompts have equal keys form one prompt group."""
    return prompt_text(prompt)
