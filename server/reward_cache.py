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
from collections.abc import Callable, Mapping, Sequence

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
    immutable values (generations); ``max_items=0`` stores nothing.

    ``size_of`` and ``max_size`` add a second bound, on the entries' total size (e.g. the
    tokens of rationales, one of which may be thousands of tokens): least recently used
    entries go until both bounds hold; an entry larger than ``max_size`` alone is not kept.
    """

    def __init__(self, max_items: int, *, size_of: Callable[[object], int] | None = None,
                 max_size: int | None = None):
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        if (size_of is None) != (max_size is None) or (max_size is not None and max_size < 0):
            raise ValueError("size_of and max_size (>= 0) go together")
        self.max_items = max_items
        self.max_size = max_size
        self._size_of = size_of
        self.size = 0  # total size of the entries (0 without size_of)
        self._entries: OrderedDict[bytes, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_items > 0 and self.max_size != 0

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
        size = self._size_of(value) if self._size_of is not None else 0
        if self.max_size is not None and size > self.max_size:
            return
        stored = value
        if isinstance(value, np.ndarray):
            stored = np.array(value, copy=True)
            stored.flags.writeable = False  # callers share the entry; nobody may change it
        self._drop(key)
        self._entries[key] = stored
        self.size += size
        while len(self._entries) > self.max_items or (self.max_size is not None and self.size > self.max_size):
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        value = self._entries.pop(key, None)
        if value is not None and self._size_of is not None:
            self.size -= self._size_of(value)
