"""A drlaif reward server as veRL's custom reward function.

veRL calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)``
once per sample, from many concurrent reward-loop workers, and accepts ``async def``
functions (it checks with ``inspect.iscoroutinefunction``). The prompt is not an argument:
it travels in the sample's ``extra_info`` (veRL's docs keep it under ``"question"``).
``data_source`` is ignored. ``ground_truth`` is the sample's reference answer for a rubric that
judges against one (``takes_reference`` in the server's ``GET /info``, e.g. the ``correctness``
preset), shown to the labeler where the rubric places it; other rubrics never see it (veRL
passes one whether or not the rubric has a place for it). A string goes as it is, a number as
its decimal text, a list or mapping as JSON.

Point a veRL (0.9) config at it::

    reward:
      custom_reward_function:
        # pkg://trainer.frameworks.verl_reward, or the file: /path/to/drlaif/trainer/frameworks/verl_reward.py
        path: pkg://trainer.frameworks.verl_reward
        name: compute_score               # compute_score_sync for a sync reward manager,
                                          # compute_score_batch for the batch manager
      reward_manager:
        name: naive                       # or rate_limited, to bound concurrency; or batch

(on the command line, ``reward.custom_reward_function.path=pkg://trainer.frameworks.verl_reward`` and so
on). veRL 0.9's ``main_ppo`` reads only these ``reward.*`` keys: the older top-level
``custom_reward_function`` and ``reward_model.reward_manager`` are silently ignored there.
``rate_limited`` lets one call run at a time (so the coalescing below has nothing to gather)
unless ``+reward.max_concurrent=N`` raises that, and it turns a call that fails or outlasts
``reward.timeout`` (300 s) into a reward of 0.0, one drlaif never gave, with an ``error`` or
``timeout`` entry in its extra info.

Set, in the environment of the workers (fixed names):

- ``DRLAIF_REWARD_URL``: the server, or a comma-separated list of replicas (load- and
  health-aware routing, failover; see :mod:`drlaif.replica_routing`);
- ``DRLAIF_RUBRIC``: the rubric to score with (default: the server's);
- ``DRLAIF_API_KEY``: the server's API key, if it has one;
- ``DRLAIF_PROMPT_KEY``: the ``extra_info`` key that holds the prompt (default ``question``);
  a string or chat messages ``[{"role": ..., "content": ...}]``;
- ``DRLAIF_REWARD_MODE``: unset (default): as the rubric says (its ``group_pairwise`` in the
  server's ``GET /info``); ``direct``: each response scored alone, whatever the rubric says;
  ``group-pairwise``: each response compared with the others given for its prompt
  (``DRLAIF_GROUP_OPPONENTS`` bounds how many). A group must be seen whole, so group-pairwise
  (asked for, or the rubric's choice) needs veRL's ``batch`` reward manager, which passes the
  whole rollout batch to ``compute_score_batch`` in one call; ``compute_score`` refuses it.

Calls in one process are coalesced: each lands on a micro-batcher (the server's own, on a
background event loop shared by every thread and loop of the process) that waits up to
``DRLAIF_COALESCE_MS`` for company and sends up to ``DRLAIF_COALESCE_ITEMS`` samples in one
scoring call, so 64 concurrent samples cost a request or two instead of 64. Each call
returns ``{"score": reward, "label_mass": ..., "drlaif_score": ...}`` (veRL logs the keys
besides ``score``). A reward is never invented: when the server gives no valid answer
within the client's deadline (``DRLAIF_REWARD_DEADLINE_S``), the call raises. Each process logs
its reward servers' request and failure counts when it exits.

``drlaif-train --on-reward-failure drop`` has no counterpart here: a veRL reward function
returns a score or raises, and veRL 0.9 has no way for it to leave a sample out of the update
(its ``rate_limited`` manager turns the exception into a score of 0.0, see above). So this
function always stops on a failure (``stop``), and the one way to keep a run alive is a longer
deadline or more replicas. The per-sample result also carries ``label_entropy`` (nats), which
veRL logs beside the score; the within-group length-reward correlation needs a group, which a
per-sample function never sees.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from drlaif.batching import MicroBatcher
from drlaif.client import REWARD_MODES, AsyncRewardClient, Prompt, RewardClientConfig, rewards_of
from drlaif.protocol import ItemAnswer
from trainer.frameworks.trl_reward import prompt_for_server

T = TypeVar("T")


class VerlRewardSettings(BaseSettings):
    """The adapter's configuration, read from ``DRLAIF_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DRLAIF_", extra="ignore", frozen=True)

    reward_url: str = Field("", description="Server URL, or a comma-separated list.")
    rubric: str | None = Field(None, description="Rubric to score with; unset: the server's default.")
    prompt_key: str = Field("question", description="extra_info key that holds the prompt.")
    reward_field: str = Field("reward", description="Which reward to return: reward, reward_robust or "
                              "reward_as_written.")
    # Not a Literal: veRL loads this file as a module outside sys.modules, where pydantic cannot
    # resolve the name (builtins it can).
    reward_mode: str | None = Field(
        None, description="Unset: the rubric's choice (its group_pairwise in GET /info); direct; or group-pairwise "
        "(the responses to one prompt compared with each other; compute_score_batch only).")
    group_opponents: int | None = Field(None, ge=1, description="group-pairwise: opponents per response (unset: the server's default; "
                                        "all of its group).")
    reward_deadline_s: float = Field(600.0, gt=0, description="Seconds a call may take, retries included.")
    coalesce_ms: float = Field(20.0, ge=0, description="How long an idle batcher waits for more samples.")
    coalesce_items: int = Field(256, ge=1, description="Most samples in one scoring call.")
    on_reward_failure: str = Field(
        "stop", description="Only 'stop': a reward the server cannot give raises, and veRL's step fails. veRL's "
        "reward managers put a number in every sample's slot, so drlaif-train's 'drop' (a sample left without "
        "reward) has nothing to become here; it is refused rather than ignored.")

    @field_validator("rubric", "reward_mode")
    @classmethod
    def _blank_is_default(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("reward_mode")
    @classmethod
    def _known_mode(cls, value: str | None) -> str | None:
        if value is not None and value not in REWARD_MODES:
            raise ValueError(f"DRLAIF_REWARD_MODE: {value!r} is not one of {', '.join(REWARD_MODES)}, or unset "
                             "(the rubric's choice)")
        return value

    @field_validator("on_reward_failure")
    @classmethod
    def _stop_only(cls, value: str) -> str:
        if value != "stop":
            raise ValueError(f"DRLAIF_ON_REWARD_FAILURE={value!r}: veRL's reward managers need a reward for every "
                             "sample, so a failed reward stops the step ('stop'); unset it, or train with "
                             "drlaif-train --on-reward-failure drop")
        return value

    def urls(self) -> list[str]:
        urls = [u.strip() for u in self.reward_url.split(",") if u.strip()]
        if not urls:
            raise RuntimeError("DRLAIF_REWARD_URL is not set: export the drlaif server's URL "
                               "(e.g. http://reward-server:8000) in the environment of veRL's reward workers")
        return urls


_PER_SAMPLE_WAY_OUT = ("use veRL's batch reward manager with compute_score_batch "
                       "(reward.reward_manager.name=batch), which sees each prompt's responses together")


class _Coalescer:
    """One background event loop with the HTTP client and the micro-batcher on it.

    A plain class, not a dataclass: veRL loads ``custom_reward_function.path`` as a module that it
    does not put in ``sys.modules``, and ``@dataclass`` fails there on this file's string annotations.
    """

    def __init__(self, settings: VerlRewardSettings, pid: int, loop: asyncio.AbstractEventLoop,
                 client: AsyncRewardClient, batcher: MicroBatcher) -> None:
        self.settings = settings
        self.pid = pid
        self.loop = loop
        self.client = client
        self.batcher = batcher
        # What GET /info says, read once per process (on the loop): the reward mode, and whether
        # the rubric takes reference answers.
        self._asked: dict[str, asyncio.Future] = {}

    @classmethod
    def start(cls, settings: VerlRewardSettings) -> _Coalescer:
        config = RewardClientConfig(urls=settings.urls(), rubric=settings.rubric,
                                    deadline_s=settings.reward_deadline_s, reward_field=settings.reward_field,
                                    reward_mode=settings.reward_mode, group_opponents=settings.group_opponents)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="drlaif-verl-reward", daemon=True).start()
        client = AsyncRewardClient(config)

        async def score(samples: list[tuple[Prompt, str, str | None]]) -> list[ItemAnswer]:
            references = [ref for _, _, ref in samples]
            return await client.score_items([p for p, _, _ in samples], [r for _, r, _ in samples],
                                            references=references if any(r is not None for r in references) else None)

        async def make_batcher() -> MicroBatcher:
            batcher = MicroBatcher(score, tokens_of=lambda _: 1, max_items=settings.coalesce_items,
                                   max_tokens=settings.coalesce_items, max_wait_s=settings.coalesce_ms / 1000)
            batcher.start()
            return batcher

        batcher = asyncio.run_coroutine_threadsafe(make_batcher(), loop).result()
        return cls(settings, os.getpid(), loop, client, batcher)

    def result(self, item: ItemAnswer) -> dict[str, float]:
        """What veRL gets for one sample: its reward as ``score``, and values it logs."""
        (reward,) = rewards_of([item], self.settings.reward_field)
        extra = {f"drlaif_{name}": p.reward for name, p in (item.principles or {}).items()}
        logged = {"label_mass": item.label_mass, "label_entropy": item.label_entropy, "drlaif_score": item.score}
        # A server other than drlaif's may send only the reward: what it did not send is not logged.
        return {"score": reward, **{k: v for k, v in logged.items() if v is not None}, **extra}

    async def _once(self, what: str, read: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``read()``'s answer, asked once (on the loop: concurrent first calls share one GET /info,
        and a failed read is tried again by the next call)."""
        asked = self._asked.get(what)
        if asked is None or (asked.done() and (asked.cancelled() or asked.exception() is not None)):
            asked = self._asked[what] = asyncio.ensure_future(read())
        return await asyncio.shield(asked)

    async def _reward_mode(self) -> str:
        return await self._once("reward_mode", self.client.reward_mode)

    async def references(self, ground_truths: Sequence[Any]) -> list[str | None] | None:
        """The samples' reference answers when the rubric takes them, else None."""
        if not await self._once("takes_reference", self.client.takes_reference):
            return None
        return [reference_text(g) for g in ground_truths]

    def submit(self, prompt: Prompt, response: str,
               ground_truth: Any = None) -> concurrent.futures.Future[dict[str, float]]:
        """One sample's result, scored directly; a RuntimeError when its rewards are group-pairwise."""
        if self.settings.reward_mode == "group-pairwise":
            raise RuntimeError("DRLAIF_REWARD_MODE=group-pairwise judges a prompt's responses together, and "
                               f"compute_score sees one sample at a time: {_PER_SAMPLE_WAY_OUT}")

        async def one() -> dict[str, float]:
            if self.settings.reward_mode is None and await self._reward_mode() == "group-pairwise":
                rubric = repr(self.settings.rubric) if self.settings.rubric else "the server's default rubric"
                raise RuntimeError(f"{rubric} judges group-pairwise (group_pairwise: true, and DRLAIF_REWARD_MODE "
                                   "is unset), and compute_score sees one sample at a time: "
                                   f"{_PER_SAMPLE_WAY_OUT}, or set DRLAIF_REWARD_MODE=direct to score each "
                                   "response alone under it")
            references = await self.references([ground_truth])
            (item,) = await self.batcher.submit([(prompt, response, references[0] if references else None)])
            return self.result(item)

        return asyncio.run_coroutine_threadsafe(one(), self.loop)

    def close(self) -> None:
        """Log the servers' counts, stop the batcher, close the client and end the loop's thread
        (from another thread)."""
        async def shut() -> None:
            await self.batcher.stop()
            await self.client.aclose()

        if self.pid == os.getpid() and self.loop.is_running():
            self.client.log_replica_stats()
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)


_lock = threading.Lock()
_coalescer: _Coalescer | None = None


def _current() -> _Coalescer:
    """The process's coalescer, rebuilt after a fork or when the environment changed."""
    global _coalescer
    settings = VerlRewardSettings()
    with _lock:
        if _coalescer is None or _coalescer.pid != os.getpid() or _coalescer.settings != settings:
            if _coalescer is not None:
                old, _coalescer = _coalescer, None
                old.close()  # a forked child's copy has no thread, and close() leaves it alone
            _coalescer = _Coalescer.start(settings)
        return _coalescer


@atexit.register
def _log_replica_stats_at_exit() -> None:
    """veRL never closes a reward function: the process's counts are logged as it ends."""
    with _lock:
        coalescer = _coalescer
    if coalescer is not None and coalescer.pid == os.getpid():  # not a forked child's inherited copy
        coalescer.client.log_replica_stats()


def _prompt_of(extra_info: Mapping[str, Any] | None, key: str) -> Prompt:
    if not isinstance(extra_info, Mapping) or key not in extra_info:
        have = sorted(extra_info) if isinstance(extra_info, Mapping) else type(extra_info).__name__
        raise KeyError(f"drlaif needs the prompt in extra_info[{key!r}] (DRLAIF_PROMPT_KEY); this sample's "
                       f"extra_info has {have}. Put the prompt there in your dataset's extra_info, or set "
                       "DRLAIF_PROMPT_KEY to the key that holds it.")
    prompt = extra_info[key]
    if isinstance(prompt, Sequence) and not isinstance(prompt, str):
        prompt = list(prompt)  # veRL datasets often hold numpy arrays of message dicts
    return prompt_for_server(prompt)


def reference_text(ground_truth: Any) -> str | None:
    """A veRL ground truth as the reference answer's text: a string as it is, a list or mapping
    as JSON, anything else (a number) as its text; None stays None (and the rubric refuses it)."""
    if ground_truth is None or isinstance(ground_truth, str):
        return ground_truth
    if isinstance(ground_truth, Mapping | list | tuple):
        return json.dumps(ground_truth, default=str, ensure_ascii=False)
    return str(ground_truth)


def _submit(solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None) -> concurrent.futures.Future:
    coalescer = _current()
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be the decoded response text, got {type(solution_str).__name__}")
    return coalescer.submit(_prompt_of(extra_info, coalescer.settings.prompt_key), solution_str, ground_truth)


async def compute_score(data_source: Any, solution_str: str, ground_truth: Any = None,
                        extra_info: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, float]:
    """veRL's custom reward function: the drlaif reward of one response.

    veRL calls it once per sample from many concurrent workers; the calls of one process are
    coalesced into few `/score` requests. Settings come from `DRLAIF_*` environment variables
    (`DRLAIF_REWARD_URL` is required).

    Args:
        data_source: Ignored: the labeler judges the response itself.
        solution_str: The decoded response text.
        ground_truth: The sample's reference answer, sent to a rubric that takes one
            (`takes_reference` in `GET /info`); ignored under the others.
        extra_info: The sample's extra info; the prompt is under `DRLAIF_PROMPT_KEY`
            (`question` by default), as a string or chat messages.
        **kwargs: Ignored.

    Returns:
        The server's reward in [-1, 1] as `score`, with `label_mass`, `label_entropy`,
        `drlaif_score` and, under a constitution, `drlaif_<principle>`, which veRL logs (those
        the server sends: a server other than drlaif's may send only the reward).

    Raises:
        RewardServerError: No valid reward within `DRLAIF_REWARD_DEADLINE_S`.
        KeyError: The prompt is missing from `extra_info`.
        TypeError: `solution_str` is not a string.
        RuntimeError: The rewards are group-pairwise (`DRLAIF_REWARD_MODE=group-pairwise`, or
            unset under a rubric with `group_pairwise: true`), which needs
            [compute_score_batch][trainer.frameworks.verl_reward.compute_score_batch].
    """
    return await asyncio.wrap_future(_submit(solution_str, ground_truth, extra_info))


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str],
                        ground_truths: Sequence[Any] | None = None,
                        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
                        **kwargs: Any) -> list[dict[str, float]]:
    """veRL's batch reward manager's function: the drlaif rewards of a whole rollout batch.

    One client call for the batch, so that each prompt's responses (a GRPO group) are judged
    together; with `DRLAIF_REWARD_MODE=group-pairwise`, or unset under a rubric with
    `group_pairwise: true`, against each other.

    Args:
        data_sources: Ignored.
        solution_strs: The decoded response texts.
        ground_truths: Each sample's reference answer, as for
            [compute_score][trainer.frameworks.verl_reward.compute_score].
        extra_infos: Each sample's extra info, holding its prompt as for
            [compute_score][trainer.frameworks.verl_reward.compute_score].
        **kwargs: Ignored.

    Returns:
        One result per response, in order, as `compute_score` returns it.

    Raises:
        RewardServerError: No valid reward within the deadline.
        KeyError: A prompt is missing from its `extra_info`.
        ValueError: The lists differ in length.
    """
    coalescer = _current()
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    if len(infos) != len(solution_strs):
        raise ValueError(f"{len(solution_strs)} solution_strs but {len(infos)} extra_infos")
    for text in solution_strs:
        if not isinstance(text, str):
            raise TypeError(f"solution_strs must be the decoded response texts, got {type(text).__name__}")
    prompts = [_prompt_of(info, coalescer.settings.prompt_key) for info in infos]
    truths = list(ground_truths) if ground_truths is not None else [None] * len(solution_strs)
    if len(truths) != len(solution_strs):
        raise ValueError(f"{len(solution_strs)} solution_strs but {len(truths)} ground_truths")

    async def score() -> list[ItemAnswer]:
        references = await coalescer.references(truths)
        return await coalescer.client.score_items(prompts, list(solution_strs), references=references)

    scored = asyncio.run_coroutine_threadsafe(score(), coalescer.loop).result()
    return [coalescer.result(item) for item in scored]


def compute_score_sync(data_source: Any, solution_str: str, ground_truth: Any = None,
                       extra_info: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, float]:
    """[compute_score][trainer.frameworks.verl_reward.compute_score] for reward managers that call a plain
    function; calls from concurrent threads are coalesced alike. The same arguments, result and
    errors."""
    return _submit(solution_str, ground_truth, extra_info).result()
