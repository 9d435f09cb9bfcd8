"""Reward client: turns (prompt, response) pairs into rewards by calling drlaif-server's `POST /score`,
and (prompt, response A, response B) triples into pairwise preferences with `POST /compare`.

The async client is the implementation; :class:`RewardClient` is a thin synchronous facade that runs
it on a private event-loop thread, so retries, deadlines and validation exist exactly once.

What the client guarantees:

- every reward it returns is one the server sent for that item (finite, in [-1, 1], in input
  order); anything else, or no answer within the deadline, raises :class:`RewardServerError`.
  It never substitutes a value.
- any server whose `/score` answer carries a `reward` for each item will do, not only drlaif's
  (see the docs' "Write your own reward server"): the other fields of a result are optional, and
  checked as drlaif's own when present (:data:`~drlaif.protocol.ScoreAnswer`). A field the
  config needs (a `reward_field` other than `reward`, group judgements in group-pairwise mode)
  raises :class:`RewardServerError` when a result lacks it.
- rewards are judged as the config's `reward_mode` says, or (None) as the rubric says: its
  `group_pairwise` in the server's `GET /info`, read once; a server whose /info does not say
  is judged directly. Group-pairwise requests carry whole prompt groups.
- transient failures (connection errors, timeouts, 429, 502, 503, 504) are retried with
  exponential backoff and full jitter, honouring `Retry-After`, under one overall deadline per call;
  other 4xx answers raise at once with the server's message. Each retry logs a warning and
  counts in the client's `retries` property, so an outage that was ridden out stays visible.
- with several server URLs (replicas), each request goes to the less loaded of two random replicas
  (requests in flight); a replica that failed gets no traffic until its ``GET /health/ready``
  answers 200, and a request that failed on it moves to a live one within the same deadline
  (see :mod:`drlaif.replica_routing`). :meth:`AsyncRewardClient.replica_stats` counts each replica's
  requests and failures.

Example::

    from drlaif.client import RewardClient, RewardClientConfig

    with RewardClient(RewardClientConfig(urls=["http://127.0.0.1:8000"], rubric="helpful")) as client:
        rewards = client.score(["What is 2+2?"], ["4"])
        prefs = client.compare(["What is 2+2?"], ["4"], ["5"])   # P(A better), both orders averaged
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import httpx
from pydantic import ValidationError

from drlaif.errors import ERRORS
from drlaif.prompt_text import same_prompt_key
from drlaif.protocol import (
    REWARD_FIELDS,
    CompareResponse,
    ItemAnswer,
    ItemPreference,
    Prompt,
    ScoreAnswer,
)
from drlaif.replica_routing import ROUTING_POLICIES, Outcome, ReplicaRouter, ReplicaStats

log = logging.getLogger("drlaif.client")

#: Statuses that mean "try again later": backpressure, a proxy that lost the server, loading.
DEFAULT_RETRY_STATUSES: tuple[int, ...] = (429, 502, 503, 504)
#: Items per request when the server's /info does not say (an older or foreign server).
FALLBACK_MAX_ITEMS_PER_REQUEST = 64

# Transport failures worth retrying: the request may not have reached a live server, or the
# server died or stalled mid-answer. /score is a pure function, so repeating it is safe.
# (UnsupportedProtocol and LocalProtocolError are our own mistakes and are not retried.)
_RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
                               httpx.ProxyError)

T = TypeVar("T")

#: How a batch's responses are judged: alone, or against the others given for their prompt.
REWARD_MODES = ("direct", "group-pairwise")


class RewardServerError(RuntimeError):
    """No valid answer: the deadline or the retries ran out, the server answered a status that is
    not retried (400, 401, 413, 422, ...), or its answer did not validate.

    The message says which URL(s), what status or exception, how many attempts and how long.
    The same facts are attributes, for callers that want to act on them.

    Attributes:
        urls: The server URL(s) tried.
        status: The last HTTP status, or None when no server answered.
        attempts: HTTP attempts made during the call.
        elapsed_s: Seconds the call took.
    """

    def __init__(self, message: str, *, urls: Sequence[str] = (), status: int | None = None,
                 attempts: int = 0, elapsed_s: float = 0.0):
        super().__init__(message)
        self.urls = list(urls)
        self.status = status
        self.attempts = attempts
        self.elapsed_s = elapsed_s


@dataclass
class RewardClientConfig:
    """How to reach the reward server(s) and how hard to try.

    Attributes:
        urls: One or more server base URLs, replicas of one service (a single string is taken
            as one URL).
        rubric: The rubric to score with; None: the server's default.
        api_key_env: The environment variable whose value, when set, is sent as
            `Authorization: Bearer <key>` ("" sends none).
        connect_timeout_s: Seconds to open a connection.
        read_timeout_s: Seconds to wait for one answer.
        deadline_s: Overall seconds for one call (`score`, `compare`, `info`), retries
            included.
        max_attempts: Attempts per request; in practice the deadline bounds them.
        backoff_initial_s: First retry delay; each later one doubles, up to `backoff_max_s`.
        backoff_max_s: Longest retry delay. A `Retry-After` header sets the shortest.
        max_concurrency: HTTP requests in flight at once, per client and event loop.
        max_items_per_request: Items per request; None: the server's limit, read once from
            `GET /info` (64 when it does not say).
        retry_statuses: HTTP statuses that are retried (429, 502, 503, 504).
        probe_interval_s: How often a failed server's `GET /health/ready` is probed.
        routing: `"least-loaded"` (the less loaded of two random servers) or `"round-robin"`.
        jitter: Full jitter on the retry delays (off only for deterministic tests).
        reward_field: What `score` returns: `"reward"`, `"reward_robust"` or
            `"reward_as_written"`.
        reward_mode: None (the default): as the rubric says, from its `group_pairwise` in the
            server's `GET /info` (direct when /info does not say, as on a server of your own).
            `"direct"`: each response scored alone, even under a rubric that judges in groups
            (requests say `"group_pairwise": false`). `"group-pairwise"`: the responses to one
            prompt compared with each other (requests say `"group_pairwise": true`). Either way
            a group-pairwise request carries whole prompt groups.
        group_opponents: Group-pairwise: opponents per response; None: the server's default.
    """

    urls: list[str]                      # one or more server base URLs (replicas of one service)
    rubric: str | None = None            # default rubric; None: the server's default
    api_key_env: str = "DRLAIF_API_KEY"  # bearer token read from this env var if set ("" disables)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    deadline_s: float = 600.0            # overall deadline for one score()/compare() call, across retries
    max_attempts: int = 1000             # per request; effectively bounded by the deadline
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    max_concurrency: int = 4             # concurrent in-flight HTTP requests per client and event loop
    max_items_per_request: int | None = None   # None: from GET /info once (fallback 64)
    retry_statuses: tuple[int, ...] = DEFAULT_RETRY_STATUSES
    probe_interval_s: float = 1.0        # a failed URL's /health/ready is probed at most this often
    routing: str = "least-loaded"        # or "round-robin" (load-blind): see drlaif/replica_routing.py
    jitter: bool = True                  # full jitter on backoff; off only for deterministic tests
    reward_field: str = "reward"         # what score() returns: one of REWARD_FIELDS
    # None: the rubric's choice (its group_pairwise in GET /info); "direct": each response scored alone;
    # "group-pairwise": the responses to one prompt compared with each other, whole groups per request.
    reward_mode: str | None = None
    group_opponents: int | None = None   # group-pairwise: opponents per response (None: the server's default)

    def __post_init__(self) -> None:
        # A bare string would otherwise be iterated as a list of one-character "URLs".
        if isinstance(self.urls, str):
            self.urls = [self.urls]
        self.urls = [u.strip().rstrip("/") for u in self.urls]
        if not self.urls:
            raise ValueError("RewardClientConfig.urls: give at least one server URL")
        for u in self.urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"RewardClientConfig.urls: {u!r} must start with http:// or https://")
        for name in ("connect_timeout_s", "read_timeout_s", "deadline_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RewardClientConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.backoff_initial_s < 0 or self.probe_interval_s < 0:
            raise ValueError("RewardClientConfig: backoff_initial_s and probe_interval_s must be >= 0")
        if self.max_attempts < 1 or self.max_concurrency < 1:
            raise ValueError("RewardClientConfig: max_attempts and max_concurrency must be >= 1")
        if self.max_items_per_request is not None and self.max_items_per_request < 1:
            raise ValueError("RewardClientConfig.max_items_per_request must be >= 1 or None")
        if self.routing not in ROUTING_POLICIES:
            raise ValueError(f"RewardClientConfig.routing: {self.routing!r} is not one of "
                             f"{', '.join(ROUTING_POLICIES)}")
        if self.reward_mode is not None and self.reward_mode not in REWARD_MODES:
            raise ValueError(f"RewardClientConfig.reward_mode: {self.reward_mode!r} is not one of "
                             f"{', '.join(REWARD_MODES)}, or None (the rubric's choice)")
        if self.group_opponents is not None and self.group_opponents < 1:
            raise ValueError("RewardClientConfig.group_opponents must be >= 1 or None")
        if self.reward_field not in REWARD_FIELDS:
            raise ValueError(f"RewardClientConfig.reward_field: {self.reward_field!r} is not one of "
                             f"{', '.join(REWARD_FIELDS)}")


def backoff_delay(retry: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before the `retry`-th retry (1-based): exponential, capped, with full jitter if `rng` is given.

    Full jitter (uniform in [0, cap]) spreads out many clients that failed at the same moment,
    so a recovering server is not hit by a synchronised wave.
    """
    # The exponent is clamped so a huge attempt count cannot overflow a float.
    cap = min(max_s, initial_s * 2.0 ** min(retry - 1, 60))
    return rng.uniform(0.0, cap) if rng is not None else cap


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass
class _Call:
    """Book-keeping for one score()/info() call: its deadline and what went wrong so far."""

    urls: list[str]
    deadline_s: float
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0
    last_error: str = "none"

    @property
    def deadline(self) -> float:
        return self.started + self.deadline_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def deadline_error(self, why: str = "") -> RewardServerError:
        return RewardServerError(
            f"no reward from {', '.join(self.urls)} within the {self.deadline_s:g} s deadline"
            f"{' (' + why + ')' if why else ''}: {self.attempts} attempt(s) over {self.elapsed():.1f} s; "
            f"last error: {self.last_error}",
            urls=self.urls, attempts=self.attempts, elapsed_s=self.elapsed())


@dataclass
class _LoopState:
    """What must belong to one event loop: its connection pool, its concurrency bound, and the
    readiness probes it runs."""

    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    probes: set[asyncio.Task[None]] = field(default_factory=set)

    async def close(self) -> None:
        """Stop the probes (the router hears "not ready" from each) and close the pool; on its loop."""
        for task in self.probes:
            task.cancel()
        await asyncio.gather(*self.probes, return_exceptions=True)
        await self.http.aclose()


def _server_message(resp: httpx.Response) -> str:
    """The message in an error body: drlaif's {"error": {...}}, FastAPI's {"detail"}, or the text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:500]


def principle_means(items: Sequence[ItemAnswer]) -> dict[str, float]:
    """``reward_principle_<name>``: the batch mean of each principle's reward (constitutions only)."""
    out = {}
    for name in dict.fromkeys(n for item in items for n in (item.principles or {})):
        values = [i.principles[name].reward for i in items if i.principles and name in i.principles]
        out[f"reward_principle_{name}"] = sum(values) / len(values)
    return out


def _parse_results(data: object, n_items: int, url: str, path: str, answer: type[ScoreAnswer | CompareResponse],
                   needs: Mapping[str, str] | None = None) -> tuple[list[Any], tuple[str | None, str | None]]:
    """The answer's results, validated against the wire model (strictly: a ``true`` reward is a
    broken server, not 1.0), and its (model, rubric).

    A /score answer is read as :data:`~drlaif.protocol.ScoreAnswer`: only each result's reward
    must be there, and each field that is there is checked. ``needs`` names the fields beyond
    those that this call cannot do without, each with why (e.g. the reward field asked for).
    """

    def bad(why: str) -> RewardServerError:
        return RewardServerError(f"{url}{path} returned an invalid answer: {why}", urls=[url], status=200)

    try:
        parsed = answer.model_validate(data, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        raise bad(f"{where}: {first['msg']} (got {str(first.get('input'))[:200]!r}); "
                  f"{exc.error_count()} error(s) in all") from None
    if len(parsed.results) != n_items:
        raise bad(f"{len(parsed.results)} results for {n_items} items")
    for name, why in (needs or {}).items():
        lacking = [i for i, result in enumerate(parsed.results) if getattr(result, name) is None]
        if lacking:
            raise bad(f"results.{lacking[0]}.{name}: absent ({len(lacking)} of {n_items} results lack it), "
                      f"and {why}")
    return list(parsed.results), (parsed.model, parsed.rubric)


def _chunk_order(items: Sequence[dict[str, Any]], limit: int, whole_groups: bool) -> list[list[int]]:
    """Item indices per request: runs of ``limit`` in order, or, with ``whole_groups``, whole
    prompt groups packed in order of first appearance (the server compares a group's responses
    only with each other, so a group split over requests would be judged as two). A group is
    the server's: prompts with one :func:`~drlaif.prompt_text.same_prompt_key`."""
    if not whole_groups:
        return [list(range(i, min(i + limit, len(items)))) for i in range(0, len(items), limit)]
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(same_prompt_key(item["prompt"]), []).append(i)
    chunks: list[list[int]] = [[]]
    for group in groups.values():
        if len(group) > limit:
            raise ValueError(f"a prompt group of {len(group)} responses does not fit one request of at most "
                             f"{limit} items (the server's max_items_per_request); group-pairwise judging "
                             "needs each group in one request")
        if len(chunks[-1]) + len(group) > limit:
            chunks.append([])
        chunks[-1].extend(group)
    return chunks


def _server_limits(info: Mapping[str, Any], source: str) -> dict[str, int]:
    """Items per request from GET /info's body (read from ``source``): max_items_per_request, and
    max_compare_items for /compare."""
    limits = info.get("limits")
    limits = limits if isinstance(limits, dict) else {}

    def usable(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 1

    per_request = limits.get("max_items_per_request")
    if not usable(per_request):
        per_request = FALLBACK_MAX_ITEMS_PER_REQUEST
        log.info("max_items_per_request not available (%s); using %d", source, per_request)
    per_compare = limits.get("max_compare_items")
    return {"/score": per_request, "/compare": per_compare if usable(per_compare) else per_request}


def _prompt_payload(index: int, prompt: Prompt) -> str | list[dict[str, str]]:
    """A wire prompt; rejects malformed input here, with its index, rather than as a server 422."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and prompt:
        messages = []
        for m in prompt:
            if not (isinstance(m, Mapping) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise TypeError(
                    f"prompts[{index}]: each chat message needs str 'role' and 'content', got {m!r}")
            # Only role and content reach the labeler; extra keys would be refused by the server.
            messages.append({"role": m["role"], "content": m["content"]})
        return messages
    raise TypeError(f"prompts[{index}] must be a str or a non-empty list of chat messages, got {prompt!r}")


def _item_payload(index: int, prompt: Prompt, reference: str | None = None, **texts: str) -> dict[str, Any]:
    """One wire item: the prompt, the named response text(s), e.g. ``response=...``, and the
    reference answer when there is one."""
    for name, text in texts.items():
        if not isinstance(text, str):
            argument = {"response": "responses", "response_a": "responses_a",
                        "response_b": "responses_b"}[name]
            raise TypeError(f"{argument}[{index}] must be a str, got {type(text).__name__}")
    if reference is not None and not isinstance(reference, str):
        raise TypeError(f"references[{index}] must be a str or None, got {type(reference).__name__}")
    item = {"prompt": _prompt_payload(index, prompt), **texts}
    return item if reference is None else {**item, "reference": reference}


def _references(references: Sequence[str | None] | None, n: int) -> Sequence[str | None]:
    """One reference (or None) per item; a ValueError when the list does not match the items."""
    if references is None:
        return [None] * n
    if len(references) != n:
        raise ValueError(f"{len(references)} references for {n} items: give one per item (None for none)")
    return references


class AsyncRewardClient:
    """The async reward client: `POST /score` and `POST /compare` with retries, one deadline per
    call and load-aware routing over the configured servers.

    Safe to use from several event loops (one connection pool per loop). Use it as an
    `async with` block, or call [aclose][drlaif.client.AsyncRewardClient.aclose] at the end.

    Args:
        config: Where the servers are and how hard to try.
    """

    def __init__(self, config: RewardClientConfig):
        self.config = config
        self._router = ReplicaRouter(config.urls, policy=config.routing, probe_interval_s=config.probe_interval_s)
        self._rng = random.Random() if config.jitter else None
        self._pools: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._lock = threading.Lock()
        self._closed = False
        # Retries over the client's lifetime, all calls and loops together; under _lock because
        # loops on several threads may retry at once.
        self._retries = 0
        # Items per request by path, from the config or GET /info.
        self._limits: dict[str, int] | None = None
        # GET /info's body and where it came from, read once when a call first needs it.
        self._info: tuple[dict[str, Any], str] | None = None
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def retries(self) -> int:
        """How many times, in total since it was created, this client waited and tried a request again.

        One per retry after a connection error, timeout or retryable status (the same events that
        log a "retry N in" warning), over every call, chunk and URL; first attempts do not count.
        A trainer logs it per step to show an outage that was ridden out.
        """
        with self._lock:
            return self._retries

    def replica_stats(self) -> dict[str, ReplicaStats]:
        """Per server URL: requests sent, failures (no answer, timeout, 429, 5xx) and requests in flight,
        over the client's lifetime (readable after close too)."""
        return self._router.stats()

    def log_replica_stats(self) -> None:
        """Log [replica_stats][drlaif.client.AsyncRewardClient.replica_stats] (at the end of a
        run: which replica served, which failed)."""
        log.info("reward servers: %s", "; ".join(
            f"{url}: {s.requests} requests, {s.failures} failed" + (f", {s.in_flight} in flight" if s.in_flight else "")
            for url, s in self.replica_stats().items()))

    async def score_items(self, prompts: Sequence[Prompt], responses: Sequence[str],
                          rubric: str | None = None, references: Sequence[str | None] | None = None,
                          ) -> list[ItemAnswer]:
        """Score each (prompt, response) pair: the server's whole result per item.

        Args:
            prompts: One prompt per item: a string, an HH-RLHF transcript or a list of chat
                messages (`{"role": ..., "content": ...}`).
            responses: One response string per item.
            rubric: The rubric for this call; None: the config's.
            references: One reference answer per item (None for an item without one), for a
                rubric that judges against one (see
                [takes_reference][drlaif.client.AsyncRewardClient.takes_reference]); the server
                refuses a missing one under such a rubric, and any under the others.

        Returns:
            One `ItemAnswer` per item, in input order: `reward`, `score`, `distribution`,
            `label_mass`, `reward_as_written`, `reward_robust` and the rest of a `/score`
            result (see the API page). Only `reward` is sure to be there: a field that another
            server does not send is None (drlaif's own server sends them all).

        Raises:
            RewardServerError: No valid answer within the config's `deadline_s`, or a
                status that is not retried.
            ValueError: The lists differ in length, or an item is malformed.
            TypeError: A prompt or response of the wrong type.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        items = [_item_payload(i, p, ref, response=r)
                 for i, (p, r, ref) in enumerate(zip(prompts, responses, _references(references, len(prompts))))]
        if not items:
            return []
        needs = {}
        if self.config.reward_field != "reward":
            needs[self.config.reward_field] = (f"reward_field is {self.config.reward_field!r}: a server that sends "
                                               "only reward serves reward_field 'reward'")
        rubric = self._rubric(rubric)
        call = _Call(self.config.urls, self.config.deadline_s)

        async def post() -> list[ItemAnswer]:
            if not await self._judges_in_groups(call, rubric):
                # An explicit "direct" overrides a rubric that judges in groups. The rubric's own
                # choice needs no field, which a server of your own may not know.
                extra = {"group_pairwise": False} if self.config.reward_mode == "direct" else {}
                return await self._post_chunks("/score", items, rubric, extra, ScoreAnswer, call, needs=needs)
            needs["group"] = ("group_pairwise was asked for: the server did not judge the items in their prompt "
                              "groups (use reward_mode 'direct' with it, or a server that supports group_pairwise)")
            extra = {"group_pairwise": True, "group_opponents": self.config.group_opponents}
            return await self._post_chunks("/score", items, rubric, extra, ScoreAnswer, call, whole_groups=True,
                                           needs=needs)

        return await self._within_deadline(call, post())

    async def reward_mode(self, rubric: str | None = None) -> str:
        """How this client judges responses under ``rubric`` (None: the config's rubric):
        `"direct"` or `"group-pairwise"`. The config's `reward_mode` when it names one; otherwise
        the rubric's choice, its `group_pairwise` in the server's `GET /info` (read once, with the
        same retries and deadline), and `"direct"` when /info does not say.

        Raises:
            RewardServerError: No valid /info answer within the deadline (a 404 is "does not say").
        """
        rubric = self._rubric(rubric)
        call = _Call(self.config.urls, self.config.deadline_s)
        return "group-pairwise" if await self._within_deadline(call, self._judges_in_groups(call, rubric)) else "direct"

    async def takes_reference(self, rubric: str | None = None) -> bool:
        """Whether ``rubric`` (None: the config's) judges each response against a reference
        answer: its `takes_reference` in the server's `GET /info` (read once), false where /info
        does not say. The framework adapters send their datasets' reference answers (veRL's
        `ground_truth`, a trl dataset column) only to such a rubric.

        Raises:
            RewardServerError: No valid /info answer within the deadline (a 404 is "does not say").
        """
        call = _Call(self.config.urls, self.config.deadline_s)
        listed = await self._within_deadline(call, self._listed_rubric(call, self._rubric(rubric)))
        return listed.get("takes_reference") is True

    async def compare_items(self, prompts: Sequence[Prompt], responses_a: Sequence[str],
                            responses_b: Sequence[str], rubric: str | None = None,
                            debias: bool = True, references: Sequence[str | None] | None = None,
                            ) -> list[ItemPreference]:
        """Pairwise preference for each (prompt, response A, response B): the server's whole result.

        Args:
            prompts: One prompt per item, as in `score_items`.
            responses_a: The first response of each pair.
            responses_b: The second response of each pair.
            rubric: The rubric for this call; None: the config's. It needs a pairwise form on
                the server.
            debias: Read both orders and average them (the default); False reads A first
                only, at half the cost, and keeps the labeler's position bias.
            references: One reference answer per pair, as in `score_items`.

        Returns:
            One `ItemPreference` per pair, in input order: `p_a`, `orders`, `consistent`,
            `label_mass`.

        Raises:
            RewardServerError: As in `score_items`.
            ValueError: The lists differ in length.
        """
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} responses_a and "
                             f"{len(responses_b)} responses_b: give one of each per item")
        items = [_item_payload(i, p, ref, response_a=a, response_b=b) for i, (p, a, b, ref)
                 in enumerate(zip(prompts, responses_a, responses_b, _references(references, len(prompts))))]
        if not items:
            return []
        call = _Call(self.config.urls, self.config.deadline_s)
        compared = await self._within_deadline(call, self._post_chunks(
            "/compare", items, self._rubric(rubric), {"debias": debias}, CompareResponse, call))
        if debias and any(c.orders.ba is None for c in compared):
            raise RewardServerError(f"{', '.join(self.config.urls)}/compare answered without the second "
                                    "order although debias was asked for", urls=self.config.urls, status=200)
        return compared

    async def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                      rubric: str | None = None, debias: bool = True,
                      references: Sequence[str | None] | None = None) -> list[float]:
        """P(A better than B) in [0, 1] for each (prompt, response A, response B), in input order.

        The same arguments and errors as
        [compare_items][drlaif.client.AsyncRewardClient.compare_items].
        """
        return [c.p_a for c in await self.compare_items(prompts, responses_a, responses_b, rubric, debias,
                                                        references)]

    async def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
                    rubric: str | None = None, references: Sequence[str | None] | None = None) -> list[float]:
        """Rewards in [-1, 1] for each (prompt, response) pair, in input order.

        Each reward is the config's `reward_field` of the server's answer for that item, never
        a value the client made up. The same arguments and errors as
        [score_items][drlaif.client.AsyncRewardClient.score_items].
        """
        return rewards_of(await self.score_items(prompts, responses, rubric, references), self.config.reward_field)

    async def info(self) -> dict[str, Any]:
        """The server's GET /info (model, backend, rubrics, limits), with the same retries and deadline."""
        call = _Call(self.config.urls, self.config.deadline_s)
        data, _ = await self._within_deadline(call, self._request("GET", "/info", None, call))
        return data

    async def aclose(self) -> None:
        """Close the connection pools. Pools of other, still running loops are closed on their loop."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, {}
        current = asyncio.get_running_loop()
        for loop, state in pools.items():
            if loop is current:
                await state.close()
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(state.close(), loop)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(future), timeout=5)
                except (TimeoutError, RuntimeError) as exc:  # that loop is stuck or going away
                    log.debug("could not close a pool on another loop: %r", exc)
            # A closed loop's pool cannot be closed any more; its sockets go with the garbage.

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals ----------------------------------------------------------------------------

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("this reward client is closed")
            state = self._pools.get(loop)
            if state is None:
                # Forget pools of loops that have closed (e.g. finished asyncio.run calls).
                for dead in [lp for lp in self._pools if lp.is_closed()]:
                    del self._pools[dead]
                c = self.config
                n = c.max_concurrency
                # Beside the requests: one readiness probe per server at most.
                connections = n + len(self._router.stats())
                state = _LoopState(
                    http=httpx.AsyncClient(
                        headers=self._headers,
                        timeout=httpx.Timeout(c.read_timeout_s, connect=c.connect_timeout_s),
                        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                    ),
                    semaphore=asyncio.Semaphore(n),
                )
                self._pools[loop] = state
        return state

    def _rubric(self, rubric: str | None) -> str | None:
        """A call's rubric: its own, else the config's (None: the server's default)."""
        return rubric if rubric is not None else self.config.rubric

    @staticmethod
    async def _within_deadline(call: _Call, work: Coroutine[Any, Any, T]) -> T:
        """``work`` under the call's deadline; a RewardServerError saying so when it runs out.

        The timeout is the hard bound: it also covers semaphore waits, sleeps and servers that
        trickle bytes slower than the read timeout would notice."""
        try:
            async with asyncio.timeout(call.deadline_s):
                return await work
        except TimeoutError:
            raise call.deadline_error() from None

    async def _post_chunks(self, path: str, items: list[dict[str, Any]], rubric: str | None,
                           extra: dict[str, Any], answer: type[ScoreAnswer | CompareResponse], call: _Call,
                           whole_groups: bool = False, needs: Mapping[str, str] | None = None) -> list[Any]:
        """POST items to `path` in chunks of the server's limit, as parts of one call; results in
        order. With ``whole_groups`` the items of one prompt go in the same chunk; ``needs`` as in
        :func:`_parse_results`."""
        limit = await self._items_per_request(call, path)
        order = _chunk_order(items, limit, whole_groups)
        chunks = [[items[i] for i in chunk] for chunk in order]
        answers = await _gather_or_cancel(
            [self._post_chunk(path, c, rubric, extra, answer, call, needs or {}) for c in chunks])
        sources = {meta for _, meta in answers}
        if len(sources) > 1:
            # Rewards from different labelers or rubrics are not comparable; mixing them silently
            # would corrupt the training signal.
            raise RewardServerError(f"servers disagree on (model, rubric) within one call: {sorted(sources)}",
                                    urls=self.config.urls, attempts=call.attempts, elapsed_s=call.elapsed())
        results: list[Any] = [None] * len(items)
        for chunk, (chunk_items, _) in zip(order, answers, strict=True):
            for i, item in zip(chunk, chunk_items, strict=True):
                results[i] = item
        return results

    async def _items_per_request(self, call: _Call, path: str = "/score") -> int:
        if self._limits is None:
            configured = self.config.max_items_per_request
            if configured is not None:
                self._limits = {"/score": configured, "/compare": configured}
            else:
                self._limits = _server_limits(*await self._server_info(call))
        return self._limits[path]

    async def _server_info(self, call: _Call) -> tuple[dict[str, Any], str]:
        """GET /info's body, read once ({} from a server without /info), and where it came from."""
        if self._info is None:
            try:
                data, url = await self._request("GET", "/info", None, call)
            except RewardServerError as exc:
                if exc.status != 404:
                    raise
                self._info = {}, "the server has no /info"
            else:
                self._info = (data if isinstance(data, dict) else {}), f"{url}/info"
        return self._info

    async def _judges_in_groups(self, call: _Call, rubric: str | None) -> bool:
        """Whether this call's responses are judged group-pairwise: the config's reward_mode, or
        (None) the rubric's ``group_pairwise`` in GET /info, false where /info does not say."""
        if self.config.reward_mode is not None:
            return self.config.reward_mode == "group-pairwise"
        return (await self._listed_rubric(call, rubric)).get("group_pairwise") is True

    async def _listed_rubric(self, call: _Call, rubric: str | None) -> dict[str, Any]:
        """What GET /info says of ``rubric`` (None: the server's default); {} where it does not say."""
        info, _ = await self._server_info(call)
        name = rubric if rubric is not None else info.get("default_rubric")
        rubrics = info.get("rubrics")
        listed = [r for r in rubrics if isinstance(r, dict) and r.get("name") == name] if isinstance(rubrics, list) else []
        return listed[0] if listed else {}


    async def _post_chunk(self, path: str, items: list[dict[str, Any]], rubric: str | None,
                          extra: dict[str, Any], answer: type[ScoreAnswer | CompareResponse],
                          call: _Call, needs: Mapping[str, str]) -> tuple[list[Any], tuple[str | None, str | None]]:
        body: dict[str, Any] = {"items": items, **extra}
        if rubric is not None:
            body["rubric"] = rubric
        data, url = await self._request("POST", path, body, call)
        parsed, (model, answered_rubric) = _parse_results(data, len(items), url, path, answer, needs)
        if rubric is not None and answered_rubric and answered_rubric != rubric:
            raise RewardServerError(
                f"{url}{path} answered with rubric {answered_rubric!r}, asked for {rubric!r}",
                urls=[url], status=200, attempts=call.attempts, elapsed_s=call.elapsed())
        return parsed, (model, answered_rubric)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None,
                       call: _Call) -> tuple[Any, str]:
        """One logical request, retried until it succeeds, fails for good, or the call's deadline.

        Each attempt goes where the router says; an attempt that failed moves to another usable
        server at once, or, when there is none, backs off and waits for one (a probe that answers,
        a Retry-After that ends). Returns the decoded JSON body and the URL that answered.
        """
        c = self.config
        state = self._loop_state()
        attempt = 0
        avoid: str | None = None
        while True:
            # Routed once a concurrency slot is free, so that the choice sees the load as it is
            # when the request leaves, not as it was when the request began to wait.
            async with state.semaphore:
                remaining = call.deadline - time.monotonic()
                if remaining <= 0:
                    raise call.deadline_error()
                route = self._router.route(avoid=avoid)
                self._start_probes(state, route.probes)
                if route.url is not None:
                    attempt += 1
                    call.attempts += 1
                    answer, retry_after = await self._send(state, method, route.url, path, body, remaining)
            url = route.url
            if url is None:
                if route.wait_until >= call.deadline:
                    raise call.deadline_error(f"{route.why} the deadline")
                await asyncio.sleep(route.wait_until - time.monotonic())
                continue
            status = None
            if isinstance(answer, httpx.Response):
                status = answer.status_code
                if status == 200:
                    try:
                        return answer.json(), url
                    except ValueError:
                        raise RewardServerError(
                            f"{url}{path} answered 200 with a body that is not JSON: {answer.text[:200]!r}",
                            urls=[url], status=200, attempts=call.attempts,
                            elapsed_s=call.elapsed()) from None
                message = _server_message(answer)
                if status not in c.retry_statuses:
                    raise RewardServerError(
                        f"{url}{path} answered HTTP {status}: {message} (not retried; attempt {attempt}, "
                        f"{call.elapsed():.1f} s)",
                        urls=[url], status=status, attempts=call.attempts, elapsed_s=call.elapsed())
                reason = f"HTTP {status}: {message}"
            else:
                reason = answer
            call.last_error = f"{url}{path}: {reason}"
            if attempt >= c.max_attempts:
                raise RewardServerError(
                    f"gave up on {url}{path} after {attempt} attempts over {call.elapsed():.1f} s "
                    f"(max_attempts={c.max_attempts}); last error: {reason}",
                    urls=c.urls, status=status, attempts=call.attempts, elapsed_s=call.elapsed())
            # Another server can take the request now: waiting would only delay it. Alone, back off
            # as against a single server.
            avoid = url
            failover = self._router.has_usable(excluding=url)
            delay = 0.0 if failover else backoff_delay(attempt, c.backoff_initial_s, c.backoff_max_s, self._rng)
            left = call.deadline - time.monotonic()
            if delay >= left:
                raise call.deadline_error(f"the next retry would start after it, in {delay:.2f} s")
            log.warning("reward server %s%s failed (%s); retry %d in %.2f s%s%s, %.1f s left before the "
                        "deadline", url, path, reason, attempt, delay, " on another server" if failover else "",
                        f" (Retry-After {retry_after:g} s)" if retry_after is not None else "", left)
            # Counted when the retry is decided, with its warning, so the count and the log agree.
            with self._lock:
                self._retries += 1
            await asyncio.sleep(delay)

    async def _send(self, state: _LoopState, method: str, url: str, path: str, body: dict[str, Any] | None,
                    remaining: float) -> tuple[httpx.Response | str, float | None]:
        """One HTTP attempt at ``url``, reported to the router whatever happens.

        Returns the response, or why there was none; and the server's Retry-After, if it sent one
        with a retryable status.
        """
        c = self.config
        # Never wait on one request longer than the call has left.
        timeout = httpx.Timeout(connect=min(c.connect_timeout_s, remaining), read=min(c.read_timeout_s, remaining),
                                write=min(c.read_timeout_s, remaining), pool=min(c.connect_timeout_s, remaining))
        outcome, retry_after = Outcome.CANCELLED, None  # if the caller stops waiting first
        try:
            resp = await state.http.request(method, url + path, json=body, timeout=timeout)
        except _RETRYABLE_TRANSPORT_ERRORS as exc:
            outcome = Outcome.DOWN
            return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), None
        else:
            outcome = _outcome(resp)
            if resp.status_code in c.retry_statuses:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            return resp, retry_after
        finally:
            self._router.finished(url, outcome, retry_after)

    def _start_probes(self, state: _LoopState, urls: Sequence[str]) -> None:
        """Probe these servers' readiness in the background, on this loop."""
        for url in urls:
            task = asyncio.ensure_future(self._probe(state.http, url))
            state.probes.add(task)  # a task nobody holds may be garbage-collected mid-probe
            task.add_done_callback(state.probes.discard)

    async def _probe(self, http: httpx.AsyncClient, url: str) -> None:
        """GET /health/ready of a server that failed; a 200 puts it back in rotation."""
        ready = False
        try:
            # A readiness check slower than a connection is as good as "not ready".
            resp = await http.get(f"{url}/health/ready", timeout=self.config.connect_timeout_s)
            ready = resp.status_code == 200
        except httpx.HTTPError as exc:
            log.debug("readiness probe of %s failed: %r", url, exc)
        finally:
            self._router.probed(url, ready)
        if ready:
            log.info("reward server %s is ready again", url)


# Errors that belong to one request's batch, not to the server: it stays in rotation (after its
# Retry-After), so that one bad input does not take every replica out in turn.
_REQUEST_ERRORS = frozenset(e.type for e in ERRORS if e.request_scoped)


def _outcome(resp: httpx.Response) -> Outcome:
    """What an answer says about the server that sent it."""
    status = resp.status_code
    if status == 200:
        return Outcome.OK
    if status == 429:
        return Outcome.BUSY
    if status in (503, 504) and _error_type(resp) in _REQUEST_ERRORS:
        return Outcome.BUSY
    return Outcome.DOWN if status >= 500 else Outcome.REFUSED


def _error_type(resp: httpx.Response) -> str | None:
    """The ``error.type`` of a drlaif error answer (None for anything else)."""
    try:
        error = resp.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("type") if isinstance(error, dict) else None


def rewards_of(items: Sequence[ItemAnswer], field: str) -> list[float]:
    """The ``field`` reward (one of :data:`REWARD_FIELDS`) of each item;
    :class:`~drlaif.protocol.MissingField` names one the server did not send."""
    return [item.value(field) for item in items]


async def _gather_or_cancel(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; on the first failure cancel the rest and raise that failure.

    (asyncio.gather would leave the siblings running, still retrying against the server.)
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        # Let cancelled siblings unwind (close their connections) before we return or raise.
        await asyncio.gather(*tasks, return_exceptions=True)


class RewardClient:
    """The blocking reward client, for scripts and the PPO loop.

    It runs an [AsyncRewardClient][drlaif.client.AsyncRewardClient] on a private event loop in
    a daemon thread, so it works from plain code and also from code that already runs inside an
    event loop (a notebook). Thread-safe: calls from several threads share the loop and its
    connection pool. Use it as a `with` block, or call `close` at the end.

    Args:
        config: Where the servers are and how hard to try.

    Example:
        ```python
        from drlaif.client import RewardClient, RewardClientConfig

        config = RewardClientConfig(urls=["http://127.0.0.1:8000"], rubric="helpful")
        with RewardClient(config) as client:
            rewards = client.score(["What is 2+2?"], ["4"])
            p_a = client.compare(["What is 2+2?"], ["4"], ["5"])
        ```
    """

    def __init__(self, config: RewardClientConfig):
        self.config = config
        self._async = AsyncRewardClient(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="drlaif-reward-client",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    def submit_score(self, prompts: Sequence[Prompt], responses: Sequence[str], rubric: str | None = None,
                     references: Sequence[str | None] | None = None) -> concurrent.futures.Future[list[float]]:
        """Start scoring in the background and return a Future of the rewards.

        Lets a trainer overlap the reward requests of one batch with the rollout of the next.
        """
        return self._submit(self._async.score(prompts, responses, rubric, references))

    def submit_score_items(self, prompts: Sequence[Prompt], responses: Sequence[str], rubric: str | None = None,
                           references: Sequence[str | None] | None = None,
                           ) -> concurrent.futures.Future[list[ItemAnswer]]:
        """Like [submit_score][drlaif.client.RewardClient.submit_score], with the whole result of
        each item."""
        return self._submit(self._async.score_items(prompts, responses, rubric, references))

    def score_items(self, prompts: Sequence[Prompt], responses: Sequence[str], rubric: str | None = None,
                    references: Sequence[str | None] | None = None) -> list[ItemAnswer]:
        """Blocking [AsyncRewardClient.score_items][drlaif.client.AsyncRewardClient.score_items]."""
        return self._wait(self.submit_score_items(prompts, responses, rubric, references))

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str], rubric: str | None = None,
              references: Sequence[str | None] | None = None) -> list[float]:
        """Blocking [AsyncRewardClient.score][drlaif.client.AsyncRewardClient.score]: rewards in
        [-1, 1], in input order."""
        return self._wait(self.submit_score(prompts, responses, rubric, references))

    def compare_items(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                      rubric: str | None = None, debias: bool = True,
                      references: Sequence[str | None] | None = None) -> list[ItemPreference]:
        """Blocking [AsyncRewardClient.compare_items][drlaif.client.AsyncRewardClient.compare_items]."""
        return self._wait(self._submit(self._async.compare_items(prompts, responses_a, responses_b, rubric,
                                                                 debias, references)))

    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                rubric: str | None = None, debias: bool = True,
                references: Sequence[str | None] | None = None) -> list[float]:
        """Blocking [AsyncRewardClient.compare][drlaif.client.AsyncRewardClient.compare]: P(A
        better) per item, in input order."""
        return self._wait(self._submit(self._async.compare(prompts, responses_a, responses_b, rubric,
                                                           debias, references)))

    def takes_reference(self, rubric: str | None = None) -> bool:
        """Blocking [AsyncRewardClient.takes_reference][drlaif.client.AsyncRewardClient.takes_reference]."""
        return self._wait(self._submit(self._async.takes_reference(rubric)))

    def info(self) -> dict[str, Any]:
        """Blocking [AsyncRewardClient.info][drlaif.client.AsyncRewardClient.info]."""
        return self._wait(self._submit(self._async.info()))

    def reward_mode(self, rubric: str | None = None) -> str:
        """Blocking [AsyncRewardClient.reward_mode][drlaif.client.AsyncRewardClient.reward_mode]."""
        return self._wait(self._submit(self._async.reward_mode(rubric)))

    @property
    def retries(self) -> int:
        """Total retries so far, as [AsyncRewardClient.retries][drlaif.client.AsyncRewardClient.retries]
        counts them (readable after close too)."""
        return self._async.retries

    def replica_stats(self) -> dict[str, ReplicaStats]:
        """Per server URL, as
        [AsyncRewardClient.replica_stats][drlaif.client.AsyncRewardClient.replica_stats] (readable
        after close too)."""
        return self._async.replica_stats()

    def log_replica_stats(self) -> None:
        """Log each server's requests and failures, as
        [AsyncRewardClient.log_replica_stats][drlaif.client.AsyncRewardClient.log_replica_stats]."""
        self._async.log_replica_stats()

    def close(self) -> None:
        """Close the connection pool and stop the private loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise RuntimeError("this reward client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @staticmethod
    def _wait(future: concurrent.futures.Future[T]) -> T:
        try:
            return future.result()
        except BaseException:
            # On KeyboardInterrupt (or any exit from here) stop the work on the loop too,
            # instead of leaving it retrying in the background.
            future.cancel()
            raise
