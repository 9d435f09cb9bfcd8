"""Exact probabilities of multi-token score labels.

A label ("1" .. "10") is a *sequence* of tokens as it follows the labeler input.
With digit-splitting tokenizers "10" is the two tokens "1", "0", so reading a single
next-token distribution would count every "10" as a "1". The labels form a trie over
token ids; every internal node is one next-token read, and the probability of a label
is the product of its tokens' conditional probabilities, minus the mass of the longer
labels that continue it:

    P(1)  = P("1") * (1 - P("0" | "1"))
    P(10) = P("1") * P("0" | "1")

This module is pure: it plans which next-token reads a backend must perform and turns
the backend's log-probabilities into per-label log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TokenReads:
    """One sequence for a backend and the next-token reads to perform on it.

    For each ``(position, candidates)`` in ``reads`` the backend returns
    ``log P(candidate | input_ids[:position])`` for every candidate token id.
    ``shared_prefix`` is a hint: the first that many tokens are a prefix that many
    sequences share (a rubric's trusted text), so a backend may compute its KV once and
    reuse it. Results must not depend on it.
    """

    input_ids: tuple[int, ...]
    reads: tuple[tuple[int, tuple[int, ...]], ...]
    shared_prefix: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    label: str | None = None


class LabelTrie:
    """The score labels as a trie of token ids.

    Built from each label's token ids *as they follow the labeler input in context*
    (see :func:`labels_in_context`), never from encoding the label alone.
    """

    def __init__(self, label_tokens: Mapping[str, Sequence[int]]):
        if not label_tokens:
            raise ValueError("a label set needs at least one label")
        self.labels: tuple[str, ...] = tuple(label_tokens)
        self.label_tokens: dict[str, tuple[int, ...]] = {}
        self._root = _Node()
        for label, tokens in label_tokens.items():
            tokens = tuple(int(t) for t in tokens)
            if not tokens:
                raise ValueError(f"label {label!r} has no tokens")
            node = self._root
            for token in tokens:
                node = node.children.setdefault(token, _Node())
            if node.label is not None:
                raise ValueError(f"labels {node.label!r} and {label!r} have the same tokens {tokens}")
            node.label = label
            self.label_tokens[label] = tokens
        # Each internal node is one read: (path from the root, child token ids).
        self._reads: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._collect_reads(self._root, ())
        self._chains = self._plan_chains()

    def _collect_reads(self, node: _Node, path: tuple[int, ...]) -> None:
        if node.children:
            self._reads.append((path, tuple(sorted(node.children))))
            for token, child in node.children.items():
                self._collect_reads(child, path + (token,))

    def _plan_chains(self) -> list[tuple[tuple[int, ...], list[int]]]:
        """Group reads into as few sequences as possible.

        A read whose path is a prefix of another read's path can share its forward
        pass, so each chain is the path of a deepest internal node plus the indices of
        all reads that lie on it. For digit-splitting tokenizers this is a single
        chain (prefix + "1"), i.e. one forward pass per item.
        """
        order = sorted(range(len(self._reads)), key=lambda i: -len(self._reads[i][0]))
        covered: set[int] = set()
        chains = []
        for i in order:
            if i in covered:
                continue
            path = self._reads[i][0]
            members = [j for j, (p, _) in enumerate(self._reads) if path[: len(p)] == p]
            covered.update(members)
            chains.append((path, sorted(members, key=lambda j: len(self._reads[j][0]))))
        return chains

    @property
    def num_sequences(self) -> int:
        """How many backend sequences one item needs."""
        return len(self._chains)

    @property
    def max_label_tokens(self) -> int:
        return max(len(t) for t in self.label_tokens.values())

    def plan(self, prefix: Sequence[int], shared_prefix: int = 0) -> list[TokenReads]:
        """The backend work for one labeler input ending at the answer position; its first
        ``shared_prefix`` tokens are shared with other inputs (see ``TokenReads``)."""
        prefix = tuple(prefix)
        plans = []
        for path, members in self._chains:
            reads = tuple(
                (len(prefix) + len(self._reads[j][0]), self._reads[j][1]) for j in members
            )
            plans.append(TokenReads(prefix + path, reads, min(shared_prefix, len(prefix))))
        return plans

    def label_logprobs(self, results: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """Per-label log-probabilities (in ``self.labels`` order) from a backend's answers.

        ``results[k][m]`` are the log-probabilities of the m-th read of ``plan()[k]``.
        """
        if len(results) != len(self._chains):
            raise ValueError(f"expected {len(self._chains)} read results, got {len(results)}")
        child_logprob: dict[tuple[int, ...], dict[int, float]] = {}
        for (_, members), chain_result in zip(self._chains, results, strict=True):
            for j, values in zip(members, chain_result, strict=True):
                path, candidates = self._reads[j]
                values = np.asarray(values, dtype=np.float64)
                if values.shape != (len(candidates),):
                    raise ValueError(f"read {j}: expected {len(candidates)} values, got {values.shape}")
                child_logprob[path] = dict(zip(candidates, values.tolist(), strict=True))

        out: dict[str, float] = {}

        def walk(node: _Node, path: tuple[int, ...], logp: float) -> None:
            if node.label is not None:
                # Exclude the mass of longer labels that continue this one.
                continued = sum(np.exp(v) for v in child_logprob.get(path, {}).values())
                rest = 1.0 - continued
                out[node.label] = logp + np.log(rest) if rest > 0 else -np.inf
            for token, child in node.children.items():
                walk(child, path + (token,), logp + child_logprob[path][token])

        walk(self._root, (), 0.0)
        return np.array([out[label] for label in self.labels], dtype=np.float64)


def labels_in_context(
    encode: Callable[[str], Sequence[int]], context_text: str, labels: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """Token ids of each label as it follows ``context_text``.

    ``tokens(context + label) - tokens(context)``, checking that the context's own
    tokens are unchanged by the appended label (otherwise the label's tokens would
    not be what the labeler actually sees after the answer prefix).
    """
    context_ids = list(encode(context_text))
    out = {}
    for label in labels:
        full = list(encode(context_text + label))
        if full[: len(context_ids)] != context_ids or len(full) == len(context_ids):
            raise ValueError(
                f"the text before the answer tokenises differently once label {label!r} follows "
                f"it (the tokenizer merges the label into the answer prefix {context_text[-20:]!r}); "
                "end the rubric's answer_prefix with a character that cannot merge with a digit"
            )
        out[label] = tuple(full[len(context_ids) :])
    return out
