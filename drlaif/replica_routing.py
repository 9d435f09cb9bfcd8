"""Which reward-server replica takes the next request, when the client is given several URLs.

Load: each replica's requests in flight are counted, and a request goes to the less loaded of two
replicas drawn at random (the "power of two choices": nearly the balance of always picking the
least loaded, without every client herding onto the same replica). ``round-robin`` is the
load-blind alternative, kept for comparison.

Health: a replica that failed (no answer, a timeout, a 5xx) gets no more requests until a probe of
its ``GET /health/ready`` answers 200 (or a request it was already serving answers 200). A failed
replica is probed at most once per ``probe_interval_s``, the first time that long after the failure,
and never by two probes at once. A 429 is load, not ill health: the replica stays in rotation but
gets nothing before its ``Retry-After``.

:class:`ReplicaRouter` is pure bookkeeping: it does no I/O and never sleeps. The client asks it
where to send a request (:meth:`ReplicaRouter.route`), runs the probes it hands out, and reports
how requests and probes ended. The clock and the random source are injected, so tests drive both.
It is shared by every event loop and thread a client is used on, hence its lock.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Routing policies: load-aware (the default), and the load-blind rotation it is measured against.
ROUTING_POLICIES = ("least-loaded", "round-robin")

# How soon a caller that found no usable replica looks again while a probe is out: probes of a
# local or LAN server answer in milliseconds, and the caller should not sleep past the answer.
_PROBE_POLL_S = 0.05


class Outcome(enum.Enum):
    """How one request to a replica ended, as far as routing is concerned."""

    OK = "ok"                # answered 200
    BUSY = "busy"            # 429: alive and shedding load; kept in rotation after its Retry-After
    DOWN = "down"            # no answer, a timeout or a 5xx: out of rotation until a probe says ready
    REFUSED = "refused"      # another 4xx: the request's fault, not the replica's
    CANCELLED = "cancelled"  # the caller stopped waiting (its deadline, a sibling's failure)


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's counters: requests sent, those that failed (no answer, timeout, 429, 5xx), and
    those being served now."""

    requests: int
    failures: int
    in_flight: int


@dataclass(frozen=True)
class Route:
    """The router's answer: where to send a request, and which probes the caller must run."""

    url: str | None            # the replica to send to (already counted in flight); None: none is usable now
    probes: tuple[str, ...]    # replicas to probe now; report each answer with ReplicaRouter.probed
    wait_until: float          # when url is None: the clock time at which a replica may be usable
    why: str = ""              # when url is None: why none is usable


@dataclass
class _Replica:
    url: str
    position: int                # in the URL list: the last tie-break, so equal choices are reproducible
    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    up: bool = True
    not_before: float = 0.0      # its Retry-After: no request before this clock time
    next_probe_at: float = 0.0   # while down: the earliest start of its next probe
    probing: bool = False

    def usable(self, now: float) -> bool:
        return self.up and self.not_before <= now

    def stats(self) -> ReplicaStats:
        return ReplicaStats(self.requests, self.failures, self.in_flight)


class ReplicaRouter:
    """Load- and health-aware choice among replicas; see the module docstring."""

    def __init__(self, urls: Sequence[str], *, policy: str = "least-loaded", probe_interval_s: float = 1.0,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic):
        if policy not in ROUTING_POLICIES:
            raise ValueError(f"routing policy {policy!r} is not one of {', '.join(ROUTING_POLICIES)}")
        if probe_interval_s < 0:
            raise ValueError(f"probe_interval_s must be >= 0, got {probe_interval_s}")
        # The same URL twice is one replica: its load and health are one.
        self._replicas = {url: _Replica(url, i) for i, url in enumerate(dict.fromkeys(urls))}
        if not self._replicas:
            raise ValueError("give at least one replica URL")
        self._policy = policy
        self._probe_interval_s = probe_interval_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._next = 0  # round-robin: the position to try first
        self._lock = threading.Lock()

    def route(self, avoid: str | None = None) -> Route:
        """Pick a replica for one request and count it in flight; hand out the probes now due.

        ``avoid``: a replica that just failed this request, taken only when no other is usable.
        Every route with a URL must be followed by exactly one :meth:`finished` for that URL, and
        every probe handed out by exactly one :meth:`probed`.
        """
        with self._lock:
            now = self._clock()
            probes = self._due_probes(now)
            live = [r for r in self._replicas.values() if r.usable(now)]
            if not live:
                return self._nowhere(now, probes)
            live = [r for r in live if r.url != avoid] or live
            chosen = self._choose(live)
            chosen.requests += 1
            chosen.in_flight += 1
            return Route(chosen.url, probes, now)

    def finished(self, url: str, outcome: Outcome, retry_after_s: float | None = None) -> None:
        """Record how a routed request ended; ``retry_after_s`` is the replica's Retry-After, if any."""
        with self._lock:
            now = self._clock()
            r = self._replicas[url]
            r.in_flight -= 1
            if outcome in (Outcome.BUSY, Outcome.DOWN):
                r.failures += 1
            if outcome is Outcome.OK:
                r.up = True  # an answer is better news than a probe
            elif outcome is Outcome.DOWN:
                r.up = False
                # The failure is the latest look at it: the next one comes an interval later.
                r.next_probe_at = max(r.next_probe_at, now + self._probe_interval_s)
            if retry_after_s is not None:
                r.not_before = max(r.not_before, now + retry_after_s)

    def probed(self, url: str, ready: bool) -> None:
        """Record a probe's answer: ready (200) puts the replica back in rotation."""
        with self._lock:
            r = self._replicas[url]
            r.probing = False
            if ready:
                r.up = True

    def has_usable(self, excluding: str) -> bool:
        """Whether a replica other than ``excluding`` could take a request now."""
        with self._lock:
            now = self._clock()
            return any(r.usable(now) for r in self._replicas.values() if r.url != excluding)

    def stats(self) -> dict[str, ReplicaStats]:
        """Each replica's counters, in URL order."""
        with self._lock:
            return {url: r.stats() for url, r in self._replicas.items()}

    # -- under the lock ---------------------------------------------------------------------------

    def _due_probes(self, now: float) -> tuple[str, ...]:
        due = [r for r in self._replicas.values() if not r.up and not r.probing and r.next_probe_at <= now]
        for r in due:
            r.probing = True
            r.next_probe_at = now + self._probe_interval_s  # probe starts stay an interval apart
        return tuple(r.url for r in due)

    def _choose(self, live: list[_Replica]) -> _Replica:
        if self._policy == "round-robin":
            n = len(self._replicas)
            chosen = min(live, key=lambda r: (r.position - self._next) % n)
            self._next = (chosen.position + 1) % n
            return chosen
        pair = live if len(live) <= 2 else self._rng.sample(live, 2)
        # Fewest in flight; on a tie the one that has had fewer requests, so that requests made one
        # at a time still alternate.
        return min(pair, key=lambda r: (r.in_flight, r.requests, r.position))

    def _nowhere(self, now: float, probes: tuple[str, ...]) -> Route:
        """The Route when no replica is usable: when one may be, and why none is."""
        down = [r for r in self._replicas.values() if not r.up]
        chances = [r.not_before for r in self._replicas.values() if r.up]
        chances += [now + _PROBE_POLL_S if r.probing else r.next_probe_at for r in down]
        if not down:
            why = "every server asked to retry after"
        elif len(down) == len(self._replicas):
            why = "every server failed, and the next readiness probe falls after"
        else:
            why = "every server failed or asked to retry after"
        return Route(None, probes, min(chances), why)
