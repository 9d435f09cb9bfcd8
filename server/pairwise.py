"""Pairwise preferences: (prompt, response A, response B) -> P(A better), debiased over both orders.

The same pipeline as scoring, with the rubric's pairwise form: render the pair into the
labeler prompt, reason first when the form is reasoned (each order has its own
rationales), read the two answer labels through the label trie and the scorer's batcher,
average an order's samples, then combine the orders (``server.scoring.preference``). It
knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from server.rubrics.model import Rubric
from server.rubrics.prompts import prompt_text
from server.rubrics.render import CompiledComparison, EncodedItem
from server.scorer import ItemRead, Prompt, SampleRead, Scorer
from server.scoring import OrderRead, Preference, combine_orders, mean_order, read_order

OrderSamples = tuple[tuple[SampleRead, OrderRead], ...]


@dataclass(frozen=True)
class ComparedItem:
    preference: Preference
    order_ab: OrderRead
    order_ba: OrderRead | None
    input_tokens: int   # labeler input of one order (both orders have the same length)
    truncated: bool
    cached: bool        # no order's read or rationale was computed for it (see Scorer.read)
    samples_ab: OrderSamples = ()  # each sample read of an order and its own answer
    samples_ba: OrderSamples = ()
    reasoning_tokens: int = 0


def encode_pairs(scorer: Scorer, rubric: Rubric, items: Sequence[tuple[Prompt, str, str]],
                 both_orders: bool) -> tuple[CompiledComparison, list[EncodedItem]]:
    """Labeler inputs: per item the order (A, B), then (B, A) when ``both_orders``.

    Raises RubricCannotCompare, InputTooLong.
    """
    compiled = scorer.compiled_comparison(rubric)
    encoded = []
    for prompt, a, b in items:
        text = prompt_text(prompt)
        encoded.append(scorer.encoder.encode(compiled, text, a, b))
        if both_orders:
            encoded.append(scorer.encoder.encode(compiled, text, b, a))
    return compiled, encoded


def _order(read: ItemRead) -> tuple[OrderRead, OrderSamples]:
    samples = tuple((s, read_order(s.logprobs)) for s in read.samples)
    return mean_order([r for _, r in samples]), samples


async def compare(scorer: Scorer, rubric: Rubric, items: Sequence[tuple[Prompt, str, str]],
                  debias: bool = True, seed: int | None = None) -> list[ComparedItem]:
    """P(A better) for each (prompt, A, B); with ``debias`` both orders are read and averaged."""
    compiled, encoded = await asyncio.to_thread(encode_pairs, scorer, rubric, items, debias)
    reads = await scorer.read(compiled, encoded, seed)
    step = 2 if debias else 1
    out = []
    for i in range(0, len(encoded), step):
        ab, samples_ab = _order(reads[i])
        ba, samples_ba = _order(reads[i + 1]) if debias else (None, ())
        group = encoded[i : i + step]
        out.append(ComparedItem(preference=combine_orders(ab, ba), order_ab=ab, order_ba=ba,
                                input_tokens=len(group[0].input_ids),
                                truncated=any(e.truncated for e in group),
                                cached=all(r.cached for r in reads[i : i + step]),
                                samples_ab=samples_ab, samples_ba=samples_ba,
                                reasoning_tokens=sum(r.reasoning_tokens for r in reads[i : i + step])))
    return out
