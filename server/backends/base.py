"""The seam between the scorer and an inference engine.

A backend answers one question: the log-probabilities of given candidate tokens at
given positions of given token sequences. It knows nothing of rubrics, labels or
rewards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.scoring import TokenReads


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype name a backend loads its model in: for "auto", float32 on CPU (exact and
    fast enough there) and bfloat16 on GPU; any other name as given."""
    if dtype == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    return dtype


@dataclass(frozen=True)
class BackendInfo:
    name: str
    model: str
    dtype: str
    device: str
    max_context: int
    # True for engines that batch concurrent requests themselves (vLLM's continuous
    # batching): the scorer then sends work straight in, without a micro-batching wait.
    continuous_batching: bool = False


class Backend(Protocol):
    """A labeler engine. ``tokenizer`` is the Hugging Face tokenizer of its model."""

    info: BackendInfo
    tokenizer: object

    async def read_logprobs(self, batch: Sequence[TokenReads]) -> list[list[np.ndarray]]:
        """For each sequence, for each of its reads, the candidates' log-probabilities.

        Must not block the event loop.
        """
        ...

    def failure(self) -> str | None:
        """None while the engine can serve; else why it never will again (the server then exits)."""
        ...

    def close(self) -> None:
        """Release the engine."""
        ...
