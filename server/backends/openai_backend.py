"""The openai backend: an OpenAI-compatible inference server (vLLM's own, or a hosted API) as the labeler.

The scorer tokenises locally (``--model`` names the tokenizer, which must be the served
model's) and the backend sends token ids to the server's ``/v1/completions``. Label reads
go one of three ways (``--openai-logprobs``):

- ``token_ids`` (exact): ``max_tokens=1`` and ``logprob_token_ids`` set to the candidate
  tokens, vLLM's extension that returns their log-probabilities whatever their rank, named
  by id (``return_tokens_as_token_ids``). As in the in-process vllm backend, a read at p
  and the next at p + 1 (the "1" then the "0" of "10") are one request of two tokens whose
  first is forced with ``allowed_token_ids``; vLLM's default ``logprobs_mode`` is
  ``raw_logprobs``, taken before that mask. A server started with another mode masks them,
  so the pairing is checked against two single reads at startup and turned off if they
  disagree; other read layouts go one request per read, in order of position, so that each
  longer prompt finds the shorter one's KV in the server's prefix cache.
- ``prompt`` (exact, for vLLM servers without ``logprob_token_ids``): teacher forcing. For a
  read at p and a candidate c the prompt ``input_ids[:p] + [c]`` with ``prompt_logprobs``
  gives log P(c | input_ids[:p]) at its last position; a prompt that is a prefix of another
  is left out, the longer one answering both (prefix + "1" + "0" gives P("1" | prefix) and
  P("0" | prefix + "1")). A sequence's prompts go in one request. vLLM computes a request
  with ``prompt_logprobs`` without its prefix cache, so every prompt is a full prefill: about
  ten per item on a 1..10 scale.
- ``top`` (approximate, for hosted APIs): ``logprobs`` k (20, else 5) on the next token; a
  candidate outside the top k reads as probability 0. ``BackendInfo.approximate`` is then
  True and every answer says ``read: approximate``.

``auto`` probes them in that order at startup, one small request each; a server that
answers none is refused. Startup also reads the served model and its ``max_model_len``
from ``/v1/models`` and, where the server has vLLM's ``/tokenize``, checks that it
tokenises a probe text as the local tokenizer does.

Generation (reasoned rubrics' rationales) is a completion of the token-id prompt at the
request's temperature and seed; single-token stop sequences and the model's EOS go as
``stop_token_ids``, and a request with a longer stop sequence streams and is closed once
its tokens end with one (vLLM then aborts it), the cut :func:`finish_generation` makes.

HTTP requests in flight are bounded (``--openai-max-concurrency``) and time out after
``--openai-timeout-s``. A server that fails a request (unreachable, a 5xx, a timeout, a
dropped connection) raises :class:`UpstreamError`, which the scorer answers with 503; the
backend never reports itself failed for good, since a remote server can come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from server.backends.base import (
    BackendInfo,
    Generation,
    GenerationRequest,
    bad_read,
    check_generation_fits,
    check_reads,
    finish_generation,
    stop_end,
)
from server.backends.vllm_backend import MAX_TOKEN_IDS_PER_REQUEST, _all, _model_eos_ids
from server.scoring import TokenReads

log = logging.getLogger(__name__)

ReadMode = Literal["token_ids", "prompt", "top"]
LogprobsSetting = Literal["auto", "token_ids", "prompt", "top"]
#: The order in which ``auto`` tries the read modes: exact first.
PROBE_ORDER: tuple[ReadMode, ...] = ("token_ids", "prompt", "top")
#: Top-k sizes tried in ``top`` mode (vLLM's default cap is 20, OpenAI's legacy completions' 5).
TOP_K_TRIES = (20, 5)
PROBE_TEXT = "Rate the answer from 1 to 10. The capital of France is Paris. Rating: 10"
# A paired read agrees with two single reads to float rounding (the same engine, other batches).
_PAIR_TOLERANCE = 1e-3
# vLLM sends -inf as -9999.0 (JSON has no infinity); nothing real is that low.
_CLAMPED = -9999.0


class UpstreamError(RuntimeError):
    """The inference server failed a request: unreachable, timed out, or answered an error or
    something that is not the answer asked for. ``status``: its HTTP status, when it sent one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def api_urls(base_url: str) -> tuple[str, str]:
    """(the server's root, its OpenAI API base) from a base URL given with or without the /v1:
    ``http://h:8000/v1`` and ``http://h:8000`` both give ``("http://h:8000", "http://h:8000/v1")``."""
    url = base_url.strip().rstrip("/")
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"--base-url must be an http(s) URL of the inference server, got {base_url!r}")
    root = url.removesuffix("/v1")
    return root, f"{root}/v1"


# ----------------------------------------------------------------------------- request planning


@dataclass(frozen=True)
class TokenIdRequest:
    """One ``token_ids`` completion request: ``prompt``, the log-probabilities of ``token_ids``
    at each generated step, and with ``forced`` two steps, the first forced to that token.
    ``answers``: (read index, step) of each read of the sequence it answers."""

    prompt: tuple[int, ...]
    token_ids: tuple[int, ...]
    forced: int | None
    answers: tuple[tuple[int, int], ...]


def plan_token_id_reads(seq: TokenReads, pair: bool = True,
                        max_ids: int = MAX_TOKEN_IDS_PER_REQUEST) -> list[TokenIdRequest]:
    """The requests that answer every read of ``seq``, in order of position: a read and the
    one a token later as one forced pair (with ``pair``, when their candidates fit one
    request), any other read alone, its candidates in chunks of at most ``max_ids``."""
    order = sorted(range(len(seq.reads)), key=lambda i: seq.reads[i][0])
    out: list[TokenIdRequest] = []
    k = 0
    while k < len(order):
        i = order[k]
        position, candidates = seq.reads[i]
        prompt = tuple(seq.input_ids[:position])
        if pair and k + 1 < len(order):
            j = order[k + 1]
            following_position, following = seq.reads[j]
            both = tuple(sorted(set(candidates) | set(following)))
            if following_position == position + 1 and len(both) <= max_ids:
                out.append(TokenIdRequest(prompt, both, seq.input_ids[position], ((i, 0), (j, 1))))
                k += 2
                continue
        distinct = list(dict.fromkeys(candidates))
        out += [TokenIdRequest(prompt, tuple(distinct[c : c + max_ids]), None, ((i, 0),))
                for c in range(0, len(distinct), max_ids)]
        k += 1
    return out


def plan_prompt_reads(seq: TokenReads) -> tuple[list[tuple[int, ...]], list[list[int]]]:
    """The teacher-forced prompts that answer every read of ``seq``, and for each read, the
    index of the prompt that holds each candidate's log-probability (at the read's position).

    The read of c at p needs ``input_ids[:p] + [c]``. When c is the sequence's own token at
    p and a later read exists, that prompt is a prefix of the later read's prompts, so it is
    left out and answered by the first prompt of the last read position."""
    ids = seq.input_ids
    last = max(position for position, _ in seq.reads)
    prompts: dict[tuple[int, ...], int] = {}

    def index(prompt: tuple[int, ...]) -> int:
        return prompts.setdefault(prompt, len(prompts))

    last_candidates = next(c for p, c in seq.reads if p == last)
    anchor = index((*ids[:last], last_candidates[0]))
    where = [[anchor if position < last and c == ids[position] else index((*ids[:position], c))
              for c in candidates] for position, candidates in seq.reads]
    return list(prompts), where


# ----------------------------------------------------------------------------- answer parsing


def _logprob(value: Any) -> float:
    if isinstance(value, dict):  # vLLM's prompt log-probabilities: {"logprob": ..., "rank": ...}
        value = value.get("logprob")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UpstreamError(f"a log-probability that is not a number: {value!r}")
    return -math.inf if value <= _CLAMPED else float(value)


def _choices(answer: Any, expected: int) -> list[dict]:
    """The completion answer's choices in prompt order (``expected`` of them)."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != expected or not all(isinstance(c, dict) for c in choices):
        raise UpstreamError(f"expected {expected} completion choices, got {str(choices)[:200]}")
    return sorted(choices, key=lambda c: c.get("index", 0))


def _step_logprobs(choice: dict, steps: int) -> list[dict]:
    """The first ``steps`` generated steps' ``top_logprobs`` dicts of a completion choice."""
    logprobs = choice.get("logprobs")
    top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(top, list) or len(top) < steps or not all(isinstance(t, dict) for t in top[:steps]):
        raise UpstreamError("the completion carries no per-token log-probabilities (logprobs.top_logprobs)")
    return top[:steps]


def parse_token_id_steps(choice: dict, token_ids: Sequence[int], steps: int) -> list[dict[int, float]]:
    """Per generated step, token id -> log-probability of exactly ``token_ids``, from a choice
    whose log-probabilities name tokens as ``token_id:<id>`` (``return_tokens_as_token_ids``)."""
    out = []
    for step in _step_logprobs(choice, steps):
        by_id = {}
        for key, value in step.items():
            if isinstance(key, str) and key.startswith("token_id:") and key[9:].isdigit():
                by_id[int(key[9:])] = _logprob(value)
        missing = [t for t in token_ids if t not in by_id]
        if missing:
            raise UpstreamError(f"the completion's log-probabilities lack tokens {missing[:8]} that were asked for "
                                "(logprob_token_ids)")
        out.append({t: by_id[t] for t in token_ids})
    return out


def parse_prompt_logprob(choice: dict, prompt: Sequence[int], position: int) -> float:
    """log P(prompt[position] | prompt[:position]) from a choice's ``prompt_logprobs``."""
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(prompt):
        raise UpstreamError("the completion carries no prompt log-probabilities for its whole prompt "
                            "(prompt_logprobs)")
    entry = entries[position]
    value = entry.get(str(prompt[position])) if isinstance(entry, dict) else None
    if value is None:
        raise UpstreamError(f"the prompt log-probabilities lack the prompt's token at position {position}")
    return _logprob(value)


def parse_top_logprobs(choice: dict, candidates: Sequence[int], texts: dict[int, str]) -> np.ndarray:
    """The candidates' log-probabilities among a choice's top next tokens, -inf for those
    outside them. Tokens are named ``token_id:<id>`` or by their text; a candidate whose text
    (``texts``) another candidate shares cannot be told apart and reads -inf."""
    step = dict(_step_logprobs(choice, 1)[0])
    logprobs = choice["logprobs"]
    tokens, token_logprobs = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if isinstance(tokens, list) and isinstance(token_logprobs, list) and tokens and token_logprobs \
            and token_logprobs[0] is not None:
        step.setdefault(tokens[0], token_logprobs[0])  # the chosen token, should the top list lack it
    by_id: dict[int, float] = {}
    by_text: dict[str, float] = {}
    for key, value in step.items():
        if not isinstance(key, str):
            continue
        if key.startswith("token_id:") and key[9:].isdigit():
            by_id[int(key[9:])] = _logprob(value)
        else:
            by_text[key] = _logprob(value)
    shared = {t for t in texts.values() if sum(v == t for v in texts.values()) > 1}
    values = []
    for c in candidates:
        if c in by_id:
            values.append(by_id[c])
        elif texts[c] in by_text and texts[c] not in shared:
            values.append(by_text[texts[c]])
        else:
            values.append(-math.inf)
    return np.array(values, dtype=np.float64)


# ----------------------------------------------------------------------------- the backend


class OpenAIBackend:
    """Label reads and generation through an OpenAI-compatible server's ``/v1/completions``.

    Build it with :meth:`start`, which finds the served model and the read mode. The HTTP
    client belongs to the event loop that uses it (one is made for each loop).
    """

    def __init__(self, api_url: str, served_model: str, tokenizer, info: BackendInfo, *,
                 mode: ReadMode = "token_ids", eos_ids: Iterable[int] = (), api_key: str | None = None,
                 max_concurrency: int = 64, timeout_s: float = 120.0, pair_reads: bool = True, top_k: int = 20,
                 transport: httpx.AsyncBaseTransport | None = None):
        """``transport``: httpx's (tests give a fake one); the rest as :meth:`start` finds them."""
        self.api_url = api_url
        self.served_model = served_model
        self.tokenizer = tokenizer
        self.info = info
        self.mode: ReadMode = mode
        self.eos_ids = frozenset(eos_ids)
        self.pair_reads = pair_reads
        self.top_k = top_k
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        self._http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, asyncio.Semaphore] | None = None
        self._closing: set[asyncio.Task] = set()
        self._texts: dict[int, str] = {}

    # -- start-up

    @classmethod
    def start(cls, base_url: str, *, model_path: str, served_model: str | None = None, api_key: str | None = None,
              logprobs: LogprobsSetting = "auto", max_concurrency: int = 64, timeout_s: float = 120.0,
              trust_remote_code: bool = False) -> OpenAIBackend:
        """Load the local tokenizer of ``model_path`` and :meth:`connect` to the server at
        ``base_url`` (blocking; call it off the event loop)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        # Every upstream request would be a line at info level.
        if logging.getLogger("httpx").level == logging.NOTSET:
            logging.getLogger("httpx").setLevel(logging.WARNING)
        return cls.connect(base_url, tokenizer, eos_ids=_model_eos_ids(model_path, tokenizer, trust_remote_code),
                           local_context=_config_context(model_path, trust_remote_code), served_model=served_model,
                           api_key=api_key, logprobs=logprobs, max_concurrency=max_concurrency, timeout_s=timeout_s)

    @classmethod
    def connect(cls, base_url: str, tokenizer, *, eos_ids: Iterable[int] = (), local_context: int = 0,
                served_model: str | None = None, api_key: str | None = None, logprobs: LogprobsSetting = "auto",
                max_concurrency: int = 64, timeout_s: float = 120.0,
                transport: httpx.AsyncBaseTransport | None = None) -> OpenAIBackend:
        """Find the server's model and a read mode that works (blocking: a few small requests;
        call it off the event loop). ``local_context``: the context length to assume when the
        server does not say its own (0: unknown). RuntimeError when the server cannot be
        reached, serves no model that can be chosen, tokenises differently from ``tokenizer``,
        or returns no log-probabilities."""
        _, api_url = api_urls(base_url)
        info = BackendInfo(name="openai", model=served_model or "", dtype="remote", device="remote",
                           max_context=0, continuous_batching=True)
        backend = cls(api_url, served_model or "", tokenizer, info, eos_ids=eos_ids, api_key=api_key,
                      max_concurrency=max_concurrency, timeout_s=timeout_s, transport=transport)
        asyncio.run(backend._connect(served_model, logprobs, local_context))
        return backend

    async def _connect(self, served_model: str | None, logprobs: str, local_context: int) -> None:
        try:
            started = time.perf_counter()
            model, max_model_len = await self._served_model(served_model)
            self.served_model = model
            await self._check_tokenizer()
            tried: list[str] = []
            for mode in PROBE_ORDER if logprobs == "auto" else (logprobs,):
                why = await self._probe(mode)
                if why is None:
                    break
                tried.append(f"{mode}: {why}")
                log.info("the inference server at %s cannot do %s reads: %s", self.api_url, mode, why)
            else:
                raise RuntimeError(
                    f"the inference server at {self.api_url} returns no usable log-probabilities, and drlaif reads "
                    f"labels from them; tried {'; '.join(tried)}")
            context = max_model_len or local_context
            self.info = BackendInfo(name="openai", model=model, dtype="remote", device="remote",
                                    # A prompt plus one generated token must fit the model length.
                                    max_context=max(context - 1, 0) if context else 0,
                                    continuous_batching=True, approximate=self.mode == "top")
            log.info("connected to %s in %.1fs: model %s, max_model_len %s, %s reads (%s)%s", self.api_url,
                     time.perf_counter() - started, model, max_model_len or "unknown", self.mode,
                     "approximate" if self.mode == "top" else "exact",
                     "" if self.mode != "token_ids" else f", paired: {self.pair_reads}")
            if self.mode == "top":
                log.warning("the inference server at %s gives only its top %d next tokens: label reads are "
                            "approximate (labels outside them read as 0) and every answer says so",
                            self.api_url, self.top_k)
        finally:
            await self._aclose()  # the server's event loop makes its own client

    async def _served_model(self, wanted: str | None) -> tuple[str, int | None]:
        """The model to ask for and its max_model_len (None: the server does not say)."""
        try:
            answer = await self._get("/models")
        except UpstreamError as exc:
            if wanted is None or exc.status is None:
                raise RuntimeError(f"cannot list the models of the inference server at {self.api_url}: {exc}") \
                    from exc
            log.info("the inference server lists no models (%s); using --served-model %s", exc, wanted)
            return wanted, None
        listed = [m for m in answer.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)] \
            if isinstance(answer, dict) else []
        names = [m["id"] for m in listed]
        if wanted is None:
            if len(listed) != 1:
                raise RuntimeError(f"the inference server at {self.api_url} serves {len(listed)} models "
                                   f"({', '.join(names) or 'none'}); name one with --served-model")
            chosen = listed[0]
        else:
            chosen = next((m for m in listed if m["id"] == wanted), None)
            if chosen is None:
                raise RuntimeError(f"the inference server at {self.api_url} does not serve {wanted!r}; it serves "
                                   f"{', '.join(names) or 'none'}")
        length = chosen.get("max_model_len")
        return chosen["id"], length if isinstance(length, int) and length > 0 else None

    async def _check_tokenizer(self) -> None:
        """Refuse a server that tokenises the probe text otherwise than the local tokenizer:
        the token ids sent would mean other tokens there. Servers without vLLM's /tokenize
        are not checked."""
        root = self.api_url.removesuffix("/v1")
        local = list(self.tokenizer.encode(PROBE_TEXT, add_special_tokens=False))
        try:
            answer = await self._post(f"{root}/tokenize", {"model": self.served_model, "prompt": PROBE_TEXT,
                                                           "add_special_tokens": False})
        except UpstreamError as exc:
            log.info("cannot check the inference server's tokenizer (%s); make sure --model names the served "
                     "model's", exc)
            return
        remote = answer.get("tokens") if isinstance(answer, dict) else None
        if remote != local:
            raise RuntimeError(
                f"the inference server at {self.api_url} tokenises differently from the local tokenizer "
                f"({self.tokenizer.name_or_path}): {PROBE_TEXT!r} is {str(remote)[:120]} there and {local[:40]} "
                "here; --model must name the tokenizer of the served model")

    def _probe_reads(self) -> TokenReads:
        """A small read on the probe text: two candidates at its last token and one after it."""
        ids = tuple(self.tokenizer.encode(PROBE_TEXT, add_special_tokens=False))
        n = len(ids)
        first = tuple(dict.fromkeys((ids[-1], ids[0], ids[1])))
        return TokenReads(ids, ((n - 1, first), (n, (ids[2],))))

    async def _probe(self, mode: ReadMode) -> str | None:
        """None when ``mode`` reads work on this server (and this backend is set to it), else why not."""
        probe = self._probe_reads()
        self.mode = mode
        try:
            if mode == "top":
                return await self._probe_top(probe)
            self.pair_reads = False
            got = (await self.read_logprobs([probe]))[0]
            if (problem := bad_read([probe], [got])) is not None:
                return f"invalid log-probabilities ({problem})"
            if not all(np.isfinite(values).all() for values in got):
                return f"log-probabilities of -inf for tokens of a plain sentence ({[v.tolist() for v in got]})"
            if mode == "token_ids":
                # A forced pair is exact only where log-probabilities are taken before the mask that forces it.
                self.pair_reads = True
                paired = (await self.read_logprobs([probe]))[0]
                agree = all(np.allclose(a, b, rtol=0, atol=_PAIR_TOLERANCE) for a, b in zip(paired, got, strict=True))
                self.pair_reads = agree
                if not agree:
                    log.warning("the inference server's forced-pair reads differ from single reads (%s against %s; "
                                "started with a logprobs mode other than raw_logprobs?): reading one position per "
                                "request", [v.tolist() for v in paired], [v.tolist() for v in got])
            return None
        except UpstreamError as exc:
            return str(exc)

    async def _probe_top(self, probe: TokenReads) -> str | None:
        why = ""
        for k in TOP_K_TRIES:
            self.top_k = k
            try:
                await self.read_logprobs([probe])
                return None
            except UpstreamError as exc:
                why = str(exc)
                if exc.status is None or not 400 <= exc.status < 500:
                    break  # not a refusal of k: a smaller k will not help
        return why

    # -- HTTP

    def _client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not loop:
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            client = httpx.AsyncClient(headers=self._headers, timeout=self.timeout_s, limits=limits,
                                       transport=self._transport)
            self._http = (loop, client, asyncio.Semaphore(self.max_concurrency))
        return self._http[1], self._http[2]

    def _failed(self, url: str, exc: httpx.HTTPError) -> UpstreamError:
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(f"the inference server at {url} did not answer within {self.timeout_s:g}s "
                                 f"(--openai-timeout-s; {type(exc).__name__})")
        return UpstreamError(f"the inference server at {url} failed the request: {type(exc).__name__}: "
                             f"{exc or 'no detail'}")

    def _refused(self, url: str, response: httpx.Response) -> UpstreamError:
        detail: Any = response.text[:500]
        with contextlib.suppress(ValueError):
            body = response.json()
            error = body.get("error", body.get("detail")) if isinstance(body, dict) else None
            detail = error.get("message", error) if isinstance(error, dict) else error or detail
        return UpstreamError(f"the inference server at {url} answered {response.status_code}: "
                             f"{str(detail)[:500] or response.reason_phrase}", status=response.status_code)

    async def _post(self, url: str, body: dict) -> Any:
        """POST ``body`` to ``url`` (a path under the API base, or a whole URL) and its JSON answer."""
        return await self._request("POST", url, body)

    async def _get(self, path: str) -> Any:
        return await self._request("GET", path, None)

    async def _request(self, method: str, url: str, body: dict | None) -> Any:
        url = url if "://" in url else f"{self.api_url}{url}"
        client, slots = self._client()
        async with slots:
            try:
                response = await client.request(method, url, json=body)
            except httpx.HTTPError as exc:
                raise self._failed(url, exc) from exc
        if response.status_code != 200:
            raise self._refused(url, response)
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"the inference server at {url} answered 200 with a body that is not JSON: "
                                f"{response.text[:200]!r}", status=200) from None

    async def _aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http[1].aclose()

    # -- reads

    def _completion(self, prompt: Any, **fields: Any) -> dict:
        return {"model": self.served_model, "prompt": prompt, "temperature": 0.0, **fields}

    async def read_logprobs(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        """See :meth:`server.backends.base.Backend.read_logprobs`; every sequence goes at once."""
        check_reads(batch)
        read = {"token_ids": self._read_token_ids, "prompt": self._read_prompts, "top": self._read_top}[self.mode]
        return await _all(read(seq) for seq in batch)

    async def _read_token_ids(self, seq: TokenReads) -> list[np.ndarray]:
        found: list[dict[int, float]] = [{} for _ in seq.reads]
        # One after the other: each longer prompt then finds the shorter one in the prefix cache.
        for request in plan_token_id_reads(seq, self.pair_reads):
            fields: dict[str, Any] = {"max_tokens": 1, "logprobs": 1, "logprob_token_ids": list(request.token_ids),
                                      "return_tokens_as_token_ids": True}
            steps = 1
            if request.forced is not None:
                steps = 2
                fields.update(max_tokens=2, allowed_token_ids=[request.forced], ignore_eos=True)
            answer = await self._post("/completions", self._completion(list(request.prompt), **fields))
            values = parse_token_id_steps(_choices(answer, 1)[0], request.token_ids, steps)
            for read, step in request.answers:
                found[read].update(values[step])
        return [np.array([found[i][c] for c in candidates], dtype=np.float64)
                for i, (_, candidates) in enumerate(seq.reads)]

    async def _read_prompts(self, seq: TokenReads) -> list[np.ndarray]:
        prompts, where = plan_prompt_reads(seq)
        answer = await self._post("/completions", self._completion([list(p) for p in prompts], max_tokens=1,
                                                                   prompt_logprobs=0))
        choices = _choices(answer, len(prompts))
        return [np.array([parse_prompt_logprob(choices[k], prompts[k], position)
                          for k in where_read], dtype=np.float64)
                for (position, _), where_read in zip(seq.reads, where, strict=True)]

    async def _read_top(self, seq: TokenReads) -> list[np.ndarray]:
        out = []
        for position, candidates in seq.reads:
            answer = await self._post("/completions", self._completion(list(seq.input_ids[:position]), max_tokens=1,
                                                                       logprobs=self.top_k))
            out.append(parse_top_logprobs(_choices(answer, 1)[0], candidates, self._candidate_texts(candidates)))
        return out

    def _candidate_texts(self, candidates: Sequence[int]) -> dict[int, str]:
        for c in candidates:
            if c not in self._texts:
                self._texts[c] = self.tokenizer.decode([c])
        return {c: self._texts[c] for c in candidates}

    # -- generation

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """See :meth:`server.backends.base.Backend.generate`; every request goes at once."""
        check_generation_fits(requests, self.info.max_context)
        return await _all(self._generate(request) for request in requests)

    def _generation_body(self, request: GenerationRequest, stream: bool) -> dict:
        sampled = request.temperature > 0
        body = self._completion(list(request.prompt_ids), max_tokens=request.max_tokens,
                                temperature=request.temperature, top_p=1.0, presence_penalty=0.0,
                                frequency_penalty=0.0)
        if sampled:
            body["seed"] = request.seed
        if self.mode != "top":  # vLLM's extensions; a hosted API may refuse them
            single = {s[0] for s in request.stop if len(s) == 1}
            body.update(top_k=-1, min_p=0.0, repetition_penalty=1.0, stop_token_ids=sorted(single | self.eos_ids),
                        return_token_ids=True, skip_special_tokens=False)
        if stream:
            body["stream"] = True
        return body

    def _tokens(self, choice: dict, text: str) -> list[int]:
        ids = choice.get("token_ids")
        if isinstance(ids, list):
            return ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def _generate(self, request: GenerationRequest) -> Generation:
        longer = [s for s in request.stop if len(s) > 1]
        if longer and self.mode != "top":
            tokens, reason, stop_reason = await self._stream(request, longer)
        else:
            answer = await self._post("/completions", self._generation_body(request, stream=False))
            choice = _choices(answer, 1)[0]
            tokens = self._tokens(choice, choice.get("text") or "")
            reason, stop_reason = choice.get("finish_reason"), choice.get("stop_reason")
        if reason not in ("stop", "length", None):
            raise UpstreamError(f"the inference server at {self.api_url} ended a generation without finishing it "
                                f"(finish reason {reason!r})")
        eos = self.eos_ids
        if isinstance(stop_reason, int) and not any(s == (stop_reason,) for s in request.stop):
            eos = eos | {stop_reason}  # an end-of-sequence token of the server's own generation config
        generation = finish_generation(tokens, request, eos)
        if generation.finish_reason == "length" and reason == "stop" and len(generation.token_ids) < request.max_tokens:
            # The server stopped at an end of sequence that its answer leaves out (a text answer).
            return Generation(generation.token_ids, "eos")
        return generation

    async def _stream(self, request: GenerationRequest,
                      longer: list[tuple[int, ...]]) -> tuple[list[int], str | None, Any]:
        """A streamed generation, closed once its tokens end with one of ``longer`` (closing
        the connection makes vLLM abort the request); (tokens, finish reason, stop reason)."""
        url = f"{self.api_url}/completions"
        client, slots = self._client()
        tokens: list[int] = []
        text, reason, stop_reason = "", None, None
        async with slots:
            try:
                async with client.stream("POST", url, json=self._generation_body(request, stream=True)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise self._refused(url, response)
                    async for line in response.aiter_lines():
                        if not line.startswith("data:") or (data := line[5:].strip()) == "[DONE]":
                            continue
                        chunk = json.loads(data)
                        if not isinstance(chunk, dict) or "error" in chunk:
                            raise UpstreamError(f"the inference server at {url} failed a generation: "
                                                f"{str(chunk)[:300]}")
                        for choice in chunk.get("choices") or ():
                            seen = len(tokens)
                            text += choice.get("text") or ""
                            ids = choice.get("token_ids")
                            tokens = tokens + ids if isinstance(ids, list) else self._tokens({}, text)
                            reason = choice.get("finish_reason") or reason
                            stop_reason = choice.get("stop_reason", stop_reason)
                            if stop_end(tokens, longer, after=seen) is not None:
                                return tokens, "stop", None
            except httpx.HTTPError as exc:
                raise self._failed(url, exc) from exc
            except ValueError as exc:  # a line that is not JSON
                raise UpstreamError(f"the inference server at {url} streamed something that is not JSON: {exc}") \
                    from exc
        return tokens, reason, stop_reason

    # -- the rest of the interface

    def failure(self) -> str | None:
        """Always None: a remote server that fails can come back; its failures are per request (503)."""
        return None

    def close(self) -> None:
        """Close the HTTP client (its connections close with the event loop that made it)."""
        http, self._http = self._http, None
        if http is None:
            return
        loop, client, _ = http
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                task = loop.create_task(client.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)


def _config_context(model_path: str, trust_remote_code: bool) -> int:
    """The local model config's context length (0 when it has none): the fallback for a
    server that does not say its own."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return 0
    return int(getattr(config, "max_position_embeddings", 0) or 0)
