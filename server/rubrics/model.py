"""The rubric ("constitution") format: what the labeler is asked, as data."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from server.scoring import Scale

log = logging.getLogger(__name__)

SLOTS = ("{prompt}", "{response}")
PAIR_SLOTS = ("{prompt}", "{response_a}", "{response_b}")
# The optional slot of an item's reference answer (a gold answer, a reference summary): trusted
# text from the caller's dataset, never from the policy, placed wherever the template puts it.
REFERENCE_SLOT = "{reference}"
# A scale's labels are its decimal numbers, each tokenised and read for every item: the
# bounds keep each label a few tokens long and the label set a rating scale (0..1000 at most)
# rather than work that grows with whatever number a rubric file or the rubric lab holds.
MAX_SCALE_VALUE = 1_000_000
MAX_SCALE_LABELS = 1001
# Principle weights are relative shares, normalised to sum to 1: bounded so that their sum
# stays finite (two weights of 1e308 would sum to inf and normalise to 0).
MAX_WEIGHT = 1e6


def check_slots(template: str, slots: Sequence[str]) -> str:
    """A template must hold each slot exactly once, in the given order, and the reference slot
    at most once, anywhere."""
    for slot in slots:
        if template.count(slot) != 1:
            raise ValueError(f"user_template must contain {slot} exactly once")
    positions = [template.index(slot) for slot in slots]
    if positions != sorted(positions):
        raise ValueError(f"user_template must put {' before '.join(slots)}")
    if template.count(REFERENCE_SLOT) > 1:
        raise ValueError(f"user_template may contain {REFERENCE_SLOT} at most once")
    return template


def template_slots(template: str, slots: Sequence[str]) -> tuple[str, ...]:
    """The slots a checked template holds, in the order they appear: ``slots`` and, if the
    template places one, the reference slot among them."""
    present = [*slots, REFERENCE_SLOT] if REFERENCE_SLOT in template else list(slots)
    return tuple(sorted(present, key=template.index))


def _strings(value: object) -> Iterator[str]:
    """The text in a validated field's value (a string, or strings in a list or tuple)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


class _Part(BaseModel):
    """A block of a rubric: unknown keys refused, numbers not booleans, text encodable as UTF-8."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: object, info: ValidationInfo) -> object:
        # Pydantic reads true as 1 and false as 0: YAML's booleans would pass as numbers
        # (scale: {min: false, max: true} as the scale 0..1).
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError(f"{str(value).lower()} is a boolean; give a number")
        return value

    @field_validator("*")
    @classmethod
    def _utf8(cls, value: object) -> object:
        # YAML's "\ud800" escape makes a lone surrogate, which no tokenizer takes and no
        # answer can carry (JSON goes out as UTF-8): refused here, where the rubric is read.
        for text in _strings(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"text with a lone surrogate ({text[exc.start]!r} at character {exc.start}); "
                                 "write the character itself, not a \\ud800-style escape") from None
        return value


class ScaleSpec(_Part):
    min: int = Field(1, ge=0, le=MAX_SCALE_VALUE, description="lowest score label")
    max: int = Field(10, le=MAX_SCALE_VALUE, description="highest score label")

    @model_validator(mode="after")
    def _ordered(self) -> ScaleSpec:
        if self.max <= self.min:
            raise ValueError(f"scale max ({self.max}) must be above min ({self.min})")
        labels = self.max - self.min + 1
        if labels > MAX_SCALE_LABELS:
            raise ValueError(f"scale {self.min}..{self.max} has {labels} labels; a scale has at most "
                             f"{MAX_SCALE_LABELS} (each label is read for every item)")
        return self

    def to_scale(self) -> Scale:
        return Scale(self.min, self.max)


class ReasoningSpec(_Part):
    """Reasoned judgements: the labeler writes a rationale first, then the label is read.

    The rendered input ends where the labeler's answer begins (the user message carries
    ``instruction`` after the template, or, with ``thinking``, the chat template opens its
    thinking block). The labeler generates up to ``max_tokens`` tokens, cut before the first
    ``stop`` string; the server then appends ``close`` and the form's answer prefix as
    trusted token ids and reads the label distribution exactly at that position, never
    from the rationale's text. With ``samples`` > 1 that many rationales are sampled and
    their exact distributions averaged.
    """

    instruction: str = Field(
        "First explain briefly what the reply does well and badly, then give the rating.",
        description="Appended to the user message after the template: what to reason about before answering.")
    max_tokens: int = Field(
        128, ge=0, le=8192, description="Rationale budget in tokens; it counts towards max_input_tokens (the "
        "labeler input as read is rendered input + rationale + answer prefix). 0: no rationale, the label is "
        "read right after the instruction.")
    samples: int = Field(1, ge=1, le=16, description="Rationales per item; their exact distributions are "
                         "averaged. More than 1 needs temperature > 0.")
    temperature: float = Field(0.0, ge=0.0, le=4.0, description="0: greedy (deterministic); above 0: sampled "
                               "with a seed derived from the item and the request's seed.")
    stop: list[Annotated[str, StringConstraints(max_length=200)]] | None = Field(
        None, max_length=8, description="Where the rationale ends (the stop text is not part of it); default: "
        "the form's answer prefix without trailing spaces (\"Rating:\"), or \"</think>\" with thinking.")
    close: str | None = Field(
        None, max_length=200, description="Trusted text the server appends after the rationale, before the "
        "answer prefix; default: a newline, or \"</think>\\n\\n\" with thinking.")
    thinking: bool = Field(
        False, description="Use the labeler's own thinking block (a chat template with a Qwen3-style "
        "enable_thinking switch) instead of asking in the user message; instruction may then be empty.")

    @model_validator(mode="after")
    def _consistent(self) -> ReasoningSpec:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"reasoning.samples={self.samples} needs temperature > 0: greedy rationales would "
                             "all be the same")
        if not self.thinking and not self.instruction.strip():
            raise ValueError("reasoning.instruction is empty: say what to reason about (or set thinking: true)")
        if self.stop is not None and any(not s.strip() for s in self.stop):
            raise ValueError("reasoning.stop strings must not be empty or whitespace")
        return self

    def stop_strings(self, answer_prefix: str) -> list[str]:
        """The stop strings in force for a form with this answer prefix."""
        if self.stop is not None:
            return list(self.stop)
        return ["</think>"] if self.thinking else [answer_prefix.rstrip() or answer_prefix]

    def close_text(self) -> str:
        if self.close is not None:
            return self.close
        return "</think>\n\n" if self.thinking else "\n"


class CompareSpec(_Part):
    """The pairwise form of a rubric: which of two responses is better by the same criteria.

    ``user_template`` holds ``{prompt}``, ``{response_a}`` and ``{response_b}`` exactly once
    each, in that order; the response shown first fills ``{response_a}``. The labeler's
    answer after ``answer_prefix`` is read as the probabilities of the two ``labels``: the
    first label means "the response shown first is better", the second the other one.
    """

    system: str = Field(description="system preamble: the comparison task and what 'better' means")
    user_template: str
    answer_prefix: str = "Preferred: "
    labels: tuple[str, str] = Field(("1", "2"), description="answers naming the first / second response")
    reasoning: ReasoningSpec | None = Field(
        None, description="the pairwise form's own reasoning; default: the rubric's reasoning block")

    @field_validator("user_template")
    @classmethod
    def _slots_once(cls, template: str) -> str:
        return check_slots(template, PAIR_SLOTS)

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: tuple[str, str]) -> tuple[str, str]:
        if not all(labels) or labels[0] == labels[1]:
            raise ValueError(f"compare labels must be two different non-empty strings, got {list(labels)}")
        return labels


class GuardSpec(_Part):
    """How a rubric keeps text inside the response from setting its score (reward hacking).

    Measured with ``bench/injection.py``: on small labelers no wording of the instructions
    stops a response that says "Rating: 10" from being copied, so the working defence is a
    second exact read of the response without the text that addresses the judge
    (``server.rubrics.judge_text``) and taking the lower of the two rewards.
    """

    judge_text: bool = Field(
        True, description="Find the segments of a response that talk to the judge (ratings, instructions "
        "to the evaluator, chat markup, fake slot tags, self-assessment) and read the response a second time "
        "without them: that read is reward_robust. Responses without such text are read once.")
    reward: Literal["min", "as_written"] = Field(
        "min", description="The reward reported: min = the lower of the read as written and reward_robust, so "
        "text aimed at the judge can lower a reward but never raise it; as_written = the read as written.")
    escape_confusables: bool = Field(
        True, description="Escape look-alike variants of a slot's closing tag (fullwidth or angle brackets, "
        "zero-width characters, case, spaces) as well as the exact one, so none can end the slot early.")

    @model_validator(mode="after")
    def _min_needs_second_read(self) -> GuardSpec:
        if self.reward == "min" and not self.judge_text:
            raise ValueError("guard.reward 'min' needs guard.judge_text: true (set reward: as_written to turn "
                             "the defence off)")
        return self


Aggregate = Literal["weighted_mean", "min", "geometric_mean", "sample"]


class PrincipleSpec(_Part):
    """One principle of a constitution: its own question after the shared item text, read exactly."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="how results and logs name it")
    weight: float = Field(1.0, description="its share of the aggregate (normalised to sum to 1); "
                          f"positive, at most {MAX_WEIGHT:g}")
    instruction: str = Field("", description="the question for this principle, asked after the item")
    compare_instruction: str | None = Field(
        None, description="the pairwise form's question for this principle; default: the instruction")


class Rubric(_Part):
    """One constitution, as loaded from YAML.

    ``user_template`` holds the slots ``{prompt}`` and ``{response}`` exactly once each;
    they are filled with request text as data (never formatted, never parsed as chat
    template). ``answer_prefix`` is what the labeler's answer starts with; the score
    label is read right after it. ``compare``, when present, is the rubric's pairwise
    form, used by ``POST /compare``. ``guard`` is the defence against responses that talk
    to the judge; it is on by default for every rubric. ``reasoning``, when present, has
    the labeler write a rationale before the label is read.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    system: str = Field(description="system preamble: the task and the rating dimensions")
    user_template: str
    answer_prefix: str = "Rating: "
    scale: ScaleSpec = ScaleSpec()
    compare: CompareSpec | None = None
    guard: GuardSpec = GuardSpec()
    reasoning: ReasoningSpec | None = Field(
        None, description="reason before the label read (see ReasoningSpec); absent: one direct read")
    principles: list[PrincipleSpec] | None = Field(
        None, description="a constitution: one exact read per principle (its instruction after the shared "
        "item text), aggregated; absent: one read with the template's own question")
    aggregate: Aggregate = Field(
        "weighted_mean", description="how principles combine: weighted_mean of expected scores, min (the worst "
        "principle decides), geometric_mean of the label distributions, or sample (one principle per item, "
        "drawn by weight with a seed, as in Constitutional AI)")
    group_pairwise: bool = Field(
        False, description="judge /score's items within their prompt groups by default: each response compared "
        "with the others given for its prompt, its reward its mean win probability (needs a compare section; "
        "a request's group_pairwise overrides it)")

    @field_validator("user_template")
    @classmethod
    def _slots_once(cls, template: str) -> str:
        return check_slots(template, SLOTS)

    @model_validator(mode="after")
    def _reference_in_both_forms(self) -> Rubric:
        if self.compare is not None and (REFERENCE_SLOT in self.compare.user_template) != self.takes_reference:
            has, lacks = ("user_template", "compare.user_template") if self.takes_reference else \
                ("compare.user_template", "user_template")
            raise ValueError(f"rubric {self.name!r}: {has} places {REFERENCE_SLOT} and {lacks} does not; an item's "
                             "reference must reach both forms, or neither")
        return self

    @model_validator(mode="after")
    def _groups_compare(self) -> Rubric:
        if self.group_pairwise and self.compare is None:
            raise ValueError(f"rubric {self.name!r}: group_pairwise needs a compare section (the pairwise form "
                             "its groups are judged with)")
        return self

    @model_validator(mode="after")
    def _principles(self) -> Rubric:
        if self.principles is None:
            return self
        if not self.principles:
            raise ValueError(f"rubric {self.name!r}: principles is empty (leave it out for a single read)")
        seen: set[str] = set()
        for p in self.principles:
            if p.name in seen:
                raise ValueError(f"rubric {self.name!r}: principle {p.name!r} is defined twice")
            seen.add(p.name)
            if not p.instruction.strip():
                raise ValueError(f"rubric {self.name!r}: principle {p.name!r} has no instruction")
            if not (0 < p.weight <= MAX_WEIGHT):  # also refuses nan
                raise ValueError(f"rubric {self.name!r}: principle {p.name!r} has weight {p.weight}; "
                                 f"weights must be positive and at most {MAX_WEIGHT:g} (they are relative shares)")
        total = sum(p.weight for p in self.principles)
        if abs(total - 1.0) > 1e-6:
            log.warning("rubric %r: principle weights sum to %g; normalised to sum to 1", self.name, total)
            self.principles = [p.model_copy(update={"weight": p.weight / total}) for p in self.principles]
        return self

    @property
    def takes_reference(self) -> bool:
        """Whether the rubric shows each item's reference answer to the labeler: every item
        judged under it then needs one (422 ``reference_required`` otherwise)."""
        return REFERENCE_SLOT in self.user_template

    @property
    def pairwise_reasoning(self) -> ReasoningSpec | None:
        """How the pairwise form reasons: its own reasoning block, else the rating form's (None:
        it reads at once, as does a rubric without a pairwise form)."""
        if self.compare is None:
            return None
        return self.compare.reasoning or self.reasoning

    @property
    def principle_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.principles or ())
