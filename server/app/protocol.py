"""Wire format: pydantic models for every request and response.

Request models carry the configured limits (items per request, characters per field),
so they are built per app by :func:`request_models`; the JSON schema in /docs shows
the limits a given server enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_MESSAGES = 256


class ItemScore(BaseModel):
    reward: float = Field(description="Expected score mapped to [-1, 1].")
    score: float = Field(description="Expected score on the rubric's scale (1..10 by default).")
    distribution: list[float] = Field(description="Renormalised probability of each label, lowest first.")
    label_mass: float = Field(description="Probability on valid labels before renormalising.")
    input_tokens: int = Field(description="Labeler input length in tokens.")
    truncated: bool = Field(description="Prompt or response was cut to fit max_input_tokens.")


class ScaleInfo(BaseModel):
    min: int
    max: int


class ScoreResponse(BaseModel):
    results: list[ItemScore]
    rubric: str
    scale: ScaleInfo
    model: str


class RenderedItem(BaseModel):
    text: str = Field(description="The exact labeler input, up to the answer position.")
    input_ids: list[int]
    label_token_ids: dict[str, list[int]] = Field(description="Each label's tokens as they follow input_ids.")
    truncated: bool


class RenderResponse(BaseModel):
    results: list[RenderedItem]
    rubric: str


class RubricInfo(BaseModel):
    name: str
    description: str
    scale: ScaleInfo


class InfoResponse(BaseModel):
    version: str
    model: str
    backend: str
    dtype: str
    device: str
    default_rubric: str
    rubrics: list[RubricInfo]
    limits: dict[str, int | bool]
    ready: bool


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


@dataclass(frozen=True)
class RequestModels:
    score: type[BaseModel]


def request_models(max_items: int, max_chars: int) -> RequestModels:
    """Request models enforcing this server's limits in their schema."""
    Text = Annotated[str, StringConstraints(max_length=max_chars)]

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["system", "user", "assistant"]
        content: Text

    class ScoreItem(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: Text | Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] = Field(
            description="A string, an HH-style transcript, or a list of chat messages.")
        response: Text

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[ScoreItem] = Field(min_length=1, max_length=max_items)
        rubric: str | None = Field(None, description="Rubric name; the server's default when omitted.")

    return RequestModels(score=ScoreRequest)
