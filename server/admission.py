"""The backpressure in front of the batcher: bounds on the requests admitted and not yet answered,
in items as the API's schema counts them (a /score item, a /compare pair, a /get_reward query)
and in labeler work (tokens read and generated, estimated by server/request_work.py). Past
either bound a request is refused at once (429 with Retry-After), never blocked.

The work bound is what keeps the server's queue to a length it can serve: one item may cost a
hundred tokens or a hundred thousand. A request is always admitted when nothing else is in
flight, whatever its estimate, so a request the schema accepts is never refused for its size
alone; its work is bounded by the schema's own limits (items, characters, group opponents).

A tenth of each bound is held back for small requests (those that fit in it): large ones are
admitted only up to nine tenths. So a flood of maximum-size requests cannot fill the queue to
the last item, and a single-item call still gets in, where the batcher's round-robin serves it
within a batch or two (drlaif/batching.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from server.errors import Overloaded

RESERVED = 10  # 1 / RESERVED of each bound is kept for requests that fit in it


class Admission:
    """The bounds on requests' items and labeler work in flight; see the module docstring.
    ``max_items`` is at least the largest request the schema allows."""

    def __init__(self, max_items: int, max_work: int):
        self.max_items = max_items
        self.max_work = max_work
        self.in_flight = 0  # items
        self.work_in_flight = 0  # estimated labeler tokens
        self.requests = 0

    @contextlib.contextmanager
    def admit(self, items: int, work: int, retry_after_s: Callable[[], int]) -> Iterator[None]:
        """Hold ``items`` and ``work`` for the duration; raises Overloaded (429, with Retry-After
        from ``retry_after_s``) at once when they do not fit beside those in flight."""
        # The share held back for small requests (none where the bound is too small to split).
        small = items <= self.max_items // RESERVED and work <= self.max_work // RESERVED
        item_room = self.max_items if small else self.max_items - self.max_items // RESERVED
        work_room = self.max_work if small else self.max_work - self.max_work // RESERVED
        if self.requests and self.in_flight + items > item_room:
            retry = retry_after_s()
            raise Overloaded(f"the scoring queue is full ({self.in_flight} of {self.max_items} items in flight, "
                             f"--max-queue-items; a tenth is kept for small requests); retry in about {retry}s",
                             retry_after_s=retry)
        if self.requests and self.work_in_flight + work > work_room:
            retry = retry_after_s()
            raise Overloaded(f"the labeler's queue is full: this request's work (about {work:,} tokens) does not "
                             f"fit beside the {self.work_in_flight:,} in flight (--max-queue-tokens "
                             f"{self.max_work:,}); retry in about {retry}s, or send smaller requests",
                             retry_after_s=retry)
        self.in_flight += items
        self.work_in_flight += work
        self.requests += 1
        try:
            yield
        finally:
            self.in_flight -= items
            self.work_in_flight -= work
            self.requests -= 1
