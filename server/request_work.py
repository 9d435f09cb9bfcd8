"""How much labeler work a request asks for, estimated before any of it starts.

Admission (server/admission.py) bounds the work in flight in these units: labeler tokens, each
token a read processes (its input) or generates (a reasoning rubric's rationale). The work
behind one item ranges over orders of magnitude (a direct read of a short answer, or a
constitution of five principles that each reason eight times, or a response judged against
sixteen others in both orders), so counting items alone cannot bound it.

The estimate is deliberately cheap and never smaller than the truth by much: an input's tokens
are its characters divided by :data:`CHARS_PER_TOKEN` (most tokenizers give more characters
per token on prose) plus the rubric's own tokens, and at most the server's input budget; every
reason-then-read item generates its full ``max_tokens``; the guard's second read, taken only
when a response addresses the judge, is not counted. Pure arithmetic: no tokenizer, no engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from drlaif.prompt_text import prompt_text
from drlaif.protocol import Prompt

#: Characters per token of the estimate: prose runs about 4 per token in the tokenizers of
#: common labelers, so 3 overestimates the work rather than under-counting it.
CHARS_PER_TOKEN = 3


@dataclass(frozen=True)
class ReadShape:
    """What one read under a rubric costs beside its text: the rubric's fixed tokens, the reads
    it takes per input (a constitution's principles), and a reasoning rubric's samples and
    rationale length (0 samples: it reads at once)."""

    fixed_tokens: int
    principles: int = 1
    samples: int = 0
    max_rationale_tokens: int = 0

    def work(self, chars: int, max_input_tokens: int) -> int:
        """Tokens read and generated for one input of ``chars`` characters under this shape."""
        read = min(max_input_tokens, self.fixed_tokens + math.ceil(chars / CHARS_PER_TOKEN))
        if self.samples:  # each sample generates a rationale, then reads the label after it
            read = self.samples * (self.max_rationale_tokens + read + self.max_rationale_tokens)
        return self.principles * read


def _chars(references: Sequence[str | None] | None, n: int) -> list[int]:
    """Each item's reference length in characters (0 without one)."""
    return [len(r or "") for r in references] if references else [0] * n


def direct_work(items: Sequence[tuple[Prompt, str]], shape: ReadShape, max_input_tokens: int,
                references: Sequence[str | None] | None = None) -> int:
    """The work of reading each (prompt, response) once, with its reference answer if any, under ``shape``."""
    return sum(shape.work(len(prompt_text(p)) + len(r) + extra, max_input_tokens)
               for (p, r), extra in zip(items, _chars(references, len(items)), strict=True))


def pair_work(pairs: Sequence[tuple[Prompt, str, str]], shape: ReadShape, max_input_tokens: int,
              both_orders: bool = True, references: Sequence[str | None] | None = None) -> int:
    """The work of comparing each (prompt, A, B), with its reference answer if any, under ``shape``:
    one read per order."""
    orders = 2 if both_orders else 1
    return orders * sum(shape.work(len(prompt_text(p)) + len(a) + len(b) + extra, max_input_tokens)
                        for (p, a, b), extra in zip(pairs, _chars(references, len(pairs)), strict=True))


def tokenising_work(items: Sequence[tuple[Prompt, str]]) -> int:
    """The estimated tokens of the items themselves: what rendering them costs (no read)."""
    return sum(math.ceil((len(prompt_text(p)) + len(r)) / CHARS_PER_TOKEN) for p, r in items)
