"""Chat-template text parsed back into chat messages, for the prompts OpenRLHF sends.

OpenRLHF's prompt is usually the policy's chat template applied to a conversation, as
text. The labeler reads a conversation better as messages (``drlaif/prompt_text.py``
shows them as "User: ..." / "Assistant: ..." turns) than as another model's markup, so
:func:`parse_chat` turns the text of a known template family back into
``[{"role", "content"}]``:

- ChatML (Qwen, SmolLM2, Phi-4): ``<|im_start|>role\\n...<|im_end|>`` (Phi-4 puts
  ``<|im_sep|>`` where the others put the newline);
- Llama 3: ``<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>``;
- Gemma: ``<start_of_turn>role\\n...<end_of_turn>``, role ``model`` being the assistant;
- Phi-3: ``<|role|>\\n...<|end|>``;
- Mistral and Llama 2: ``[INST] ... [/INST] ...</s>``, with ``[SYSTEM_PROMPT]...[/SYSTEM_PROMPT]``
  or a Llama 2 ``<<SYS>>...<</SYS>>`` block as the system message.

The rules, the same for every family:

- The text must be made of that family's turns only (whitespace between them is allowed;
  strip beginning-of-sequence markers first). Any other text outside the turns, a role other
  than system/user/assistant (tool, ipython, ...) or a turn left open before another one
  starts means the text is not parsed: :func:`parse_chat` answers None and the caller keeps
  the text as it is.
- The last turn may be left open only when it is the assistant's: that is the generation
  prompt. It is dropped when it is empty (or holds only an empty ``<think></think>`` block);
  text in it (a prefill) is kept as a last assistant message.
- Text cut at its start (it begins inside a turn: a fragment that ends with the family's
  end-of-turn marker before the first turn header) keeps the fragment as a first message,
  marked ``[...] ``, of the role that can precede the next turn: user before an assistant
  turn, assistant before a user turn.
- Contents are stripped of surrounding whitespace, like HH transcripts'.

This parses request text that the caller sends as the prompt; a response is never parsed,
so markup in a sampled response cannot make turns of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Messages = list[dict[str, str]]

CUT_MARK = "[...] "
_EMPTY_THINK = re.compile(r"<think>\s*</think>")
_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class TurnFamily:
    """A template whose turns are ``header(role) content end``."""

    name: str
    header: re.Pattern[str]  # group 1: the role
    end: str
    roles: dict[str, str] = field(default_factory=lambda: dict(_ROLES))


FAMILIES = (
    TurnFamily("chatml", re.compile(r"<\|im_start\|>(\w+)(?:<\|im_sep\|>|\n)"), "<|im_end|>"),
    TurnFamily("llama3", re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n*"), "<|eot_id|>"),
    TurnFamily("gemma", re.compile(r"<start_of_turn>(\w+)\n"), "<end_of_turn>",
               {**_ROLES, "model": "assistant"}),
    TurnFamily("phi3", re.compile(r"<\|(system|user|assistant)\|>\n?"), "<|end|>"),
)


def _fragment_role(next_role: str) -> str | None:
    """The role of a cut-off turn before a turn of ``next_role``."""
    return {"assistant": "user", "user": "assistant"}.get(next_role)


def _open_turn(content: str) -> str | None:
    """A trailing open assistant turn's content to keep, or None when it is the bare generation prompt."""
    kept = content.strip()
    return None if not kept or _EMPTY_THINK.fullmatch(kept) else kept


def _parse_turns(text: str, family: TurnFamily) -> Messages | None:
    headers = list(family.header.finditer(text))
    if not headers:
        return None
    messages: Messages = []
    fragment = text[:headers[0].start()].strip()
    if fragment:
        if not fragment.endswith(family.end) or family.end in fragment[:-len(family.end)]:
            return None
        role = _fragment_role(family.roles.get(headers[0].group(1), ""))
        if role is None:
            return None
        messages.append({"role": role, "content": CUT_MARK + fragment[:-len(family.end)].strip()})
    for k, header in enumerate(headers):
        role = family.roles.get(header.group(1))
        if role is None:
            return None
        last = k == len(headers) - 1
        segment = text[header.end(): len(text) if last else headers[k + 1].start()]
        content, closed, after = segment.partition(family.end)
        if not closed:
            if not last or role != "assistant":
                return None
            kept = _open_turn(content)
            if kept is not None:
                messages.append({"role": role, "content": kept})
            break
        if after.strip():
            return None
        messages.append({"role": role, "content": content.strip()})
    return messages or None


_MISTRAL_TOKEN = re.compile(r"(\[INST\]|\[/INST\]|\[SYSTEM_PROMPT\]|\[/SYSTEM_PROMPT\]|</s>|<s>"
                            r"|\[/?(?:AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS|TOOL_CONTENT)\])")
_LLAMA2_SYS = re.compile(r"\s*<<SYS>>(.*?)<</SYS>>(.*)", re.DOTALL)


def _user_turn(content: str) -> Messages:
    sys_block = _LLAMA2_SYS.fullmatch(content)
    if sys_block is None:
        return [{"role": "user", "content": content.strip()}]
    return [{"role": "system", "content": sys_block.group(1).strip()},
            {"role": "user", "content": sys_block.group(2).strip()}]


def _parse_mistral(text: str) -> Messages | None:
    if "[/INST]" not in text:
        return None
    parts = _MISTRAL_TOKEN.split(text)
    head, pairs = parts[0].strip(), list(zip(parts[1::2], parts[2::2], strict=True))
    messages: Messages = []
    state, content = "between", ""  # state: the turn now open ("user", "assistant", "system") or none
    if head:  # cut at its start: the fragment must end a turn
        first = pairs[0][0] if pairs else None
        state = {"[/INST]": "user", "</s>": "assistant"}.get(first)
        if state is None:
            return None
        content = CUT_MARK + head
    for token, following in pairs:
        if state == "user" and token == "[/INST]":
            messages.extend(_user_turn(content))
            state, content = "assistant", following
        elif state == "assistant" and token in ("</s>", "[INST]"):
            messages.append({"role": "assistant", "content": content.strip()})
            state, content = ("between", following) if token == "</s>" else ("user", following)
        elif state == "system" and token == "[/SYSTEM_PROMPT]":
            messages.append({"role": "system", "content": content.strip()})
            state, content = "between", following
        elif state == "between" and token in ("[INST]", "[SYSTEM_PROMPT]"):
            state, content = ("user" if token == "[INST]" else "system"), following
        elif state == "between" and token in ("<s>", "</s>"):
            content = following
        else:
            return None
        if state == "between" and content.strip():
            return None
    if state == "assistant":
        kept = _open_turn(content)
        if kept is not None:
            messages.append({"role": "assistant", "content": kept})
    elif state != "between":
        return None
    return messages or None


def parse_chat(text: str) -> Messages | None:
    """Messages of chat-template text of a known family; None for any other text.

    ``text`` should not start with a beginning-of-sequence marker (strip those first).
    Families are tried in turn (ChatML, Llama 3, Gemma, Phi-3, Mistral); the first whose
    rules the whole text follows wins.
    """
    for family in FAMILIES:
        messages = _parse_turns(text, family)
        if messages is not None:
            return messages
    return _parse_mistral(text)
