"""drlaif's wire model: the pydantic models of every request and response.

One module for both ends. The server builds its responses with these models and publishes
them as its OpenAPI schema; the reward client (``drlaif/client.py``) builds its requests
with them and validates each answer against them (``strict``), so a field is added here once
and the client checks it as the schema says. A /score answer it reads as :data:`ScoreAnswer`,
derived from :class:`ScoreResponse`: any server's answer with a reward per item (a rule or a
verifier of the user's own), each field that is there checked as drlaif's own. It imports
pydantic and nothing heavier (no torch, no FastAPI): a trainer that only calls a server needs
nothing else of the server.

The request models here take any size. A server's own (:func:`request_models`) are
subclasses that carry its limits (items per request, characters per field) and name its
rubrics, so the JSON schema in /docs shows the limits of that server. Both are strict where
the schema is: a boolean must be ``true`` or ``false`` (not ``0`` or ``"yes"``); a number may
be written as an integer (JSON has no separate float).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, create_model

MAX_MESSAGES = 256
#: The largest seed a request may carry: vLLM takes seeds as 64-bit integers and reads -1 as
#: "no seed".
MAX_SEED = 2**63 - 1

#: A prompt as callers pass it: a string (plain or an HH-RLHF transcript) or chat messages,
#: each a mapping with ``role`` and ``content``.
Prompt = str | Sequence[Mapping[str, str]]

#: The per-item rewards a drlaif server reports, any of which a trainer may optimise.
REWARD_FIELDS = ("reward", "reward_robust", "reward_as_written")

# Rounding slack on a probability sum (label mass): it is a float sum of exponentials.
_MASS_SLACK = 1e-6
Reward = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0 + _MASS_SLACK, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]

M = TypeVar("M", bound=BaseModel)


#: Why a rationale ended (a backend's generation ends with the first three).
FinishReason = Literal["stop", "length", "eos", "none"]
FINISH_DESCRIPTION = ("Why the rationale ended: stop (at a stop string, which is not part of it), length (the "
                      "budget), eos (the labeler ended its turn), none (a budget of 0).")


class ReasonedSample(BaseModel):
    rationale: str = Field(description="The labeler's rationale, decoded from its own token ids.")
    label_input_ids: list[int] = Field(description="Every token id before the label read: the rendered input "
                                       "(/render's input_ids), the rationale's ids as generated, then the "
                                       "answer prefix the server appended.")
    distribution: list[Probability] = Field(description="This sample's renormalised label distribution, lowest "
                                            "label first.")
    score: Finite = Field(description="This sample's expected score.")
    label_mass: Probability = Field(description="This sample's probability on valid labels before "
                                    "renormalising.")
    finish_reason: FinishReason = Field(description=FINISH_DESCRIPTION)


class LabelRead(BaseModel):
    """An item's read on the rubric's scale: the fields every /score result and every
    principle of a constitution's result have. The server fills them from the scoring
    math's result by name (``server/scoring/reward.py: ScoreResult``)."""

    reward: Reward = Field(description="Expected score mapped to [-1, 1].")
    score: Finite = Field(description="Expected score on the rubric's scale (1..10 by default).")
    distribution: list[Probability] = Field(min_length=1, description="Renormalised probability of each "
                                            "label, lowest first.")
    label_mass: Probability = Field(description="Probability on valid labels before renormalising (low: the "
                                    "labeler is not answering on the scale; distrust the score).")
    label_entropy: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = Field(
        description="Entropy of distribution in nats: 0 when the labeler is sure of one label, ln(labels) "
        "when it spreads evenly over them.")


class PrincipleScore(LabelRead):
    """A constitution's principle read on its own, under the guard as a whole rubric is."""


class JudgeTextSpan(BaseModel):
    start: int = Field(description="First character of the segment in the response (Unicode code points).")
    end: int = Field(description="One past its last character.")
    rule: str = Field(description="What it was found as: rating, instruction, self_assessment, markup, role, "
                      "slot_tag, continuation.")


class GroupPair(BaseModel):
    opponent: Count = Field(description="The other response's index in the request's items.")
    p_win: Probability = Field(description="P(this response better): /compare's debiased p_a with this response "
                               "as A and the opponent as B.")
    consistent: bool = Field(description="Both orders preferred the same response.")


class GroupJudgement(BaseModel):
    """A response judged against the others given for its prompt (group_pairwise)."""

    group: Count = Field(description="The prompt group's index, groups numbered in order of their first item.")
    reward: Reward = Field(description="2 * win_rate - 1: the item's reward in group-pairwise judging.")
    win_rate: Probability = Field(description="The mean of p_win over this response's opponents.")
    opponents: Count = Field(description="How many of its group it was compared with (both orders each).")
    pairs: list[GroupPair] | None = Field(None, description="Each pair, with return_pairs; else null.")


class ItemScore(LabelRead):
    """One /score result. reward, score, distribution, label_mass and label_entropy are those of
    the read that gave reward: under the rubric's default guard (reward: min) the lower of
    reward_as_written and reward_robust; a constitution's are the aggregate of its principles'
    reads, each under the guard. In group-pairwise judging reward is group.reward instead."""

    reward_as_written: Reward = Field(description="The reward of the response exactly as written.")
    reward_robust: Reward = Field(description="The reward of the response without the text in it that "
                                  "addresses the judge; equal to reward_as_written when there is none.")
    judge_spans: Count = Field(description="Segments of the response that address the judge (ratings, "
                             "instructions to the evaluator, chat markup, fake slot tags, self-assessment).")
    judge_text: list[JudgeTextSpan] = Field(
        default_factory=list, description="Where the judge_spans segments are in the response (the text "
        "reward_robust reads without them); empty when there are none.")
    input_tokens: Count = Field(description="Labeler input length in tokens.")
    truncated: bool = Field(description="Prompt or response was cut to fit max_input_tokens.")
    cached: bool = Field(description="Served from the exact reward cache: no read of this item was computed "
                         "for this request (the same labeler token ids were read before).")
    reasoning_tokens: Count = Field(0, description="Rationale tokens the labeler generated for this item (every "
                                  "sample, both reads when the guard reads twice); 0 for a direct rubric.")
    sample_scores: list[Finite] | None = Field(
        None, description="Reasoning rubrics: each sample's expected score (distribution is their mean "
        "distribution, so score follows from that mean); null for a direct rubric.")
    score_spread: Finite | None = Field(None, description="Reasoning rubrics: the standard deviation of "
                                       "sample_scores (0 with one sample).")
    samples: list[ReasonedSample] | None = Field(
        None, description="Reasoning rubrics with return_rationale: each sample's rationale and read, of the "
        "read that gave reward.")
    principles: dict[str, PrincipleScore] | None = Field(
        None, description="Constitutions: each principle's own exact read (reward, score, distribution and "
        "label_mass, under the guard as for a whole rubric); reward, score, distribution and label_mass above "
        "are their aggregate. Null for a single-principle rubric.")
    group: GroupJudgement | None = Field(
        None, description="Group-pairwise judging (group_pairwise): the response against the others of its prompt; "
        "reward is then group.reward, and the other fields are the response's own direct read. Null otherwise.")

    def value(self, name: str) -> float:
        """One of :data:`REWARD_FIELDS`, the reward a trainer optimises."""
        if name not in REWARD_FIELDS:
            raise ValueError(f"unknown reward field {name!r}; choose from {', '.join(REWARD_FIELDS)}")
        return getattr(self, name)


class ScaleInfo(BaseModel):
    min: int
    max: int


#: How a server read its label probabilities (see READ_DESCRIPTION).
ReadKind = Literal["exact", "approximate"]
READ_DESCRIPTION = (
    "exact: every label probability is the labeler's own. approximate: the server reads them from an inference "
    "server that shows only its top few next tokens (--backend openai with top reads), so a label outside them "
    "counted as probability 0; label_mass says how much of the labels it saw.")


class ScoreResponse(BaseModel):
    results: list[ItemScore]
    rubric: str
    scale: ScaleInfo
    model: str
    read: ReadKind = Field("exact", description=READ_DESCRIPTION)


# -- what a client accepts of a /score answer ---------------------------------------------------


class MissingField(ValueError):
    """A field the caller asked for that the server's /score result did not send."""


def _lenient(model: type[BaseModel], name: str, doc: str, base: type[BaseModel] = BaseModel,
             **required: Any) -> type[BaseModel]:
    """A model with ``model``'s fields in which only ``required`` (name -> type) must be present:
    every other field may be absent (None), and is checked as ``model`` checks it when present
    (an explicit null too, where ``model`` refuses one: a default is not validated, a value is)."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        if field_name in required:
            fields[field_name] = (required[field_name], copy.copy(info))
        else:
            kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[field_name] = (kind, Field(None, description=info.description))
    return create_model(name, __base__=base, __doc__=doc, **fields)


class _Answer(BaseModel):
    def value(self, name: str) -> float:
        """One of :data:`REWARD_FIELDS`; :class:`MissingField` when the server did not send it."""
        if name not in REWARD_FIELDS:
            raise ValueError(f"unknown reward field {name!r}; choose from {', '.join(REWARD_FIELDS)}")
        value = getattr(self, name)
        if value is None:
            raise MissingField(f"the reward server's /score result has no {name} (it sends only some fields); "
                               f"ask for reward_field 'reward', the one field every /score result carries")
        return value


_LENIENT_DOC = ("{}, as the reward client accepts it from any server: only reward is required; a field that is "
                "present is checked as drlaif's own answer's is, and one that is absent is None.")
#: A constitution's principle read, as the client accepts it: only ``reward`` is required.
PrincipleAnswer = _lenient(PrincipleScore, "PrincipleAnswer", _LENIENT_DOC.format("A principle's read"),
                           reward=Reward)
#: One /score result as the client accepts it: only ``reward`` is required (see :class:`ItemScore`
#: for every field); :meth:`value` names a reward field the server did not send.
ItemAnswer = _lenient(ItemScore, "ItemAnswer", _LENIENT_DOC.format("One /score result"), base=_Answer,
                      reward=Reward, principles=dict[str, PrincipleAnswer] | None)
#: A /score answer as the client accepts it: ``results`` (each with a ``reward``) is required;
#: ``rubric``, ``scale`` and ``model`` may be absent.
ScoreAnswer = _lenient(ScoreResponse, "ScoreAnswer", _LENIENT_DOC.format("A /score answer"),
                       results=list[ItemAnswer])


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
    group_pairwise: bool = Field(False, description="The rubric judges rewards group-pairwise by default: the "
                                 "responses to one prompt compared with each other (a request may override it).")
    takes_reference: bool = Field(False, description="The rubric judges each response against the item's "
                                  "reference answer: every item needs a reference.")


class RubricLabResponse(BaseModel):
    """The rubric lab's answer: the rubric as the server compiled it, and the items' scores under it."""

    rubric: RubricInfo
    trusted_tokens: int = Field(description="Tokens of the rating form that are not request text (the trusted "
                                "pieces, a reasoned form's rationale budget and answer prefix, the longest "
                                "label); a constitution's longest principle.")
    results: list[ItemScore] = Field(description="As /score's results, in request order; empty when no items "
                                     "were sent (validation only).")
    model: str
    read: ReadKind = Field("exact", description=READ_DESCRIPTION)


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
    read: ReadKind = Field("exact", description=READ_DESCRIPTION)


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
    distribution: list[Probability] = Field(description="(first shown is better, second shown is better), "
                                            "renormalised.")
    finish_reason: FinishReason = Field(description=FINISH_DESCRIPTION)


class PairSamples(BaseModel):
    ab: list[PairSample] = Field(description="With response A shown first.")
    ba: list[PairSample] | None = Field(description="With response A shown second; null when debias is off.")


class OrderValues(BaseModel):
    ab: Probability = Field(description="With response A shown first.")
    ba: Probability | None = Field(description="With response A shown second; null when debias is off.")


class PrinciplePreference(BaseModel):
    p_a: Probability
    orders: OrderValues
    consistent: bool | None
    label_mass: OrderValues


class ItemPreference(BaseModel):
    p_a: Probability = Field(description="Probability that response A is better: the mean of both orders when "
                       "debiased, else orders.ab.")
    orders: OrderValues = Field(description="P(A better) read in each order.")
    consistent: bool | None = Field(
        description="Both orders prefer the same response (null when debias is off).")
    label_mass: OrderValues = Field(description="Probability on the two answer labels before renormalising, "
                                    "per order.")
    input_tokens: Count = Field(description="Labeler input length of one order, in tokens.")
    truncated: bool = Field(description="Prompt or a response was cut to fit max_input_tokens.")
    cached: bool = Field(description="Served from the exact reward cache (both orders, when debiased).")
    reasoning_tokens: Count = Field(0, description="Rationale tokens generated for this pair (all samples of "
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
    read: ReadKind = Field("exact", description=READ_DESCRIPTION)


class RewardResponse(BaseModel):
    """OpenRLHF's remote reward answer."""

    rewards: list[Reward] = Field(description="The /score reward in [-1, 1] of each query.")
    scores: list[Probability] = Field(
        description="(reward + 1) / 2, in [0, 1] (OpenRLHF's dynamic filtering range).")
    extra_logs: dict[str, list[float]] = Field(description="Per-query values OpenRLHF logs: the expected "
                                               "score on the rubric's scale, the label mass, the reward as "
                                               "written and without text addressed to the judge.")


# -- requests --------------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", strict=True)
PROMPT_DESCRIPTION = "A string, an HH-style transcript, or a list of chat messages."
RUBRIC_DESCRIPTION = "Rubric name; the server's default when omitted."


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant"]
    content: str


class ReasoningSettings(BaseModel):
    """A request's reasoning settings, over the rubric's reasoning block (or over the
    defaults, which turns reasoning on for a direct rubric)."""

    model_config = _STRICT
    instruction: str | None = None
    max_tokens: int | None = Field(None, ge=0, le=8192)
    samples: int | None = Field(None, ge=1, le=16)
    temperature: float | None = Field(None, ge=0.0, le=4.0)
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(None, max_length=8)
    close: Annotated[str, StringConstraints(max_length=200)] | None = None
    thinking: bool | None = None


def _reasoning_field() -> Any:
    return Field(None, description="Reason before the label read (see the rubric's reasoning block: instruction, "
                 "max_tokens, samples, temperature, stop, close, thinking); the settings given replace the "
                 "rubric's own. {} turns reasoning on with the defaults.")


def _seed_field() -> Any:
    return Field(None, ge=0, le=MAX_SEED, description="Seed of sampled rationales (temperature > 0): the same "
                 "request with the same seed gives the same reward; default 0. Each sample's own seed is "
                 "derived from it, the item's rendered ids and the sample's index.")


def _principles_field() -> Any:
    return Field(None, min_length=1, max_length=64, description="Constitutions: read only these principles "
                 "(their numbers are unchanged; the aggregate is over them).")


def _rationale_field() -> Any:
    return Field(False, description="Reasoning rubrics: return each sample's rationale, label input ids and read.")


WirePrompt = str | Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
PrincipleName = Annotated[str, StringConstraints(max_length=64)]


REFERENCE_DESCRIPTION = (
    "The task's reference answer (a gold answer, a reference summary or solution), for rubrics that judge "
    "against one ({reference} in their template; /info lists them with takes_reference): trusted text from "
    "your dataset, shown to the labeler where the rubric places it, never cut. Required by such rubrics "
    "(422 reference_required), refused by the others (422 reference_unused).")


class ScoreItem(BaseModel):
    model_config = _STRICT
    prompt: WirePrompt = Field(description=PROMPT_DESCRIPTION)
    response: str
    reference: str | None = Field(None, description=REFERENCE_DESCRIPTION)


#: The most opponents per response a group-pairwise request may ask for (its labeler work per
#: response grows with them): every pair of groups of up to 17, a sample of larger ones.
MAX_GROUP_OPPONENTS = 16


class ScoreRequest(BaseModel):
    """/score (and /render): items to judge, each on its own."""

    model_config = _STRICT
    items: list[ScoreItem] = Field(min_length=1)
    rubric: str | None = Field(None, description=RUBRIC_DESCRIPTION)
    reasoning: ReasoningSettings | None = _reasoning_field()
    seed: int | None = _seed_field()
    return_rationale: bool = _rationale_field()
    principles: list[PrincipleName] | None = _principles_field()
    group_pairwise: bool | None = Field(
        None, description="Judge the items within their prompt groups (items with the same prompt): each "
        "response compared, in both orders, with others of its group; its reward its mean win probability mapped "
        "to [-1, 1] (see group in the results). Null: the rubric's default. Needs a rubric with a compare "
        "section and at least 2 responses per prompt.")
    group_opponents: int | None = Field(
        None, ge=1, le=MAX_GROUP_OPPONENTS, description="Group-pairwise: opponents per response; null: the server's "
        "--group-opponents (4 by default). Each response meets its ceil(k/2) neighbours either side of a circle of "
        "its group, so a response costs about k pair reads whatever the group's size; k >= n - 1 compares every "
        f"pair of a group of n. At most {MAX_GROUP_OPPONENTS}: every pair of a larger group costs more per response "
        "than one request may ask.")
    return_pairs: bool = Field(False, description="Group-pairwise: return each response's pairs.")


class CompareItem(BaseModel):
    model_config = _STRICT
    prompt: WirePrompt = Field(description=PROMPT_DESCRIPTION)
    response_a: str
    response_b: str
    reference: str | None = Field(None, description=REFERENCE_DESCRIPTION)


class CompareRequest(BaseModel):
    """/compare: pairs of responses to one prompt."""

    model_config = _STRICT
    items: list[CompareItem] = Field(min_length=1)
    rubric: str | None = Field(None, description=RUBRIC_DESCRIPTION + " It must have a compare section.")
    debias: bool = Field(True, description="Read both orders (A first, then B first) and average them; false "
                         "reads only A first (half the cost, with the labeler's position bias).")
    reasoning: ReasoningSettings | None = _reasoning_field()
    seed: int | None = _seed_field()
    return_rationale: bool = _rationale_field()
    principles: list[PrincipleName] | None = _principles_field()


class RewardRequest(BaseModel):
    """OpenRLHF's remote reward request (``--remote_rm_url http://host:port/get_reward``)."""

    # Other OpenRLHF versions may send more keys.
    model_config = ConfigDict(extra="ignore", strict=True)
    query: list[str] = Field(min_length=1, description="Prompt followed by the response, one per sample.")
    prompts: list[str] = Field(description="The prompt of each query, whole; the query may begin with only its "
                               "end (OpenRLHF cuts long prompts from the left).")
    labels: list[Any] | None = Field(
        None, description="OpenRLHF's --label_key values, one per query: each query's reference answer for a rubric "
        "that judges against one ({reference} in its template); ignored by the others, which never see it. A "
        "number is read as its decimal text.")


class RubricLabRequest(BaseModel):
    """A rubric in YAML, compiled for this request only, and items to score under it."""

    model_config = _STRICT
    rubric_yaml: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="One rubric as in a --rubrics file; it may extend a loaded rubric by name.")
    items: list[ScoreItem] = Field(default_factory=list, description="Items to score; none: validate the rubric "
                                   "only.")
    seed: int | None = _seed_field()
    return_rationale: bool = _rationale_field()


@dataclass(frozen=True)
class RequestModels:
    """One server's request models: subclasses of the models above carrying its limits."""

    score: type[ScoreRequest]
    compare: type[CompareRequest]
    reward: type[RewardRequest]
    rubric_lab: type[RubricLabRequest]
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


def _narrowed(model: type[M], **types: Any) -> type[M]:
    """A subclass of ``model`` (same name in the schema) whose named fields take these types;
    each field keeps its default, description and constraints, and adds the type's own."""
    return create_model(model.__name__, __base__=model,
                        **{name: (kind, copy.copy(model.model_fields[name])) for name, kind in types.items()})


def request_models(max_items: int, max_chars: int, max_queries: int | None = None,
                   rubrics: Sequence[str] | None = None,
                   compare_rubrics: Sequence[str] | None = None) -> RequestModels:
    """The request models of a server with these limits, whose schema shows them.

    ``max_items`` bounds /score, /render and /compare; ``max_queries`` (default ``max_items``)
    bounds /get_reward, whose caller (OpenRLHF) sends a whole rollout batch in one request.
    ``max_chars`` bounds each text field. ``rubrics`` (and ``compare_rubrics``, those with a
    pairwise form) are published as the enum of the rubric fields; without them the schema
    allows any string.
    """
    Text = Annotated[str, StringConstraints(max_length=max_chars)]
    message = _narrowed(ChatMessage, content=Text)
    prompt = Text | Annotated[list[message], Field(min_length=1, max_length=MAX_MESSAGES)]
    reasoning = _narrowed(ReasoningSettings, instruction=Text | None)
    score_item = _narrowed(ScoreItem, prompt=prompt, response=Text, reference=Text | None)
    compare_item = _narrowed(CompareItem, prompt=prompt, response_a=Text, response_b=Text, reference=Text | None)
    items = Annotated[list[score_item], Field(max_length=max_items)]
    n_queries = max_queries or max_items
    return RequestModels(
        score=_narrowed(ScoreRequest, items=items, rubric=rubric_name(rubrics) | None,
                        reasoning=reasoning | None),
        compare=_narrowed(CompareRequest, rubric=rubric_name(compare_rubrics) | None, reasoning=reasoning | None,
                          items=Annotated[list[compare_item], Field(max_length=max_items)]),
        reward=_narrowed(RewardRequest,
                         query=Annotated[list[Annotated[str, StringConstraints(max_length=2 * max_chars)]],
                                         Field(max_length=n_queries)],
                         prompts=Annotated[list[Text], Field(max_length=n_queries)]),
        rubric_lab=_narrowed(RubricLabRequest, rubric_yaml=Text, items=items),
        rubrics=tuple(rubrics) if rubrics is not None else None,
        limits={"max_items": max_items, "max_chars": max_chars, "max_queries": max_queries})
