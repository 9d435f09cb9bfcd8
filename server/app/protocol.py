"""Wire format: pydantic models for every request and response.

Request models carry the configured limits (items per request, characters per field)
and the names of the loaded rubrics, so they are built per app by :func:`request_models`;
the JSON schema in /docs shows the limits and rubrics of a given server. They are strict
where the schema is: a boolean must be ``true`` or ``false`` (not ``0`` or ``"yes"``);
a number may be written as an integer (JSON has no separate float).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from server.backends.base import MAX_SEED

MAX_MESSAGES = 256


FinishReason = Literal["stop", "length", "eos", "none"]
FINISH_DESCRIPTION = ("Why the rationale ended: stop (at a stop string, which is not part of it), length (the "
                      "budget), eos (the labeler ended its turn), none (a budget of 0).")


class ReasonedSample(BaseModel):
    rationale: str = Field(description="The labeler's rationale, decoded from its own token ids.")
    label_input_ids: list[int] = Field(description="Every token id before the label read: the rendered input "
                                       "(/render's input_ids), the rationale's ids as generated, then the "
                                       "answer prefix the server appended.")
    distribution: list[float] = Field(description="This sample's renormalised label distribution, lowest "
                                      "label first.")
    score: float = Field(description="This sample's expected score.")
    label_mass: float = Field(description="This sample's probability on valid labels before renormalising.")
    finish_reason: FinishReason = Field(description=FINISH_DESCRIPTION)


class PrincipleScore(BaseModel):
    reward: float
    score: float
    distribution: list[float]
    label_mass: float


class JudgeTextSpan(BaseModel):
    start: int = Field(description="First character of the segment in the response (Unicode code points).")
    end: int = Field(description="One past its last character.")
    rule: str = Field(description="What it was found as: rating, instruction, self_assessment, markup, role, "
                      "slot_tag, continuation.")


class ItemScore(BaseModel):
    reward: float = Field(description="Expected score mapped to [-1, 1]. Under the rubric's default guard "
                          "(reward: min) the lower of reward_as_written and reward_robust. A constitution's is "
                          "the aggregate of its principles' rewards, each under the guard.")
    score: float = Field(description="Expected score on the rubric's scale (1..10 by default), of the read "
                         "that gave reward.")
    distribution: list[float] = Field(description="Renormalised probability of each label, lowest first.")
    label_mass: float = Field(description="Probability on valid labels before renormalising.")
    reward_as_written: float = Field(description="The reward of the response exactly as written.")
    reward_robust: float = Field(description="The reward of the response without the text in it that "
                                 "addresses the judge; equal to reward_as_written when there is none.")
    judge_spans: int = Field(description="Segments of the response that address the judge (ratings, "
                             "instructions to the evaluator, chat markup, fake slot tags, self-assessment).")
    judge_text: list[JudgeTextSpan] = Field(
        default_factory=list, description="Where the judge_spans segments are in the response (the text "
        "reward_robust reads without them); empty when there are none.")
    input_tokens: int = Field(description="Labeler input length in tokens.")
    truncated: bool = Field(description="Prompt or response was cut to fit max_input_tokens.")
    cached: bool = Field(description="Served from the exact reward cache: no read of this item was computed "
                         "for this request (the same labeler token ids were read before).")
    reasoning_tokens: int = Field(0, description="Rationale tokens the labeler generated for this item (every "
                                  "sample, both reads when the guard reads twice); 0 for a direct rubric.")
    sample_scores: list[float] | None = Field(
        None, description="Reasoning rubrics: each sample's expected score (distribution is their mean "
        "distribution, so score follows from that mean); null for a direct rubric.")
    score_spread: float | None = Field(None, description="Reasoning rubrics: the standard deviation of "
                                       "sample_scores (0 with one sample).")
    samples: list[ReasonedSample] | None = Field(
        None, description="Reasoning rubrics with return_rationale: each sample's rationale and read, of the "
        "read that gave reward.")
    principles: dict[str, PrincipleScore] | None = Field(
        None, description="Constitutions: each principle's own exact read (reward, score, distribution and "
        "label_mass, under the guard as for a whole rubric); reward, score, distribution and label_mass above "
        "are their aggregate. Null for a single-principle rubric.")


class ScaleInfo(BaseModel):
    min: int
    max: int


class ScoreResponse(BaseModel):
    results: list[ItemScore]
    rubric: str
    scale: ScaleInfo
    model: str


class RenderedSlot(BaseModel):
    name: str = Field(description="prompt, response (or response_a, response_b in a pairwise form).")
    start: int = Field(description="Where the slot's request text begins in text (Unicode code points).")
    end: int = Field(description="One past its last character.")
    token_start: int = Field(description="Where its tokens begin in input_ids.")
    token_end: int = Field(description="One past its last token.")


SLOTS_DESCRIPTION = ("Where the request text (untrusted) sits in text and input_ids, in slot order; all the rest "
                     "is the rubric's trusted text.")


class RenderedInput(BaseModel):
    text: str = Field(description="The exact labeler input, up to the answer position.")
    input_ids: list[int]
    slots: list[RenderedSlot] = Field(default_factory=list, description=SLOTS_DESCRIPTION)


class RenderedReasoning(BaseModel):
    answer_ids: list[int] = Field(description="The trusted ids the server appends after the rationale; the "
                                  "labels are read after them.")
    stop_ids: list[list[int]] = Field(description="Token sequences that end the rationale (each stop string "
                                      "in the contexts it may follow); they are not kept in it.")
    max_tokens: int = Field(description="The rationale budget.")
    samples: int
    temperature: float


class RenderedItem(BaseModel):
    text: str = Field(description="The exact labeler input, up to the answer position (reasoning rubrics: up "
                      "to where the rationale begins).")
    input_ids: list[int] = Field(description="Its token ids; for a reasoning rubric every sample's "
                                 "label_input_ids start with exactly these.")
    slots: list[RenderedSlot] = Field(default_factory=list, description=SLOTS_DESCRIPTION)
    label_token_ids: dict[str, list[int]] = Field(description="Each label's tokens as they follow input_ids "
                                                  "(reasoning rubrics: as they follow reasoning.answer_ids).")
    reasoning: RenderedReasoning | None = Field(
        None, description="Reasoning rubrics: how the label input continues after input_ids; null for direct.")
    principles: dict[str, RenderedInput] | None = Field(
        None, description="Constitutions: each principle's labeler input up to its answer position (text and "
        "input_ids above are the first principle's). Null for a single-principle rubric.")
    truncated: bool
    robust: RenderedInput | None = Field(
        description="The second labeler input, without the text addressed to the judge (reward_robust); null "
        "when the response has none or the rubric's guard is off.")


class RenderResponse(BaseModel):
    results: list[RenderedItem]
    rubric: str


class RubricInfo(BaseModel):
    name: str
    description: str
    scale: ScaleInfo
    compare: bool = Field(description="The rubric has a pairwise form (usable with /compare).")
    reasoning: bool = Field(False, description="The rubric reasons before its label read.")
    principles: dict[str, float] | None = Field(None, description="Constitutions: principle -> weight.")
    aggregate: str | None = Field(None, description="Constitutions: how the principles combine.")


class RubricLabResponse(BaseModel):
    """The rubric lab's answer: the rubric as the server compiled it, and the items' scores under it."""

    rubric: RubricInfo
    trusted_tokens: int = Field(description="Tokens of the rating form that are not request text (the trusted "
                                "pieces, a reasoned form's rationale budget and answer prefix, the longest "
                                "label); a constitution's longest principle.")
    results: list[ItemScore] = Field(description="As /score's results, in request order; empty when no items "
                                     "were sent (validation only).")
    model: str


class InfoResponse(BaseModel):
    version: str
    model: str
    backend: str
    dtype: str
    device: str
    default_rubric: str
    rubrics: list[RubricInfo]
    limits: dict[str, bool | int | float]
    ready: bool
    replicas: int = Field(1, description="Replicas serving this URL (a Ray Serve deployment: those running).")


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {"type": ..., "message": ...}}``."""

    error: ErrorBody


class HealthStatus(BaseModel):
    status: str = Field(description="alive (/health/live) or ready (/health/ready).")


class PairSample(BaseModel):
    rationale: str
    label_input_ids: list[int]
    distribution: list[float] = Field(description="(first shown is better, second shown is better), "
                                      "renormalised.")
    finish_reason: FinishReason = Field(description=FINISH_DESCRIPTION)


class PairSamples(BaseModel):
    ab: list[PairSample] = Field(description="With response A shown first.")
    ba: list[PairSample] | None = Field(description="With response A shown second; null when debias is off.")


class OrderValues(BaseModel):
    ab: float = Field(description="With response A shown first.")
    ba: float | None = Field(description="With response A shown second; null when debias is off.")


class PrinciplePreference(BaseModel):
    p_a: float
    orders: OrderValues
    consistent: bool | None
    label_mass: OrderValues


class ItemPreference(BaseModel):
    p_a: float = Field(description="Probability that response A is better: the mean of both orders when "
                       "debiased, else orders.ab.")
    orders: OrderValues = Field(description="P(A better) read in each order.")
    consistent: bool | None = Field(
        description="Both orders prefer the same response (null when debias is off).")
    label_mass: OrderValues = Field(description="Probability on the two answer labels before renormalising, "
                                    "per order.")
    input_tokens: int = Field(description="Labeler input length of one order, in tokens.")
    truncated: bool = Field(description="Prompt or a response was cut to fit max_input_tokens.")
    cached: bool = Field(description="Served from the exact reward cache (both orders, when debiased).")
    reasoning_tokens: int = Field(0, description="Rationale tokens generated for this pair (all samples of "
                                  "both orders); 0 for a direct rubric.")
    samples: PairSamples | None = Field(None, description="Reasoning rubrics with return_rationale: each "
                                        "order's samples.")
    principles: dict[str, PrinciplePreference] | None = Field(
        None, description="Constitutions: each principle's own debiased preference; p_a, orders, consistent "
        "and label_mass above are their aggregate. Null for a single-principle rubric.")


class CompareResponse(BaseModel):
    results: list[ItemPreference]
    rubric: str
    labels: list[str] = Field(
        description="The answer labels read: (first shown is better, second shown is better).")
    debiased: bool
    model: str


class RewardResponse(BaseModel):
    """OpenRLHF's remote reward answer."""

    rewards: list[float] = Field(description="The /score reward in [-1, 1] of each query.")
    scores: list[float] = Field(
        description="(reward + 1) / 2, in [0, 1] (OpenRLHF's dynamic filtering range).")
    extra_logs: dict[str, list[float]] = Field(description="Per-query values OpenRLHF logs: the expected "
                                               "score on the rubric's scale, the label mass, the reward as "
                                               "written and without text addressed to the judge.")


@dataclass(frozen=True)
class RequestModels:
    score: type[BaseModel]
    compare: type[BaseModel]
    reward: type[BaseModel]
    rubric_lab: type[BaseModel]
    rubrics: tuple[str, ...] | None = None  # the names published as the enum of rubric fields
    limits: dict[str, int | None] = field(default_factory=dict, compare=False, repr=False)

    def with_rubrics(self, rubrics: Sequence[str], compare_rubrics: Sequence[str]) -> RequestModels:
        """The same models, their schema naming these rubrics (the loaded registry)."""
        return request_models(**self.limits, rubrics=rubrics, compare_rubrics=compare_rubrics)


def rubric_name(names: Sequence[str] | None) -> Any:
    """The type of a rubric name: a string whose schema enumerates ``names`` (when there are any).

    Only the schema is constrained: the registry answers an unknown name with a 422 that lists
    the rubrics available, more helpful than a pydantic enum error.
    """
    if not names:
        return str
    return Annotated[str, WithJsonSchema({"type": "string", "enum": list(names)})]


def request_models(max_items: int, max_chars: int, max_queries: int | None = None,
                   rubrics: Sequence[str] | None = None,
                   compare_rubrics: Sequence[str] | None = None) -> RequestModels:
    """Request models enforcing this server's limits in their schema.

    ``max_items`` bounds /score, /render and /compare; ``max_queries`` (default ``max_items``)
    bounds /get_reward, whose caller (OpenRLHF) sends a whole rollout batch in one request. ``rubrics`` (and
    ``compare_rubrics``, those with a pairwise form) are published as the enum of the
    rubric fields; without them the schema allows any string.
    """
    Text = Annotated[str, StringConstraints(max_length=max_chars)]
    Rubric = rubric_name(rubrics)
    CompareRubric = rubric_name(compare_rubrics)
    strict = ConfigDict(extra="forbid", strict=True)

    class ChatMessage(BaseModel):
        model_config = strict
        role: Literal["system", "user", "assistant"]
        content: Text

    PromptField = Text | Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]

    class ReasoningSettings(BaseModel):
        """A request's reasoning settings, over the rubric's reasoning block (or over the
        defaults, which turns reasoning on for a direct rubric)."""

        model_config = strict
        instruction: Text | None = None
        max_tokens: int | None = Field(None, ge=0, le=8192)
        samples: int | None = Field(None, ge=1, le=16)
        temperature: float | None = Field(None, ge=0.0, le=4.0)
        stop: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
            None, max_length=8)
        close: Annotated[str, StringConstraints(max_length=200)] | None = None
        thinking: bool | None = None

    reasoning_field = Field(None, description="Reason before the label read (see the rubric's reasoning block: "
                            "instruction, max_tokens, samples, temperature, stop, close, thinking); the settings "
                            "given replace the rubric's own. {} turns reasoning on with the defaults.")
    seed_field = Field(None, ge=0, le=MAX_SEED, description="Seed of sampled rationales (temperature > 0): the "
                       "same request with the same seed gives the same reward; default 0. Each sample's own "
                       "seed is derived from it, the item's rendered ids and the sample's index.")
    principles_field = Field(None, min_length=1, max_length=64, description="Constitutions: read only these "
                             "principles (their numbers are unchanged; the aggregate is over them).")
    rationale_field = Field(False, description="Reasoning rubrics: return each sample's rationale, label input "
                            "ids and read.")
    prompt_description = "A string, an HH-style transcript, or a list of chat messages."
    rubric_description = "Rubric name; the server's default when omitted."

    class ScoreItem(BaseModel):
        model_config = strict
        prompt: PromptField = Field(description=prompt_description)
        response: Text

    class ScoreRequest(BaseModel):
        model_config = strict
        items: list[ScoreItem] = Field(min_length=1, max_length=max_items)
        rubric: Rubric | None = Field(None, description=rubric_description)
        reasoning: ReasoningSettings | None = reasoning_field
        seed: int | None = seed_field
        return_rationale: bool = rationale_field
        principles: list[Annotated[str, StringConstraints(max_length=64)]] | None = principles_field

    class CompareItem(BaseModel):
        model_config = strict
        prompt: PromptField = Field(description=prompt_description)
        response_a: Text
        response_b: Text

    class CompareRequest(BaseModel):
        model_config = strict
        items: list[CompareItem] = Field(min_length=1, max_length=max_items)
        rubric: CompareRubric | None = Field(
            None, description=rubric_description + " It must have a compare section.")
        debias: bool = Field(True, description="Read both orders (A first, then B first) and average them; "
                             "false reads only A first (half the cost, with the labeler's position bias).")
        reasoning: ReasoningSettings | None = reasoning_field
        seed: int | None = seed_field
        return_rationale: bool = rationale_field
        principles: list[Annotated[str, StringConstraints(max_length=64)]] | None = principles_field

    Query = Annotated[str, StringConstraints(max_length=2 * max_chars)]
    n_queries = max_queries or max_items

    class RewardRequest(BaseModel):
        """OpenRLHF's remote reward request (``--remote_rm_url http://host:port/get_reward``)."""

        # Other OpenRLHF versions may send more keys.
        model_config = ConfigDict(extra="ignore", strict=True)
        query: list[Query] = Field(min_length=1, max_length=n_queries,
                                   description="Prompt followed by the response, one per sample.")
        prompts: list[Text] = Field(
            max_length=n_queries, description="The prompt of each query, whole; the query may begin with "
            "only its end (OpenRLHF cuts long prompts from the left).")
        labels: list[Any] | None = Field(None, description="OpenRLHF's --label_key values; not used.")

    class RubricLabRequest(BaseModel):
        """A rubric in YAML, compiled for this request only, and items to score under it."""

        model_config = strict
        rubric_yaml: Annotated[str, StringConstraints(min_length=1, max_length=max_chars)] = Field(
            description="One rubric as in a --rubrics file; it may extend a loaded rubric by name.")
        items: list[ScoreItem] = Field(default_factory=list, max_length=max_items,
                                       description="Items to score; none: validate the rubric only.")
        seed: int | None = seed_field
        return_rationale: bool = rationale_field

    return RequestModels(
        score=ScoreRequest, compare=CompareRequest, reward=RewardRequest, rubric_lab=RubricLabRequest,
        rubrics=tuple(rubrics) if rubrics is not None else None,
        limits={"max_items": max_items, "max_chars": max_chars, "max_queries": max_queries})
