"""The scoring pipeline: text -> rubric prompt -> token ids -> backend reads -> reward.

This is where the pure pieces meet: rubric rendering, the label trie, the micro-batcher
and the backend. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from server.backends import Backend
from server.batching import BatchStats, MicroBatcher
from server.rubrics import RubricRegistry
from server.rubrics.prompts import prompt_text
from server.rubrics.render import CompiledRubric, EncodedItem, PromptEncoder
from server.scoring import ScoreResult, TokenReads, expected_score

log = logging.getLogger(__name__)

Prompt = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class ScoredItem:
    result: ScoreResult
    input_tokens: int
    truncated: bool


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
                 truncate: bool, batching: BatchingLimits,
                 on_batch: Callable[[BatchStats], None] | None = None):
        self.backend = backend
        self.rubrics = rubrics
        context = backend.info.max_context
        if context and max_input_tokens > context:
            log.warning("max_input_tokens %d exceeds the model's context %d; using %d",
                        max_input_tokens, context, context)
            max_input_tokens = context
        self.encoder = PromptEncoder(backend.tokenizer, max_input_tokens, truncate)
        # Compile every rubric now: a rubric the tokenizer cannot serve fails at startup.
        max_label_tokens = max(self.encoder.compile(rubric).trie.max_label_tokens for rubric in rubrics)
        self.batcher: MicroBatcher[TokenReads, list] = MicroBatcher(
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

    def encode(self, rubric: str | None, items: Sequence[tuple[Prompt, str]]) -> tuple[CompiledRubric, list[EncodedItem]]:
        """Render and tokenise items (raises UnknownRubric / InputTooLong)."""
        compiled = self.compiled(rubric)
        return compiled, [self.encoder.encode(compiled, prompt_text(p), r) for p, r in items]

    async def score(self, rubric: str | None, items: Sequence[tuple[Prompt, str]]) -> list[ScoredItem]:
        compiled, encoded = await asyncio.to_thread(self.encode, rubric, items)
        trie = compiled.trie
        plans = [trie.plan(item.input_ids) for item in encoded]
        flat = [seq for plan in plans for seq in plan]
        answers = await self.batcher.submit(flat)
        out, k = [], 0
        for item, plan in zip(encoded, plans, strict=True):
            chain_answers = answers[k : k + len(plan)]
            k += len(plan)
            result = expected_score(trie.label_logprobs(chain_answers), compiled.scale)
            out.append(ScoredItem(result, len(item.input_ids), item.truncated))
        return out
