"""Render a rubric and one item into labeler token ids, safely.

A rubric has two forms: the rating form (slots ``{prompt}``, ``{response}``; labels are
the scale's numbers) and, optionally, the pairwise form (slots ``{prompt}``,
``{response_a}``, ``{response_b}``; two labels naming the better response). Both are
compiled the same way: the template is rendered once through the labeler's chat template
with sentinel strings in place of the slots, then split at the sentinels into trusted
pieces. Request text never passes through the template: it is tokenised on its own
with special-token parsing switched off, so a response containing "<|im_end|>" is
the literal characters, never the special token. The only change made to request
text is that the closing delimiter of its own slot (e.g. "</response>") and, unless the
rubric's guard turns it off, its look-alikes are escaped ("<\\/response>"), so it cannot
end its slot early.

A form with a reasoning block renders without the answer prefix: its pieces end where the
labeler's turn begins (the user message ends with the reasoning instruction, or the chat
template opens its thinking block). Its compiled reasoning holds the stop strings as
token sequences and the trusted answer ids (close text + answer prefix) that follow a
rationale; its label trie is built in the context of those answer ids.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from server.errors import InputTooLong, ReferenceRequired, ReferenceUnused, RubricCannotCompare
from server.rubrics.judge_text import normalise
from server.rubrics.model import PAIR_SLOTS, REFERENCE_SLOT, SLOTS, ReasoningSpec, Rubric, template_slots
from server.scoring import LabelTrie, Scale, labels_in_context

TRUNCATION_MARKER = " [...] "
# Below this many tokens for prompt and response(s) together a rubric is unusable.
MIN_SLOT_BUDGET = 64
# Compiled forms kept per encoder: the registry's rubrics and recent request-level variants.
COMPILED_CACHE = 64
# Texts a stop string may follow in generated text; each can tokenise it differently
# (a leading space or newline merges into the first token with byte-level BPE).
_STOP_CONTEXTS = ("", " ", "\n", "\n\n", ".", ":", "a", "**", "(")


@dataclass(frozen=True)
class CompiledReasoning:
    """A form's reasoning stage for one tokenizer: the rationale stops at any of
    ``stop_ids`` (token sequences of the stop strings in every context they may follow),
    then ``answer_ids`` (close text + answer prefix, trusted) are appended before the read."""

    spec: ReasoningSpec
    stop_texts: tuple[str, ...]
    stop_ids: tuple[tuple[int, ...], ...]
    answer_ids: tuple[int, ...]


@dataclass(frozen=True)
class CompiledTemplate:
    """One form of a rubric rendered for one tokenizer: trusted pieces around the slots
    (one more piece than slots), the slots' names in template order ("prompt", "reference",
    "response"), each slot's closing delimiter, and the label trie."""

    rubric: Rubric
    piece_texts: tuple[str, ...]
    piece_ids: tuple[tuple[int, ...], ...]
    slot_names: tuple[str, ...]
    closers: tuple[str, ...]
    trie: LabelTrie
    what: str  # how errors name it: "rubric 'general'", "rubric 'general' (compare form)"
    # Reasoned forms: the pieces end where the rationale begins; the trie's labels follow
    # reasoning.answer_ids. None: the pieces end with the answer prefix (one direct read).
    reasoning: CompiledReasoning | None = field(default=None, kw_only=True)

    @property
    def fixed_tokens(self) -> int:
        """Tokens of an item that are not request text: the trusted pieces, the rationale
        budget and appended answer prefix of a reasoned form, and the longest label."""
        extra = len(self.reasoning.answer_ids) + self.reasoning.spec.max_tokens if self.reasoning else 0
        return sum(len(p) for p in self.piece_ids) + extra + self.trie.max_label_tokens

    @property
    def takes_reference(self) -> bool:
        return "reference" in self.slot_names

    @property
    def slot_tags(self) -> tuple[str, ...]:
        """Tag names of the slots' closers that are tags ("</response>" -> "response")."""
        return tuple(name for closer in self.closers if (name := tag_name(closer)))


@dataclass(frozen=True)
class CompiledRubric(CompiledTemplate):
    """The rating form: labels are the scale's numbers, lowest first."""

    scale: Scale


@dataclass(frozen=True)
class CompiledComparison(CompiledTemplate):
    """The pairwise form: the trie's labels are (first shown is better, second shown is better)."""


@dataclass(frozen=True)
class SlotSpan:
    """Where one slot's request text sits in an encoded input: characters [start, end) of its
    text (Unicode code points) and tokens [token_start, token_end) of its input ids. All the
    rest is the rubric's trusted text."""

    name: str  # the slot without braces: "prompt", "reference", "response", "response_a", "response_b"
    start: int
    end: int
    token_start: int
    token_end: int


@dataclass(frozen=True)
class EncodedItem:
    """The labeler input for one item, up to (not including) the answer label."""

    input_ids: tuple[int, ...]
    text: str
    truncated: bool
    shared_prefix: int = 0  # leading tokens every item of the template has: its trusted text before the first slot
    slots: tuple[SlotSpan, ...] = ()  # the request text's places in text and input_ids, in slot order


def _closer(trusted_after_slot: str) -> str:
    """The slot's closing delimiter: the first word of the trusted text after it."""
    words = trusted_after_slot.split()
    return words[0] if words else ""


def tag_name(closer: str) -> str | None:
    """The name of a closer that is a tag ("</response>" -> "response"); None for other closers."""
    m = re.fullmatch(r"</?\s*([\w.-]+)\s*>", closer)
    return m.group(1) if m else None


def _escape(text: str, closer: str, confusables: bool) -> str:
    """Escape the slot's closer in request text ("</response>" -> "<\\/response>"); with
    ``confusables`` also its look-alikes ("＜/Response＞", "</ response>", zero-width inside)."""
    if len(closer) < 2:
        return text
    name = tag_name(closer) if confusables else None
    if name is None:
        return text.replace(closer, closer[0] + "\\" + closer[1:]) if closer in text else text
    # Match on a per-character normalised copy, so each match maps back to its raw position.
    # Invisible characters fold to nothing; every match starts at a visible "<", so maps back.
    folded = [normalise(ch) for ch in text]
    flat = "".join(folded)
    owner = [i for i, piece in enumerate(folded) for _ in piece]
    cut = {owner[m.start()] for m in re.finditer(rf"<\s*/\s*{re.escape(name)}\s*>", flat, re.IGNORECASE)}
    return "".join(ch + "\\" if i in cut else ch for i, ch in enumerate(text))


def _fair_shares(lengths: Sequence[int], budget: int) -> list[int]:
    """Split ``budget`` over items of these lengths: short ones whole, the rest equal shares."""
    keep = [0] * len(lengths)
    left, todo = budget, sorted(range(len(lengths)), key=lambda i: lengths[i])
    for k, i in enumerate(todo):
        keep[i] = min(lengths[i], left // (len(todo) - k))
        left -= keep[i]
    return keep


def allocate_budget(prompt_len: int, response_lens: Sequence[int], budget: int) -> tuple[int, list[int]]:
    """Tokens to keep of the prompt and of each response when together they exceed ``budget``.

    The responses keep at least half the budget between them (more when the prompt is
    short), shared fairly (a short response is kept whole); the prompt gets the rest.
    """
    wanted = sum(response_lens)
    for_responses = min(wanted, max(budget - prompt_len, budget // 2))
    keeps = _fair_shares(response_lens, for_responses)
    return budget - sum(keeps), keeps


class PromptEncoder:
    """Compiles rubrics for a tokenizer and encodes items with a token budget.

    Truncation policy, when the slots' text exceeds ``max_input_tokens`` minus the
    rubric's own tokens: the rubric, the instructions and the answer slot are always
    kept whole. The responses keep their beginnings and at least half the budget
    (more when the prompt is short; two responses share it fairly); the prompt keeps
    its most recent part (its end). A visible " [...] " marks each cut, and the result
    says it was truncated. With ``truncate=False`` such an item is rejected with 413 instead.

    Thread-safe: requests encode on worker threads. A fast tokenizer is one mutable Rust
    object whose special-token switch every call sets before it encodes, so trusted and
    untrusted encodes on two threads could swap each other's setting (a response's literal
    "<|im_end|>" would become the special token); every use of the tokenizer goes through
    one lock, and so does the compiled-form cache.
    """

    def __init__(self, tokenizer, max_input_tokens: int, truncate: bool = True):
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.truncate = truncate
        self._compiled: OrderedDict[tuple[str, str], CompiledTemplate] = OrderedDict()
        self._tokenizer_lock = threading.Lock()
        self._compiled_lock = threading.Lock()

    def trusted_ids(self, text: str) -> list[int]:
        """Tokenise rubric/template text: its special-token strings are real special tokens."""
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]

    def untrusted_ids(self, text: str) -> list[int]:
        """Tokenise request text as data: special-token strings stay plain characters."""
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids back to text, special tokens and spacing exactly as they are."""
        with self._tokenizer_lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @cached_property
    def _marker_ids(self) -> list[int]:
        return self.trusted_ids(TRUNCATION_MARKER)

    @cached_property
    def _bos(self) -> list[int]:
        """BOS to prepend when there is no chat template and the tokenizer normally adds one."""
        bos = self.tokenizer.bos_token_id
        if bos is None or self.tokenizer.chat_template:
            return []
        with self._tokenizer_lock:
            return [bos] if self.tokenizer("x")["input_ids"][:1] == [bos] else []

    def _template(self, system: str, user: str, thinking: bool = False) -> str:
        tok = self.tokenizer
        if not tok.chat_template:
            if thinking:
                raise ValueError("reasoning.thinking needs a chat template; this labeler has none")
            return f"{system}\n\n{user}\n\n"
        switch = {"enable_thinking": True} if thinking else {}

        def render(messages, **extra) -> str:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            text = render(messages, **switch)
        except Exception:  # noqa: BLE001 - templates that reject a system role raise arbitrary errors
            messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
            text = render(messages, **switch)
        if thinking and render(messages, enable_thinking=False) == text:
            raise ValueError("reasoning.thinking needs a chat template with an enable_thinking switch "
                             "(Qwen3-style); this labeler's template ignores it: use an instruction instead")
        return text

    def _pieces(self, what: str, system: str, user_template: str, answer_prefix: str,
                slots: Sequence[str], labels: Sequence[str], reasoning: ReasoningSpec | None = None) -> dict:
        """Trusted pieces, closers, label trie and reasoning stage of one template (the fields
        of a CompiledTemplate). A reasoned template ends where the rationale begins."""
        slots = template_slots(user_template, slots)
        nonce = secrets.token_hex(8)
        sentinels = [f"\ue000{nonce}-{i}\ue000" for i in range(len(slots))]
        user = user_template
        for slot, sentinel in zip(slots, sentinels, strict=True):
            user = user.replace(slot, sentinel)
        user = user.strip()
        if reasoning is not None and reasoning.instruction.strip():
            user += "\n\n" + reasoning.instruction.strip()
        thinking = reasoning is not None and reasoning.thinking
        text = self._template(system.strip(), user, thinking) + ("" if reasoning else answer_prefix)
        if any(text.count(s) != 1 for s in sentinels):
            raise ValueError(f"{what}: the chat template dropped or repeated a slot")
        piece_texts, rest = [], text
        for sentinel in sentinels:
            piece, rest = rest.split(sentinel)
            piece_texts.append(piece)
        piece_texts.append(rest)
        compiled_reasoning = None
        label_context = piece_texts[-1]
        if reasoning is not None:
            label_context = reasoning.close_text() + answer_prefix
            compiled_reasoning = self._reasoning(what, reasoning, answer_prefix, label_context)
        label_tokens = labels_in_context(self.trusted_ids, label_context, labels)
        piece_ids = [tuple(self.trusted_ids(p)) for p in piece_texts]
        piece_ids[0] = tuple(self._bos) + piece_ids[0]
        return {
            "piece_texts": tuple(piece_texts),
            "piece_ids": tuple(piece_ids),
            "slot_names": tuple(slot.strip("{}") for slot in slots),
            "closers": tuple(_closer(p) for p in piece_texts[1:]),
            "trie": LabelTrie(label_tokens),
            "reasoning": compiled_reasoning,
        }

    def _reasoning(self, what: str, spec: ReasoningSpec, answer_prefix: str,
                   answer_text: str) -> CompiledReasoning:
        """Compile a reasoning stage; a stop string the tokenizer cannot produce is an error."""
        special = set(getattr(self.tokenizer, "all_special_ids", ()) or ())
        unk = getattr(self.tokenizer, "unk_token_id", None)
        stop_texts = spec.stop_strings(answer_prefix)
        stop_ids: dict[tuple[int, ...], None] = {}
        for stop in stop_texts:
            alone = self.trusted_ids(stop)
            if unk is not None and unk in alone or self.decode(alone) != stop:
                raise ValueError(f"{what}: reasoning stop string {stop!r} cannot be matched: the labeler's "
                                 "tokenizer does not represent it exactly")
            if special & set(alone):
                raise ValueError(f"{what}: reasoning stop string {stop!r} holds a special token the labeler "
                                 "never emits as text (generation ends at its end-of-sequence token anyway)")
            for context in _STOP_CONTEXTS:
                before = self.trusted_ids(context)
                ids = self.trusted_ids(context + stop)
                if ids[: len(before)] == before and len(ids) > len(before):
                    stop_ids[tuple(ids[len(before):])] = None
                elif not context.strip():  # the space merged into the stop's first token (" Rating")
                    stop_ids[tuple(ids)] = None
        return CompiledReasoning(spec=spec, stop_texts=tuple(stop_texts), stop_ids=tuple(stop_ids),
                                 answer_ids=tuple(self.trusted_ids(answer_text)))

    def check_budget(self, compiled: CompiledTemplate, limit: str | None = None) -> None:
        """Refuse a form that leaves fewer than MIN_SLOT_BUDGET tokens of ``max_input_tokens`` for
        the request text (ValueError naming it and the numbers; ``limit`` says what set the limit)."""
        budget = self.max_input_tokens - compiled.fixed_tokens
        if budget < MIN_SLOT_BUDGET:
            raise ValueError(
                f"{compiled.what} takes {compiled.fixed_tokens} tokens, leaving {budget} of "
                f"max_input_tokens={self.max_input_tokens}{limit or ''} for prompt and response "
                f"(at least {MIN_SLOT_BUDGET} needed); " + ("use a labeler with a longer context or a shorter rubric"
                                                           if limit else "raise the limit"))

    def _cached(self, form: str, rubric: Rubric, build) -> CompiledTemplate:
        """A compiled form, built once per rubric content (request-level variants of a rubric
        are distinct rubrics with the same name); the least recently used go first."""
        key = (form, rubric.model_dump_json())
        with self._compiled_lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled
        # Built outside the lock (it tokenises); two threads may both build a new form, alike.
        compiled = build()
        self.check_budget(compiled)
        with self._compiled_lock:
            self._compiled[key] = compiled
            while len(self._compiled) > COMPILED_CACHE:
                self._compiled.popitem(last=False)
        return compiled

    def compile(self, rubric: Rubric) -> CompiledRubric:
        """The rating form of a rubric (cached per rubric content)."""
        def build() -> CompiledRubric:
            what = f"rubric {rubric.name!r}"
            scale = rubric.scale.to_scale()
            pieces = self._pieces(what, rubric.system, rubric.user_template, rubric.answer_prefix, SLOTS,
                                  scale.labels, rubric.reasoning)
            return CompiledRubric(rubric=rubric, scale=scale, what=what, **pieces)

        return self._cached("rate", rubric, build)

    def compile_comparison(self, rubric: Rubric) -> CompiledComparison:
        """The pairwise form of a rubric (cached per rubric object); 422 when it has none."""
        spec = rubric.compare
        if spec is None:
            raise RubricCannotCompare(
                f"rubric {rubric.name!r} has no pairwise form; add a 'compare:' section to it "
                "(system, user_template with {prompt}, {response_a}, {response_b}, answer_prefix, labels)")

        def build() -> CompiledComparison:
            what = f"rubric {rubric.name!r} (compare form)"
            pieces = self._pieces(what, spec.system, spec.user_template, spec.answer_prefix, PAIR_SLOTS,
                                  spec.labels, rubric.pairwise_reasoning)
            return CompiledComparison(rubric=rubric, what=what, **pieces)

        return self._cached("compare", rubric, build)

    def compile_principles(self, rubric: Rubric, pairwise: bool = False) -> dict[str, CompiledTemplate]:
        """Per principle of a constitution, its rating form (or pairwise form): the rubric's
        template with the principle's instruction after it, so that every principle of an item
        renders the same tokens up to the end of the item's text."""
        forms: dict[str, CompiledTemplate] = {}
        for p in rubric.principles or ():
            if pairwise:
                spec = rubric.compare
                if spec is None:
                    return {"": self.compile_comparison(rubric)}  # raises RubricCannotCompare
                question = (p.compare_instruction or p.instruction).strip()
                variant = rubric.model_copy(update={"principles": None, "compare": spec.model_copy(
                    update={"user_template": spec.user_template.rstrip() + "\n\n" + question})})
                forms[p.name] = self.compile_comparison(variant)
            else:
                template = rubric.user_template.rstrip() + "\n\n" + p.instruction.strip()
                variant = rubric.model_copy(update={"principles": None, "user_template": template})
                forms[p.name] = self.compile(variant)
        return forms

    def compile_forms(self, rubric: Rubric) -> list[CompiledTemplate]:
        """Every form the rubric has: the rating form (one per principle of a constitution),
        and the pairwise form if defined."""
        if rubric.principles:
            forms = list(self.compile_principles(rubric).values())
            if rubric.compare is not None:
                forms += list(self.compile_principles(rubric, pairwise=True).values())
            return forms
        forms = [self.compile(rubric)]
        if rubric.compare is not None:
            forms.append(self.compile_comparison(rubric))
        return forms

    def encode(self, compiled: CompiledTemplate, prompt: str, *responses: str, reference: str | None = None,
               fixed_tokens: int | None = None) -> EncodedItem:
        """The labeler input for a prompt, the template's response(s) and, for a form that shows
        one, the item's reference answer, in the template's slot order. ``fixed_tokens``
        (default: the form's own) sets the room left for the slots; the principles of a
        constitution share the largest, so they all cut an item alike. The reference is kept
        whole (cutting it would change what the answer is judged against): its tokens come
        out of that room first."""
        responses_slots = [name for name in compiled.slot_names if name not in ("prompt", "reference")]
        if len(responses) != len(responses_slots):
            raise ValueError(f"this template takes {len(responses_slots)} response(s), got {len(responses)}")
        check_reference(compiled, reference)
        confusables = compiled.rubric.guard.escape_confusables
        closer = dict(zip(compiled.slot_names, compiled.closers, strict=True))
        names = ["prompt", *responses_slots]
        texts = [_escape(t, closer[name], confusables) for name, t in zip(names, (prompt, *responses), strict=True)]
        ids = [self.untrusted_ids(t) for t in texts]
        budget = self.max_input_tokens - (compiled.fixed_tokens if fixed_tokens is None else fixed_tokens)
        placed: dict[str, tuple[list[int], str]] = {}
        if reference is not None:
            reference_text = _escape(reference, closer["reference"], confusables)
            reference_ids = self.untrusted_ids(reference_text)
            placed["reference"] = (reference_ids, reference_text)
            budget -= len(reference_ids)
            if budget < MIN_SLOT_BUDGET:
                raise InputTooLong(f"the reference takes {len(reference_ids)} tokens, leaving {max(budget, 0)} of "
                                   f"max_input_tokens={self.max_input_tokens} under rubric "
                                   f"{compiled.rubric.name!r} for prompt and response (at least {MIN_SLOT_BUDGET} "
                                   "needed); a reference is never cut: shorten it")
        total = sum(len(i) for i in ids)
        truncated = total > budget
        if truncated:
            if not self.truncate:
                what = "prompt and response" if len(responses) == 1 else "prompt and responses"
                raise InputTooLong(
                    f"{what} take {total} tokens; rubric {compiled.rubric.name!r} leaves {budget} "
                    f"of max_input_tokens={self.max_input_tokens}"
                )
            marker = self._marker_ids
            p_keep, r_keeps = allocate_budget(len(ids[0]), [len(i) for i in ids[1:]], budget)
            if p_keep < len(ids[0]):  # the prompt keeps its end
                ids[0] = marker + ids[0][len(ids[0]) - (p_keep - len(marker)):]
                texts[0] = self.decode(ids[0])
            for k, keep in enumerate(r_keeps, start=1):  # each response keeps its beginning
                if keep < len(ids[k]):
                    ids[k] = ids[k][: max(0, keep - len(marker))] + marker
                    texts[k] = self.decode(ids[k])
        placed.update({name: (slot_ids, slot_text) for name, slot_ids, slot_text in zip(names, ids, texts, strict=True)})
        input_ids: tuple[int, ...] = compiled.piece_ids[0]
        text = compiled.piece_texts[0]
        slots = []
        for name, piece_ids, piece_text in zip(compiled.slot_names, compiled.piece_ids[1:], compiled.piece_texts[1:],
                                               strict=True):
            slot_ids, slot_text = placed[name]
            slots.append(SlotSpan(name, len(text), len(text) + len(slot_text),
                                  len(input_ids), len(input_ids) + len(slot_ids)))
            input_ids += tuple(slot_ids) + piece_ids
            text += slot_text + piece_text
        return EncodedItem(input_ids=input_ids, text=text, truncated=truncated,
                           shared_prefix=len(compiled.piece_ids[0]), slots=tuple(slots))


def check_reference(compiled: CompiledTemplate, reference: str | None) -> None:
    """Refuse an item whose reference does not fit the form: missing (or empty) where the
    template shows one (ReferenceRequired), given where it has no place (ReferenceUnused: a
    reference the labeler never sees would be silently ignored)."""
    if compiled.takes_reference and not reference:
        raise ReferenceRequired(f"{compiled.what} judges each response against a reference answer ({REFERENCE_SLOT} "
                                "in its template): give every item a non-empty reference")
    if not compiled.takes_reference and reference is not None:
        raise ReferenceUnused(f"{compiled.what} has no {REFERENCE_SLOT} in its template, so the labeler would never "
                              "see the item's reference: leave the reference out, or use a rubric that shows it "
                              "(e.g. correctness or faithfulness)")
