"""The reasoning stage: from a rendered input to the label inputs read after each rationale.

A reasoned form renders up to where the labeler's answer begins. For each item the
labeler generates ``samples`` rationales (greedy, or sampled with a seed derived from the
item), each cut before its stop text; the label input of a sample is then

    rendered input ids + rationale ids (as generated) + answer ids (trusted)

and the label distribution is read exactly at its end, as a direct read is. The rationale
enters as the labeler's own token ids, never as re-tokenised text, and the answer prefix is
the server's, so a rationale that writes "Rating: 7" decides nothing: the read happens only
after the prefix the server appended. This module is pure: it plans generation requests
and builds label inputs; the scorer runs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drlaif.protocol import MAX_SEED
from server.backends.base import Generation, GenerationRequest
from server.rubrics.render import CompiledReasoning, EncodedItem


@dataclass(frozen=True)
class Rationale:
    """One sample's rationale: its token ids (the stop text cut off) and why it ended
    ("stop", "length", "eos"; "none" when the budget is 0)."""

    token_ids: tuple[int, ...]
    finish_reason: str


NO_RATIONALE = Rationale((), "none")


def sample_seed(base: int | None, input_ids: Sequence[int], sample: int) -> int:
    """The seed of one sampled rationale: a function of the request's seed (0 when it gives
    none), the item's rendered ids and the sample's index, so that the same request gives
    the same rationales and the samples of an item differ."""
    h = hashlib.blake2b(digest_size=8)
    h.update((base or 0).to_bytes(8, "little") + sample.to_bytes(4, "little"))
    h.update(np.asarray(input_ids, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little") & MAX_SEED


def rationale_requests(reasoning: CompiledReasoning, encoded: EncodedItem,
                       seed: int | None) -> list[GenerationRequest | None]:
    """One generation request per sample of an item (None per sample when the budget is 0)."""
    spec = reasoning.spec
    if spec.max_tokens == 0:
        return [None] * spec.samples
    sampled = spec.temperature > 0
    return [GenerationRequest(encoded.input_ids, spec.max_tokens, temperature=spec.temperature,
                              seed=sample_seed(seed, encoded.input_ids, k) if sampled else None,
                              stop=reasoning.stop_ids)
            for k in range(spec.samples)]


def rationale_of(generation: Generation, reasoning: CompiledReasoning) -> Rationale:
    """The rationale in a generation: its tokens without the stop sequence that ended it."""
    ids = generation.token_ids
    if generation.finish_reason == "stop":
        ends = [len(s) for s in reasoning.stop_ids if len(s) <= len(ids) and ids[len(ids) - len(s):] == s]
        ids = ids[: len(ids) - max(ends)]  # the longest match: all of the stop text's tokens
    return Rationale(ids, generation.finish_reason)


def label_input(encoded: EncodedItem, rationale: Rationale, reasoning: CompiledReasoning) -> EncodedItem:
    """The input read after a rationale: rendered ids, rationale ids, then the trusted answer ids."""
    ids = encoded.input_ids + rationale.token_ids + reasoning.answer_ids
    return EncodedItem(input_ids=ids, text="", truncated=encoded.truncated, shared_prefix=encoded.shared_prefix)
