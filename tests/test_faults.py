"""Faults, deadlines, disconnects and shutdown, on real server processes.

The server runs tests/fixtures/faulty_server.py: drlaif-server whose real (embedded
labeler) backend is wrapped by hooks that raise, hang or delay chosen calls and count
the work that reaches it. Every test checks the status codes and that the server still
serves afterwards.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from support import FaultyServer

pytestmark = pytest.mark.slow

ITEM = {"prompt": "What is the capital of France?", "response": "Paris."}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_backend_call_that_raises_fails_only_its_batch(tmp_path):
    with FaultyServer(tmp_path) as server:
        server.set_faults(raise_calls=[server.next_call()])
        failed = server.score()
        assert failed.status_code == 503
        error = failed.json()["error"]
        assert error["type"] == "backend_error" and "injected failure" in error["message"]
        assert failed.headers["retry-after"]
        assert server.ready().status_code == 200
        assert server.score(2).status_code == 200  # the next batch is served
        assert server.alive()


def test_a_nan_read_is_a_503_and_is_not_cached(tmp_path):
    with FaultyServer(tmp_path, cache_items=1024) as server:
        server.set_faults(nan_calls=[server.next_call()])
        failed = server.score()
        assert failed.status_code == 503, failed.text
        error = failed.json()["error"]
        assert error["type"] == "backend_error" and "invalid read" in error["message"]
        assert "non-finite" in error["message"] and failed.headers["retry-after"]
        # The same request again is computed afresh (nothing of the bad read was cached) and served.
        computed = len(server.backend_calls())
        again = server.score()
        assert again.status_code == 200, again.text
        assert again.json()["results"][0]["cached"] is False
        assert len(server.backend_calls()) > computed
        assert all(-1 <= r["reward"] <= 1 for r in again.json()["results"])
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "drlaif_bad_reads_total 1.0" in metrics
        assert "invalid read for a batch of 1 sequences" in server.output(tail=100_000)
        assert server.ready().status_code == 200


def test_a_forward_stuck_under_the_model_lock_fails_requests_at_once_until_it_returns(tmp_path):
    with FaultyServer(tmp_path, "--backend-timeout-s", "3") as server:
        server.set_faults(hang_forward="first", hang_s=12)
        started = time.monotonic()
        stuck = server.score()
        assert stuck.status_code == 503, stuck.text
        assert "did not answer within 3s" in stuck.json()["error"]["message"]
        assert time.monotonic() - started < 8
        # The stuck forward holds the model: readiness says so, and requests fail at once
        # (retryable, for a client to send elsewhere) instead of waiting behind the lock.
        assert "holds the model" in server.ready().json()["error"]["message"]
        started = time.monotonic()
        refused = server.score()
        assert refused.status_code == 503 and "holds the model" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] and time.monotonic() - started < 2
        # Once the forward returns, the server is ready and serves again.
        wait_for(lambda: server.ready().status_code == 200, 20, "readiness to recover")
        assert server.score().status_code == 200


def test_a_forward_stuck_past_the_exit_limit_exits_1_for_the_supervisor(tmp_path):
    with FaultyServer(tmp_path, "--backend-timeout-s", "2", "--stuck-exit-s", "2") as server:
        server.set_faults(hang_forward="for good", hang_s=120)
        assert server.score().status_code == 503
        assert server.proc.wait(30) == 1
        assert "cannot be interrupted; exiting for the supervisor to restart the server" in server.output(tail=100_000)


def test_a_client_that_disconnects_has_its_queued_items_dropped(tmp_path):
    with FaultyServer(tmp_path) as server:
        server.set_faults(delay_s=3)
        first = server.next_call()
        busy = threading.Thread(target=server.score)  # holds the backend for 3 s
        busy.start()
        wait_for(lambda: server.next_call() > first, 10, "the first request to reach the backend")
        with pytest.raises(httpx.ReadTimeout):
            server.score(8, timeout=0.5)  # queued behind the busy call, then abandoned
        busy.join()
        server.set_faults()
        time.sleep(0.5)  # a queued batch would be dispatched by now
        assert [n for call, n in server.backend_calls() if call >= first] == [1]  # only the first request's item
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'drlaif_rejections_total{reason="client_gone"} 1.0' in metrics
        assert server.score().status_code == 200
        log = server.output(tail=100_000)
        assert "client went away" in log
        assert "ERROR" not in log and "Traceback" not in log


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(tmp_path):
    with FaultyServer(tmp_path, "--shutdown-grace-s", "60") as server:
        server.set_faults(delay_s=2)
        first = server.next_call()
        answers: list[httpx.Response] = []
        in_flight = [threading.Thread(target=lambda n=n: answers.append(server.score(n))) for n in (24, 3)]
        for thread in in_flight:
            thread.start()
        wait_for(lambda: server.next_call() > first, 10, "the requests to reach the backend")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: server.ready().status_code == 503, 5, "readiness to turn 503")
        assert server.ready().json()["error"]["message"] == "the server is shutting down"
        refused = server.score()
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
        for thread in in_flight:
            thread.join(60)
        assert [r.status_code for r in answers] == [200, 200]
        assert sorted(len(r.json()["results"]) for r in answers) == [3, 24]
        assert server.proc.wait(30) == 0
