"""Unit tests for drlaif/batching.py (MicroBatcher, AdmissionGate); server/admission.py's
ItemAdmission is tested in test_admission.py.

Each test drives its own event loop with asyncio.run (no pytest-asyncio needed), and
every await that could hang is bounded by asyncio.wait_for.
"""

from __future__ import annotations

import asyncio

import pytest

from drlaif.batching import AdmissionGate, BatchStats, MicroBatcher

TIMEOUT = 2.0  # seconds any single step may take before the test fails instead of hanging


class FakeBackend:
    """Records every batch; returns f"out:{payload}"; can be gated and made to fail."""

    def __init__(self, delay: float = 0.0, fail_on=None, gate: bool = False):
        self.batches: list[list] = []
        self.delay = delay
        self.fail_on = fail_on
        self.gate = asyncio.Event() if gate else None
        self.started = asyncio.Event()

    async def run(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError(f"backend failed on {self.fail_on!r}")
        return [f"out:{p}" for p in payloads]


def make(backend: FakeBackend, **kwargs) -> MicroBatcher:
    options = {"tokens_of": lambda p: 1, "max_items": 8, "max_tokens": 10_000, "max_wait_s": 0.01}
    options.update(kwargs)
    batcher = MicroBatcher(backend.run, **options)
    batcher.start()
    return batcher


def run(coro):
    """Run one test coroutine with an overall deadline."""

    async def bounded():
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(bounded())


def wait(aw):
    return asyncio.wait_for(aw, TIMEOUT)


async def settle(rounds: int = 50) -> None:
    """Let every task that can run, run: ``rounds`` passes of the event loop, and no time
    (no timer is due in them, so a batcher that waits for company is still waiting)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- basics


def test_submit_before_start_is_an_error():
    async def main():
        batcher = MicroBatcher(
            FakeBackend().run, tokens_of=len, max_items=4, max_tokens=100, max_wait_s=0.0
        )
        with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
            await batcher.submit(["x"])

    run(main())


def test_results_come_back_in_order():
    async def main():
        backend = FakeBackend()
        batcher = make(backend)
        try:
            assert await wait(batcher.submit(["a", "b", "c"])) == ["out:a", "out:b", "out:c"]
            assert await wait(batcher.submit([])) == []
            assert batcher.depth == 0
        finally:
            await batcher.stop()

    run(main())


def test_concurrent_requests_each_get_their_own_results_in_order():
    async def main():
        backend = FakeBackend()
        batcher = make(backend, max_items=5)
        try:
            requests = [[f"{r}.{i}" for i in range(r % 4 + 1)] for r in range(12)]
            results = await wait(asyncio.gather(*(batcher.submit(req) for req in requests)))
            for req, res in zip(requests, results, strict=True):
                assert res == [f"out:{p}" for p in req]
            # every payload was run exactly once
            ran = [p for batch in backend.batches for p in batch]
            assert sorted(ran) == sorted(p for req in requests for p in req)
        finally:
            await batcher.stop()

    run(main())


# --------------------------------------------------------------------------- coalescing


def test_concurrent_submits_are_coalesced_into_one_batch():
    async def main():
        backend = FakeBackend()
        batcher = make(backend, max_items=64, max_wait_s=0.05)
        try:
            results = await wait(asyncio.gather(*(batcher.submit([i]) for i in range(10))))
            assert results == [[f"out:{i}"] for i in range(10)]
            assert len(backend.batches) == 1
            assert sorted(backend.batches[0]) == list(range(10))
        finally:
            await batcher.stop()

    run(main())


def test_requests_arriving_during_a_batch_form_the_next_batch():
    async def main():
        backend = FakeBackend(gate=True)
        batcher = make(backend, max_items=64, max_wait_s=0.0)
        try:
            first = asyncio.create_task(batcher.submit(["first"]))
            await wait(backend.started.wait())
            later = [asyncio.create_task(batcher.submit([f"late{i}"])) for i in range(6)]
            await asyncio.sleep(0.01)
            assert batcher.depth == 6  # queued while the first batch runs
            backend.gate.set()
            assert await wait(first) == ["out:first"]
            assert [await wait(t) for t in later] == [[f"out:late{i}"] for i in range(6)]
            assert backend.batches == [["first"], [f"late{i}" for i in range(6)]]
        finally:
            await batcher.stop()

    run(main())


def test_idle_worker_does_not_wait_once_a_batch_is_full():
    async def main():
        backend = FakeBackend()
        batcher = make(backend, max_items=4, max_wait_s=30.0)  # a wait would blow the timeout
        try:
            assert await wait(batcher.submit([1, 2, 3, 4])) == ["out:1", "out:2", "out:3", "out:4"]
        finally:
            await batcher.stop()

    run(main())


def _late_company(max_wait_s: float) -> tuple[list, list]:
    """One item, then, once the loop has run everything it could, a second one from another
    task. Returns the batches run before the second came, and all the batches."""

    async def main():
        backend = FakeBackend()
        # max_items=2: the second item fills the batch, so no test waits out a long max_wait.
        batcher = make(backend, max_items=2, max_wait_s=max_wait_s)
        try:
            first = asyncio.create_task(batcher.submit(["first"]))
            await settle()
            before = [list(b) for b in backend.batches]
            second = asyncio.create_task(batcher.submit(["second"]))
            assert await wait(first) == ["out:first"] and await wait(second) == ["out:second"]
            return before, backend.batches
        finally:
            await batcher.stop()

    return run(main())


def test_idle_worker_waits_for_company_up_to_max_wait():
    # Waiting: the first item is still queued when the second comes, and they run together.
    assert _late_company(max_wait_s=30.0) == ([], [["first", "second"]])
    # Not waiting: the same loop passes were enough to run the first alone. (So the pair above
    # was coalesced by the wait, not because the worker had not woken up yet.)
    assert _late_company(max_wait_s=0.0) == ([["first"]], [["first"], ["second"]])


def test_idle_worker_waits_at_most_max_wait_for_company():
    async def main():
        backend = FakeBackend()
        batcher = make(backend, max_items=4, max_wait_s=0.05)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            # Alone, it runs once max_wait is over: wait() fails the test if it never does.
            assert await wait(batcher.submit(["lonely"])) == ["out:lonely"]
            assert loop.time() - start >= 0.04  # (the timer's resolution below 0.05)
        finally:
            await batcher.stop()

    run(main())


# --------------------------------------------------------------------------- batch bounds


def test_max_items_bounds_each_batch():
    async def main():
        backend = FakeBackend()
        stats: list[BatchStats] = []
        batcher = make(backend, max_items=3, on_batch=stats.append)
        try:
            assert await wait(batcher.submit(list(range(10)))) == [f"out:{i}" for i in range(10)]
            assert backend.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
            assert [s.items for s in stats] == [3, 3, 3, 1]
            assert all(s.seconds >= 0 for s in stats)
        finally:
            await batcher.stop()

    run(main())


def test_a_small_request_is_not_stuck_behind_a_big_one():
    # Batches are filled round-robin across submissions: the single item that arrives behind
    # 40 others rides in the next batch, not after all of them (first come first served: the 6th).
    async def main():
        backend = FakeBackend(gate=True)
        batcher = make(backend, max_items=4)
        try:
            big = asyncio.ensure_future(batcher.submit([f"big{i}" for i in range(40)]))
            await wait(backend.started.wait())  # the first batch runs, holding the backend
            small = asyncio.ensure_future(batcher.submit(["small"]))
            await settle()
            backend.gate.set()
            assert await wait(small) == ["out:small"]
            assert await wait(big) == [f"out:big{i}" for i in range(40)]
            assert backend.batches[0] == ["big0", "big1", "big2", "big3"]
            assert backend.batches[1] == ["big4", "small", "big5", "big6"]
        finally:
            await batcher.stop()

    run(main())


def test_round_robin_keeps_each_requests_order_and_skips_cancelled_work():
    async def main():
        backend = FakeBackend(gate=True)
        batcher = make(backend, max_items=3)
        try:
            first = asyncio.ensure_future(batcher.submit(["block"]))
            await wait(backend.started.wait())
            a = asyncio.ensure_future(batcher.submit(["a0", "a1", "a2"]))
            b = asyncio.ensure_future(batcher.submit(["b0", "b1", "b2"]))
            gone = asyncio.ensure_future(batcher.submit(["c0", "c1"]))
            await settle()
            gone.cancel()  # its client hung up: its sequences are dropped unread
            await settle()
            backend.gate.set()
            assert await wait(a) == ["out:a0", "out:a1", "out:a2"] and await wait(b) == ["out:b0", "out:b1", "out:b2"]
            await wait(first)
            assert backend.batches[1:] == [["a0", "b0", "a1"], ["b1", "a2", "b2"]]
        finally:
            await batcher.stop()

    run(main())


def test_max_tokens_bounds_padded_batch_size():
    async def main():
        backend = FakeBackend()
        stats: list[BatchStats] = []
        batcher = make(backend, tokens_of=len, max_items=64, max_tokens=100, on_batch=stats.append)
        try:
            payloads = ["a" * 30, "b" * 30, "c" * 30, "d" * 30, "e" * 60, "f" * 10]
            assert await wait(batcher.submit(payloads)) == [f"out:{p}" for p in payloads]
            # Padded size = longest * count <= 100: 3*30=90 | 30 (30+60 pads to 120) | 60 | 10
            assert [[len(p) for p in b] for b in backend.batches] == [[30, 30, 30], [30], [60], [10]]
            assert [(s.items, s.padded_tokens) for s in stats] == [(3, 90), (1, 30), (1, 60), (1, 10)]
            assert all(s.padded_tokens <= 100 for s in stats)
        finally:
            await batcher.stop()

    run(main())


def test_oversized_item_still_runs_alone():
    async def main():
        backend = FakeBackend()
        batcher = make(backend, tokens_of=len, max_tokens=100)
        try:
            big = "x" * 500
            assert await wait(batcher.submit([big, "y"])) == [f"out:{big}", "out:y"]
            assert backend.batches == [[big], ["y"]]
        finally:
            await batcher.stop()

    run(main())


# --------------------------------------------------------------------------- overload


def test_retry_after_grows_with_the_backlog_and_batch_time():
    async def main():
        backend = FakeBackend(gate=True)
        batcher = make(backend, max_items=1, max_wait_s=0.0)
        batcher._recent_batch_s = 2.0  # as if recent batches took 2 s each
        try:
            assert batcher.retry_after_s == 2  # one batch's time when nothing waits
            running = asyncio.create_task(batcher.submit(["r"]))
            await wait(backend.started.wait())
            queued = asyncio.create_task(batcher.submit(list(range(10))))
            await asyncio.sleep(0.01)
            assert batcher.retry_after_s == 20  # 10 single-item batches ahead at ~2 s each
            backend.gate.set()
            await wait(running)
            await wait(queued)
        finally:
            await batcher.stop()

    run(main())


# --------------------------------------------------------------------------- failures


def test_backend_error_reaches_every_waiter_of_the_batch_and_worker_survives():
    async def main():
        backend = FakeBackend(fail_on="bad")
        batcher = make(backend, max_items=16, max_wait_s=0.05)
        try:
            outcomes = await wait(
                asyncio.gather(
                    batcher.submit(["ok1"]), batcher.submit(["bad", "ok2"]), return_exceptions=True
                )
            )
            assert len(backend.batches) == 1  # both requests were in the failing batch
            for outcome in outcomes:
                assert isinstance(outcome, ValueError)
                assert "backend failed on 'bad'" in str(outcome)
            # the worker keeps serving
            assert await wait(batcher.submit(["fine"])) == ["out:fine"]
            assert await wait(asyncio.gather(batcher.submit(["x"]), batcher.submit(["y"]))) == [
                ["out:x"],
                ["out:y"],
            ]
        finally:
            await batcher.stop()

    run(main())


def test_failure_is_confined_to_its_batch():
    async def main():
        backend = FakeBackend(fail_on="bad")
        batcher = make(backend, max_items=1, max_wait_s=0.0)
        try:
            outcome = await wait(
                asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["bad"]), return_exceptions=True)
            )
            assert backend.batches == [["a"], ["bad"], ["b"]]  # round-robin; the failed batch is skipped
            assert outcome[0] == ["out:a", "out:b"]
            assert isinstance(outcome[1], ValueError)
        finally:
            await batcher.stop()

    run(main())


def test_wrong_number_of_backend_results_is_an_error_for_the_batch():
    async def main():
        async def short(payloads):
            return payloads[:-1]

        batcher = MicroBatcher(short, tokens_of=lambda p: 1, max_items=8, max_tokens=100, max_wait_s=0.0,
                               )  # fmt: skip
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="backend returned 2 results for 3 inputs"):
                await wait(batcher.submit([1, 2, 3]))
        finally:
            await batcher.stop()

    run(main())


def test_cancelled_request_is_not_computed():
    async def main():
        backend = FakeBackend(gate=True)
        batcher = make(backend, max_items=8, max_wait_s=0.0)
        try:
            running = asyncio.create_task(batcher.submit(["running"]))
            await wait(backend.started.wait())
            gone = asyncio.create_task(batcher.submit(["gone1", "gone2"]))
            kept = asyncio.create_task(batcher.submit(["kept"]))
            await asyncio.sleep(0.01)
            gone.cancel()  # e.g. the client disconnected
            await asyncio.sleep(0)
            backend.gate.set()
            assert await wait(running) == ["out:running"]
            assert await wait(kept) == ["out:kept"]
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert backend.batches == [["running"], ["kept"]]
        finally:
            await batcher.stop()

    run(main())


# --------------------------------------------------------------------------- stop


def test_stop_fails_queued_requests():
    async def main():
        backend = FakeBackend(gate=True)
        batcher = make(backend, max_items=1, max_wait_s=0.0)
        running = asyncio.create_task(batcher.submit(["running"]))
        await wait(backend.started.wait())
        queued = asyncio.create_task(batcher.submit(["q1", "q2"]))
        await asyncio.sleep(0.01)
        assert batcher.depth == 2
        await wait(batcher.stop())
        assert batcher.depth == 0
        with pytest.raises(RuntimeError, match="shutting down"):
            await wait(queued)
        assert backend.batches == [["running"]]
        running.cancel()
        # after stop() the batcher refuses work until started again
        with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
            await batcher.submit(["late"])
        batcher.start()
        backend.gate.set()
        assert await wait(batcher.submit(["again"])) == ["out:again"]
        await batcher.stop()

    run(main())


def test_stop_is_idempotent():
    async def main():
        batcher = make(FakeBackend())
        await wait(batcher.stop())
        await wait(batcher.stop())

    run(main())


# --------------------------------------------------------------------------- AdmissionGate


def gate_for(backend: FakeBackend, **kwargs) -> AdmissionGate:
    options = {"tokens_of": lambda p: 1, **kwargs}
    gate = AdmissionGate(backend.run, **options)
    gate.start()
    return gate


def test_gate_submit_before_start_is_an_error():
    async def main():
        gate = AdmissionGate(FakeBackend().run, tokens_of=len, )
        with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
            await gate.submit(["x"])

    run(main())


def test_gate_sends_concurrent_requests_straight_to_the_backend():
    """No coalescing and no wait: each request is its own backend call, all in flight at once."""

    async def main():
        backend = FakeBackend(gate=True)
        gate = gate_for(backend)
        try:
            tasks = [asyncio.create_task(gate.submit([f"r{i}a", f"r{i}b"])) for i in range(3)]
            for _ in range(20):
                await asyncio.sleep(0)
            assert backend.batches == [["r0a", "r0b"], ["r1a", "r1b"], ["r2a", "r2b"]]
            assert gate.depth == 6  # all admitted, none finished
            backend.gate.set()
            results = await wait(asyncio.gather(*tasks))
            assert results == [[f"out:r{i}a", f"out:r{i}b"] for i in range(3)]
            assert gate.depth == 0
        finally:
            await gate.stop()

    run(main())


def test_gate_does_not_wait_for_company():
    async def main():
        backend = FakeBackend(gate=True)
        gate = gate_for(backend)
        try:
            lonely = asyncio.create_task(gate.submit(["lonely"]))
            await settle()  # loop passes only: a gate waiting on a timer would not be in yet
            assert backend.batches == [["lonely"]]
            backend.gate.set()
            assert await wait(lonely) == ["out:lonely"]
        finally:
            await gate.stop()

    run(main())


def test_gate_counts_outstanding_sequences_and_reports_batches():
    async def main():
        backend = FakeBackend(gate=True)
        stats: list[BatchStats] = []
        gate = gate_for(backend, tokens_of=len, on_batch=stats.append)
        gate._recent_s = 2.4  # as if recent requests took 2.4 s
        try:
            running = asyncio.create_task(gate.submit(["aa", "bbb"]))
            await wait(backend.started.wait())
            assert gate.depth == 2 and gate.retry_after_s == 3
            one_more = asyncio.create_task(gate.submit(["e"]))  # straight in beside it
            backend.gate.set()
            assert await wait(running) == ["out:aa", "out:bbb"]
            assert await wait(one_more) == ["out:e"]
            assert gate.depth == 0
            assert sorted((s.items, s.padded_tokens) for s in stats) == [(1, 1), (2, 5)]
        finally:
            await gate.stop()

    run(main())


def test_gate_backend_error_reaches_its_caller_only_and_frees_the_slots():
    async def main():
        backend = FakeBackend(fail_on="bad")
        gate = gate_for(backend)
        try:
            outcomes = await wait(asyncio.gather(gate.submit(["bad"]), gate.submit(["ok"]),
                                                 return_exceptions=True))
            assert isinstance(outcomes[0], ValueError) and outcomes[1] == ["out:ok"]
            assert gate.depth == 0
            assert await wait(gate.submit(["x", "y"])) == ["out:x", "out:y"]
        finally:
            await gate.stop()

    run(main())


def test_gate_wrong_number_of_backend_results_is_an_error():
    async def main():
        async def short(payloads):
            return payloads[:-1]

        gate = AdmissionGate(short, tokens_of=len, )
        gate.start()
        with pytest.raises(RuntimeError, match="returned 1 results for 2 inputs"):
            await wait(gate.submit(["a", "b"]))
        assert gate.depth == 0

    run(main())


def test_gate_cancelled_caller_cancels_its_backend_work():
    async def main():
        cancelled = asyncio.Event()

        async def slow(payloads):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return payloads

        gate = AdmissionGate(slow, tokens_of=len, )
        gate.start()
        caller = asyncio.create_task(gate.submit(["a"]))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await wait(cancelled.wait())
        assert gate.depth == 0

    run(main())


def test_gate_stop_fails_in_flight_work_and_refuses_new():
    async def main():
        backend = FakeBackend(gate=True)
        gate = gate_for(backend)
        in_flight = asyncio.create_task(gate.submit(["a"]))
        await wait(backend.started.wait())
        await wait(gate.stop())
        with pytest.raises(RuntimeError, match="shutting down"):
            await wait(in_flight)
        with pytest.raises(RuntimeError, match="shutting down"):
            await wait(gate.submit(["b"]))
        assert gate.depth == 0

    run(main())
