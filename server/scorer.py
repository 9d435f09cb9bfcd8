"""The scoring pipeline: text -> rubric prompt -> token ids -> [rationales] -> backend reads -> reward.

This is where the pure pieces meet: rubric rendering, the reasoning stage, the label trie,
the micro-batchers (one for label reads, one for generation, so that rationales never hold
up direct reads) and the backend. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from drlaif.batching import AdmissionGate, BatchStats, MicroBatcher, Submitter
from drlaif.prompt_text import prompt_text, same_prompt_key
from drlaif.protocol import Prompt
from server.admission import Admission
from server.backends import Backend
from server.backends.base import BadRead, Generation, GenerationRequest, bad_read, common_prefix_length
from server.errors import BackendFailed, BackendStuck, DrlaifError, InvalidRubric
from server.reasoning import NO_RATIONALE, Rationale, label_input, rationale_of, rationale_requests
from server.reward_cache import RewardCache, generation_key, read_key
from server.rubrics import RubricRegistry
from server.rubrics.judge_text import JudgeSpan, find_judge_text, without_spans
from server.rubrics.model import ReasoningSpec, Rubric
from server.rubrics.render import CompiledRubric, CompiledTemplate, EncodedItem, PromptEncoder
from server.scoring import (
    LabelTrie,
    Scale,
    ScoreResult,
    TokenReads,
    aggregate_scores,
    expected_score,
    mean_of_samples,
    sample_principle,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
#: Each item's reference answer, in item order (None for an item without one); None: no item has one.
References = Sequence[str | None] | None


@dataclass(frozen=True)
class GuardedItem:
    """One item's labeler input as written and, when its response addresses the judge, without that text."""

    as_written: EncodedItem
    robust: EncodedItem | None
    judge_spans: tuple[JudgeSpan, ...]


@dataclass(frozen=True)
class SampleRead:
    """One label read of an item: after one rationale on a reasoned form, else right after
    the rendered input (``label_input_ids`` are all the ids before the read)."""

    logprobs: np.ndarray
    label_input_ids: tuple[int, ...]
    rationale: Rationale = NO_RATIONALE


@dataclass(frozen=True)
class ItemRead:
    """Every sample read of one labeler input; ``cached``: none of it was computed for it."""

    samples: tuple[SampleRead, ...]
    cached: bool

    @property
    def reasoning_tokens(self) -> int:
        return sum(len(s.rationale.token_ids) for s in self.samples)


@dataclass(frozen=True)
class Judgement:
    """One read of an item as a score: the mean over its samples, and each sample's own."""

    result: ScoreResult
    samples: tuple[tuple[SampleRead, ScoreResult], ...]


@dataclass(frozen=True)
class ScoredItem:
    """``result`` is the reward the rubric's guard reports (see ``GuardSpec.reward``);
    ``as_written`` and ``robust`` are the two reads it is chosen from (the same read when
    the response has no text addressed to the judge); ``samples`` are those of the read
    reported. ``reasoning_tokens`` counts the rationale tokens of both reads. For a
    constitution the three results are the aggregates of ``principles``' own."""

    result: ScoreResult
    as_written: ScoreResult
    robust: ScoreResult
    samples: tuple[tuple[SampleRead, ScoreResult], ...]
    judge_spans: int
    input_tokens: int
    truncated: bool
    cached: bool  # no read or rationale of this item was computed for it (see Scorer.read_labels)
    reasoning_tokens: int = 0
    principles: Mapping[str, ScoredItem] | None = None  # a constitution's per-principle results
    judge_text: tuple[JudgeSpan, ...] = ()  # where the judge_spans segments are in the response


@dataclass(frozen=True)
class BatchingLimits:
    max_items: int
    max_tokens: int | None  # None: chosen by device
    max_wait_s: float
    max_queue_items: int  # items of requests in flight (see server/admission.py)
    max_queue_tokens: int = 4_000_000  # estimated labeler work of requests in flight

    def tokens_per_batch(self, device: str, longest_item: int) -> int:
        """The padded-token budget of one forward pass; always room for the longest item."""
        default = 4096 if device == "cpu" else 32_768
        return max(self.max_tokens or default, longest_item)


class Scorer:
    """Scores (prompt, response) items under a rubric with one backend."""

    def __init__(self, backend: Backend, rubrics: RubricRegistry, *, max_input_tokens: int,
                 truncate: bool, batching: BatchingLimits, cache_items: int = 0,
                 rationale_cache_tokens: int = 4_000_000, group_prefix_reuse: bool = True,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_cache: Callable[[int, int], None] | None = None,
                 on_bad_read: Callable[[], None] | None = None):
        self.backend = backend
        self.group_prefix_reuse = group_prefix_reuse  # see ServerSettings.group_prefix_reuse
        self.on_bad_read = on_bad_read  # once per batch whose reads were refused
        self.rubrics = rubrics
        self.cache = RewardCache(cache_items)
        # Generations, for repeated reasoned items; bounded in tokens too, as one may be 8,192 long.
        self.rationales = RewardCache(cache_items, size_of=lambda g: len(g.token_ids) + 1,
                                      max_size=rationale_cache_tokens)
        self.on_cache = on_cache  # (hits, misses) of each read_labels call
        self.encoder = PromptEncoder(backend.tokenizer, max_input_tokens, truncate)
        # Compile every rubric (both forms) now: a rubric the tokenizer cannot serve fails at startup.
        forms = [form for rubric in rubrics for form in self.encoder.compile_forms(rubric)]
        max_label_tokens = max(form.trie.max_label_tokens for form in forms)
        # The longest read sequence is the input plus all but the last token of a label.
        context = backend.info.max_context
        if context and max_input_tokens + max_label_tokens - 1 > context:
            fitting = context - (max_label_tokens - 1)
            log.warning("max_input_tokens %d exceeds the model's context %d (with the label tokens); using %d",
                        max_input_tokens, context, fitting)
            max_input_tokens = self.encoder.max_input_tokens = fitting
            # Each form was checked against the configured limit: check it against the one that holds.
            for form in forms:
                self.encoder.check_budget(form, f" (the labeler's context of {context} tokens)")
        self.admission = Admission(batching.max_queue_items, batching.max_queue_tokens)
        self.batcher: Submitter[TokenReads, list]
        self.generator: Submitter[GenerationRequest, Generation]
        if backend.info.continuous_batching:
            # The engine batches concurrent work itself; a wait here would only add latency.
            self.batcher = AdmissionGate(self._checked_reads, tokens_of=lambda seq: seq.num_tokens,
                                         on_batch=on_batch)
            self.generator = AdmissionGate(backend.generate, tokens_of=_generation_tokens)
        else:
            # A batch's budget counts what its forward computes: a prefix the backend reuses
            # (the rubric's text, a prompt group's prompt) is not run again for every input.
            self.batcher = MicroBatcher(
                self._checked_reads,
                tokens_of=getattr(backend, "computed_tokens", lambda seq: seq.num_tokens),
                held=self.stuck,
                max_items=batching.max_items,
                max_tokens=batching.tokens_per_batch(backend.info.device,
                                                     max_input_tokens + max_label_tokens),
                max_wait_s=batching.max_wait_s,
                on_batch=on_batch,
            )
            # Generation has its own worker and queue: a batch of rationales runs beside the
            # label reads (the backend interleaves them), never in front of them.
            self.generator = MicroBatcher(
                backend.generate, tokens_of=_generation_tokens, max_items=batching.max_items,
                max_tokens=batching.tokens_per_batch(backend.info.device, max_input_tokens),
                max_wait_s=batching.max_wait_s, held=self.stuck)

    async def _checked_reads(self, batch: list[TokenReads]) -> list[list[np.ndarray]]:
        """The backend's reads of a batch; reads that are not log-probabilities of what was asked
        (NaN, inf, wrong shape) fail the batch with BadRead, so that its requests get a 503 and
        nothing of it reaches the reward cache."""
        results = await self.backend.read_logprobs(batch)
        problem = bad_read(batch, results)
        if problem is not None:
            self._refuse_read(f"a batch of {len(batch)} sequences ({sum(s.num_tokens for s in batch)} tokens, "
                              f"the longest {max(s.num_tokens for s in batch)}): {problem}")
        return results

    def _refuse_read(self, what: str, error: type[Exception] = BadRead) -> None:
        """Count, log and raise a refused read (BadRead inside a batch, which the batch's
        requests hear as BackendFailed; BackendFailed itself outside one)."""
        if self.on_bad_read is not None:
            self.on_bad_read()
        log.error("the labeler backend returned an invalid read for %s", what)
        raise error(f"the labeler returned an invalid read for {what}")

    @property
    def batchers(self) -> tuple[Submitter, Submitter]:
        return self.batcher, self.generator

    def admit(self, items: int, work: int) -> contextlib.AbstractContextManager[None]:
        """Hold ``items`` and ``work`` (estimated labeler tokens) of the bounds on what is in flight
        while a request is served (429 at once when they do not fit; see server/admission.py)."""
        return self.admission.admit(items, work, lambda: max(b.retry_after_s for b in self.batchers))

    def start(self) -> None:
        for batcher in self.batchers:
            batcher.start()

    async def stop(self) -> None:
        for batcher in self.batchers:
            await batcher.stop()

    def set_call_timeout(self, seconds: float | None) -> None:
        for batcher in self.batchers:
            batcher.call_timeout_s = seconds

    @property
    def overdue_s(self) -> float | None:
        """How long the oldest backend call past its deadline has run (None: none is)."""
        overdue = [o for b in self.batchers if (o := b.overdue_s) is not None]
        return max(overdue) if overdue else None

    def stuck(self) -> str | None:
        """Why no batch can run now, or None: on a backend that runs one call at a time (the
        transformers model behind its lock), a call past its deadline cannot be interrupted
        and holds the model until it returns; new work would only wait behind it."""
        # A read is one forward under the model's lock; generation takes the lock a few decode
        # steps at a time, so an overdue generation is slow, not stuck.
        overdue = self.batcher.overdue_s
        if overdue is None or self.backend.info.continuous_batching:
            return None
        return (f"the labeler is stuck in a backend call that has run {overdue:.0f}s, past its deadline "
                "(--backend-timeout-s), and holds the model; requests fail at once until it returns")

    def rubric(self, name: str | None, reasoning: Mapping[str, Any] | None = None) -> Rubric:
        """The named rubric (the default for None); with a request's ``reasoning`` settings, a
        variant whose reasoning block is those settings over its own (over the defaults when it
        has none). Raises UnknownRubric, or InvalidRubric for settings that do not validate."""
        rubric = self.rubrics.get(name)
        if reasoning is None:
            return rubric

        def merged(base: ReasoningSpec | None) -> ReasoningSpec:
            return ReasoningSpec.model_validate({**(base.model_dump(exclude_unset=True) if base else {}),
                                                 **reasoning})

        try:
            update: dict[str, Any] = {"reasoning": merged(rubric.reasoning)}
            if rubric.compare is not None and rubric.compare.reasoning is not None:
                own = merged(rubric.compare.reasoning)
                update["compare"] = rubric.compare.model_copy(update={"reasoning": own})
        except ValidationError as exc:
            problems = "; ".join(".".join(map(str, e["loc"])) + ": " * bool(e["loc"])
                                 + e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise InvalidRubric(f"rubric {rubric.name!r}: invalid reasoning settings: {problems}") from None
        return rubric.model_copy(update=update)

    def compiled(self, rubric: Rubric) -> CompiledRubric:
        """The rating form of a rubric (InvalidRubric when a request's variant cannot compile)."""
        return _compiling(self.encoder.compile, rubric)

    def compile_unregistered(self, rubric: Rubric) -> list[CompiledTemplate]:
        """Every form of a rubric that is not in the registry (the playground's rubric lab),
        compiled and checked against the token budget as the registry's are at startup;
        InvalidRubric (422) with the reason when one fails."""
        return _compiling(self.encoder.compile_forms, rubric)

    def compiled_comparison(self, rubric: Rubric):
        """The pairwise form of a rubric (RubricCannotCompare when it has none)."""
        return _compiling(self.encoder.compile_comparison, rubric)

    def encode(self, rubric: Rubric, items: Sequence[tuple[Prompt, str]],
               references: References = None) -> tuple[CompiledRubric, list[GuardedItem]]:
        """Render and tokenise items (with their ``references``, one per item, where the rubric
        shows one), and each response again without its text addressed to the judge when it has
        any and the rubric's guard asks for it (raises InputTooLong, ReferenceRequired,
        ReferenceUnused)."""
        compiled = self.compiled(rubric)
        return compiled, self.guarded(compiled, items, references=references)

    def guarded(self, compiled: CompiledTemplate, items: Sequence[tuple[Prompt, str]],
                fixed_tokens: int | None = None, references: References = None) -> list[GuardedItem]:
        """Items encoded with one rating form (see :meth:`encode`). The guard looks for text
        addressed to the judge in the response only: the reference is the caller's, trusted."""
        guard, tags = compiled.rubric.guard, compiled.slot_tags
        out = []
        for (p, r), reference in zip(items, references or [None] * len(items), strict=True):
            prompt = prompt_text(p)
            spans = tuple(find_judge_text(r, tags)) if guard.judge_text else ()
            robust = self.encoder.encode(compiled, prompt, without_spans(r, spans), reference=reference,
                                         fixed_tokens=fixed_tokens) if spans else None
            as_written = self.encoder.encode(compiled, prompt, r, reference=reference, fixed_tokens=fixed_tokens)
            out.append(GuardedItem(as_written, robust, spans))
        return out

    def chosen_principles(self, rubric: Rubric, names: Sequence[str] | None) -> list[str]:
        """The principles a request reads: all of the rubric's, or the ones it names (422 otherwise)."""
        have = rubric.principle_names
        if names is None:
            return list(have)
        if not have:
            raise InvalidRubric(f"rubric {rubric.name!r} has no principles to choose from")
        unknown = ", ".join(repr(n) for n in names if n not in have)
        if unknown or not names:
            raise InvalidRubric(f"rubric {rubric.name!r} has no principle {unknown or '(none named)'}; "
                                f"it has {', '.join(have)}")
        return [n for n in have if n in names]

    def compiled_principles(self, rubric: Rubric, pairwise: bool = False) -> dict[str, CompiledTemplate]:
        """Each principle's form (see PromptEncoder.compile_principles)."""
        return _compiling(lambda r: self.encoder.compile_principles(r, pairwise), rubric)

    def encode_principles(self, rubric: Rubric, items: Sequence[tuple[Prompt, str]],
                          names: Sequence[str] | None = None,
                          references: References = None) -> dict[str, tuple[CompiledRubric, list[GuardedItem]]]:
        """A constitution's items encoded with each principle read (all, or those named), every
        principle with the same room for the item's text, so that all of them cut it alike."""
        chosen = self.chosen_principles(rubric, names)
        forms = self.compiled_principles(rubric)
        fixed = max(form.fixed_tokens for form in forms.values())
        encoded = {n: self.guarded(forms[n], items, fixed, references) for n in chosen}
        if len(chosen) > 1:  # the item is the prefix its principles share: a backend may compute it once
            for i in range(len(items)):
                for field in ("as_written", "robust"):
                    inputs = [getattr(per[i], field) for per in encoded.values()]
                    if inputs[0] is None:
                        continue
                    shared = common_prefix_length([e.input_ids for e in inputs])
                    for per, e in zip(encoded.values(), inputs, strict=True):
                        per[i] = dataclasses.replace(per[i], **{field: dataclasses.replace(e, shared_prefix=shared)})
        return {n: (forms[n], encoded[n]) for n in chosen}

    async def read_labels(self, trie: LabelTrie,
                          encoded: Sequence[EncodedItem]) -> tuple[list[np.ndarray], list[bool]]:
        """Per-label log-probabilities (in ``trie.labels`` order) after each encoded input, and
        whether each came without computing it: from the reward cache, or (with the cache on)
        from an identical input earlier in the same call."""
        if not self.cache.enabled:
            return await self._compute(trie, encoded), [False] * len(encoded)
        keys = [read_key(self.backend.info.model, trie.label_tokens, item.input_ids) for item in encoded]
        found, cached = await _through_cache(self.cache, keys, encoded, lambda todo: self._compute(trie, todo))
        if self.on_cache is not None:
            self.on_cache(sum(cached), len(keys) - sum(cached))
        return found, cached

    async def _compute(self, trie: LabelTrie, encoded: Sequence[EncodedItem]) -> list[np.ndarray]:
        """Label log-probabilities of each input, read by the backend through the batcher."""
        plans = [trie.plan(item.input_ids, item.shared_prefix) for item in encoded]
        if (stuck := self.stuck()) is not None:
            raise BackendStuck(stuck)
        answers = await _submit(self.batcher, [seq for plan in plans for seq in plan], "batch")
        out, k = [], 0
        for item, plan in zip(encoded, plans, strict=True):
            logprobs = trie.label_logprobs(answers[k : k + len(plan)])
            if not np.isfinite(logprobs).any():
                self._refuse_read(f"an input of {len(item.input_ids)} tokens: every label has probability 0",
                                  BackendFailed)
            out.append(logprobs)
            k += len(plan)
        return out

    async def generate(self, requests: Sequence[GenerationRequest]) -> tuple[list[Generation], list[bool]]:
        """Each request's generation, and whether it came from the rationale cache (or an
        identical request earlier in the call) instead of being computed for it."""
        keys = [generation_key(self.backend.info.model, r) for r in requests]
        return await _through_cache(self.rationales, keys, requests,
                                    lambda todo: _submit(self.generator, todo, "generation"))

    async def read(self, compiled: CompiledTemplate, encoded: Sequence[EncodedItem],
                   seed: int | None = None) -> list[ItemRead]:
        """Every sample read of each encoded input: one direct read, or on a reasoned form one
        read after each of its rationales (``seed`` picks sampled rationales)."""
        reasoning = compiled.reasoning
        if reasoning is None:
            logprobs, hits = await self.read_labels(compiled.trie, encoded)
            return [ItemRead((SampleRead(lp, item.input_ids),), hit)
                    for item, lp, hit in zip(encoded, logprobs, hits, strict=True)]
        planned = [rationale_requests(reasoning, item, seed) for item in encoded]
        wanted = [r for per_item in planned for r in per_item if r is not None]
        generations, gen_hits = await self.generate(wanted) if wanted else ([], [])
        done = iter(zip(generations, gen_hits, strict=True))
        samples: list[list[tuple[Rationale, bool]]] = []  # per item, per sample: (rationale, from cache)
        for per_item in planned:
            row = []
            for request in per_item:
                if request is None:
                    row.append((NO_RATIONALE, True))
                else:
                    generation, hit = next(done)
                    row.append((rationale_of(generation, reasoning), hit))
            samples.append(row)
        inputs = [label_input(item, rationale, reasoning)
                  for item, per_item in zip(encoded, samples, strict=True) for rationale, _ in per_item]
        logprobs, hits = await self.read_labels(compiled.trie, inputs)
        reads, k = [], 0
        for per_item in samples:
            n = len(per_item)
            reads.append(ItemRead(
                tuple(SampleRead(lp, item.input_ids, rationale) for lp, item, (rationale, _)
                      in zip(logprobs[k : k + n], inputs[k : k + n], per_item, strict=True)),
                cached=all(hits[k : k + n]) and all(hit for _, hit in per_item)))
            k += n
        return reads

    async def score(self, rubric: Rubric, items: Sequence[tuple[Prompt, str]], *,
                    seed: int | None = None, principles: Sequence[str] | None = None,
                    references: References = None) -> list[ScoredItem]:
        """Each item's reward under the rubric (``references``: each item's reference answer, for
        a rubric that shows one); a constitution reads every principle (or those named) and
        aggregates them."""
        groups = prompt_groups(items, references) if self.group_prefix_reuse else [[i] for i in range(len(items))]
        if not self.chosen_principles(rubric, principles):  # (422 when a plain rubric is given principles)
            compiled, guarded = await asyncio.to_thread(self.encode, rubric, items, references)
            return (await self._score_forms([(compiled, share_group_prefixes(guarded, groups))], seed, groups))[0]
        encoded = await asyncio.to_thread(self.encode_principles, rubric, items, principles, references)
        chosen = list(encoded)
        per_principle = await self._score_forms(list(encoded.values()), seed, groups)
        weights = [p.weight for p in rubric.principles if p.name in chosen]
        scale = encoded[chosen[0]][0].scale
        out = []
        for i, (prompt, response) in enumerate(items):
            parts = {n: scored[i] for n, scored in zip(chosen, per_principle, strict=True)}
            pick = None
            if rubric.aggregate == "sample":  # drawn per item: the same item and seed, the same principle
                pick = sample_principle(weights, seed or 0, (prompt_text(prompt) + "\0" + response).encode())
            out.append(_constitution_item(parts, weights, rubric.aggregate, scale, pick))
        return out

    async def _score_forms(self, forms: Sequence[tuple[CompiledRubric, Sequence[GuardedItem]]],
                           seed: int | None, groups: Sequence[Sequence[int]]) -> list[list[ScoredItem]]:
        """Score the same items with several rating forms (a constitution's principles; one form
        for a plain rubric): both reads of the guard, reasoned or direct; per form, per item.

        The forms differ only in their question, so they share the trie and the reasoning
        stage, and their reads go to the backend as one list, item by item, so that the reads
        of one item (which share its prefix) land in the same batch. ``groups``: the items
        that share a prompt (see :func:`prompt_groups`).
        """
        leaders = {group[0] for group in groups}
        wanted = [_Wanted(i, f, robust=False, encoded=guarded[i].as_written,
                          wave=2 if f else 0 if i in leaders else 1)
                  for i in range(len(forms[0][1])) for f, (_, guarded) in enumerate(forms)]
        wanted += [_Wanted(w.item, w.form, robust=True, encoded=robust, wave=2) for w in list(wanted)
                   if (robust := forms[w.form][1][w.item].robust) is not None]
        waves = [wanted]
        if self.backend.info.continuous_batching:
            # An engine that batches by itself (vLLM) prefills what a read shares with later ones
            # once per read when they arrive together. So it gets the first read of each prompt
            # group first (the prompt then sits in its prefix cache), then the first form's read
            # of the group's other items (each item's text), then the rest: the other forms of a
            # constitution and the reads without text addressed to the judge.
            waves = [wave for k in range(3) if (wave := [w for w in wanted if w.wave == k])]
        reads: dict[tuple[int, int, bool], ItemRead] = {}
        for wave in waves:
            for w, read in zip(wave, await self.read(forms[0][0], [w.encoded for w in wave], seed), strict=True):
                reads[w.item, w.form, w.robust] = read
        return [[_guarded_item(form, g, reads[i, f, False], reads.get((i, f, True))) for i, g in enumerate(guarded)]
                for f, (form, guarded) in enumerate(forms)]


@dataclass(frozen=True)
class _Wanted:
    """One labeler input of :meth:`Scorer._score_forms`: item ``item``'s input under form ``form``,
    as written or, with ``robust``, without the text addressed to the judge."""

    item: int
    form: int
    robust: bool
    encoded: EncodedItem
    wave: int  # on an engine that batches by itself, reads go in waves 0, 1, 2 (see _score_forms)


def prompt_groups(items: Sequence[tuple[Prompt, str]], references: References = None) -> list[list[int]]:
    """Item indices grouped by prompt (drlaif.prompt_text.same_prompt_key: the text the labeler sees) and
    reference answer (one prompt asked against two references is two tasks), in order of first appearance."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, ((prompt, _), reference) in enumerate(zip(items, references or [None] * len(items), strict=True)):
        groups.setdefault((same_prompt_key(prompt), reference), []).append(i)
    return list(groups.values())


def share_prefixes(encoded: Sequence[EncodedItem], groups: Sequence[Sequence[int]]) -> list[EncodedItem]:
    """Mark what each group's inputs have in common (inputs of items with one prompt: the
    rubric's text and the prompt, up to the first response) as their shared prefix: a backend
    that reuses prefixes (transformers) then computes it once per group, not once per input."""
    out = list(encoded)
    for group in groups:
        if len(group) < 2:
            continue
        shared = common_prefix_length([encoded[i].input_ids for i in group])
        for i in group:
            out[i] = dataclasses.replace(encoded[i], shared_prefix=max(encoded[i].shared_prefix, shared))
    return out


def share_group_prefixes(guarded: Sequence[GuardedItem], groups: Sequence[Sequence[int]]) -> list[GuardedItem]:
    """:func:`share_prefixes` over both reads of guarded items (``groups`` of item indices)."""
    inputs = [g.as_written for g in guarded] + [g.robust for g in guarded if g.robust is not None]
    slot = {i: len(guarded) + k for k, i in enumerate(i for i, g in enumerate(guarded) if g.robust is not None)}
    shared = share_prefixes(inputs, [[*group, *(slot[i] for i in group if i in slot)] for group in groups])
    return [dataclasses.replace(g, as_written=shared[i], robust=shared[slot[i]] if i in slot else None)
            for i, g in enumerate(guarded)]


def _guarded_item(form: CompiledRubric, guarded: GuardedItem, plain_read: ItemRead,
                  robust_read: ItemRead | None) -> ScoredItem:
    """An item's score under one form from its read as written and its robust read (if its
    response addresses the judge): the guard reports the lower under ``reward: min``."""
    plain = robust = judge(plain_read, form)
    cached, tokens = plain_read.cached, plain_read.reasoning_tokens
    if robust_read is not None:
        robust = judge(robust_read, form)
        cached, tokens = cached and robust_read.cached, tokens + robust_read.reasoning_tokens
    take_min = form.rubric.guard.reward == "min"
    reported = robust if take_min and robust.result.reward < plain.result.reward else plain
    return ScoredItem(result=reported.result, as_written=plain.result, robust=robust.result,
                      samples=reported.samples, judge_spans=len(guarded.judge_spans),
                      input_tokens=len(guarded.as_written.input_ids), truncated=guarded.as_written.truncated,
                      cached=cached, reasoning_tokens=tokens, judge_text=guarded.judge_spans)


def _constitution_item(parts: Mapping[str, ScoredItem], weights: Sequence[float], how: str, scale: Scale,
                       pick: int | None) -> ScoredItem:
    """An item's score under a constitution: each of the three reads aggregated over its
    principles' own (``parts``, in principle order); the rest summed up over them."""
    scored = list(parts.values())

    def combined(read: str) -> ScoreResult:
        return aggregate_scores([getattr(p, read) for p in scored], weights, how, scale, pick)

    return ScoredItem(result=combined("result"), as_written=combined("as_written"), robust=combined("robust"),
                      samples=(), judge_spans=max(p.judge_spans for p in scored),
                      input_tokens=max(p.input_tokens for p in scored), truncated=any(p.truncated for p in scored),
                      cached=all(p.cached for p in scored), reasoning_tokens=sum(p.reasoning_tokens for p in scored),
                      principles=parts, judge_text=max((p.judge_text for p in scored), key=len))


def judge(read: ItemRead, compiled: CompiledRubric) -> Judgement:
    """An item's score from its sample reads: each sample's exact score and their mean."""
    samples = tuple((s, expected_score(s.logprobs, compiled.scale)) for s in read.samples)
    return Judgement(mean_of_samples([r for _, r in samples], compiled.scale), samples)


async def _through_cache(cache: RewardCache, keys: Sequence[bytes], payloads: Sequence[T],
                         compute: Callable[[list[T]], Awaitable[Sequence[R]]]) -> tuple[list[R], list[bool]]:
    """Each payload's result: from ``cache``, else computed once per distinct key (and stored);
    and whether each came without being computed for it (a hit, or a repeat of a key earlier
    in the same call)."""
    found: dict[bytes, R] = {}
    for key in dict.fromkeys(keys):
        value = cache.get(key)
        if value is not None:
            found[key] = value
    todo = {key: payload for key, payload in zip(keys, payloads, strict=True) if key not in found}
    if todo:
        for key, result in zip(todo, await compute(list(todo.values())), strict=True):
            found[key] = result
            cache.put(key, result)
    computed = set(todo)
    cached = []
    for key in keys:
        cached.append(key not in computed)
        computed.discard(key)  # a repeat of this key in the same call reuses the result
    return [found[key] for key in keys], cached


def _generation_tokens(request: GenerationRequest) -> int:
    return len(request.prompt_ids) + request.max_tokens


def _compiling(compile_form, rubric: Rubric):
    """Compile a rubric form; a registry rubric compiled at startup, so an error here is a
    request-level variant's (reasoning settings the tokenizer cannot serve): 422."""
    try:
        return compile_form(rubric)
    except (ValueError, TypeError) as exc:  # TypeError: text the tokenizer cannot take (a lone surrogate)
        raise InvalidRubric(str(exc)) from None


async def _submit(batcher: Submitter, payloads: Sequence, what: str) -> list:
    """Run payloads through a batcher; whatever the engine raised becomes BackendFailed (503)."""
    try:
        return list(await batcher.submit(payloads))
    except DrlaifError:
        raise
    except Exception as exc:
        raise BackendFailed(f"the labeler backend failed on this request's {what}: {type(exc).__name__}: "
                            f"{exc}") from exc
