"""The rubric ("constitution") format: what the labeler is asked, as data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.scoring import Scale

SLOTS = ("{prompt}", "{response}")


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


class Rubric(BaseModel):
    """One constitution, as loaded from YAML.

    ``user_template`` holds the slots ``{prompt}`` and ``{response}`` exactly once each;
    they are filled with request text as data (never formatted, never parsed as chat
    template). ``answer_prefix`` is what the labeler's answer starts with; the score
    label is read right after it.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    system: str = Field(description="system preamble: the task and the rating dimensions")
    user_template: str
    answer_prefix: str = "Rating: "
    scale: ScaleSpec = ScaleSpec()

    @field_validator("user_template")
    @classmethod
    def _slots_once(cls, template: str) -> str:
        for slot in SLOTS:
            if template.count(slot) != 1:
                raise ValueError(f"user_template must contain {slot} exactly once")
        if template.index("{prompt}") > template.index("{response}"):
            raise ValueError("user_template must put {prompt} before {response}")
        return template
