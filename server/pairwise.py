"""Pairwise preferences: (prompt, response A, response B) -> P(A better), debiased over both orders.

The same pipeline as scoring, with the rubric's pairwise form: render the pair into the
labeler prompt, read the two answer labels through the label trie and the scorer's batcher,
then combine the orders (``server.scoring.preference``). It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from server.rubrics.prompts import prompt_text
from server.rubrics.render import CompiledComparison, EncodedItem
from server.scorer import Prompt, Scorer
from server.scoring import OrderRead, Preference, combine_orders, read_order


@dataclass(frozen=True)
class ComparedItem:
    preference: Preference
    order_ab: OrderRead
    order_ba: OrderRead | None
    input_tokens: int   # labeler input of one order (both orders have the same length)
    truncated: bool
    cached: bool        # no order's read was computed for it (see Scorer.read_labels)


def encode_pairs(scorer: Scorer, rubric: str | None, items: Sequence[tuple[Prompt, str, str]],
                 both_orders: bool) -> tuple[CompiledComparison, list[EncodedItem]]:
    """Labeler inputs: per item the order (A, B), then (B, A) when ``both_orders``.

    Raises UnknownRubric, RubricCannotCompare, InputTooLong.
    """
    compiled = scorer.encoder.compile_comparison(scorer.rubrics.get(rubric))
    encoded = []
    for prompt, a, b in items:
        text = prompt_text(prompt)
        encoded.append(scorer.encoder.encode(compiled, text, a, b))
        if both_orders:
            encoded.append(scorer.encoder.encode(compiled, text, b, a))
    return compiled, encoded


async def compare(scorer: Scorer, rubric: str | None, items: Sequence[tuple[Prompt, str, str]],
                  debias: bool = True) -> list[ComparedItem]:
    """P(A better) for each (prompt, A, B); with ``debias`` both orders are read and averaged."""
    compiled, encoded = await asyncio.to_thread(encode_pairs, scorer, rubric, items, debias)
    logprobs, hits = await scorer.read_labels(compiled.trie, encoded)
    reads = [read_order(lp) for lp in logprobs]
    step = 2 if debias else 1
    out = []
    for i in range(0, len(encoded), step):
        ab = reads[i]
        ba = reads[i + 1] if debias else None
        group = encoded[i : i + step]
        out.append(ComparedItem(preference=combine_orders(ab, ba), order_ab=ab, order_ba=ba,
                                input_tokens=len(group[0].input_ids),
                                truncated=any(e.truncated for e in group), cached=all(hits[i : i + step])))
    return out
