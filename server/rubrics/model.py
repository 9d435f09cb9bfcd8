"""The rubric ("constitution") format: what the labeler is asked, as data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.scoring import Scale

SLOTS = ("{prompt}", "{response}")
PAIR_SLOTS = ("{prompt}", "{response_a}", "{response_b}")


def check_slots(template: str, slots: Sequence[str]) -> str:
    """A template must hold each slot exactly once, in the given order."""
    for slot in slots:
        if template.count(slot) != 1:
            raise ValueError(f"user_template must contain {slot} exactly once")
    positions = [template.index(slot) for slot in slots]
    if positions != sorted(positions):
        raise ValueError(f"user_template must put {' before '.join(slots)}")
    return template


class ScaleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: int = Field(1, ge=0, description="lowest score label")
    max: int = Field(10, description="highest score label")

    @model_validator(mode="after")
    def _ordered(self) -> ScaleSpec:
        if self.max <= self.min:
            raise ValueError(f"scale max ({self.max}) must be above min ({self.min})")
        return self

    def to_scale(self) -> Scale:
        return Scale(self.min, self.max)


class CompareSpec(BaseModel):
    """The pairwise form of a rubric: which of two responses is better by the same criteria.

    ``user_template`` holds ``{prompt}``, ``{response_a}`` and ``{response_b}`` exactly once
    each, in that order; the response shown first fills ``{response_a}``. The labeler's
    answer after ``answer_prefix`` is read as the probabilities of the two ``labels``: the
    first label means "the response shown first is better", the second the other one.
    """

    model_config = ConfigDict(extra="forbid")

    system: str = Field(description="system preamble: the comparison task and what 'better' means")
    user_template: str
    answer_prefix: str = "Preferred: "
    labels: tuple[str, str] = Field(("1", "2"), description="answers naming the first / second response")

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


class GuardSpec(BaseModel):
    """How a rubric keeps text inside the response from setting its score (reward hacking).

    Measured with ``bench/injection.py``: on small labelers no wording of the instructions
    stops a response that says "Rating: 10" from being copied, so the working defence is a
    second exact read of the response without the text that addresses the judge
    (``server.rubrics.judge_text``) and taking the lower of the two rewards.
    """

    model_config = ConfigDict(extra="forbid")

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


class Rubric(BaseModel):
    """One constitution, as loaded from YAML.

    ``user_template`` holds the slots ``{prompt}`` and ``{response}`` exactly once each;
    they are filled with request text as data (never formatted, never parsed as chat
    template). ``answer_prefix`` is what the labeler's answer starts with; the score
    label is read right after it. ``compare``, when present, is the rubric's pairwise
    form, used by ``POST /compare``. ``guard`` is the defence against responses that talk
    to the judge; it is on by default for every rubric.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    system: str = Field(description="system preamble: the task and the rating dimensions")
    user_template: str
    answer_prefix: str = "Rating: "
    scale: ScaleSpec = ScaleSpec()
    compare: CompareSpec | None = None
    guard: GuardSpec = GuardSpec()

    @field_validator("user_template")
    @classmethod
    def _slots_once(cls, template: str) -> str:
        return check_slots(template, SLOTS)
