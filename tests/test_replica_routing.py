"""drlaif/replica_routing.py: the reward client's choice of replica, on a fake clock and a seeded RNG."""

from __future__ import annotations

import collections
import itertools
import random

import pytest

from drlaif.replica_routing import Outcome, ReplicaRouter, ReplicaStats

A, B, C = "http://a", "http://b", "http://c"


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def router(clock: Clock, urls=(A, B), **kw) -> ReplicaRouter:
    return ReplicaRouter(list(urls), rng=random.Random(0), clock=clock, probe_interval_s=1.0, **kw)


def send(r: ReplicaRouter) -> str:
    """Route one request and return where it went (left in flight)."""
    url = r.route().url
    assert url is not None
    return url


def test_the_less_loaded_replica_of_a_pair_gets_the_request(clock):
    r = router(clock)
    assert [send(r) for _ in range(4)] == [A, B, A, B]  # equal load: alternate
    r.finished(B, Outcome.OK)
    r.finished(B, Outcome.OK)
    assert send(r) == B and send(r) == B  # A still has two in flight
    assert {u: s.in_flight for u, s in r.stats().items()} == {A: 2, B: 2}


def test_of_three_replicas_a_loaded_one_is_never_chosen_over_idle_ones(clock):
    r = router(clock, (A, B, C))
    for url in [send(r) for _ in range(6)]:
        if url != A:
            r.finished(url, Outcome.OK)
    assert r.stats()[A].in_flight >= 1
    chosen = collections.Counter()
    for _ in range(200):
        url = send(r)
        chosen[url] += 1
        r.finished(url, Outcome.OK)
    # Every pair drawn holds B or C, idle; the pairs (B, C) share the rest out between them.
    assert chosen[A] == 0 and chosen[B] > 50 and chosen[C] > 50, chosen


def test_two_random_choices_draw_from_the_injected_rng(clock):
    def picks(seed: int) -> list[str]:
        r = ReplicaRouter([A, B, C, "http://d"], rng=random.Random(seed), clock=clock)
        out = []
        for _ in range(40):
            out.append(send(r))
            r.finished(out[-1], Outcome.OK)
        return out

    assert picks(1) == picks(1)
    assert picks(1) != picks(2)


def test_round_robin_rotates_whatever_the_load(clock):
    r = router(clock, (A, B, C), policy="round-robin")
    assert [send(r) for _ in range(6)] == [A, B, C, A, B, C]
    r.finished(B, Outcome.DOWN)
    assert [send(r) for _ in range(4)] == [A, C, A, C]  # a failed replica is skipped


def test_a_failed_replica_gets_nothing_until_its_probe_answers_ready(clock):
    r = router(clock)
    assert send(r) == A
    r.finished(A, Outcome.DOWN)
    assert r.route().probes == ()  # the failure is fresh: no probe before an interval has passed
    for _ in range(3):
        assert send(r) == B
    clock.now += 1.0
    route = r.route()
    assert route.url == B and route.probes == (A,)
    r.probed(A, ready=False)
    clock.now += 0.5
    assert send(r) == B  # still out, and its next probe is an interval after the last one began
    clock.now += 0.5
    route = r.route()
    assert route.url == B and route.probes == (A,)
    r.probed(A, ready=True)
    assert send(r) == A
    assert r.route().probes == ()  # up: no more probes


def test_probes_are_bounded_one_at_a_time_and_one_per_interval(clock):
    r = router(clock)
    r.route()
    r.finished(A, Outcome.DOWN)
    handed, outstanding = [], 0
    for _ in range(1000):  # 10 s of routing, a request every 10 ms, against a replica never ready
        clock.now += 0.01
        route = r.route()
        r.finished(route.url, Outcome.OK)
        assert outstanding + len(route.probes) <= 1
        handed += [clock.now] * len(route.probes)
        outstanding += len(route.probes)
        if outstanding and clock.now - handed[-1] >= 0.3:  # the probe answers 0.3 s after it began
            r.probed(A, ready=False)
            outstanding = 0
    assert 9 <= len(handed) <= 10
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(handed))


def test_with_every_replica_down_the_caller_waits_for_the_next_probe(clock):
    r = router(clock)
    for url in (send(r), send(r)):
        r.finished(url, Outcome.DOWN)
    route = r.route()
    assert route.url is None and route.probes == ()
    assert route.wait_until == clock.now + 1.0 and "failed" in route.why
    clock.now = route.wait_until
    route = r.route()
    assert route.url is None and set(route.probes) == {A, B}
    assert clock.now < route.wait_until <= clock.now + 0.1  # look again soon: the probes are out
    r.probed(A, ready=False)
    r.probed(B, ready=True)
    assert send(r) == B


def test_retry_after_keeps_a_busy_replica_alive_but_unused_until_then(clock):
    r = router(clock, (A,))
    assert send(r) == A
    r.finished(A, Outcome.BUSY, retry_after_s=3.0)
    route = r.route()
    assert route.url is None and route.probes == ()  # busy is not down: nothing to probe
    assert route.wait_until == clock.now + 3.0 and route.why == "every server asked to retry after"
    clock.now += 3.0
    assert send(r) == A


def test_a_retry_avoids_the_replica_that_failed_it_while_another_is_usable(clock):
    r = router(clock)
    assert send(r) == A
    r.finished(A, Outcome.BUSY)  # 429 without Retry-After: still usable
    assert r.has_usable(excluding=A)
    assert r.route(avoid=A).url == B
    r.finished(B, Outcome.DOWN)
    assert not r.has_usable(excluding=A)
    assert r.route(avoid=A).url == A  # the only one left


def test_an_answer_to_a_request_in_flight_readmits_a_failed_replica(clock):
    r = router(clock)
    first, second = send(r), send(r)
    third = send(r)
    assert (first, second, third) == (A, B, A)
    r.finished(A, Outcome.DOWN)
    r.finished(A, Outcome.OK)  # the other request there came back fine
    assert send(r) == A


def test_stats_count_requests_failures_and_in_flight(clock):
    r = router(clock, (A,))
    for _ in range(6):
        send(r)
    for outcome in (Outcome.OK, Outcome.BUSY, Outcome.REFUSED, Outcome.CANCELLED, Outcome.DOWN):
        r.finished(A, outcome)
    assert r.stats() == {A: ReplicaStats(requests=6, failures=2, in_flight=1)}


def test_the_same_url_twice_is_one_replica_and_bad_settings_are_refused(clock):
    assert list(router(clock, (A, A, B)).stats()) == [A, B]
    with pytest.raises(ValueError, match="routing policy 'fastest'"):
        ReplicaRouter([A], policy="fastest")
    with pytest.raises(ValueError, match="probe_interval_s"):
        ReplicaRouter([A], probe_interval_s=-1)
    with pytest.raises(ValueError, match="at least one"):
        ReplicaRouter([])
