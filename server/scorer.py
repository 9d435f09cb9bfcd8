"""The scoring pipeline: text -> rubric prompt -> token ids -> backend reads -> reward.

This is where the pure pieces meet: rubric rendering, the label trie, the micro-batcher
and the backend. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.backends import Backend
from server.batching import AdmissionGate, BatchStats, MicroBatcher, Submitter
from server.errors import BackendFailed, DrlaifError
from server.reward_cache import RewardCache, read_key
from server.rubrics import RubricRegistry
from server.rubrics.judge_text import JudgeSpan, find_judge_text, without_spans
from server.rubrics.prompts import prompt_text
from server.rubrics.render import CompiledRubric, EncodedItem, PromptEncoder
from server.scoring import LabelTrie, ScoreResult, TokenReads, expected_score

log = logging.getLogger(__name__)

Prompt = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class GuardedItem:
    """One item's labeler input as written and, when its response addresses the judge, without that text."""

    as_written: EncodedItem
    robust: EncodedItem | None
    judge_spans: tuple[JudgeSpan, ...]


@dataclass(frozen=True)
class ScoredItem:
    """``result`` is the reward the rubric's guard reports (see ``GuardSpec.reward``);
    ``as_written`` and ``robust`` are the two reads it is chosen from (the same read when
    the response has no text addressed to the judge)."""

    result: ScoreResult
    as_written: ScoreResult
    robust: ScoreResult
    judge_spans: int
    input_tokens: int
    truncated: bool
    cached: bool  # no read of this item was computed for it (see Scorer.read_labels)


@dataclass(frozen=True)
class BatchingLimits:
    max_items: int
    max_tokens: int | None  # None: chosen by device
    max_wait_s: float
    max_queue: int

    def tokens_per_batch(self, device: str, longest_item: int) -> int:
        """The padded-token budget of one forward pass; always room for the longest item."""
        default = 4096 if device == "cpu" else 32_768
        return max(self.max_tokens or default, longest_item)


class Scorer:
    """Scores (prompt, response) items under a rubric with one backend."""

    def __init__(self, backend: Backend, rubrics: RubricRegistry, *, max_input_tokens: int,
                 truncate: bool, batching: BatchingLimits, cache_items: int = 0,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_cache: Callable[[int, int], None] | None = None):
        self.backend = backend
        self.rubrics = rubrics
        self.cache = RewardCache(cache_items)
        self.on_cache = on_cache  # (hits, misses) of each read_labels call
        self.encoder = PromptEncoder(backend.tokenizer, max_input_tokens, truncate)
        # Compile every rubric (both forms) now: a rubric the tokenizer cannot serve fails at startup.
        max_label_tokens = max(form.trie.max_label_tokens for rubric in rubrics
                               for form in self.encoder.compile_forms(rubric))
        # The longest read sequence is the input plus all but the last token of a label.
        context = backend.info.max_context
        if context and max_input_tokens + max_label_tokens - 1 > context:
            fitting = context - (max_label_tokens - 1)
            log.warning("max_input_tokens %d exceeds the model's context %d (with the label tokens); using %d",
                        max_input_tokens, context, fitting)
            max_input_tokens = self.encoder.max_input_tokens = fitting  # compiled rubrics do not depend on it
        self.batcher: Submitter[TokenReads, list]
        if backend.info.continuous_batching:
            # The engine batches concurrent work itself; a wait here would only add latency.
            self.batcher = AdmissionGate(backend.read_logprobs, tokens_of=lambda seq: seq.num_tokens,
                                         max_queue=batching.max_queue, on_batch=on_batch)
        else:
            self.batcher = MicroBatcher(
                backend.read_logprobs,
                tokens_of=lambda seq: seq.num_tokens,
                max_items=batching.max_items,
                max_tokens=batching.tokens_per_batch(backend.info.device,
                                                     max_input_tokens + max_label_tokens),
                max_wait_s=batching.max_wait_s,
                max_queue=batching.max_queue,
                on_batch=on_batch,
            )

    def compiled(self, rubric: str | None) -> CompiledRubric:
        return self.encoder.compile(self.rubrics.get(rubric))

    def encode(self, rubric: str | None, items: Sequence[tuple[Prompt, str]]) -> tuple[CompiledRubric, list[GuardedItem]]:
        """Render and tokenise items, and each response again without its text addressed to the
        judge when it has any and the rubric's guard asks for it (raises UnknownRubric / InputTooLong)."""
        compiled = self.compiled(rubric)
        guard, tags = compiled.rubric.guard, compiled.slot_tags
        out = []
        for p, r in items:
            prompt = prompt_text(p)
            spans = tuple(find_judge_text(r, tags)) if guard.judge_text else ()
            robust = self.encoder.encode(compiled, prompt, without_spans(r, spans)) if spans else None
            out.append(GuardedItem(self.encoder.encode(compiled, prompt, r), robust, spans))
        return compiled, out

    async def read_labels(self, trie: LabelTrie, encoded: Sequence[EncodedItem]) -> tuple[list[np.ndarray], list[bool]]:
        """Per-label log-probabilities (in ``trie.labels`` order) after each encoded input, and
        whether each came without computing it: from the reward cache, or (with the cache on)
        from an identical input earlier in the same call."""
        if not self.cache.enabled:
            return await self._compute(trie, encoded), [False] * len(encoded)
        keys = [read_key(self.backend.info.model, trie.label_tokens, item.input_ids) for item in encoded]
        found: dict[bytes, np.ndarray] = {}
        for key in dict.fromkeys(keys):
            value = self.cache.get(key)
            if value is not None:
                found[key] = value
        todo = [(key, item) for key, item in dict(zip(keys, encoded, strict=True)).items() if key not in found]
        for (key, _), logprobs in zip(todo, await self._compute(trie, [item for _, item in todo]), strict=True):
            found[key] = logprobs
            self.cache.put(key, logprobs)
        computed = {key for key, _ in todo}
        cached = []
        for key in keys:
            cached.append(key not in computed)
            computed.discard(key)  # a repeat of this input in the same call reuses the read
        if self.on_cache is not None:
            self.on_cache(sum(cached), len(keys) - sum(cached))
        return [found[key] for key in keys], cached

    async def _compute(self, trie: LabelTrie, encoded: Sequence[EncodedItem]) -> list[np.ndarray]:
        """Label log-probabilities of each input, read by the backend through the batcher."""
        plans = [trie.plan(item.input_ids, item.shared_prefix) for item in encoded]
        try:
            answers = await self.batcher.submit([seq for plan in plans for seq in plan])
        except DrlaifError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the engine raised, the client gets a 503
            raise BackendFailed(f"the labeler backend failed on this request's batch: {type(exc).__name__}: "
                                f"{exc}") from exc
        out, k = [], 0
        for plan in plans:
            out.append(trie.label_logprobs(answers[k : k + len(plan)]))
            k += len(plan)
        return out

    async def score(self, rubric: str | None, items: Sequence[tuple[Prompt, str]]) -> list[ScoredItem]:
        compiled, guarded = await asyncio.to_thread(self.encode, rubric, items)
        second = [g.robust for g in guarded if g.robust is not None]
        logprobs, hits = await self.read_labels(compiled.trie, [g.as_written for g in guarded] + second)
        reads, from_cache = iter(logprobs), iter(hits)
        as_written = [(expected_score(next(reads), compiled.scale), next(from_cache)) for _ in guarded]
        take_min = compiled.rubric.guard.reward == "min"
        scored = []
        for g, (plain, cached) in zip(guarded, as_written, strict=True):
            robust = plain
            if g.robust is not None:
                robust = expected_score(next(reads), compiled.scale)
                robust_cached = next(from_cache)  # always consumed, so the flags stay aligned
                cached = cached and robust_cached
            result = robust if take_min and robust.reward < plain.reward else plain
            scored.append(ScoredItem(result, plain, robust, len(g.judge_spans), len(g.as_written.input_ids),
                                     g.as_written.truncated, cached))
        return scored
