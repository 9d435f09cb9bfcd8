"""What a trainer does when the reward client cannot get a reward: stop, or drop the sample.

``stop`` (the default) lets :class:`drlaif.client.RewardServerError` end the step. ``drop``
scores the batch in one call as usual; if that call fails, it scores each sample on its own
(so one sample the server cannot score, or a request that keeps failing, costs only its own
samples), or with group-pairwise rewards each prompt group on its own (a response is judged
against its group, so a group is the smallest unit), and returns None for each sample whose
reward could still not be had. A dropped
sample never gets a number: it is left out of the update. More than ``max_fraction`` of a
batch dropped (or all of it) raises :class:`TooManyDropped`.

The fallback costs a second deadline when the batch call failed: a server that is down for
good is given up on after about twice ``reward_deadline_s``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from drlaif.client import AsyncRewardClient, Prompt, RewardServerError
from drlaif.prompt_text import same_prompt_key

log = logging.getLogger(__name__)

T = TypeVar("T")


class TooManyDropped(RewardServerError):
    """More of a batch's samples had no reward than the run allows."""


class SubmitsScores(Protocol):
    def submit_score_items(self, prompts: list[Prompt], responses: list[str], rubric: str | None = None,
                           references: Sequence[str | None] | None = None,
                           ) -> concurrent.futures.Future[list[Any]]: ...


def check_dropped(dropped: int, total: int, max_fraction: float, what: str = "a step's samples") -> None:
    """Raise :class:`TooManyDropped` when ``dropped / total`` exceeds ``max_fraction``, or when
    every sample was dropped (there is nothing to learn from, whatever the cap)."""
    if total and (dropped / total > max_fraction or dropped == total):
        raise TooManyDropped(f"{dropped} of {total} samples ({dropped / total:.0%} of {what}) got no reward "
                             f"within the reward client's deadline, more than --max-dropped-fraction "
                             f"{max_fraction:g}")


def _units(prompts: Sequence[Prompt], by_group: bool) -> list[list[int]]:
    """The sample indices scored together after a batch call failed: each sample alone, or
    with ``by_group`` the samples of each prompt (one :func:`~drlaif.prompt_text.same_prompt_key`,
    as the server groups them)."""
    if not by_group:
        return [[i] for i in range(len(prompts))]
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(same_prompt_key(prompt), []).append(i)
    return list(groups.values())


def _by_group(source: object, rubric: str | None) -> bool:
    """Whether ``source`` (a reward client) judges responses under ``rubric`` against their prompt
    group: its config's ``reward_mode``, or when that is unset the rubric's choice, which the
    client has read from /info for the batch call that failed. A source that cannot say (a fake
    in a benchmark) or a server gone silent since: each sample on its own."""
    ask = getattr(source, "reward_mode", None)
    if callable(ask):
        try:
            return ask(rubric) == "group-pairwise"
        except RewardServerError:
            return False
    return getattr(getattr(source, "config", None), "reward_mode", "direct") == "group-pairwise"


def _log_fallback(exc: RewardServerError, n: int) -> None:
    log.warning("scoring %d samples in one call failed (%s); scoring each on its own and dropping those "
                "that still fail", n, str(exc).splitlines()[0])


def _subset(references: Sequence[str | None] | None, unit: Sequence[int]) -> list[str | None] | None:
    return [references[i] for i in unit] if references is not None else None


def score_items_or_drop(source: SubmitsScores, prompts: list[Prompt], responses: list[str],
                        rubric: str | None = None,
                        pending: concurrent.futures.Future[list[T]] | None = None,
                        references: Sequence[str | None] | None = None) -> list[T | None]:
    """Each sample's scored item, or None where none could be had (blocking; see the module doc).

    ``pending``: the batch call, if it was already submitted (PPO overlaps it with its reads).
    ``references``: each sample's reference answer, for a rubric that takes one.
    """
    try:
        return list((pending or source.submit_score_items(prompts, responses, rubric, references)).result())
    except RewardServerError as exc:
        _log_fallback(exc, len(prompts))
    units = _units(prompts, _by_group(source, rubric))
    futures = [source.submit_score_items([prompts[i] for i in unit], [responses[i] for i in unit], rubric,
                                         _subset(references, unit))
               for unit in units]
    out: list[T | None] = [None] * len(prompts)
    for unit, future in zip(units, futures, strict=True):
        try:
            items = future.result()
        except RewardServerError as exc:
            log.warning("dropping %d sample(s) without reward: %s", len(unit), str(exc).splitlines()[0])
            continue
        for i, item in zip(unit, items, strict=True):
            out[i] = item
    return out


async def ascore_items_or_drop(client: AsyncRewardClient, prompts: Sequence[Prompt],
                               responses: Sequence[str], rubric: str | None = None,
                               references: Sequence[str | None] | None = None) -> list[Any | None]:
    """:func:`score_items_or_drop` for async callers (trl's reward functions)."""
    try:
        return list(await client.score_items(prompts, responses, rubric, references))
    except RewardServerError as exc:
        _log_fallback(exc, len(prompts))
    try:
        by_group = await client.reward_mode(rubric) == "group-pairwise"
    except RewardServerError:
        by_group = False
    units = _units(prompts, by_group)
    results = await asyncio.gather(*(client.score_items([prompts[i] for i in unit], [responses[i] for i in unit],
                                                        rubric, _subset(references, unit)) for unit in units),
                                   return_exceptions=True)
    out: list[Any | None] = [None] * len(prompts)
    for unit, result in zip(units, results, strict=True):
        if isinstance(result, RewardServerError):
            log.warning("dropping %d sample(s) without reward: %s", len(unit), str(result).splitlines()[0])
        elif isinstance(result, BaseException):
            raise result
        else:
            for i, item in zip(unit, result, strict=True):
                out[i] = item
    return out
