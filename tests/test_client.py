"""The reward client (drlaif/client.py) over real HTTP.

Two kinds of server:
- the real drlaif-server on the embedded labeler (session fixture `server`): the client's rewards
  are the server's, chunked or not, sync or async;
- `FaultServer`, a small FastAPI app on 127.0.0.1 that speaks /score, /info and /health/ready
  with a deterministic fake reward and injects scripted faults (error statuses, Retry-After,
  stalls, malformed answers, not ready), to check retries, backoff, deadlines, routing over
  several servers, failover and validation.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from support import (
    HELD_OUT,
    FaultServer,
    Handler,
    fake_group_reward,
    fake_result,
    fake_reward,
    hold_until,
    mangle,
    raw,
    stall,
    status,
)

from drlaif.client import (
    AsyncRewardClient,
    RewardClient,
    RewardClientConfig,
    RewardServerError,
    backoff_delay,
    parse_retry_after,
)
from drlaif.protocol import ItemAnswer
from drlaif.server_process import free_port


@pytest.fixture
def fault():
    with FaultServer() as srv:
        yield srv


PROMPTS = [f"Question number {i}?" for i in range(8)]
RESPONSES = [f"Answer {i}: " + "word " * i for i in range(8)]
EXPECTED = [fake_reward(p, r) for p, r in zip(PROMPTS, RESPONSES)]


def fast(urls, **kw) -> RewardClientConfig:
    """Config with short backoffs, probe intervals and deadlines so the fault tests take fractions of a second."""
    base = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2, "probe_interval_s": 0.02, "deadline_s": 10.0,
            "connect_timeout_s": 1.0, "read_timeout_s": 5.0, "api_key_env": "DRLAIF_TEST_NO_SUCH_KEY"}
    base.update(kw)
    return RewardClientConfig(urls=urls if isinstance(urls, list) else [urls], **base)


def dead_url() -> str:
    """A loopback URL with nothing listening: connection refused."""
    return f"http://127.0.0.1:{free_port()}"


# ------------------------------------------------------------------------------------------------
# Pure pieces
# ------------------------------------------------------------------------------------------------

def test_backoff_grows_exponentially_up_to_the_cap_with_full_jitter():
    caps = [backoff_delay(k, 0.5, 15.0) for k in range(1, 8)]
    assert caps == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert backoff_delay(10_000, 0.5, 15.0) == 15.0  # no float overflow for absurd attempt counts
    rng = random.Random(0)
    for k, cap in enumerate(caps, start=1):
        draws = [backoff_delay(k, 0.5, 15.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap  # spread over the whole range


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_10s = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.0 <= parse_retry_after(in_10s) <= 10.0


def test_config_normalises_and_validates_urls():
    assert RewardClientConfig(urls="http://a:1/").urls == ["http://a:1"]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http://"):
        RewardClientConfig(urls=["localhost:8000"])
    with pytest.raises(ValueError, match="at least one"):
        RewardClientConfig(urls=[])
    with pytest.raises(ValueError, match="deadline_s"):
        RewardClientConfig(urls=["http://a"], deadline_s=0)


def test_bad_input_is_rejected_before_any_request(fault):
    with RewardClient(fast(fault.url)) as client:
        with pytest.raises(ValueError, match="2 prompts but 1 responses"):
            client.score(["a", "b"], ["x"])
        with pytest.raises(TypeError, match=r"responses\[0\]"):
            client.score(["a"], [None])  # type: ignore[list-item]
        with pytest.raises(TypeError, match=r"prompts\[1\]"):
            client.score(["a", [{"role": "user"}]], ["x", "y"])  # type: ignore[list-item]
        assert client.score([], []) == []
    assert fault.seen == []


# ------------------------------------------------------------------------------------------------
# Fault injection on a real local HTTP server
# ------------------------------------------------------------------------------------------------

def test_retries_502_503_504_then_returns_the_servers_rewards(fault, caplog):
    caplog.set_level(logging.WARNING, logger="drlaif.client")
    fault.plan.extend([status(503), status(502), status(504)])
    with RewardClient(fast(fault.url)) as client:
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
    assert len(fault.scores()) == 4
    warnings = [r.getMessage() for r in caplog.records if r.name == "drlaif.client"]
    assert [re.search(r"HTTP (\d+)", w).group(1) for w in warnings] == ["503", "502", "504"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "drlaif.client")


def test_retries_after_connection_refused_until_the_server_comes_up(caplog):
    caplog.set_level(logging.WARNING, logger="drlaif.client")
    port = free_port()
    late = FaultServer(port=port)
    timer = threading.Timer(0.5, late.start)
    timer.start()
    try:
        with RewardClient(fast(f"http://127.0.0.1:{port}", max_items_per_request=8)) as client:
            t0 = time.monotonic()
            assert client.score(PROMPTS, RESPONSES) == EXPECTED
            assert time.monotonic() - t0 >= 0.4
    finally:
        timer.join()
        late.stop()
    assert any("ConnectError" in r.getMessage() for r in caplog.records)


def test_read_timeout_is_retried(fault):
    # The stall outlasts the 10-s deadline: only a read timeout and a retry can succeed.
    fault.plan.append(stall(60.0))
    with RewardClient(fast(fault.url, read_timeout_s=0.3)) as client:
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
    assert len(fault.scores()) == 2


def test_429_waits_at_least_retry_after(fault):
    fault.plan.append(status(429, "the scoring queue is full", retry_after="1"))
    with RewardClient(fast(fault.url, backoff_initial_s=0.01)) as client:
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
    first, second = fault.scores()
    assert second.t - first.t >= 1.0


def test_backoff_between_retries_doubles_up_to_the_cap(fault, caplog):
    caplog.set_level(logging.WARNING, logger="drlaif.client")
    fault.plan.extend([status(503)] * 5)
    config = fast(fault.url, backoff_initial_s=0.05, backoff_max_s=0.25, jitter=False)
    with RewardClient(config) as client:
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
    expected = [0.05, 0.1, 0.2, 0.25, 0.25]
    logged = [float(re.search(r"in ([\d.]+) s", r.getMessage()).group(1))
              for r in caplog.records if r.name == "drlaif.client"]
    assert logged == expected
    # And the server really saw the requests that far apart.
    times = [s.t for s in fault.scores()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 5
    for gap, delay in zip(gaps, expected):
        assert gap >= delay - 0.01


def test_retries_counts_exactly_the_retries_made(fault, caplog):
    caplog.set_level(logging.WARNING, logger="drlaif.client")

    def retry_warnings() -> int:
        return sum(" retry " in r.getMessage() for r in caplog.records if r.name == "drlaif.client")

    with RewardClient(fast(fault.url, read_timeout_s=0.3)) as client:
        assert client.retries == 0
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
        assert client.retries == 0  # first attempts are not retries
        # Three retryable faults of different kinds: a status, backpressure, a read timeout.
        fault.plan.extend([status(503), status(429, "busy", retry_after="0"), stall(3.0)])
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
        assert client.retries == 3
        fault.plan.append(status(422, "bad item"))  # refused for good: raised, not retried
        with pytest.raises(RewardServerError, match="422"):
            client.score(PROMPTS, RESPONSES)
        assert client.retries == 3
    assert client.retries == 3 and retry_warnings() == 3  # still readable after close; log agrees
    assert len(fault.scores()) == 1 + 4 + 1

    # The async client, a connection error, and a request that gives up: max_attempts=3 is
    # 3 attempts, so 2 retries, whichever URL each went to.
    async def main() -> int:
        config = fast([dead_url(), fault.url], max_attempts=3)
        async with AsyncRewardClient(config) as client:
            assert await client.score(PROMPTS, RESPONSES) == EXPECTED  # GET /info refused once first
            assert client.retries == 1
            fault.default = status(502)
            with pytest.raises(RewardServerError, match="after 3 attempts"):
                await client.score(PROMPTS, RESPONSES)
            return client.retries

    assert asyncio.run(main()) == 1 + 2
    assert retry_warnings() == 3 + 3


def test_deadline_exceeded_raises_within_about_the_deadline(fault):
    fault.default = status(503, "the labeler is loading", retry_after="0")
    with RewardClient(fast(fault.url, deadline_s=1.0)) as client:
        t0 = time.monotonic()
        with pytest.raises(RewardServerError) as info:
            client.score(PROMPTS, RESPONSES)
        elapsed = time.monotonic() - t0
    # Stopped by the 1-s deadline, not by max_attempts (1000 attempts take minutes).
    assert 0.5 <= elapsed < 10
    message = str(info.value)
    assert "deadline" in message and fault.url in message and "HTTP 503" in message
    assert "the labeler is loading" in message
    assert 1000 > info.value.attempts == len(fault.seen) > 2  # /info counts as an attempt too


def test_deadline_bounds_a_server_that_never_answers(fault):
    fault.default = stall(60.0)
    with RewardClient(fast(fault.url, deadline_s=1.0, read_timeout_s=120.0)) as client:
        t0 = time.monotonic()
        with pytest.raises(RewardServerError, match="deadline"):
            client.score(PROMPTS, RESPONSES)
        assert time.monotonic() - t0 < 30  # the 1-s deadline, not the 60-s stall or read timeout


def test_retry_after_beyond_the_deadline_fails_fast(fault):
    fault.plan.append(status(429, "busy", retry_after="600"))
    with RewardClient(fast(fault.url, deadline_s=60.0)) as client:
        t0 = time.monotonic()
        with pytest.raises(RewardServerError, match="retry after the deadline"):
            client.score(PROMPTS, RESPONSES)
        assert time.monotonic() - t0 < 30  # gave up at once, not at the 60-s deadline
    assert len(fault.scores()) == 1


def test_max_attempts_is_respected(fault):
    fault.default = status(502)
    with (RewardClient(fast(fault.url, max_attempts=3)) as client,
          pytest.raises(RewardServerError, match="after 3 attempts") as info):
        client.score(PROMPTS, RESPONSES)
    assert len(fault.scores()) == 3 and info.value.status == 502


def test_422_raises_at_once_with_the_servers_message(fault, caplog):
    caplog.set_level(logging.WARNING, logger="drlaif.client")
    fault.plan.append(status(422, "items.0.response: Field required"))
    # Limits and mode given: no GET /info, the one attempt is the /score request.
    with (RewardClient(fast(fault.url, max_items_per_request=8, reward_mode="direct")) as client,
          pytest.raises(RewardServerError) as info):
        client.score(PROMPTS, RESPONSES)
    assert "422" in str(info.value) and "items.0.response: Field required" in str(info.value)
    assert info.value.status == 422 and info.value.attempts == 1
    assert len(fault.scores()) == 1
    assert not [r for r in caplog.records if r.name == "drlaif.client"]  # nothing was retried


def test_first_url_dead_all_requests_succeed_via_the_second(fault, caplog):
    caplog.set_level(logging.INFO, logger="drlaif.client")
    dead = dead_url()
    # Limits and mode given: no GET /info, only /score requests are counted.
    config = fast([dead, fault.url], max_items_per_request=2, reward_mode="direct")
    with RewardClient(config) as client:
        for _ in range(5):
            assert client.score(PROMPTS, RESPONSES) == EXPECTED
        client.log_replica_stats()
        stats = client.replica_stats()
    assert len(fault.scores()) == 5 * 4
    # Only requests routed before the first refusal came back went to the dead URL; its probes
    # kept failing, so nothing else did.
    assert 1 <= stats[dead].requests == stats[dead].failures <= 2
    assert (stats[fault.url].requests, stats[fault.url].failures) == (5 * 4, 0)
    assert all(s.in_flight == 0 for s in stats.values())
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reward servers:")]
    dead_line = f"{dead}: {stats[dead].requests} requests, {stats[dead].failures} failed"
    assert logged == [f"reward servers: {dead_line}; {fault.url}: 20 requests, 0 failed"]


def test_failing_url_gets_no_traffic_until_its_probe_answers_200(fault):
    with FaultServer() as broken:
        broken.plan.append(status(503, "the labeler crashed"))
        broken.ready_status = 503
        with RewardClient(fast([broken.url, fault.url], probe_interval_s=0.1)) as client:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                assert client.score(PROMPTS, RESPONSES) == EXPECTED
            # Failed once, then probed (at most every 0.1 s) and kept out while not ready.
            assert len(broken.scores()) == 1
            assert 3 <= len(broken.probes) <= 1.0 / 0.1 + 1
            # Seen at the server, so loopback jitter blurs the client's 0.1-s spacing a little.
            assert all(b - a >= 0.05 for a, b in itertools.pairwise(broken.probes))
            broken.ready_status = 200
            time.sleep(0.3)
            for _ in range(4):
                assert client.score(PROMPTS, RESPONSES) == EXPECTED
            assert len(broken.scores()) > 1  # back in rotation
            stats = client.replica_stats()
        assert (stats[broken.url].requests, stats[broken.url].failures) == (len(broken.seen), 1)


def test_failed_url_is_avoided_for_a_whole_probe_interval(fault):
    with FaultServer() as broken:
        broken.default = status(503)  # ready by its probe, yet every /score fails
        with RewardClient(fast([broken.url, fault.url], probe_interval_s=30)) as client:
            for _ in range(10):
                assert client.score(PROMPTS, RESPONSES) == EXPECTED
        assert len(broken.scores()) == 1 and broken.probes == []
    assert len(fault.scores()) == 10


def test_every_server_down_waits_for_probes_then_raises_at_the_deadline():
    urls = [dead_url(), dead_url()]
    with RewardClient(fast(urls, deadline_s=1.0, probe_interval_s=0.1)) as client:
        t0 = time.monotonic()
        with pytest.raises(RewardServerError, match="deadline") as info:
            client.score(PROMPTS, RESPONSES)
        assert 0.8 <= time.monotonic() - t0 < 5  # it gives up once the next probe falls past the deadline
        stats = client.replica_stats()
    assert "ConnectError" in str(info.value)
    # Probes, not requests, while both were down: each URL got one request or a few.
    assert all(1 <= s.requests == s.failures <= 4 for s in stats.values()), stats


def test_a_request_waiting_on_dead_servers_goes_to_the_first_that_comes_up():
    port = free_port()
    late = FaultServer(port=port)
    timer = threading.Timer(0.5, late.start)
    timer.start()
    try:
        with RewardClient(fast([dead_url(), f"http://127.0.0.1:{port}"], max_items_per_request=8)) as client:
            assert client.score(PROMPTS, RESPONSES) == EXPECTED
    finally:
        timer.join()
        late.stop()
    assert len(late.probes) >= 1 and len(late.scores()) == 1


@pytest.mark.parametrize("routing", ["least-loaded", "round-robin"])
def test_requests_spread_over_healthy_urls(fault, routing):
    with FaultServer() as other:
        with RewardClient(fast([fault.url, other.url], max_items_per_request=1, routing=routing)) as client:
            assert client.score(PROMPTS, RESPONSES) == EXPECTED
        if routing == "round-robin":
            assert len(fault.scores()) == len(other.scores()) == 4
        else:  # the first four leave together and alternate; the rest go where fewer are in flight
            assert len(fault.scores()) >= 2 and len(other.scores()) >= 2


@pytest.mark.parametrize("routing", ["least-loaded", "round-robin"])
def test_least_loaded_sends_less_to_a_slow_url(fault, routing):
    prompts, responses = PROMPTS * 2, RESPONSES * 2
    with FaultServer() as slow:
        slow.default = stall(0.2)
        config = fast([slow.url, fault.url], max_items_per_request=1, max_concurrency=4, routing=routing)
        with RewardClient(config) as client:
            assert client.score(prompts, responses) == EXPECTED * 2
        if routing == "round-robin":
            assert len(slow.scores()) == len(fault.scores()) == 8
        else:  # a request there stays in flight 0.2 s; the fast one answers in milliseconds
            assert len(slow.scores()) <= 4 and len(fault.scores()) >= 12


def _principle(**fields) -> dict:
    """A valid principle read of a constitution's /score result, ``fields`` overriding."""
    keys = ("reward", "score", "distribution", "label_mass", "label_entropy")
    return {k: v for k, v in fake_result(0.5).model_dump().items() if k in keys} | fields


def set_field(i: int, **fields: object) -> Handler:
    """The correct answer with these fields of result ``i`` replaced."""
    return mangle(lambda a: a["results"][i].update(fields))


def drop_field(i: int, name: str) -> Handler:
    """The correct answer without this field of result ``i``."""
    return mangle(lambda a: a["results"][i].pop(name))


NAN_ANSWER = ('{"results": [' + ",".join([json.dumps({**fake_result(0.0).model_dump(), "reward": "@"})] * 8)
              + '], "rubric": "general", "scale": {"min": 1, "max": 10}, "model": "m"}').replace('"@"', "NaN")


@pytest.mark.parametrize("handler, needle", [
    (mangle(lambda a: a["results"].pop()), "7 results for 8 items"),
    (mangle(lambda a: a["results"].append(a["results"][0])), "9 results for 8 items"),
    (set_field(3, reward=math.nan), "results.3.reward: Input should be a finite number"),
    (raw(NAN_ANSWER), "results.0.reward: Input should be a finite number"),  # NaN as JSON text
    (set_field(0, reward=math.inf), "results.0.reward: Input should be a finite number"),
    (set_field(0, reward=1.5), "results.0.reward: Input should be less than or equal to 1"),
    (set_field(0, reward=-1.01), "results.0.reward: Input should be greater than or equal to -1"),
    (set_field(0, reward="0.5"), "results.0.reward: Input should be a valid number (got '0.5')"),
    (set_field(0, reward=True), "results.0.reward: Input should be a valid number (got 'True')"),
    (drop_field(0, "reward"), "results.0.reward: Field required"),
    # The other fields may be absent (test_an_answer_without_diagnostics_is_accepted); when there, they are checked.
    (set_field(0, reward_as_written=2.0), "results.0.reward_as_written: Input should be less than or equal to 1"),
    (set_field(0, label_mass=math.inf), "results.0.label_mass: Input should be a finite number"),
    (set_field(0, label_mass=1.5), "results.0.label_mass: Input should be less than or equal to 1"),
    (set_field(0, label_entropy=-0.1), "results.0.label_entropy: Input should be greater than or equal to 0"),
    (set_field(0, distribution=[]), "results.0.distribution: List should have at least 1 item"),
    (set_field(0, distribution=[0.5, -0.1]), "results.0.distribution.1: Input should be greater than or equal"),
    (set_field(0, distribution=[0.5, math.nan]), "results.0.distribution.1: Input should be a finite number"),
    (set_field(0, distribution="flat"), "results.0.distribution: Input should be a valid list"),
    (set_field(0, judge_spans=True), "results.0.judge_spans: Input should be a valid integer"),
    (set_field(0, input_tokens=-1), "results.0.input_tokens: Input should be greater than or equal to 0"),
    (set_field(0, principles=[0.5]), "results.0.principles: Input should be a valid dictionary"),
    (set_field(0, principles={"kind": _principle(reward=1.5)}),
     "results.0.principles.kind.reward: Input should be less than or equal to 1"),
    (set_field(0, principles={"kind": _principle(label_mass=math.nan)}),
     "results.0.principles.kind.label_mass: Input should be a finite number"),
    (set_field(0, principles={"kind": {"p_a": 0.5}}), "results.0.principles.kind.reward: Field required"),
    (mangle(lambda a: a["results"].__setitem__(0, 0.5)), "results.0: Input should be a valid dictionary"),
    (mangle(lambda a: a.pop("results")), "results: Field required"),
    (mangle(lambda a: a.update(rubric="harmless")), "rubric 'harmless'"),
    (raw("[]"), "the body: Input should be a valid dictionary"),
    (raw("<html>Bad gateway</html>"), "not JSON"),
])
def test_invalid_answers_raise_and_are_never_substituted(fault, handler, needle):
    fault.plan.append(handler)
    with RewardClient(fast(fault.url)) as client, pytest.raises(RewardServerError) as info:
        client.score(PROMPTS, RESPONSES, rubric="general")
    assert needle in str(info.value)
    assert info.value.urls == [fault.url]
    if "returned an invalid answer" in str(info.value):
        assert info.value.status == 200
    assert len(fault.scores()) == 1  # a wrong answer is not a transient fault: no retry


@pytest.mark.parametrize("handler", [drop_field(2, "reward_robust"), drop_field(0, "label_entropy"),
                                     mangle(lambda a: a.pop("scale")), mangle(lambda a: a.pop("model"))])
def test_an_answer_without_diagnostics_is_accepted(fault, handler):
    """A server other than drlaif's may send less than every field (see test_own_reward_server.py)."""
    fault.plan.append(handler)
    with RewardClient(fast(fault.url)) as client:
        assert client.score(PROMPTS, RESPONSES, rubric="general") == EXPECTED


def test_bearer_token_is_read_from_the_env_var(fault, monkeypatch):
    monkeypatch.setenv("DRLAIF_TEST_KEY", "s3cret-token")
    with RewardClient(fast(fault.url, api_key_env="DRLAIF_TEST_KEY")) as client:
        assert client.score(PROMPTS[:2], RESPONSES[:2]) == EXPECTED[:2]
    assert [s.path for s in fault.seen] == ["/info", "/score"]
    assert all(s.authorization == "Bearer s3cret-token" for s in fault.seen)
    monkeypatch.delenv("DRLAIF_TEST_KEY")
    with RewardClient(fast(fault.url, api_key_env="DRLAIF_TEST_KEY")) as client:
        client.score(PROMPTS[:2], RESPONSES[:2])
    assert fault.seen[-1].authorization is None


def test_chunks_follow_info_limit_and_results_keep_input_order():
    with FaultServer(max_items=3) as srv:
        # The first chunk is the slowest, so chunks finish out of order.
        srv.plan.extend([stall(0.3), stall(0.1)])
        with RewardClient(fast(srv.url, max_concurrency=3)) as client:
            items = client.score_items(PROMPTS, RESPONSES)
            assert [i.reward for i in items] == EXPECTED
            assert client.score(PROMPTS, RESPONSES) == EXPECTED
        assert items[0].model_dump() == fake_result(EXPECTED[0]).model_dump() and isinstance(items[0], ItemAnswer)
        assert [s.path for s in srv.seen].count("/info") == 1  # read once, then remembered
        assert sorted(s.n_items for s in srv.scores()) == [2, 2, 3, 3, 3, 3]


def test_without_info_the_client_falls_back_to_64_items():
    with FaultServer(info_status=404) as srv:
        prompts, responses = PROMPTS * 9, RESPONSES * 9  # 72 items
        with RewardClient(fast(srv.url)) as client:
            assert client.score(prompts, responses) == EXPECTED * 9
        assert sorted(s.n_items for s in srv.scores()) == [8, 64]


def test_concurrency_is_bounded(fault):
    # Each request is held until a second is in flight (or it is the last): two always overlap,
    # however slow the machine, and an unbounded client would have all eight in flight.
    fault.default = hold_until(lambda: fault.in_flight >= 2 or len(fault.scores()) == len(PROMPTS))
    with RewardClient(fast(fault.url, max_items_per_request=1, max_concurrency=2)) as client:
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
    assert fault.max_in_flight == 2


def test_one_failing_chunk_fails_the_call_and_stops_the_others(fault):
    fault.plan.extend([status(401, "missing or invalid API key")] + [stall(60.0)] * 7)
    with RewardClient(fast(fault.url, max_items_per_request=1, max_concurrency=8)) as client:
        t0 = time.monotonic()
        with pytest.raises(RewardServerError, match="401: missing or invalid API key"):
            client.score(PROMPTS, RESPONSES)
        assert time.monotonic() - t0 < 30  # did not wait for the siblings stalled for 60 s


def test_async_client_on_several_event_loops(fault):
    client = AsyncRewardClient(fast(fault.url, max_items_per_request=4))

    async def run() -> list[float]:
        return await client.score(PROMPTS, RESPONSES)

    # Two asyncio.run calls: two loops, each gets its own pool; the first loop is closed by then.
    assert asyncio.run(run()) == EXPECTED
    assert asyncio.run(run()) == EXPECTED

    # A third loop in another thread, running while this one is used too.
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        assert asyncio.run_coroutine_threadsafe(run(), other).result(10) == EXPECTED

        async def close_here() -> None:
            assert await client.score(PROMPTS, RESPONSES) == EXPECTED
            await client.aclose()  # closes this loop's pool and, on its own loop, the other's

        asyncio.run(close_here())
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(5)
        other.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(run())


def test_sync_client_works_inside_a_running_event_loop(fault):
    async def notebook_cell() -> list[float]:
        with RewardClient(fast(fault.url)) as client:
            return client.score(PROMPTS, RESPONSES)

    assert asyncio.run(notebook_cell()) == EXPECTED


def test_submit_score_overlaps_with_other_work(fault):
    released = threading.Event()
    fault.default = hold_until(released.is_set)
    with RewardClient(fast(fault.url)) as client:
        future = client.submit_score(PROMPTS, RESPONSES)
        assert not future.done()  # returned while the server is still working
        released.set()
        assert future.result(10) == EXPECTED
    with pytest.raises(RuntimeError, match="closed"):
        client.score(PROMPTS, RESPONSES)


# ------------------------------------------------------------------------------------------------
# The reward mode: the config's, or the rubric's group_pairwise in GET /info
# ------------------------------------------------------------------------------------------------

GROUP_PROMPTS = ["Question a?", "Question b?", "Question a?", "Question b?", "Question c?", "Question c?"]
GROUP_RESPONSES = [f"Answer {i}" for i in range(6)]


@pytest.mark.parametrize("mode, rubric_in_groups, sent", [
    (None, True, True),               # the rubric's choice: in groups
    (None, False, None),              # the rubric's choice: directly, and nothing said about it
    ("direct", True, False),          # an explicit direct overrides a rubric that judges in groups
    ("group-pairwise", False, True),  # and an explicit group-pairwise one that does not
])
def test_the_reward_mode_is_the_configs_or_else_the_rubrics(mode, rubric_in_groups, sent):
    with FaultServer(max_items=3) as srv:
        srv.rubrics = [{"name": "general", "group_pairwise": rubric_in_groups}]
        with RewardClient(fast(srv.url, reward_mode=mode)) as client:
            items = client.score_items(GROUP_PROMPTS, GROUP_RESPONSES)
            assert client.reward_mode() == ("group-pairwise" if sent else "direct")
        reward = fake_group_reward if sent else fake_reward
        assert [i.reward for i in items] == [reward(p, r) for p, r in zip(GROUP_PROMPTS, GROUP_RESPONSES)]
        assert {b.get("group_pairwise", "absent") for b in srv.bodies} == {"absent" if sent is None else sent}
        requests = sorted([i["prompt"] for i in b["items"]] for b in srv.bodies)
        if sent:  # whole prompt groups in each request, each result its group's judgement
            assert requests == [["Question a?"] * 2, ["Question b?"] * 2, ["Question c?"] * 2]
            assert all(i.group is not None for i in items)
        else:  # runs of the server's limit, which split groups: fine when each response is read alone
            assert sorted(map(len, requests)) == [3, 3]
        assert [s.path for s in srv.seen].count("/info") == 1  # read once, then remembered


def test_the_rubrics_choice_is_looked_up_for_each_calls_rubric():
    with FaultServer() as srv:
        srv.rubrics = [{"name": "general", "group_pairwise": False}, {"name": "groups", "group_pairwise": True},
                       {"name": "older"}]  # a /info that does not say: direct
        with RewardClient(fast(srv.url)) as client:
            for rubric in (None, "groups", "older", "unlisted"):
                client.score(GROUP_PROMPTS, GROUP_RESPONSES, rubric=rubric)
            assert [client.reward_mode(r) for r in (None, "groups", "older")] == ["direct", "group-pairwise", "direct"]
        assert [b.get("group_pairwise") for b in srv.bodies] == [None, True, None, None]
        assert [s.path for s in srv.seen].count("/info") == 1
    with pytest.raises(ValueError, match=r"'groups' is not one of direct, group-pairwise, or None"):
        RewardClientConfig(urls=["http://127.0.0.1:1"], reward_mode="groups")


# ------------------------------------------------------------------------------------------------
# The real drlaif-server on the embedded labeler
# ------------------------------------------------------------------------------------------------

REAL_PROMPTS = [it["prompt"] for it in HELD_OUT]
REAL_RESPONSES = [it["response"] for it in HELD_OUT]


@pytest.fixture(scope="module")
def direct_results(server) -> list[dict]:
    """/score's own answer for HELD_OUT in one request, without the client."""
    r = httpx.post(f"{server.url}/score", json={"items": HELD_OUT}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _assert_same(items: list[ItemAnswer], direct: list[dict]) -> None:
    assert len(items) == len(direct)
    for got, want in zip(items, direct):
        # Different batch composition (padding) moves float32 results by ~1e-6.
        assert got.reward == pytest.approx(want["reward"], abs=1e-4)
        assert got.score == pytest.approx(want["score"], abs=1e-4)
        assert got.label_mass == pytest.approx(want["label_mass"], abs=1e-4)
        assert got.distribution == pytest.approx(want["distribution"], abs=1e-4)
        assert got.label_entropy == pytest.approx(want["label_entropy"], abs=1e-4)
        assert (got.reward_as_written, got.reward_robust) == pytest.approx(
            (want["reward_as_written"], want["reward_robust"]), abs=1e-4)
        assert got.input_tokens == want["input_tokens"] and got.truncated == want["truncated"]


@pytest.mark.slow
def test_real_server_rewards_equal_direct_score(server, direct_results):
    async def main() -> tuple[list[ItemAnswer], dict]:
        async with AsyncRewardClient(RewardClientConfig(urls=[server.url])) as client:
            return await client.score_items(REAL_PROMPTS, REAL_RESPONSES), await client.info()

    items, info = asyncio.run(main())
    _assert_same(items, direct_results)
    assert len({round(i.reward, 3) for i in items}) > 4  # genuinely different rewards, not a constant
    for item in items:  # label_entropy is the entropy of the distribution sent with it, in nats
        assert item.label_entropy == pytest.approx(-sum(p * math.log(p) for p in item.distribution if p > 0),
                                                   abs=1e-5)
    assert info["limits"]["max_items_per_request"] == 256


@pytest.mark.slow
def test_real_server_chunked_equals_one_request(server, direct_results):
    with RewardClient(RewardClientConfig(urls=[server.url], max_items_per_request=3)) as client:
        _assert_same(client.score_items(REAL_PROMPTS, REAL_RESPONSES), direct_results)


@pytest.mark.slow
def test_real_server_sync_and_async_agree(server, direct_results):
    config = RewardClientConfig(urls=[server.url], rubric="general")
    with RewardClient(config) as client:
        sync_rewards = client.score(REAL_PROMPTS[:4], REAL_RESPONSES[:4])

    async def main() -> list[float]:
        async with AsyncRewardClient(config) as client:
            return await client.score(REAL_PROMPTS[:4], REAL_RESPONSES[:4])

    assert sync_rewards == pytest.approx(asyncio.run(main()), abs=1e-4)
    assert sync_rewards == pytest.approx([d["reward"] for d in direct_results[:4]], abs=1e-4)


@pytest.mark.slow
def test_real_server_unknown_rubric_is_a_clear_error(server):
    with (RewardClient(RewardClientConfig(urls=[server.url], rubric="nope")) as client,
          pytest.raises(RewardServerError, match="422.*unknown rubric 'nope'") as info):
        client.score(["Hi"], ["Hello"])
    assert info.value.attempts == 2  # GET /info once, then the refused POST /score, not retried


@pytest.mark.parametrize("status, body, outcome", [
    (200, {}, "ok"), (429, {}, "busy"),
    # One request's batch failed (an invalid read, its deadline): the server is up.
    (503, {"error": {"type": "backend_error", "message": "invalid read"}}, "busy"),
    (504, {"error": {"type": "deadline_exceeded", "message": "late"}}, "busy"),
    # The server cannot score at all: out of rotation until its readiness probe says ready.
    (503, {"error": {"type": "backend_stuck", "message": "holds the model"}}, "down"),
    (503, {"error": {"type": "not_ready", "message": "loading"}}, "down"),
    (502, "Bad Gateway", "down"), (500, "Internal Server Error", "down"),
    (422, {"error": {"type": "invalid_request", "message": "no"}}, "refused"),
])
def test_what_an_answer_says_about_the_server(status, body, outcome):
    from drlaif.client import _outcome

    resp = httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)
    assert _outcome(resp).value == outcome
