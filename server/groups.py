"""Group-pairwise judging: the items of one request grouped by prompt, and each response
compared with others of its group (``server.scoring.group``) through the pipeline /compare
uses, so each pair's probability is /compare's for the same pair and the reward cache serves
pairs seen before. It knows nothing of HTTP.

The guard applies to each response as in /score: text in it that addresses the judge (when
the rubric's guard looks for it) is cut out before the response is compared, so a response
cannot win its pairs by talking to the judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drlaif.protocol import Prompt
from server.errors import GroupTooSmall
from server.pairwise import ComparedItem, compare
from server.rubrics.judge_text import find_judge_text, without_spans
from server.rubrics.model import Rubric
from server.scorer import References, Scorer, prompt_groups
from server.scoring.group import GroupReward, group_rewards, pair_schedule


@dataclass(frozen=True)
class PairOutcome:
    """One pair from the side of one of its responses: P(this response better) against ``opponent``."""

    opponent: int  # the other response's index in the request
    p_win: float
    compared: ComparedItem  # the pair's /compare result, with this response as A when it was listed first


@dataclass(frozen=True)
class GroupJudgement:
    """One item's judgement in its group: its reward from its pairs, and the pairs."""

    group: int  # the group's index, groups numbered in order of their first item
    reward: GroupReward
    pairs: tuple[PairOutcome, ...]


def pairs_per_group(sizes: Sequence[int], opponents: int | None) -> int:
    """How many pairs a request of groups of these sizes is judged on (two reads each)."""
    return sum(len(pair_schedule(n, opponents)) for n in sizes)


@dataclass(frozen=True)
class GroupPlan:
    """What :func:`judge_in_groups` needs of a request, checked before any read starts."""

    groups: list[list[int]]  # item indices by prompt, each group at least two
    slot_tags: tuple[str, ...] | None  # the pairwise form's slot tags when the guard cuts judge text


#: What a /score request with a lone response can do instead.
SCORE_WAY_OUT = 'send at least 2 responses per prompt in one request, or score directly ("group_pairwise": false)'


def plan_groups(scorer: Scorer, rubric: Rubric, items: Sequence[tuple[Prompt, str]],
                principles: Sequence[str] | None = None, way_out: str = SCORE_WAY_OUT,
                references: References = None) -> GroupPlan:
    """The request's prompt groups; RubricCannotCompare when the rubric has no pairwise form,
    GroupTooSmall when a prompt has one response only, its message ending with ``way_out``
    (what the caller can do instead, in the terms of its endpoint)."""
    compiled = (next(iter(scorer.compiled_principles(rubric, pairwise=True).values()))
                if scorer.chosen_principles(rubric, principles) else scorer.compiled_comparison(rubric))
    groups = prompt_groups(items, references)
    lonely = [g[0] for g in groups if len(g) < 2]
    if lonely:
        raise GroupTooSmall(f"group-pairwise judging compares the responses to one prompt with each other, and "
                            f"item {lonely[0]} is the only response to its prompt ({len(lonely)} such item(s)); "
                            f"{way_out}")
    return GroupPlan(groups, compiled.slot_tags if rubric.guard.judge_text else None)


async def judge_in_groups(scorer: Scorer, rubric: Rubric, items: Sequence[tuple[Prompt, str]], plan: GroupPlan,
                          *, opponents: int | None = None, seed: int | None = None,
                          principles: Sequence[str] | None = None,
                          references: References = None) -> list[GroupJudgement]:
    """Each item's group-relative reward (see ``server.scoring.group``), in item order, for the
    groups of ``plan`` (:func:`plan_groups` of the same request)."""
    groups, tags = plan.groups, plan.slot_tags
    texts = [r if tags is None else without_spans(r, find_judge_text(r, tags)) for _, r in items]
    scheduled = [(g, group[a], group[b]) for g, group in enumerate(groups)
                 for a, b in pair_schedule(len(group), opponents)]
    compared = await compare(scorer, rubric, [(items[i][0], texts[i], texts[j]) for _, i, j in scheduled],
                             debias=True, seed=seed, principles=principles,
                             references=[references[i] for _, i, _ in scheduled] if references else None)
    out: list[GroupJudgement | None] = [None] * len(items)
    for g, group in enumerate(groups):
        mine = [(i, j, c) for (gg, i, j), c in zip(scheduled, compared, strict=True) if gg == g]
        position = {item: k for k, item in enumerate(group)}
        rewards = group_rewards(len(group), [(position[i], position[j]) for i, j, _ in mine],
                                [c.preference.p_a for _, _, c in mine])
        for k, item in enumerate(group):
            pairs = tuple(PairOutcome(opponent=j if i == item else i,
                                      p_win=c.preference.p_a if i == item else 1.0 - c.preference.p_a, compared=c)
                          for i, j, c in mine if item in (i, j))
            out[item] = GroupJudgement(group=g, reward=rewards[k], pairs=pairs)
    return [j for j in out if j is not None]
