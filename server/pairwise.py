"""Pairwise preferences: (prompt, response A, response B) -> P(A better), debiased over both orders.

The same pipeline as scoring, with the rubric's pairwise form: render the pair into the
labeler prompt, reason first when the form is reasoned (each order has its own
rationales), read the two answer labels through the label trie and the scorer's batcher,
average an order's samples, then combine the orders (``server.scoring.preference``). It
knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drlaif.prompt_text import prompt_text
from drlaif.protocol import Prompt
from server.rubrics.model import Rubric
from server.rubrics.render import CompiledComparison, EncodedItem
from server.scorer import ItemRead, References, SampleRead, Scorer, prompt_groups, share_prefixes
from server.scoring import (
    OrderRead,
    Preference,
    aggregate_preferences,
    combine_orders,
    mean_order,
    read_order,
    sample_principle,
)

OrderSamples = tuple[tuple[SampleRead, OrderRead], ...]
ENCODE_CHUNK = 64  # pairs tokenised per thread-pool job


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
    principles: Mapping[str, ComparedItem] | None = None  # a constitution's per-principle preferences


def encode_pairs(scorer: Scorer, compiled: CompiledComparison, items: Sequence[tuple[Prompt, str, str]],
                 both_orders: bool, fixed_tokens: int | None = None,
                 references: References = None) -> list[EncodedItem]:
    """Labeler inputs: per item the order (A, B), then (B, A) when ``both_orders``. Raises InputTooLong
    (and ReferenceRequired or ReferenceUnused when ``references`` do not fit the form)."""
    encoded = []
    for (prompt, a, b), reference in zip(items, references or [None] * len(items), strict=True):
        text = prompt_text(prompt)
        encoded.append(scorer.encoder.encode(compiled, text, a, b, reference=reference, fixed_tokens=fixed_tokens))
        if both_orders:
            encoded.append(scorer.encoder.encode(compiled, text, b, a, reference=reference,
                                                 fixed_tokens=fixed_tokens))
    return encoded


def _order(read: ItemRead) -> tuple[OrderRead, OrderSamples]:
    samples = tuple((s, read_order(s.logprobs)) for s in read.samples)
    return mean_order([r for _, r in samples]), samples


async def _compare_form(scorer: Scorer, compiled: CompiledComparison, items: Sequence[tuple[Prompt, str, str]],
                        debias: bool, seed: int | None, fixed_tokens: int | None = None,
                        references: References = None) -> list[ComparedItem]:
    # Off the event loop, and in chunks: a request of thousands of pairs releases the tokenizer
    # between chunks, and stops there when it is cancelled (a thread cannot be stopped mid-chunk).
    encoded = []
    for start in range(0, len(items), ENCODE_CHUNK):
        chunk = slice(start, start + ENCODE_CHUNK)
        encoded += await asyncio.to_thread(encode_pairs, scorer, compiled, items[chunk], debias, fixed_tokens,
                                           references[chunk] if references else None)
    step = 2 if debias else 1  # encoded inputs per item
    if scorer.group_prefix_reuse:  # the pairs of one prompt (a group's, in group judging) share it
        encoded = share_prefixes(encoded, [[step * i + o for i in group for o in range(step)]
                                           for group in prompt_groups([(p, a) for p, a, _ in items], references)])
    reads = await scorer.read(compiled, encoded, seed)
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


async def compare(scorer: Scorer, rubric: Rubric, items: Sequence[tuple[Prompt, str, str]],
                  debias: bool = True, seed: int | None = None,
                  principles: Sequence[str] | None = None, references: References = None) -> list[ComparedItem]:
    """P(A better) for each (prompt, A, B) (``references``: each item's reference answer, for a
    rubric that shows one); with ``debias`` both orders are read and averaged. A constitution
    gives one such preference per principle (or per principle named), aggregated."""
    chosen = scorer.chosen_principles(rubric, principles)  # (422 when a plain rubric is given principles)
    if not chosen:
        return await _compare_form(scorer, scorer.compiled_comparison(rubric), items, debias, seed,
                                   references=references)
    forms = scorer.compiled_principles(rubric, pairwise=True)
    fixed = max(form.fixed_tokens for form in forms.values())
    # An engine that batches by itself (vLLM) gets the first principle first, so that its prefix
    # cache holds each pair when the other principles' reads arrive (see Scorer._score_forms).
    first = 1 if scorer.backend.info.continuous_batching else 0
    per_principle = [await _compare_form(scorer, forms[n], items, debias, seed, fixed, references)
                     for n in chosen[:first]]
    per_principle += await asyncio.gather(*(_compare_form(scorer, forms[n], items, debias, seed, fixed, references)
                                            for n in chosen[first:]))
    weights = [p.weight for p in rubric.principles if p.name in chosen]
    out = []
    for i, (prompt, a, b) in enumerate(items):
        parts = {n: compared[i] for n, compared in zip(chosen, per_principle, strict=True)}
        pick = None
        if rubric.aggregate == "sample":
            pick = sample_principle(weights, seed or 0, (prompt_text(prompt) + "\0" + a + "\0" + b).encode())
        preference = aggregate_preferences([c.preference for c in parts.values()], weights, rubric.aggregate, pick)
        decider = next((c for c in parts.values() if c.preference is preference), None)
        if decider is not None:  # min or sample: one principle's verdict, with its own reads
            order_ab, order_ba = decider.order_ab, decider.order_ba
        else:
            order_ab, order_ba = _mixed_orders(preference, list(parts.values()), weights)
        out.append(ComparedItem(preference=preference, order_ab=order_ab, order_ba=order_ba,
                                input_tokens=max(c.input_tokens for c in parts.values()),
                                truncated=any(c.truncated for c in parts.values()),
                                cached=all(c.cached for c in parts.values()),
                                reasoning_tokens=sum(c.reasoning_tokens for c in parts.values()),
                                principles=parts))
    return out


def _mixed_orders(preference: Preference, parts: Sequence[ComparedItem],
                  weights: Sequence[float]) -> tuple[OrderRead, OrderRead | None]:
    """Each order's aggregated read: the combined P(first shown better) and the weighted mean label mass."""
    w = [x / sum(weights) for x in weights]
    ab = OrderRead(preference.ab, 1.0 - preference.ab,
                   sum(x * c.order_ab.label_mass for x, c in zip(w, parts, strict=True)))
    if preference.ba is None:
        return ab, None
    ba = OrderRead(1.0 - preference.ba, preference.ba,
                   sum(x * c.order_ba.label_mass for x, c in zip(w, parts, strict=True)))
    return ab, ba
