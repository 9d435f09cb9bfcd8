"""The backpressure in front of the batcher: a bound on the items of requests admitted and not
yet answered, counted as the API's schema counts them (a /score item, a /compare pair, a
/get_reward query). Past the bound a request is refused at once (429), never blocked.

It does not count reads: how many reads an item needs (the guard's second read, a
constitution's principles, reasoning samples) depends on what it says, and a request the
schema accepts must never be refused for that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from server.errors import Overloaded


class ItemAdmission:
    """The bound on requests' items in flight (admitted and not yet answered); see the module
    docstring. ``max_items`` is at least the largest request the schema allows, so such a
    request is always admitted when nothing else is in flight."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self.in_flight = 0

    @contextlib.contextmanager
    def admit(self, items: int, retry_after_s: Callable[[], int]) -> Iterator[None]:
        """Hold ``items`` slots for the duration; raises Overloaded (429, with Retry-After
        from ``retry_after_s``) at once when they do not fit beside those in flight."""
        if self.in_flight + items > self.max_items:
            retry = retry_after_s()
            raise Overloaded(f"the scoring queue is full ({self.in_flight} of {self.max_items} items in flight, "
                             f"--max-queue-items); retry in about {retry}s", retry_after_s=retry)
        self.in_flight += items
        try:
            yield
        finally:
            self.in_flight -= items
