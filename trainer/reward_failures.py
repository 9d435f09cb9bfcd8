"""What a trainer does when the reward client cannot get a reward: stop, or drop the sample.

``stop`` (the default) lets :class:`trainer.client.RewardServerError` end the step. ``drop``
scores the batch in one call as usual; if that call fails, it scores each sample on its own
(so one sample the server cannot score, or a request that keeps failing, costs only its own
samples) and returns None for each sample whose reward could still not be had. A dropped
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

from trainer.client import AsyncRewardClient, Prompt, RewardServerError

log = logging.getLogger(__name__)

T = TypeVar("T")


class TooManyDropped(RewardServerError):
    """More of a batch's samples had no reward than the run allows."""


class SubmitsScores(Protocol):
    def submit_score_items(self, prompts: list[Prompt], responses: list[str],
                           rubric: str | None = None) -> concurrent.futures.Future[list[Any]]: ...


def check_dropped(dropped: int, total: int, max_fraction: float, what: str = "a step's samples") -> None:
    """Raise :class:`TooManyDropped` when ``dropped / total`` exceeds ``max_fraction``, or when
    every sample was dropped (there is nothing to learn from, whatever the cap)."""
    if total and (dropped / total > max_fraction or dropped == total):
        raise TooManyDropped(f"{dropped} of {total} samples ({dropped / total:.0%} of {what}) got no reward "
                             f"within the reward client's deadline, more than --max-dropped-fraction "
                             f"{max_fraction:g}")


def _log_fallback(exc: RewardServerError, n: int) -> None:
    log.warning("scoring %d samples in one call failed (%s); scoring each on its own and dropping those "
                "that still fail", n, str(exc).splitlines()[0])


def score_items_or_drop(source: SubmitsScores, prompts: list[Prompt], responses: list[str],
                        rubric: str | None = None,
                        pending: concurrent.futures.Future[list[T]] | None = None) -> list[T | None]:
    """Each sample's scored item, or None where none could be had (blocking; see the module doc).

    ``pending``: the batch call, if it was already submitted (PPO overlaps it with its reads).
    """
    try:
        return list((pending or source.submit_score_items(prompts, responses, rubric)).result())
    except RewardServerError as exc:
        _log_fallback(exc, len(prompts))
    futures = [source.submit_score_items([p], [r], rubric) for p, r in zip(prompts, responses, strict=True)]
    out: list[T | None] = []
    for future in futures:
        try:
            (item,) = future.result()
        except RewardServerError as exc:
            log.warning("dropping a sample without reward: %s", str(exc).splitlines()[0])
            item = None
        out.append(item)
    return out


async def ascore_items_or_drop(client: AsyncRewardClient, prompts: Sequence[Prompt],
                               responses: Sequence[str], rubric: str | None = None) -> list[Any | None]:
    """:func:`score_items_or_drop` for async callers (trl's reward functions)."""
    try:
        return list(await client.score_items(prompts, responses, rubric))
    except RewardServerError as exc:
        _log_fallback(exc, len(prompts))
    results = await asyncio.gather(*(client.score_items([p], [r], rubric)
                                     for p, r in zip(prompts, responses, strict=True)), return_exceptions=True)
    out: list[Any | None] = []
    for result in results:
        if isinstance(result, RewardServerError):
            log.warning("dropping a sample without reward: %s", str(result).splitlines()[0])
            out.append(None)
        elif isinstance(result, BaseException):
            raise result
        else:
            out.append(result[0])
    return out
