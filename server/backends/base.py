"""The seam between the scorer and an inference engine.

A backend answers two questions: the log-probabilities of given candidate tokens at
given positions of given token sequences, and the continuation it generates after given
token ids (greedy, or sampled with a seed). It knows nothing of rubrics, labels or
rewards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from drlaif.protocol import MAX_SEED
from server.scoring import TokenReads


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype name a backend loads its model in: for "auto", float32 on CPU (exact and
    fast enough there) and bfloat16 on GPU; any other name as given."""
    if dtype == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    return dtype


@dataclass(frozen=True)
class BackendInfo:
    name: str
    model: str
    dtype: str
    device: str
    max_context: int
    # True for engines that batch concurrent requests themselves (vLLM's continuous
    # batching): the scorer then sends work straight in, without a micro-batching wait.
    continuous_batching: bool = False
    # True when reads are not exact log-probabilities: a remote server that only gives its
    # top-k next tokens (the openai backend's "top" reads), where a label outside them reads
    # as probability 0. Every answer then says so (the wire's ``read: approximate``).
    approximate: bool = False


FinishReason = Literal["stop", "length", "eos"]


@dataclass(frozen=True)
class GenerationRequest:
    """A continuation of ``prompt_ids``: up to ``max_tokens`` (>= 1) new tokens.

    ``temperature`` 0 is greedy decoding (``seed`` then plays no part); above 0 the tokens
    are sampled from the model's distribution at that temperature (no top-k or top-p cut),
    and ``seed`` (0 to 2**63 - 1) is required: a generation is a function of its request,
    the same on every call and whatever else is in the batch. Seeded samples are
    reproducible on one backend, not across backends (their random streams differ).

    ``stop``: token-id sequences. Generation ends right after the first occurrence of any
    of them among the generated tokens (an occurrence that begins in the prompt does not
    count) and the output keeps that stop sequence, so the caller sees which one it was.
    The model's end-of-sequence token ends generation too and is never part of the
    output, so a stop sequence that contains it cannot match.

    Lists are accepted and stored as tuples; the request is then hashable.
    """

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        prompt = _token_ids(self.prompt_ids, "prompt_ids")
        if not prompt:
            raise ValueError("prompt_ids must hold at least one token")
        stop = tuple(_token_ids(s, "a stop sequence") for s in self.stop)
        if any(not s for s in stop):
            raise ValueError("a stop sequence must hold at least one token")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if self.temperature > 0 and self.seed is None:
            raise ValueError("sampling (temperature > 0) needs a seed: generations must be reproducible")
        object.__setattr__(self, "prompt_ids", prompt)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "temperature", float(self.temperature))


@dataclass(frozen=True)
class Generation:
    """The generated tokens (never the end-of-sequence token) and why generation ended:
    "stop" (they end with one of the request's stop sequences), "length" (``max_tokens``
    reached) or "eos" (the model ended the sequence)."""

    token_ids: tuple[int, ...]
    finish_reason: FinishReason


def _token_ids(ids: Iterable[int], what: str) -> tuple[int, ...]:
    out = tuple(ids)
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in out):
        raise ValueError(f"{what} must be non-negative integer token ids, got {out!r}")
    return out


def stop_end(token_ids: Sequence[int], stop: Sequence[Sequence[int]], after: int = 0) -> int | None:
    """The end (exclusive index) of the first complete occurrence of any stop sequence in
    ``token_ids``, looking only at occurrences that end after index ``after`` (those ending
    earlier having been looked at already); None if there is none."""
    for end in range(max(after, 0) + 1, len(token_ids) + 1):
        for s in stop:
            if len(s) <= end and tuple(token_ids[end - len(s) : end]) == tuple(s):
                return end
    return None


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all the sequences share (0 for none)."""
    if not sequences:
        return 0
    first = sequences[0]
    n = min(len(seq) for seq in sequences)
    return next((i for i in range(n) if any(seq[i] != first[i] for seq in sequences)), n)


def trim_at_stop(token_ids: Sequence[int], stop: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], bool]:
    """``token_ids`` up to and including the first occurrence of any stop sequence, and
    whether there was one (else all of ``token_ids``)."""
    end = stop_end(token_ids, stop)
    return (tuple(token_ids), False) if end is None else (tuple(token_ids[:end]), True)


def finish_generation(token_ids: Sequence[int], request: GenerationRequest,
                      eos_ids: Iterable[int]) -> Generation:
    """A request's :class:`Generation` from the raw tokens an engine produced for it, which
    may run past its end (a batch's padding, tokens streamed before an abort): cut at
    ``max_tokens``, then before the first end-of-sequence token, then after the first stop
    sequence."""
    eos = frozenset(eos_ids)
    ids = tuple(token_ids[: request.max_tokens])
    cut = next((i for i, t in enumerate(ids) if t in eos), None)
    ids, hit = trim_at_stop(ids if cut is None else ids[:cut], request.stop)
    return Generation(ids, "stop" if hit else "eos" if cut is not None else "length")


def eos_token_ids(*sources: int | Iterable[int] | None) -> frozenset[int]:
    """The end-of-sequence ids named by any of ``sources`` (a generation config's
    ``eos_token_id``, an int or a list, or a tokenizer's, None where there is none)."""
    ids: set[int] = set()
    for source in sources:
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else source)
    return frozenset(ids)


def check_reads(batch: Sequence[TokenReads]) -> None:
    """Refuse a read outside its sequence (positions 1 to its length) or without candidates."""
    for seq in batch:
        for position, candidates in seq.reads:
            if not 0 < position <= seq.num_tokens:
                raise ValueError(f"read position {position} outside a sequence of {seq.num_tokens} tokens")
            if not candidates:
                raise ValueError("a read needs at least one candidate token")


def check_generation_fits(requests: Sequence[GenerationRequest], max_context: int) -> None:
    """Refuse a request whose prompt and generated tokens, but the last (which the model
    never reads), exceed ``max_context`` (no limit when it is 0: unknown)."""
    for request in requests:
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"expected a GenerationRequest, got {type(request).__name__}")
        if max_context and len(request.prompt_ids) + request.max_tokens - 1 > max_context:
            raise ValueError(f"a prompt of {len(request.prompt_ids)} tokens and {request.max_tokens} new tokens "
                             f"exceed the model's context of {max_context}")


# Log-probabilities a little above 0, or a little more than all the mass over a read's
# candidates, are float rounding; more is an engine error.
_LOGPROB_SLACK = 1e-3


def bad_read(batch: Sequence[TokenReads], results: Sequence[Sequence[np.ndarray]]) -> str | None:
    """What is wrong with a backend's answer to ``batch``, or None when it is a valid read:
    one result per sequence, one array per read with one value per candidate, each value a
    log-probability (-inf allowed, NaN and +inf not), no read holding more than all the mass.
    A low-precision overflow on a GPU shows up here as NaN or inf."""
    if len(results) != len(batch):
        return f"{len(results)} results for {len(batch)} sequences"
    for i, (seq, result) in enumerate(zip(batch, results, strict=True)):
        if len(result) != len(seq.reads):
            return f"sequence {i}: {len(result)} reads for {len(seq.reads)} asked"
        for (position, candidates), values in zip(seq.reads, result, strict=True):
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (len(candidates),):
                return f"sequence {i}, position {position}: shape {values.shape} for {len(candidates)} candidates"
            if np.isnan(values).any() or np.isposinf(values).any():
                return f"sequence {i}, position {position}: non-finite log-probabilities {values.tolist()}"
            if len(set(candidates)) == len(candidates) and np.logaddexp.reduce(values) > _LOGPROB_SLACK:
                return f"sequence {i}, position {position}: log-probabilities above 0 in total {values.tolist()}"
    return None


class BadRead(RuntimeError):
    """A backend answered a batch with values that are not log-probabilities of the reads asked."""


class Backend(Protocol):
    """A labeler engine. ``tokenizer`` is the Hugging Face tokenizer of its model."""

    info: BackendInfo
    tokenizer: object

    async def read_logprobs(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        """For each sequence, for each of its reads, the candidates' log-probabilities.

        Must not block the event loop.
        """
        ...

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """For each request, the tokens the model generates after its prompt (see
        :class:`GenerationRequest`), in the order of ``requests``. Greedy requests give the
        model's argmax path, which the backends agree on to float rounding.

        Must not block the event loop.
        """
        ...

    def failure(self) -> str | None:
        """None while the engine can serve; else why it never will again (the server then exits)."""
        ...

    # Optional: ``computed_tokens(seq: TokenReads) -> int``, the tokens of ``seq`` a batched read
    # really computes (less a prefix whose KV the backend reuses); the scorer's micro-batcher
    # fills its token budget with it, and with ``seq.num_tokens`` for a backend without it.

    def close(self) -> None:
        """Release the engine."""
        ...
