"""Request handling logic, free of FastAPI: loading, readiness, /score, /render, /compare,
/get_reward (OpenRLHF), /info."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from drlaif import protocol
from server import __version__
from server.app.metrics import Metrics
from server.app.openrlhf import END_MARKERS, labeler_items
from server.backends import Backend, BackendInfo, create_backend
from server.config import ServerSettings
from server.errors import DeadlineExceeded, InvalidRubric, NotReady, ReferenceRequired, ShuttingDown
from server.groups import SCORE_WAY_OUT, GroupJudgement, judge_in_groups, plan_groups
from server.pairwise import compare
from server.request_work import ReadShape, direct_work, pair_work, tokenising_work
from server.rubrics import RubricRegistry
from server.rubrics.model import Rubric
from server.rubrics.registry import parse_rubric
from server.rubrics.render import CompiledRubric, CompiledTemplate, EncodedItem
from server.scorer import BatchingLimits, ScoredItem, Scorer, prompt_groups
from server.scoring import ScoreResult, score_spread
from server.scoring.group import pair_schedule

log = logging.getLogger(__name__)

T = TypeVar("T")
WARMUP_ITEM = ("Say hello.", "Hello!")
# The rubric lab's bounds on a pasted rubric, beyond those of a rubrics file: its labels are
# tokenised and read for every item, its principles each compiled and read.
LAB_MAX_LABELS = 101
LAB_MAX_PRINCIPLES = 64
# Each item (and its guard's second read, and each group pair) is read once per principle and
# reasoning sample: a pasted rubric may ask for 64 such reads (64 principles, or 4 principles
# of 16 samples), and for as many rationale tokens as one read of the longest rationale a
# rubric may have (reasoning.max_tokens at most 8192), so that one lab request costs about
# what a preset's does rather than 64 x 16 reads of 8192 tokens each.
LAB_MAX_READS = 64
LAB_MAX_RATIONALE_TOKENS = 8192
# What a caller whose pasted rubric is over those bounds can do instead.
LAB_WORK_WAY_OUT = "use fewer principles, reasoning samples or max_tokens, or serve it from a --rubrics file"
# What a caller that cannot give a group-pairwise rubric two responses per prompt can do instead.
LAB_WAY_OUT = ("give the prompt at least 2 responses, or take group_pairwise: true out of the rubric to score "
               "each response alone")


def _get_reward_way_out(rubric: str, from_url: bool) -> str:
    """What a /get_reward caller whose prompts do not all have 2 queries can do instead."""
    if from_url:
        return "OpenRLHF's agent sends one query per request: score directly (no group_pairwise=true in the URL)"
    return (f"rubric {rubric!r} judges group-pairwise (group_pairwise: true), and OpenRLHF's agent sends one "
            "query per request: score directly with /get_reward?group_pairwise=false, or name a rubric without "
            "group_pairwise (/get_reward?rubric=NAME)")


def _in_groups(asked: bool | None, rubric: Rubric) -> bool:
    """Whether a request is judged in prompt groups: as it asks, else as its rubric says."""
    return asked if asked is not None else rubric.group_pairwise


def _read_shape(scorer: Scorer, rubric: Rubric, principles: Sequence[str] | None, pairwise: bool = False) -> ReadShape:
    """What one read under ``rubric`` (its rating form, or its pairwise form) costs beside its text."""
    chosen = scorer.chosen_principles(rubric, principles)
    if chosen:
        fixed = max(form.fixed_tokens for form in scorer.compiled_principles(rubric, pairwise=pairwise).values())
    else:
        fixed = (scorer.compiled_comparison(rubric) if pairwise else scorer.compiled(rubric)).fixed_tokens
    spec = rubric.pairwise_reasoning if pairwise else rubric.reasoning
    return ReadShape(fixed, max(1, len(chosen)), spec.samples if spec else 0, spec.max_tokens if spec else 0)


def _prompt(item: protocol.ScoreItem | protocol.CompareItem) -> str | list[dict[str, str]]:
    """A validated item's prompt, chat messages as plain dicts."""
    return item.prompt if isinstance(item.prompt, str) else [m.model_dump() for m in item.prompt]


def _items(request: protocol.ScoreRequest | protocol.RubricLabRequest) -> list[tuple[str | list[dict[str, str]], str]]:
    """(prompt, response) pairs from a validated request."""
    return [(_prompt(item), item.response) for item in request.items]


def _references(items: Sequence[protocol.ScoreItem | protocol.CompareItem]) -> list[str | None] | None:
    """Each item's reference answer (None where it has none); None when no item has one."""
    references = [item.reference for item in items]
    return references if any(r is not None for r in references) else None


def _label_references(rubric: Rubric, labels: Sequence[Any] | None, n: int) -> list[str | None] | None:
    """OpenRLHF's labels as the queries' reference answers, for a rubric that shows one (None:
    the rubric has no place for them, and OpenRLHF sends them whether or not they are used). A
    missing or empty label under such a rubric stays missing: the read refuses it by name."""
    if not rubric.takes_reference:
        return None
    if labels is None or len(labels) != n:
        got = "no labels" if labels is None else f"{len(labels)} labels"
        raise ReferenceRequired(f"rubric {rubric.name!r} judges each response against a reference answer, and the "
                                f"request has {got} for {n} queries: run OpenRLHF with --label_key naming the "
                                "dataset's reference column")
    return [None if label is None or label == "" else label if isinstance(label, str) else str(label)
            for label in labels]


def _read_kind(info: BackendInfo | None) -> protocol.ReadKind:
    """How the backend reads labels (exact, unless it sees only an inference server's top tokens)."""
    return "approximate" if info is not None and info.approximate else "exact"


def _rubric_info(r: Rubric) -> protocol.RubricInfo:
    return protocol.RubricInfo(name=r.name, description=r.description,
                               scale=protocol.ScaleInfo(min=r.scale.min, max=r.scale.max),
                               compare=r.compare is not None, reasoning=r.reasoning is not None,
                               principles={p.name: p.weight for p in r.principles} if r.principles else None,
                               aggregate=r.aggregate if r.principles else None, group_pairwise=r.group_pairwise,
                               takes_reference=r.takes_reference)


def _read(result: ScoreResult) -> dict[str, Any]:
    """A read's wire fields (protocol.LabelRead), taken by name from the scoring math's result."""
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}


def _item_scores(scorer: Scorer, rubric: Rubric, scored: Sequence[ScoredItem],
                 return_rationale: bool) -> list[protocol.ItemScore]:
    """/score's results for items scored under ``rubric`` (the request's variant of it)."""
    reasoned = rubric.reasoning is not None and not rubric.principles
    return [
        protocol.ItemScore(
            **_read(s.result), reward_as_written=s.as_written.reward, reward_robust=s.robust.reward,
            judge_spans=s.judge_spans,
            judge_text=[protocol.JudgeTextSpan(start=j.start, end=j.end, rule=j.rule) for j in s.judge_text],
            input_tokens=s.input_tokens, truncated=s.truncated, cached=s.cached,
            reasoning_tokens=s.reasoning_tokens,
            sample_scores=[r.score for _, r in s.samples] if reasoned else None,
            score_spread=score_spread([r for _, r in s.samples]) if reasoned else None,
            samples=[protocol.ReasonedSample(
                rationale=scorer.encoder.decode(read.rationale.token_ids),
                label_input_ids=list(read.label_input_ids), distribution=list(r.distribution),
                score=r.score, label_mass=r.label_mass, finish_reason=read.rationale.finish_reason)
                for read, r in s.samples]
            if reasoned and return_rationale else None,
            principles={name: protocol.PrincipleScore(**_read(p.result)) for name, p in s.principles.items()}
            if s.principles is not None else None)
        for s in scored
    ]


def _group(judgement: GroupJudgement, return_pairs: bool) -> protocol.GroupJudgement:
    """An item's group-pairwise judgement on the wire."""
    r = judgement.reward
    pairs = [protocol.GroupPair(opponent=p.opponent, p_win=p.p_win, consistent=bool(p.compared.preference.consistent))
             for p in judgement.pairs] if return_pairs else None
    return protocol.GroupJudgement(group=judgement.group, reward=r.reward, win_rate=r.win_rate,
                                   opponents=r.opponents, pairs=pairs)


def _grouped(results: list[protocol.ItemScore], groups: Sequence[GroupJudgement] | None,
             return_pairs: bool) -> list[protocol.ItemScore]:
    """Results judged in groups: each reward its group's, with the group judgement beside the direct read."""
    if groups is None:
        return results
    return [r.model_copy(update={"reward": g.reward.reward, "group": _group(g, return_pairs)})
            for r, g in zip(results, groups, strict=True)]


def _slots(encoded: EncodedItem) -> list[protocol.RenderedSlot]:
    """Where the request text is in a labeler input (/render's slots)."""
    return [protocol.RenderedSlot(name=s.name, start=s.start, end=s.end, token_start=s.token_start,
                                  token_end=s.token_end) for s in encoded.slots]


def _rendered(encoded: EncodedItem) -> protocol.RenderedInput:
    return protocol.RenderedInput(text=encoded.text, input_ids=list(encoded.input_ids), slots=_slots(encoded))


def _reasoning(request: protocol.ScoreRequest | protocol.CompareRequest) -> dict[str, Any] | None:
    """A request's reasoning settings, only those it gives (None: the rubric's own)."""
    settings = request.reasoning
    return None if settings is None else settings.model_dump(exclude_none=True)


class ScoringService:
    """Owns the labeler's lifecycle and answers the API's questions."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, on_fatal: Callable[[], None] | None = None):
        """``on_fatal`` is called once when the labeler fails to load or its engine dies: the
        server can never serve again, so the runner should stop (and exit non-zero)."""
        self.settings = settings
        self.metrics = metrics
        self.on_fatal = on_fatal
        # Parsed up front so a bad rubrics file fails before the model loads.
        self.rubrics = RubricRegistry.load(settings.rubrics, settings.default_rubric)
        self.scorer: Scorer | None = None
        self.ready = False
        self.load_error: BaseException | None = None
        self.fatal_error: str | None = None  # the load error or the engine's death, once either happens
        self.draining = False  # SIGTERM: finish what is in flight, take nothing new
        self.in_flight = 0  # scoring requests admitted and not yet answered
        self._watchdog: asyncio.Task | None = None
        # How many replicas serve this URL; a deployment that runs several replaces it.
        self.replica_count: Callable[[], int] = lambda: 1

    async def start(self) -> None:
        """Load the backend off the event loop, compile rubrics, warm up, then become ready."""
        started = time.perf_counter()
        try:
            backend: Backend = await asyncio.to_thread(create_backend, self.settings)
            s = self.settings
            self.scorer = Scorer(
                backend, self.rubrics, max_input_tokens=s.max_input_tokens, truncate=s.truncate,
                batching=BatchingLimits(s.max_batch_items, s.max_batch_tokens, s.max_wait_ms / 1000,
                                        s.max_queue_items, s.max_queue_tokens),
                cache_items=s.reward_cache_items, rationale_cache_tokens=s.rationale_cache_tokens,
                group_prefix_reuse=s.group_prefix_reuse, on_batch=self.metrics.observe_batch,
                on_cache=self.metrics.observe_cache,
                on_bad_read=self.metrics.bad_reads.inc,
            )
            self.scorer.start()
            warmup_rubric = self.scorer.rubric(None)
            await self.scorer.score(warmup_rubric, [WARMUP_ITEM],
                                    references=[WARMUP_ITEM[1]] if warmup_rubric.takes_reference else None)
            # Not before: the first call pays for lazy initialisation (and on vLLM, compilation).
            self.scorer.set_call_timeout(s.backend_timeout_s)
        except BaseException as exc:
            self.load_error = exc
            self.fatal_error = f"the labeler failed to load: {type(exc).__name__}: {exc}"
            log.exception("the labeler failed to load")
            raise
        self.ready = True
        self._watchdog = asyncio.create_task(self._watch(backend), name="drlaif-watchdog")
        info = backend.info
        log.info("ready in %.1fs: %s on %s/%s (%s), rubrics: %s", time.perf_counter() - started,
                 info.model, info.name, info.device, info.dtype, ", ".join(self.rubrics.names))

    async def _watch(self, backend: Backend, every_s: float = 1.0) -> None:
        """Turn unready, and stop the server, when the engine dies (a vLLM engine core that
        crashed or was killed never comes back; a restart of the process does) or a call that
        holds the model is stuck past --stuck-exit-s."""
        while (failure := backend.failure() or self._stuck_for_good()) is None:
            await asyncio.sleep(every_s)
        log.error("%s; stopping the server", failure)
        self.fatal_error = failure
        self.ready = False
        if self.on_fatal is not None:
            self.on_fatal()

    def _stuck_for_good(self) -> str | None:
        """Why the server must exit because a stuck call holds the model, or None."""
        s, scorer = self.settings, self.scorer
        overdue = scorer.batcher.overdue_s if scorer is not None and scorer.stuck() else None
        if overdue is None or not s.stuck_exit_s or overdue < s.backend_timeout_s + s.stuck_exit_s:
            return None
        return (f"a labeler backend call has held the model for {overdue:.0f}s, more than --backend-timeout-s "
                f"({s.backend_timeout_s:g}s) + --stuck-exit-s ({s.stuck_exit_s:g}s), and cannot be interrupted; "
                "exiting for the supervisor to restart the server")

    def readiness(self) -> str | None:
        """None when ready to score; otherwise why not (for /health/ready's 503)."""
        if self.fatal_error is not None:
            return self.fatal_error
        if self.draining:
            return "the server is shutting down"
        if not self.ready or self.scorer is None:
            return "the labeler is loading"
        failure = self.scorer.backend.failure()  # at once, not at the watchdog's next look
        if failure is not None:
            return failure
        stuck = self.scorer.stuck()
        if stuck is not None:
            return stuck
        overdue = self.scorer.overdue_s
        if overdue is not None:
            return (f"a labeler backend call has run for {overdue:.0f}s, past --backend-timeout-s "
                    f"({self.settings.backend_timeout_s:g}s); requests fail until it returns")
        return None

    async def stop(self) -> None:
        self.ready = False
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.scorer is not None:
            await self.scorer.stop()
            self.scorer.backend.close()

    def _scorer(self) -> Scorer:
        if self.fatal_error is not None:
            raise NotReady(self.fatal_error)
        if not self.ready or self.scorer is None:
            raise NotReady()
        return self.scorer

    async def _serve(self, work: Callable[[Scorer], Awaitable[T]], items: int,
                     labeler_work: Callable[[Scorer], int]) -> T:
        """Run one scoring request of ``items`` items and ``labeler_work(scorer)`` estimated labeler
        tokens (server/request_work.py): refused while shutting down or when it does not fit the
        bounds on what is in flight (429), counted while in flight, and bounded by
        --request-timeout-s (its queued work is dropped when it runs out)."""
        if self.draining:
            raise ShuttingDown()
        scorer = self._scorer()
        self.in_flight += 1
        timeout = self.settings.request_timeout_s
        try:
            with scorer.admit(items, labeler_work(scorer)):
                return await asyncio.wait_for(work(scorer), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"the request was not answered within {timeout:g}s (--request-timeout-s); "
                                   "its queued work was dropped. Send fewer items per request, or retry") from None
        finally:
            self.in_flight -= 1

    def _count(self, rubric: str, scored: Sequence[ScoredItem]) -> None:
        self.metrics.items.labels(rubric).inc(len(scored))
        self.metrics.judge_text.labels(rubric).inc(sum(s.judge_spans > 0 for s in scored))
        self.metrics.reasoning_tokens.labels(rubric).inc(sum(s.reasoning_tokens for s in scored))

    def _count_pairs(self, rubric: str, groups: Sequence[GroupJudgement] | None) -> None:
        if groups is not None:  # each pair is in the judgements of both its responses
            self.metrics.pairs.labels(rubric).inc(sum(len(g.pairs) for g in groups) // 2)

    def _opponents(self, asked: int | None) -> int:
        """Opponents per response in group-pairwise judging: the request's, else --group-opponents."""
        return asked if asked is not None else self.settings.group_opponents

    def _judging_work(self, scorer: Scorer, rubric: Rubric, items: Sequence[tuple[protocol.Prompt, str]],
                      in_groups: bool, opponents: int, principles: Sequence[str] | None = None,
                      references: Sequence[str | None] | None = None) -> int:
        """The labeler work of :meth:`_judge` on the same arguments (server/request_work.py)."""
        limit = scorer.encoder.max_input_tokens
        work = direct_work(items, _read_shape(scorer, rubric, principles), limit, references)
        if in_groups:
            scheduled = [(group[a], group[b]) for group in prompt_groups(items, references)
                         for a, b in pair_schedule(len(group), opponents)]
            pairs = [(items[i][0], items[i][1], items[j][1]) for i, j in scheduled]
            work += pair_work(pairs, _read_shape(scorer, rubric, principles, pairwise=True), limit,
                              references=[references[i] for i, _ in scheduled] if references else None)
        return work

    @staticmethod
    async def _judge(scorer: Scorer, rubric: Rubric, items: Sequence[tuple[protocol.Prompt, str]],
                     in_groups: bool, *, way_out: str = SCORE_WAY_OUT, opponents: int | None = None,
                     seed: int | None = None, principles: Sequence[str] | None = None,
                     references: Sequence[str | None] | None = None,
                     ) -> tuple[list[ScoredItem], list[GroupJudgement] | None]:
        """Each item's direct read and, ``in_groups``, its judgement in its prompt group (None
        otherwise), each with its reference answer where ``references`` give one. A request that
        cannot be judged in groups (GroupTooSmall, its message ending with ``way_out``) is
        refused before any read starts."""
        plan = plan_groups(scorer, rubric, items, principles, way_out, references) if in_groups else None
        direct = scorer.score(rubric, items, seed=seed, principles=principles, references=references)
        if plan is None:
            return await direct, None
        # Direct reads and pairs go through the batcher together; when one part fails, the
        # other is cancelled at once, its queued reads dropped, instead of reading on for a
        # request that has already failed.
        try:
            async with asyncio.TaskGroup() as parts:
                scored = parts.create_task(direct)
                groups = parts.create_task(judge_in_groups(scorer, rubric, items, plan, opponents=opponents,
                                                           seed=seed, principles=principles,
                                                           references=references))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return scored.result(), groups.result()

    async def score(self, request: protocol.ScoreRequest) -> protocol.ScoreResponse:
        def work(scorer: Scorer) -> int:
            rubric = scorer.rubric(request.rubric, _reasoning(request))
            return self._judging_work(scorer, rubric, _items(request), _in_groups(request.group_pairwise, rubric),
                                      self._opponents(request.group_opponents), request.principles,
                                      _references(request.items))

        return await self._serve(lambda scorer: self._score(scorer, request), len(request.items), work)

    async def _score(self, scorer: Scorer, request: protocol.ScoreRequest) -> protocol.ScoreResponse:
        items = _items(request)
        self.metrics.queue_depth.set(scorer.batcher.depth)
        rubric = scorer.rubric(request.rubric, _reasoning(request))
        scored, groups = await self._judge(scorer, rubric, items, _in_groups(request.group_pairwise, rubric),
                                           opponents=self._opponents(request.group_opponents),
                                           seed=request.seed, principles=request.principles,
                                           references=_references(request.items))
        compiled = scorer.compiled(rubric)
        self._count(compiled.rubric.name, scored)
        self._count_pairs(compiled.rubric.name, groups)
        return protocol.ScoreResponse(
            results=_grouped(_item_scores(scorer, rubric, scored, request.return_rationale), groups,
                             request.return_pairs),
            rubric=compiled.rubric.name,
            scale=protocol.ScaleInfo(min=compiled.scale.lo, max=compiled.scale.hi),
            model=scorer.backend.info.model,
            read=_read_kind(scorer.backend.info),
        )

    async def rubric_lab(self, request: protocol.RubricLabRequest) -> protocol.RubricLabResponse:
        """The playground's rubric lab: a rubric from the request's YAML, validated and compiled
        as the registry's are at startup but never registered, and the request's items (if any)
        scored under it; judged in their prompt groups, pairs included, when the rubric says
        ``group_pairwise: true``."""
        # The pasted rubric is parsed off the event loop once admitted, so its work is estimated
        # at the most the lab lets one item cost (LAB_MAX_READS reads of it and of a pair).
        items, references = _items(request), _references(request.items)
        pairs = [(p, r, r) for p, r in items]
        return await self._serve(lambda scorer: self._rubric_lab(scorer, request), max(1, len(items)),
                                 lambda scorer: LAB_MAX_READS * (direct_work(items, ReadShape(0), 10**9, references)
                                                                 + pair_work(pairs, ReadShape(0), 10**9,
                                                                             references=references)))

    async def _rubric_lab(self, scorer: Scorer, request: protocol.RubricLabRequest) -> protocol.RubricLabResponse:
        # Parsing and compiling (tokenising) a rubric of up to --max-field-chars: off the event loop.
        rubric, forms = await asyncio.to_thread(self._lab_rubric, scorer, request.rubric_yaml)
        scored, groups = await self._judge(scorer, rubric, _items(request), rubric.group_pairwise,
                                           way_out=LAB_WAY_OUT, opponents=self._opponents(None),
                                           seed=request.seed, references=_references(request.items)
                                           ) if request.items else ([], None)
        # Not counted in the per-rubric metrics: the rubric's name is whatever the request says.
        return protocol.RubricLabResponse(
            rubric=_rubric_info(rubric),
            trusted_tokens=max(f.fixed_tokens for f in forms if isinstance(f, CompiledRubric)),
            results=_grouped(_item_scores(scorer, rubric, scored, request.return_rationale), groups,
                             return_pairs=True),
            model=scorer.backend.info.model,
            read=_read_kind(scorer.backend.info),
        )

    def _lab_rubric(self, scorer: Scorer, text: str) -> tuple[Rubric, list[CompiledTemplate]]:
        """The rubric lab's rubric and its compiled forms; InvalidRubric (422) with the reason."""
        try:
            rubric = parse_rubric(text, {r.name: r for r in self.rubrics})
        except ValueError as exc:
            raise InvalidRubric(str(exc)) from None
        labels = rubric.scale.max - rubric.scale.min + 1
        if labels > LAB_MAX_LABELS:  # each label is tokenised and read: bound the work one request sets
            raise InvalidRubric(f"rubric {rubric.name!r}: its scale has {labels} labels; the rubric lab takes "
                                f"at most {LAB_MAX_LABELS} (a rubrics file may have more)")
        if len(rubric.principles or ()) > LAB_MAX_PRINCIPLES:
            raise InvalidRubric(f"rubric {rubric.name!r} has {len(rubric.principles)} principles; the rubric "
                                f"lab takes at most {LAB_MAX_PRINCIPLES} (a rubrics file may have more)")
        principles = len(rubric.principles or ()) or 1
        # The rating form's reasoning and the pairwise form's (its own, or the rating form's).
        forms = [rubric.reasoning, rubric.pairwise_reasoning]
        for spec in filter(None, forms):
            reads, tokens = principles * spec.samples, principles * spec.samples * spec.max_tokens
            if reads > LAB_MAX_READS:
                raise InvalidRubric(f"rubric {rubric.name!r} reads each item {reads} times ({principles} "
                                    f"principles x {spec.samples} reasoning samples); the rubric lab takes at "
                                    f"most {LAB_MAX_READS}: {LAB_WORK_WAY_OUT}")
            if tokens > LAB_MAX_RATIONALE_TOKENS:
                raise InvalidRubric(f"rubric {rubric.name!r} asks for up to {tokens} rationale tokens per item "
                                    f"({principles} principles x {spec.samples} samples x {spec.max_tokens} "
                                    f"max_tokens); the rubric lab takes at most {LAB_MAX_RATIONALE_TOKENS}: "
                                    f"{LAB_WORK_WAY_OUT}")
        return rubric, scorer.compile_unregistered(rubric)

    async def compare(self, request: protocol.CompareRequest) -> protocol.CompareResponse:
        def work(scorer: Scorer) -> int:
            rubric = scorer.rubric(request.rubric, _reasoning(request))
            pairs = [(_prompt(item), item.response_a, item.response_b) for item in request.items]
            return pair_work(pairs, _read_shape(scorer, rubric, request.principles, pairwise=True),
                             scorer.encoder.max_input_tokens, both_orders=request.debias,
                             references=_references(request.items))

        return await self._serve(lambda scorer: self._compare(scorer, request), len(request.items), work)

    async def _compare(self, scorer: Scorer, request: protocol.CompareRequest) -> protocol.CompareResponse:
        items = [(_prompt(item), item.response_a, item.response_b) for item in request.items]
        rubric = scorer.rubric(request.rubric, _reasoning(request))
        compared = await compare(scorer, rubric, items, debias=request.debias, seed=request.seed,
                                 principles=request.principles, references=_references(request.items))
        compiled = scorer.compiled_comparison(rubric)
        self.metrics.pairs.labels(compiled.rubric.name).inc(len(compared))
        self.metrics.reasoning_tokens.labels(compiled.rubric.name).inc(sum(c.reasoning_tokens for c in compared))

        def samples(order) -> list[protocol.PairSample]:
            return [protocol.PairSample(rationale=scorer.encoder.decode(read.rationale.token_ids),
                                        label_input_ids=list(read.label_input_ids),
                                        distribution=[r.p_first, r.p_second],
                                        finish_reason=read.rationale.finish_reason) for read, r in order]

        show = compiled.reasoning is not None and request.return_rationale and not rubric.principles

        def preference(c) -> dict:
            return {"p_a": c.preference.p_a, "orders": protocol.OrderValues(ab=c.preference.ab, ba=c.preference.ba),
                        "consistent": c.preference.consistent,
                        "label_mass": protocol.OrderValues(ab=c.order_ab.label_mass,
                                                        ba=c.order_ba.label_mass if c.order_ba else None)}
        return protocol.CompareResponse(
            results=[
                protocol.ItemPreference(
                    **preference(c), input_tokens=c.input_tokens, truncated=c.truncated, cached=c.cached,
                    reasoning_tokens=c.reasoning_tokens,
                    samples=protocol.PairSamples(ab=samples(c.samples_ab),
                                                 ba=samples(c.samples_ba) if request.debias else None)
                    if show else None,
                    principles={name: protocol.PrinciplePreference(**preference(p))
                                for name, p in c.principles.items()} if c.principles is not None else None)
                for c in compared
            ],
            rubric=compiled.rubric.name,
            labels=list(compiled.trie.labels),
            debiased=request.debias,
            model=scorer.backend.info.model,
            read=_read_kind(scorer.backend.info),
        )

    async def get_reward(self, request: protocol.RewardRequest, rubric: str | None,
                         group_pairwise: bool | None = None, reward_field: str = "reward") -> protocol.RewardResponse:
        """OpenRLHF's remote reward: each query split into (prompt, response) and scored as /score does
        (a chat-templated prompt as its messages); judged in prompt groups as /score judges them when
        ``group_pairwise`` says so, or (None) the rubric does. The rewards are ``reward_field``'s read
        (in groups: the group rewards, whatever the field)."""
        def work(scorer: Scorer) -> int:
            # Estimated from the queries (a prompt and its response): parsing them is the request's work.
            chosen = scorer.rubric(rubric)
            return self._judging_work(scorer, chosen, [("", q) for q in request.query],
                                      _in_groups(group_pairwise, chosen), self._opponents(None),
                                      references=_label_references(chosen, request.labels, len(request.query)))

        return await self._serve(lambda scorer: self._get_reward(scorer, request, rubric, group_pairwise,
                                                                 reward_field), len(request.query), work)

    async def _get_reward(self, scorer: Scorer, request: protocol.RewardRequest, rubric: str | None,
                          group_pairwise: bool | None, reward_field: str) -> protocol.RewardResponse:
        markers = (*END_MARKERS, *getattr(scorer.backend.tokenizer, "all_special_tokens", ()))
        items = labeler_items(request.query, request.prompts, markers)
        chosen = scorer.rubric(rubric)
        in_groups = _in_groups(group_pairwise, chosen)
        scored, groups = await self._judge(scorer, chosen, items, in_groups, opponents=self._opponents(None),
                                           way_out=_get_reward_way_out(chosen.name, group_pairwise is not None),
                                           references=_label_references(chosen, request.labels, len(items)))
        self._count(chosen.name, scored)
        self._count_pairs(chosen.name, groups)
        reads = {"reward": lambda s: s.result, "reward_robust": lambda s: s.robust,
                 "reward_as_written": lambda s: s.as_written}[reward_field]
        rewards = [reads(s).reward for s in scored] if groups is None else [g.reward.reward for g in groups]
        extra_logs = {"drlaif_score": [s.result.score for s in scored],
                      "drlaif_label_mass": [s.result.label_mass for s in scored],
                      "drlaif_reward_as_written": [s.as_written.reward for s in scored],
                      "drlaif_reward_robust": [s.robust.reward for s in scored]}
        for name in chosen.principle_names:
            extra_logs[f"drlaif_{name}_reward"] = [s.principles[name].result.reward for s in scored]
        if chosen.reasoning is not None:
            extra_logs["drlaif_reasoning_tokens"] = [float(s.reasoning_tokens) for s in scored]
            extra_logs["drlaif_score_spread"] = [score_spread([r for _, r in s.samples]) for s in scored]
        if groups is not None:  # the rewards are the groups': the direct reads' stay in the logs
            extra_logs["drlaif_direct_reward"] = [s.result.reward for s in scored]
            extra_logs["drlaif_group_win_rate"] = [g.reward.win_rate for g in groups]
        return protocol.RewardResponse(rewards=rewards, scores=[(r + 1.0) / 2.0 for r in rewards],
                                       extra_logs=extra_logs)

    async def render(self, request: protocol.ScoreRequest) -> protocol.RenderResponse:
        # No read, but each item is tokenised (and a constitution's once per principle): admitted
        # like the reads it prepares, so a flood of renders cannot crowd out the scoring.
        return await self._serve(lambda scorer: self._render(scorer, request), len(request.items),
                                 lambda scorer: tokenising_work(_items(request)))

    async def _render(self, scorer: Scorer, request: protocol.ScoreRequest) -> protocol.RenderResponse:
        items = _items(request)
        rubric = scorer.rubric(request.rubric, _reasoning(request))
        principles = None
        if scorer.chosen_principles(rubric, request.principles):
            by_principle = await asyncio.to_thread(scorer.encode_principles, rubric, items, request.principles,
                                                   _references(request.items))
            compiled, guarded = next(iter(by_principle.values()))
            principles = [{n: _rendered(g[i].as_written) for n, (_, g) in by_principle.items()}
                          for i in range(len(items))]
        else:
            compiled, guarded = await asyncio.to_thread(scorer.encode, rubric, items, _references(request.items))
        labels = {label: list(ids) for label, ids in compiled.trie.label_tokens.items()}
        reasoning = None
        if compiled.reasoning is not None:
            spec = compiled.reasoning.spec
            reasoning = protocol.RenderedReasoning(
                answer_ids=list(compiled.reasoning.answer_ids),
                stop_ids=[list(s) for s in compiled.reasoning.stop_ids],
                max_tokens=spec.max_tokens, samples=spec.samples, temperature=spec.temperature)
        return protocol.RenderResponse(
            results=[protocol.RenderedItem(
                text=g.as_written.text, input_ids=list(g.as_written.input_ids), slots=_slots(g.as_written),
                label_token_ids=labels,
                truncated=g.as_written.truncated, reasoning=reasoning,
                robust=_rendered(g.robust) if g.robust is not None else None,
                principles=principles[i] if principles is not None else None)
                for i, g in enumerate(guarded)],
            rubric=compiled.rubric.name,
        )

    def info(self) -> protocol.InfoResponse:
        s = self.settings
        backend_info = self.scorer.backend.info if self.scorer else None
        return protocol.InfoResponse(
            version=__version__,
            model=backend_info.model if backend_info else (s.model or "embedded"),
            backend=s.backend,
            dtype=backend_info.dtype if backend_info else s.dtype,
            device=backend_info.device if backend_info else s.device,
            default_rubric=self.rubrics.default,
            rubrics=[_rubric_info(r) for r in sorted(self.rubrics, key=lambda r: r.name)],
            limits={
                "max_items_per_request": s.max_items_per_request,
                "max_compare_items": s.max_items_per_request,
                "max_field_chars": s.max_field_chars,
                "max_input_tokens": self.scorer.encoder.max_input_tokens if self.scorer else s.max_input_tokens,
                "truncate": s.truncate,
                "max_batch_items": s.max_batch_items,
                "max_queue_items": s.max_queue_items,
                "max_queue_tokens": s.max_queue_tokens,
                "group_opponents": s.group_opponents,
            },
            ready=self.ready,
            replicas=self.replica_count(),
            read=_read_kind(backend_info),
        )
