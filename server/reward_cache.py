"""The exact reward cache: a labeler input's label log-probabilities, computed once.

GRPO/RLOO groups repeat completions and evaluations rerun held-out sets, so the same
labeler input comes back. A read depends only on the model and the exact token ids (the
input and each label's tokens), so that is the key: a 128-bit BLAKE2b digest of them,
never the request text, so two texts that render differently can never share an entry.
Bounded (least recently used out first).

The reasoning stage keeps a second one of rationales: a generation is a function of its
request (prompt ids, budget, temperature, seed, stops) on one model, so a repeated item
is neither regenerated nor re-read.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np


def read_key(model: str, label_tokens: Mapping[str, Sequence[int]], input_ids: Sequence[int]) -> bytes:
    """The cache key of one read: model, labels with their token ids, and the input ids."""
    h = hashlib.blake2b(digest_size=16)
    h.update(model.encode())
    for label, ids in label_tokens.items():
        h.update(b"\0" + label.encode() + b"\0" + np.asarray(ids, dtype=np.int64).tobytes())
    h.update(b"\1" + np.asarray(input_ids, dtype=np.int64).tobytes())
    return h.digest()


def generation_key(model: str, request) -> bytes:
    """The cache key of one generation request (a hashable, immutable GenerationRequest)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(model.encode() + b"\2" + repr(request).encode())
    return h.digest()


class RewardCache:
    """LRU of ``key -> value``: label log-probabilities (stored as read-only copies) or
    immutable values (generations); ``max_items=0`` stores nothing."""

    def __init__(self, max_items: int):
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.max_items = max_items
        self._entries: OrderedDict[bytes, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_items > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes):
        """The stored read (counted as a hit), or None (a miss)."""
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value) -> None:
        if not self.enabled:
            return
        stored = value
        if isinstance(value, np.ndarray):
            stored = np.array(value, copy=True)
            stored.flags.writeable = False  # callers share the entry; nobody may change it
        self._entries[key] = stored
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)
