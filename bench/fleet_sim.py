"""A fleet past one machine, simulated: 64 labeler replicas, 512 rollout workers, the real router.

A discrete-event simulation on a virtual clock. The routing is drlaif's own: every worker's
reward client is a :class:`drlaif.replica_routing.ReplicaRouter` (the object the reward client
routes with), given the simulation's clock and a seeded random source through its ``clock`` and
``rng`` parameters; nothing is monkeypatched. What the client does around it is reproduced
step for step from ``AsyncRewardClient._request`` and ``_send`` (drlaif/client.py): route
(``avoid`` = the replica that just failed), run the probes the router hands out
(``GET /health/ready``, answered by the simulated replica), report every attempt with
``finished`` (the outcome classified by the client's own ``_outcome`` on a real
``httpx.Response``; a connection error or a timeout is ``DOWN``), fail over at once when
``has_usable`` says another replica can take the request, else back off with the client's own
``backoff_delay`` (full jitter), wait for ``wait_until`` when no replica is usable, and give up at
the call's deadline. The retry and timeout settings are ``RewardClientConfig``'s defaults, the
deadline is drlaif-train's ``--reward-deadline-s`` (300 s).

Each policy, ``least-loaded`` (the power of two choices on requests in flight) and
``round-robin`` (the load-blind rotation), is run with the routers held two ways:

- ``per-worker``: each worker has its own client, hence its own router, as separate rollout
  processes do: a router sees only its own worker's requests in flight (0 or 1).
- ``shared``: one client, one router, for all workers (one process sending every worker's
  requests, its ``max_concurrency`` high enough never to hold one back).

A worker loops: generate (a lognormal time, mean ``--generate-s``, sigma 0.5), send one request of
``--group`` items, wait for the rewards, repeat. It starts at a random point of its first
generation. By default the mean generation time is set so that the healthy fleet's offered load
is about 70% of its capacity in full passes: what matters for routing is the load, not the
absolute times.

A replica (the model): continuous batching at item granularity. Admitted items wait in one FIFO
queue; the engine runs passes back to back, each taking up to ``--max-batch-items`` queued items
(a request may span passes and is answered when its last item's pass ends), a pass of n items
taking ``(a + b*n) / speedup * noise`` seconds, and an idle engine waits ``--max-wait-ms`` for
company before a pass, as drlaif's batcher does. ``a`` and ``b`` are a least-squares line through
the median service times measured on one replica (``SERVICE_TIMES_S`` below, or ``--measure``);
``noise`` is drawn from the measured samples' ratios to their size's median (``--noise-scale``
shrinks it towards 1). ``speedup`` (``--speedup``, default ``DEFAULT_SPEEDUP``) scales the CPU
replica measured here to a GPU one; it is a guess, see below. A request whose
items do not fit beside those admitted (``--max-queue-items``) gets ``429 overloaded`` with the
server's Retry-After (queued passes x its smoothed pass time, at least 1 s). A client that times
out (the read timeout) takes its queued items out of the queue. The network adds ``--rtt-ms``
per request and per probe.

Scenarios (``--fail-at``: when the bad replica turns bad; replica 0, the first URL, is the bad
one, the replica every round-robin router starts with):

1. healthy: 64 equal replicas;
2. straggler: replica 0's passes take ``--straggler`` (5) times as long;
3. dead: replica 0 refuses connections from ``--fail-at`` on; the requests it held fail at that
   moment (connection reset), and its readiness probes are refused too;
4. stuck: from ``--fail-at`` on replica 0 answers every request ``503 backend_stuck``
   (Retry-After 1) and its ``/health/ready`` 503, as a transformers server does while a backend
   call past ``--backend-timeout-s`` holds its model; the requests it held get ``503
   backend_error``. The hang before (the call's first ``--backend-timeout-s``, 600 s by default,
   during which requests wait on it) is not simulated.

Prints, per scenario, policy and routers: items/s and requests/s (over the window after
``--warmup``), p50, p99 and the largest of a reward call's latency (retries included; of the calls
answered in the window: a worker held up for minutes answers few calls, so look at the
throughput and the largest too), the share of attempts sent to replica 0, failed attempts (any
answer but 200; in brackets those at replica 0), the client's retries, calls lost (the deadline
ran out), readiness probes sent (in brackets those of replica 0), and how busy the healthy
replicas' engines were. A line per run goes to stderr as it ends; the table comes at the end.

Service times: ``SERVICE_TIMES_S`` were measured once on a 2-core CPU with the embedded labeler
(the command is beside them). ``--measure URL`` measures a running drlaif-server the same way and
prints constants to paste in their place.

Run: python bench/fleet_sim.py [--replicas 64] [--workers 512] [--seconds 300] [--seed 0]
     python bench/fleet_sim.py --measure http://127.0.0.1:8123 [--measure-sizes 1:10,8:30,32:5]
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from drlaif.client import RewardClientConfig, _outcome, backoff_delay, parse_retry_after
from drlaif.errors import BACKEND_ERROR, BACKEND_STUCK, OVERLOADED
from drlaif.replica_routing import ROUTING_POLICIES, Outcome, ReplicaRouter

# Seconds per /score request of N items, one request at a time, measured once with
#   .venv/bin/drlaif-server --port 8123 --log-level warning   (the embedded SmolLM2-135M-Instruct, float32,
#       transformers backend, default flags: reward cache on, but every request's prompt is new)
#   .venv/bin/python bench/fleet_sim.py --measure http://127.0.0.1:8123   (--measure-sizes 1:10,8:30,32:5)
# on a 2-core Intel Xeon VM, torch's default threads, while other test suites ran on the same machine:
# its load average rose from 2 to 8 over the measurement's 14 minutes. These times are about 10x the
# 0.2 s per item that docs/benchmarks.md ("Several replicas: routing") measured for shorter items on
# the machine when quiet, and their spread is mostly that contention. Each item is one of a GRPO
# group: the request's prompt and a reply of 1-3 sentences (group_items below).
SERVICE_TIMES_S: dict[int, tuple[float, ...]] = {
    1: (1.7115, 0.9983, 0.4127, 0.9843, 4.0301, 6.3105, 4.4332, 2.4079, 1.455, 2.2561),
    8: (12.3477, 10.3629, 5.222, 7.4441, 5.9808, 9.7269, 15.9843, 17.977, 9.3045, 14.5688, 16.7262, 11.7641,
        7.7238, 22.6997, 22.9583, 17.6693, 15.8164, 13.2369, 10.4008, 10.9061, 9.645, 9.8202, 10.1156,
        13.0988, 10.1068, 13.6122, 14.3242, 24.1097, 12.3939, 16.4107),
    32: (62.0565, 72.8549, 80.377, 90.6037, 59.5479),
}

#: Default --speedup: how much faster a GPU replica serves than the CPU replica measured above.
#: An assumption, not a measurement: about 10x undoes the contention above, and about 20x is a
#: guess at a 7B labeler on vLLM on one H100 against the embedded 135M one on 2 quiet CPU cores.
#: A replica then reads about 85 items/s (an 8-item request alone: about 94 ms).
DEFAULT_SPEEDUP = 200.0

SCENARIOS = ("healthy", "straggler", "dead", "stuck")
ROUTER_MODES = ("per-worker", "shared")

# Answers a replica gives, as (HTTP status, error type); None: no HTTP answer (a transport error).
OK, OVERLOADED_429, STUCK_503, BACKEND_ERROR_503, REFUSED, RESET, TIMEOUT = range(7)
_ANSWERS: dict[int, tuple[int, str | None] | None] = {
    OK: (200, None), OVERLOADED_429: (429, OVERLOADED.type), STUCK_503: (503, BACKEND_STUCK.type),
    BACKEND_ERROR_503: (503, BACKEND_ERROR.type), REFUSED: None, RESET: None, TIMEOUT: None,
}
_KIND_NAMES = {OVERLOADED_429: "429 overloaded", STUCK_503: "503 backend_stuck", BACKEND_ERROR_503: "503 backend_error",
               REFUSED: "connection refused", RESET: "connection reset", TIMEOUT: "read timeout"}


@functools.cache
def classify(kind: int, retry_after_s: float | None) -> tuple[Outcome, float | None]:
    """The router outcome and Retry-After the client derives from an answer, by its own code:
    ``_outcome`` on an ``httpx.Response`` with drlaif's error body, ``parse_retry_after`` on the
    header; a transport error is DOWN without a Retry-After (``AsyncRewardClient._send``).
    Cached: the answers are few (a Retry-After is whole seconds)."""
    answer = _ANSWERS[kind]
    if answer is None:
        return Outcome.DOWN, None
    status, error_type = answer
    headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else {}
    resp = httpx.Response(status, headers=headers,
                          json={"error": {"type": error_type, "message": ""}} if error_type else {"results": []})
    retry_after = (parse_retry_after(resp.headers.get("Retry-After"))
                   if status in RewardClientConfig.retry_statuses else None)
    return _outcome(resp), retry_after


# --------------------------------------------------------------------------------------------
# The service model


@dataclass(frozen=True)
class ServiceModel:
    """Pass time = (a + b * items) * noise, in seconds at CPU speed; divide by the speedup."""

    a: float
    b: float
    noise: tuple[float, ...]  # measured sample / its size's median

    @classmethod
    def fit(cls, samples: Mapping[int, Sequence[float]]) -> ServiceModel:
        sizes = sorted(samples)
        if len(sizes) < 2:
            raise ValueError("measure at least two request sizes to fit a + b * items")
        medians = [statistics.median(samples[n]) for n in sizes]
        b, a = _line(sizes, medians)
        noise = tuple(t / m for n, m in zip(sizes, medians, strict=True) for t in samples[n])
        return cls(max(a, 0.0), b, noise)


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


# --------------------------------------------------------------------------------------------
# The simulation

UP, DEAD, STUCK = "up", "dead", "stuck"


class Attempt:
    """One HTTP attempt of one call, at one replica."""

    __slots__ = ("admitted", "cancelled", "finished", "kind", "left", "n", "replica", "retry_after", "url",
                 "worker")

    def __init__(self, worker: Worker, url: str, replica: Replica, n: int):
        self.worker, self.url, self.replica, self.n = worker, url, replica, n
        self.left = n                 # items not yet taken into a pass
        self.kind = OK
        self.retry_after: float | None = None
        self.admitted = False         # holds items of the replica's --max-queue-items
        self.finished = False         # the client has its answer (or timed out)
        self.cancelled = False        # the client stopped waiting: the replica drops what is queued


class Worker:
    """A rollout worker and the state of its current reward call (``_request``'s locals)."""

    __slots__ = ("attempt", "avoid", "index", "router", "started")

    def __init__(self, index: int, router: ReplicaRouter):
        self.index, self.router = index, router
        self.started = 0.0
        self.attempt = 0
        self.avoid: str | None = None


class Replica:
    """A labeler server: admission, one FIFO queue of items, passes of up to max_batch items."""

    def __init__(self, sim: Simulation, index: int, url: str, slow: float):
        self.sim, self.index, self.url, self.slow = sim, index, url, slow
        self.state = UP
        self.queue: deque[Attempt] = deque()
        self.admitted = 0         # items admitted and not answered (what --max-queue-items bounds)
        self.queued = 0           # items not yet in a pass (the batcher's depth, for Retry-After)
        self.running: list[Attempt] = []
        self.token = 0            # invalidates scheduled wake-ups and pass ends
        self.waking = False
        self.recent_pass_s = 0.5  # smoothed like drlaif's batcher, for Retry-After
        self.pass_started = 0.0
        self.busy_s = 0.0         # engine time inside the measurement window

    def arrive(self, att: Attempt) -> None:
        sim = self.sim
        if att.cancelled:
            return
        if self.state == DEAD:
            return sim.reply(att, REFUSED)
        if self.state == STUCK:
            return sim.reply(att, STUCK_503, float(BACKEND_STUCK.retry_after_s))
        if self.admitted and self.admitted + att.n > sim.max_queue_items:
            passes = max(1, math.ceil(self.queued / sim.max_batch_items))
            return sim.reply(att, OVERLOADED_429, float(max(1, math.ceil(passes * self.recent_pass_s))))
        att.admitted = True
        self.admitted += att.n
        self.queued += att.n
        self.queue.append(att)
        if not self.running:
            if self.queued >= sim.max_batch_items:
                self.start_pass()
            elif not self.waking:
                self.waking = True
                sim.at(sim.now + sim.max_wait_s, self._wake, self.token)

    def _wake(self, token: int) -> None:
        if token == self.token and not self.running:
            self.start_pass()

    def start_pass(self) -> None:
        sim = self.sim
        self.waking = False
        self.token += 1
        room = sim.max_batch_items
        batch = []
        while self.queue and room:
            att = self.queue[0]
            if att.cancelled:
                self.queue.popleft()
                continue
            k = min(att.left, room)
            att.left -= k
            room -= k
            batch.append(att)
            if not att.left:
                self.queue.popleft()
        self.running = batch
        if not batch:
            return
        items = sim.max_batch_items - room
        self.queued -= items
        model = sim.model
        noise = 1.0 + sim.noise_scale * (sim.rng.choice(model.noise) - 1.0)
        seconds = (model.a + model.b * items) * self.slow * noise / sim.speedup
        self.pass_started = sim.now
        end = sim.now + seconds
        if end > sim.warmup:
            self.busy_s += min(end, sim.seconds) - max(sim.now, sim.warmup)
        sim.at(end, self._pass_done, self.token)

    def _pass_done(self, token: int) -> None:
        if token != self.token:
            return
        sim = self.sim
        self.recent_pass_s = 0.8 * self.recent_pass_s + 0.2 * (sim.now - self.pass_started)
        for att in self.running:
            if not att.left and att.admitted:
                att.admitted = False
                self.admitted -= att.n
                sim.reply(att, OK)
        self.running = []
        if self.queue:
            self.start_pass()

    def cancel(self, att: Attempt) -> None:
        """The client timed out: its queued items leave the queue (drlaif drops a gone client's work)."""
        att.cancelled = True
        if att.admitted:
            att.admitted = False
            self.admitted -= att.n
            self.queued -= att.left
            att.left = 0

    def turn(self, state: str) -> None:
        """Replica 0 goes bad: what it held fails now (reset when dead, backend_error when stuck)."""
        sim = self.sim
        self.state = state
        self.token += 1
        held = dict.fromkeys([*self.running, *self.queue])
        for att in held:
            if att.admitted:
                att.admitted = False
                if state == DEAD:
                    sim.reply(att, RESET)
                else:
                    sim.reply(att, BACKEND_ERROR_503, float(BACKEND_ERROR.retry_after_s))
        self.queue.clear()
        self.running = []
        self.admitted = self.queued = 0


@dataclass
class Result:
    scenario: str
    policy: str
    routers: str
    items_per_s: float
    requests_per_s: float
    p50_s: float
    p99_s: float
    max_s: float
    bad_share: float        # of attempts, those sent to replica 0
    failed: dict[str, int]  # failed attempts by kind
    bad_failed: int         # failed attempts at replica 0
    retries: int
    lost: int
    probes: int
    bad_probes: int         # readiness probes of replica 0
    utilisation: float      # mean engine busy fraction of the healthy replicas in the window
    wall_s: float

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


class Simulation:
    """One run: a scenario, a routing policy, routers per worker or shared."""

    def __init__(self, args: argparse.Namespace, model: ServiceModel, scenario: str, policy: str, routers: str):
        self.scenario, self.policy, self.routers_mode = scenario, policy, routers
        self.model = model
        self.speedup, self.noise_scale = args.speedup, args.noise_scale
        self.seconds, self.warmup, self.fail_at = args.seconds, args.warmup, args.fail_at
        self.group = args.group
        self.max_batch_items, self.max_queue_items = args.max_batch_items, args.max_queue_items
        self.max_wait_s, self.half_rtt_s = args.max_wait_ms / 1000, args.rtt_ms / 2000
        self.deadline_s = args.deadline_s
        self.gen_mu = math.log(args.generate_s) - 0.5 ** 2 / 2
        self.config = RewardClientConfig(urls=["http://replica"], api_key_env="")
        # The same seed for both policies: the same generation times and service noise in the same order.
        self.rng = random.Random(f"{args.seed}/{scenario}/{routers}")
        self.client_rng = random.Random(f"{args.seed}/{scenario}/{routers}/backoff")
        self.now = 0.0
        self._events: list[tuple[float, int, Callable, object]] = []
        self._seq = itertools.count()

        urls = [f"http://replica-{i:03d}:8000" for i in range(args.replicas)]
        slow = {0: args.straggler} if scenario == "straggler" else {}
        self.replicas = {u: Replica(self, i, u, slow.get(i, 1.0)) for i, u in enumerate(urls)}
        self.bad_url = urls[0]

        def router(name: str) -> ReplicaRouter:
            return ReplicaRouter(urls, policy=policy, probe_interval_s=self.config.probe_interval_s,
                                 rng=random.Random(f"{args.seed}/{name}"), clock=self.clock)

        if routers == "shared":
            shared = router("router")
            self.workers = [Worker(i, shared) for i in range(args.workers)]
        else:
            self.workers = [Worker(i, router(f"router/{i}")) for i in range(args.workers)]

        self.latencies: list[float] = []
        self.items_done = self.requests_done = 0
        self.attempts = self.bad_attempts = 0
        self.failed: dict[str, int] = {}
        self.bad_failed = self.retries = self.lost = self.probes = self.bad_probes = 0

    def clock(self) -> float:
        return self.now

    def at(self, when: float, fn: Callable, arg: object) -> None:
        heapq.heappush(self._events, (when, next(self._seq), fn, arg))

    def run(self, progress: Callable[[float], None] | None = None) -> Result:
        started = time.perf_counter()
        for w in self.workers:
            self.at(self._generate_time() * self.rng.random(), self.start_call, w)
        if self.scenario in ("dead", "stuck"):
            self.at(self.fail_at, self.replicas[self.bad_url].turn, DEAD if self.scenario == "dead" else STUCK)
        events, end, tick = self._events, self.seconds, 0
        while events and events[0][0] <= end:
            when, _, fn, arg = heapq.heappop(events)
            self.now = when
            fn(arg)
            tick += 1
            if progress and not tick % 100_000:
                progress(when)
        window = self.seconds - self.warmup
        lat = sorted(self.latencies)
        healthy = [r for r in self.replicas.values() if r.url != self.bad_url]
        return Result(self.scenario, self.policy, self.routers_mode,
                      self.items_done / window, self.requests_done / window,
                      _quantile(lat, 0.5), _quantile(lat, 0.99), lat[-1] if lat else float("nan"),
                      self.bad_attempts / max(1, self.attempts), dict(self.failed), self.bad_failed,
                      self.retries, self.lost, self.probes, self.bad_probes, statistics.fmean([r.busy_s for r in healthy] or [0.0]) / window,
                      time.perf_counter() - started)

    def _generate_time(self) -> float:
        return self.rng.lognormvariate(self.gen_mu, 0.5)

    # -- the client: AsyncRewardClient._request, one event at a time ----------------------------

    def start_call(self, w: Worker) -> None:
        w.started, w.attempt, w.avoid = self.now, 0, None
        self.try_route(w)

    def try_route(self, w: Worker) -> None:
        deadline = w.started + self.deadline_s
        remaining = deadline - self.now
        if remaining <= 0:
            return self.give_up(w)
        route = w.router.route(avoid=w.avoid)
        for url in route.probes:
            self.probes += 1
            self.bad_probes += url == self.bad_url
            self.at(self.now + 2 * self.half_rtt_s, self.probe_answered, (w.router, url))
        if route.url is None:
            if route.wait_until >= deadline:
                return self.give_up(w)
            return self.at(route.wait_until, self.try_route, w)
        w.attempt += 1
        replica = self.replicas[route.url]
        att = Attempt(w, route.url, replica, self.group)
        self.attempts += 1
        if route.url == self.bad_url:
            self.bad_attempts += 1
        self.at(self.now + self.half_rtt_s, replica.arrive, att)
        self.at(self.now + min(self.config.read_timeout_s, remaining), self.timed_out, att)

    def reply(self, att: Attempt, kind: int, retry_after: float | None = None) -> None:
        """A replica answers; the client hears it half a round trip later."""
        att.kind, att.retry_after = kind, retry_after
        self.at(self.now + self.half_rtt_s, self.answered, att)

    def timed_out(self, att: Attempt) -> None:
        if att.finished:
            return
        att.replica.cancel(att)
        att.kind, att.retry_after = TIMEOUT, None
        self.answered(att)

    def answered(self, att: Attempt) -> None:
        if att.finished:
            return
        att.finished = True
        w = att.worker
        outcome, retry_after = classify(att.kind, att.retry_after)
        w.router.finished(att.url, outcome, retry_after)  # AsyncRewardClient._send's finally
        if att.kind == OK:
            if self.now >= self.warmup:
                self.latencies.append(self.now - w.started)
                self.items_done += att.n
                self.requests_done += 1
            return self.at(self.now + self._generate_time(), self.start_call, w)
        name = _KIND_NAMES[att.kind]
        self.failed[name] = self.failed.get(name, 0) + 1
        self.bad_failed += att.url == self.bad_url
        if w.attempt >= self.config.max_attempts:
            return self.give_up(w)
        c = self.config
        w.avoid = att.url
        failover = w.router.has_usable(excluding=att.url)
        delay = 0.0 if failover else backoff_delay(w.attempt, c.backoff_initial_s, c.backoff_max_s,
                                                   self.client_rng if c.jitter else None)
        if delay >= w.started + self.deadline_s - self.now:
            return self.give_up(w)
        self.retries += 1
        self.at(self.now + delay, self.try_route, w)

    def give_up(self, w: Worker) -> None:
        """The call's deadline ran out (RewardServerError): counted; the worker goes on generating."""
        self.lost += 1
        self.at(self.now + self._generate_time(), self.start_call, w)

    def probe_answered(self, probe: tuple[ReplicaRouter, str]) -> None:
        router, url = probe
        router.probed(url, self.replicas[url].state == UP)


def _quantile(xs: Sequence[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# --------------------------------------------------------------------------------------------
# Measuring a real replica


def group_items(n: int, request: int) -> list[dict[str, str]]:
    """One GRPO-like group: a prompt new in every request, and n replies of 1-3 sentences."""
    topics = ["photosynthesis", "compound interest", "TCP congestion control", "black holes"]
    topic = topics[request % len(topics)]
    prompt = f"Explain {topic} to a curious high-school student in a few sentences. (request {request})"
    sentence = f"{topic.capitalize()} is easiest to see through an everyday example, where small steps add up. "
    return [{"prompt": prompt, "response": f"Reply {i}: " + sentence * (1 + i % 3)} for i in range(n)]


def measure(url: str, plan: Mapping[int, int]) -> dict[int, tuple[float, ...]]:
    """Seconds per /score request of each size, one request at a time, after a warm-up of each."""
    samples: dict[int, tuple[float, ...]] = {}
    request = 0
    with httpx.Client(base_url=url.rstrip("/"), timeout=600) as client:
        client.get("/health/ready").raise_for_status()
        for n, repeats in plan.items():
            request += 1
            client.post("/score", json={"items": group_items(n, request)}).raise_for_status()
            times = []
            for _ in range(repeats):
                request += 1
                items = group_items(n, request)
                started = time.perf_counter()
                client.post("/score", json={"items": items}).raise_for_status()
                times.append(time.perf_counter() - started)
            samples[n] = tuple(round(t, 4) for t in times)
            print(f"{n:3d} items: median {statistics.median(times):.3f} s over {repeats} requests", file=sys.stderr)
    return samples


def parse_plan(text: str) -> dict[int, int]:
    """``1:10,8:30`` -> {1: 10, 8: 30} (items per request: requests)."""
    plan = {}
    for part in text.split(","):
        size, _, repeats = part.partition(":")
        plan[int(size)] = int(repeats or 10)
    return plan


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--workers", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated seconds per run")
    parser.add_argument("--warmup", type=float, default=20.0, help="simulated seconds left out of the figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group", type=int, default=8, help="items per request (a GRPO group)")
    parser.add_argument("--generate-s", type=float, default=None,
                        help="mean generation time between a worker's requests (default: what loads the "
                             "healthy fleet to about 70%% of its capacity)")
    parser.add_argument("--speedup", type=float, default=DEFAULT_SPEEDUP,
                        help=f"GPU replica / measured CPU replica speed (default {DEFAULT_SPEEDUP:g}, an assumption)")
    parser.add_argument("--noise-scale", type=float, default=1.0,
                        help="1: the measured spread of pass times; 0: none (every pass takes a + b*n)")
    parser.add_argument("--straggler", type=float, default=5.0, help="the straggler's slowdown")
    parser.add_argument("--fail-at", type=float, default=60.0, help="simulated second replica 0 dies or sticks")
    parser.add_argument("--max-batch-items", type=int, default=64, help="items per pass (the server's default)")
    parser.add_argument("--max-queue-items", type=int, default=2048, help="admitted items before 429 (the server's)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="an idle batcher's wait (the server's)")
    parser.add_argument("--rtt-ms", type=float, default=1.0, help="network round trip")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="a reward call's deadline (drlaif-train's)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--policies", default=",".join(ROUTING_POLICIES),
                        help=f"comma-separated, of {', '.join(ROUTING_POLICIES)}")
    parser.add_argument("--routers", default=",".join(ROUTER_MODES), help=f"comma-separated, of {', '.join(ROUTER_MODES)}")
    parser.add_argument("--measure", metavar="URL", help="measure a running drlaif-server's service times and exit")
    parser.add_argument("--measure-sizes", default="1:10,8:30,32:5", help="items per request:requests, ...")
    args = parser.parse_args()

    if args.measure:
        samples = measure(args.measure, parse_plan(args.measure_sizes))
        print("SERVICE_TIMES_S: dict[int, tuple[float, ...]] = {")
        for n, times in samples.items():
            print(f"    {n}: {times!r},")
        print("}")
        model = ServiceModel.fit(samples)
        print(f"# fit: a = {model.a:.4f} s, b = {model.b:.4f} s/item", file=sys.stderr)
        return

    model = ServiceModel.fit(SERVICE_TIMES_S)
    full_pass = (model.a + model.b * args.max_batch_items) / args.speedup
    capacity = args.replicas * args.max_batch_items / full_pass
    if args.generate_s is None:
        # A worker's cycle is its generation plus about one pass; 70% of capacity in items/s.
        args.generate_s = args.workers * args.group / (0.7 * capacity)
    noise = sorted(1 + args.noise_scale * (x - 1) for x in model.noise)
    print(f"service model: a pass of n items takes ({model.a * 1000:.1f} ms + n x {model.b * 1000:.1f} ms) "
          f"/ {args.speedup:g} x noise (measured, scaled by {args.noise_scale:g}: p10 {_quantile(noise, 0.1):.2f}, "
          f"p90 {_quantile(noise, 0.9):.2f})")
    print(f"fleet: {args.replicas} replicas, at most {capacity:,.0f} items/s in full passes of "
          f"{args.max_batch_items}; {args.workers} workers, {args.group} items per request, generating "
          f"{args.generate_s:.2f} s on average between requests; {args.seconds:g} s simulated per run "
          f"(figures after {args.warmup:g} s), replica 0 bad from {args.fail_at:g} s", flush=True)

    chosen = {}
    for name, allowed in (("scenarios", SCENARIOS), ("routers", ROUTER_MODES), ("policies", ROUTING_POLICIES)):
        chosen[name] = getattr(args, name).split(",")
        if unknown := set(chosen[name]) - set(allowed):
            parser.error(f"--{name}: {', '.join(sorted(unknown))} not one of {', '.join(allowed)}")
    results = []
    for scenario in chosen["scenarios"]:
        for routers in chosen["routers"]:
            for policy in chosen["policies"]:
                print(f"running {scenario}, {policy}, {routers} routers ...", file=sys.stderr, flush=True)
                sim = Simulation(args, model, scenario, policy, routers)
                result = sim.run(lambda t: print(f"  at {t:.0f} s of {args.seconds:g} simulated", file=sys.stderr,
                                                 flush=True))
                results.append(result)
                print(f"  done in {result.wall_s:.1f} s: {result.items_per_s:,.0f} items/s", file=sys.stderr,
                      flush=True)
    print_table(results)


def print_table(results: Sequence[Result]) -> None:
    print()
    print("| scenario | policy | routers | items/s | requests/s | p50 | p99 | max | to replica 0 | failed attempts "
          "(at replica 0) | retries | lost | probes (of replica 0) | busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.scenario} | {r.policy} | {r.routers} | {r.items_per_s:,.0f} | {r.requests_per_s:,.1f} "
              f"| {_ms(r.p50_s)} | {_ms(r.p99_s)} | {_ms(r.max_s)} | {r.bad_share:.1%} | {r.failed_total:,} ({r.bad_failed:,}) "
              f"| {r.retries:,} | {r.lost} | {r.probes:,} ({r.bad_probes:,}) | {r.utilisation:.0%} |")
    kinds = sorted({k for r in results for k in r.failed})
    if kinds:
        print("\nfailed attempts by kind:")
        for r in results:
            if r.failed:
                print(f"  {r.scenario}, {r.policy}, {r.routers}: "
                      + ", ".join(f"{r.failed[k]:,} {k}" for k in kinds if k in r.failed))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


if __name__ == "__main__":
    main()
