"""Render a rubric and one (prompt, response) into labeler token ids, safely.

The rubric is rendered once through the labeler's chat template with sentinel
strings in place of the two slots, then split at the sentinels into three trusted
pieces. Request text never passes through the template: it is tokenised on its own
with special-token parsing switched off, so a response containing "<|im_end|>" is
the literal characters, never the special token. The only change made to request
text is that the closing delimiter of its own slot (e.g. "</response>") is escaped
("<\\/response>"), so it cannot end its slot early.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import cached_property

from server.errors import InputTooLong
from server.rubrics.model import Rubric
from server.scoring import LabelTrie, Scale, labels_in_context

TRUNCATION_MARKER = " [...] "
# Below this many tokens for prompt and response together a rubric is unusable.
MIN_SLOT_BUDGET = 64


@dataclass(frozen=True)
class CompiledRubric:
    """A rubric rendered for one tokenizer: trusted pieces, label trie, slot delimiters."""

    rubric: Rubric
    scale: Scale
    piece_texts: tuple[str, str, str]
    piece_ids: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    closers: tuple[str, str]
    trie: LabelTrie

    @property
    def fixed_tokens(self) -> int:
        return sum(len(p) for p in self.piece_ids) + self.trie.max_label_tokens


@dataclass(frozen=True)
class EncodedItem:
    """The labeler input for one item, up to (not including) the answer label."""

    input_ids: tuple[int, ...]
    text: str
    truncated: bool


def _closer(trusted_after_slot: str) -> str:
    """The slot's closing delimiter: the first word of the trusted text after it."""
    words = trusted_after_slot.split()
    return words[0] if words else ""


def _escape(text: str, closer: str) -> str:
    if len(closer) < 2 or closer not in text:
        return text
    return text.replace(closer, closer[0] + "\\" + closer[1:])


class PromptEncoder:
    """Compiles rubrics for a tokenizer and encodes items with a token budget.

    Truncation policy, when prompt + response exceed ``max_input_tokens`` minus the
    rubric's own tokens: the rubric, the instructions and the answer slot are always
    kept whole. The response keeps its beginning and at least half the budget (more
    when the prompt is short); the prompt keeps its most recent part (its end). A
    visible " [...] " marks each cut, and the result says it was truncated. With
    ``truncate=False`` such an item is rejected with 413 instead.
    """

    def __init__(self, tokenizer, max_input_tokens: int, truncate: bool = True):
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.truncate = truncate
        self._compiled: dict[str, CompiledRubric] = {}

    def trusted_ids(self, text: str) -> list[int]:
        """Tokenise rubric/template text: its special-token strings are real special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def untrusted_ids(self, text: str) -> list[int]:
        """Tokenise request text as data: special-token strings stay plain characters."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    @cached_property
    def _marker_ids(self) -> list[int]:
        return self.trusted_ids(TRUNCATION_MARKER)

    @cached_property
    def _bos(self) -> list[int]:
        """BOS to prepend when there is no chat template and the tokenizer normally adds one."""
        bos = self.tokenizer.bos_token_id
        if bos is None or self.tokenizer.chat_template:
            return []
        return [bos] if self.tokenizer("x")["input_ids"][:1] == [bos] else []

    def _template(self, system: str, user: str) -> str:
        tok = self.tokenizer
        if not tok.chat_template:
            return f"{system}\n\n{user}\n\n"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates that reject a system role raise arbitrary errors
            merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
            return tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def compile(self, rubric: Rubric) -> CompiledRubric:
        cached = self._compiled.get(rubric.name)
        if cached is not None and cached.rubric is rubric:
            return cached
        nonce = secrets.token_hex(8)
        s_prompt, s_response = f"\ue000{nonce}-prompt\ue000", f"\ue000{nonce}-response\ue000"
        user = rubric.user_template.replace("{prompt}", s_prompt).replace("{response}", s_response)
        text = self._template(rubric.system.strip(), user.strip()) + rubric.answer_prefix
        if text.count(s_prompt) != 1 or text.count(s_response) != 1:
            raise ValueError(f"rubric {rubric.name!r}: the chat template dropped or repeated a slot")
        before, rest = text.split(s_prompt)
        middle, after = rest.split(s_response)
        scale = rubric.scale.to_scale()
        label_tokens = labels_in_context(self.trusted_ids, after, scale.labels)
        compiled = CompiledRubric(
            rubric=rubric,
            scale=scale,
            piece_texts=(before, middle, after),
            piece_ids=(
                tuple(self._bos + self.trusted_ids(before)),
                tuple(self.trusted_ids(middle)),
                tuple(self.trusted_ids(after)),
            ),
            closers=(_closer(middle), _closer(after)),
            trie=LabelTrie(label_tokens),
        )
        budget = self.max_input_tokens - compiled.fixed_tokens
        if budget < MIN_SLOT_BUDGET:
            raise ValueError(
                f"rubric {rubric.name!r} takes {compiled.fixed_tokens} tokens, leaving {budget} of "
                f"max_input_tokens={self.max_input_tokens} for prompt and response; raise the limit"
            )
        self._compiled[rubric.name] = compiled
        return compiled

    def encode(self, compiled: CompiledRubric, prompt: str, response: str) -> EncodedItem:
        prompt = _escape(prompt, compiled.closers[0])
        response = _escape(response, compiled.closers[1])
        p_ids, r_ids = self.untrusted_ids(prompt), self.untrusted_ids(response)
        budget = self.max_input_tokens - compiled.fixed_tokens
        truncated = len(p_ids) + len(r_ids) > budget
        if truncated:
            if not self.truncate:
                raise InputTooLong(
                    f"prompt and response take {len(p_ids) + len(r_ids)} tokens; rubric "
                    f"{compiled.rubric.name!r} leaves {budget} of max_input_tokens={self.max_input_tokens}"
                )
            marker = self._marker_ids
            r_keep = min(len(r_ids), max(budget - len(p_ids), budget // 2))
            p_keep = budget - r_keep
            if p_keep < len(p_ids):
                p_ids = marker + p_ids[len(p_ids) - (p_keep - len(marker)) :]
                prompt = self.tokenizer.decode(p_ids)
            if r_keep < len(r_ids):
                r_ids = r_ids[: r_keep - len(marker)] + marker
                response = self.tokenizer.decode(r_ids)
        before, middle, after = compiled.piece_ids
        t_before, t_middle, t_after = compiled.piece_texts
        return EncodedItem(
            input_ids=before + tuple(p_ids) + middle + tuple(r_ids) + after,
            text=t_before + prompt + t_middle + response + t_after,
            truncated=truncated,
        )
