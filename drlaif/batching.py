"""Micro-batching: one worker coalesces sequences from concurrent requests.

Requests put their sequences on a queue and await futures. The worker takes as many as
fit one batch (by count and by padded tokens), runs them in one backend call, and resolves
each future with its own result. It waits up to ``max_wait_s`` for company only when it was
idle, so under load batches form while the previous one runs and no latency is added.

A batch is filled round-robin across the submissions waiting (one sequence from each in
turn), not first come first served: a single-item request that arrives behind a request of
thousands of reads rides in the next batch instead of waiting for all of them.

``AdmissionGate`` is the same interface for engines that batch by themselves: work
goes straight in.

Nothing here is specific to the server: the veRL adapter (``trainer/frameworks/verl_reward.py``)
coalesces its per-sample calls into reward requests with the same MicroBatcher. The
server's bound on requests in flight, in front of both, is ``server/admission.py``.

Both bound a backend call by ``call_timeout_s``: past it, the call's waiters get an
error and the queue moves on. A call that cannot be cancelled (a thread) keeps running
until it returns; ``overdue_s`` says how long, so that readiness can report it. A backend
that runs one call at a time (a model behind a lock) cannot serve the next batch while
such a call holds it: MicroBatcher's ``held`` then names why, and work fails at once
instead of queueing behind the lock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


@dataclass
class _Pending(Generic[T, R]):
    payload: T
    tokens: int
    future: asyncio.Future[R]


def _fail(pendings: Sequence[_Pending], exc: BaseException) -> None:
    for p in pendings:
        if not p.future.done():
            p.future.set_exception(exc)


@dataclass(frozen=True)
class BatchStats:
    """Reported after every batch (for metrics)."""

    items: int
    padded_tokens: int  # AdmissionGate: the plain token count (an engine that batches pads nothing)
    seconds: float


class Submitter(Protocol[T_contra, R_co]):
    """What the scorer needs from a batcher: MicroBatcher and AdmissionGate."""

    call_timeout_s: float | None  # bound on one backend call; None: unbounded

    @property
    def depth(self) -> int: ...

    @property
    def retry_after_s(self) -> int: ...

    @property
    def overdue_s(self) -> float | None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, payloads: Sequence[T_contra]) -> Sequence[R_co]: ...


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        tokens_of: Callable[[T], int],
        max_items: int,
        max_tokens: int,
        max_wait_s: float,
        on_batch: Callable[[BatchStats], None] | None = None,
        call_timeout_s: float | None = None,
        held: Callable[[], str | None] | None = None,
    ):
        self._run = run
        self._tokens_of = tokens_of
        self.call_timeout_s = call_timeout_s
        self._held = held  # why the backend cannot take a batch now (None: it can)
        self._overdue: dict[asyncio.Future, float] = {}  # backend calls past their deadline -> start time
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        # One queue per waiting submission, in the order they are next served.
        self._queues: collections.OrderedDict[int, collections.deque[_Pending[T, R]]] = collections.OrderedDict()
        self._submissions = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._recent_batch_s = 0.5  # smoothed, for Retry-After

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def retry_after_s(self) -> int:
        """Seconds until the work queued now has run, at the recent batch time (at least 1)."""
        return max(1, math.ceil(max(1, math.ceil(self.depth / self.max_items)) * self._recent_batch_s))

    @property
    def overdue_s(self) -> float | None:
        """How long the oldest backend call past its deadline has been running (None: none)."""
        return _overdue_s(self._overdue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="drlaif-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        _fail([p for q in self._queues.values() for p in q], RuntimeError("the server is shutting down"))
        self._queues.clear()

    async def submit(self, payloads: Sequence[T]) -> list[R]:
        """Queue payloads and wait for their results, in order (RuntimeError at once while the
        backend is held)."""
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._held is not None and (reason := self._held()) is not None:
            raise RuntimeError(reason)
        loop = asyncio.get_running_loop()
        pendings = [_Pending(p, self._tokens_of(p), loop.create_future()) for p in payloads]
        if pendings:
            self._submissions += 1
            self._queues[self._submissions] = collections.deque(pendings)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pendings)))
        except BaseException:
            for p in pendings:  # a disconnected client's leftovers need no computing
                p.future.cancel()
            raise

    def _take_batch(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        longest = 0
        while self._queues and len(batch) < self.max_items:
            key, queue = next(iter(self._queues.items()))
            head = queue[0]
            if not head.future.done():  # else cancelled by its request: dropped unread
                widest = max(longest, head.tokens)
                if batch and widest * (len(batch) + 1) > self.max_tokens:
                    break
                batch.append(head)
                longest = widest
            queue.popleft()
            if queue:
                self._queues.move_to_end(key)  # the next sequence comes from the next submission
            else:
                del self._queues[key]
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queues:
                self._wakeup.clear()
                await self._wakeup.wait()
                # Idle until now: give concurrent requests a moment to join this batch.
                deadline = loop.time() + self.max_wait_s
                while self.depth < self.max_items and loop.time() < deadline:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
            batch = self._take_batch()
            if not batch:
                continue
            if self._held is not None and (reason := self._held()) is not None:
                _fail(batch, RuntimeError(reason))
                continue
            started = loop.time()
            try:
                results = await _bounded(self._run([p.payload for p in batch]), self.call_timeout_s,
                                         self._overdue)
                if len(results) != len(batch):
                    raise RuntimeError(f"backend returned {len(results)} results for {len(batch)} inputs")
            except asyncio.CancelledError:
                _fail(batch, RuntimeError("the server is shutting down"))
                raise
            except Exception as exc:
                log.exception("batch of %d failed", len(batch))
                _fail(batch, exc)
                continue
            elapsed = loop.time() - started
            self._recent_batch_s = 0.8 * self._recent_batch_s + 0.2 * elapsed
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
            if self._on_batch is not None:
                try:
                    self._on_batch(BatchStats(len(batch), max(p.tokens for p in batch) * len(batch), elapsed))
                except Exception:
                    log.exception("on_batch callback failed")


async def _bounded(call: Awaitable[R], timeout_s: float | None, overdue: dict[asyncio.Future, float]) -> R:
    """Await a backend call for at most ``timeout_s``. Past it, the call is left running (a
    thread cannot be interrupted; an engine request is aborted when its task is cancelled by
    its owner) and tracked in ``overdue`` until it ends, and the waiter gets RuntimeError."""
    future = asyncio.ensure_future(call)
    if timeout_s is None:
        return await future
    started = asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)
    except TimeoutError:
        overdue[future] = started
        future.add_done_callback(lambda f: (overdue.pop(f, None), f.cancelled() or f.exception()))
        raise RuntimeError(f"the labeler backend did not answer within {timeout_s:g}s "
                           "(--backend-timeout-s)") from None
    except asyncio.CancelledError:
        future.cancel()  # the waiter is gone: so is the need for the result
        raise


def _overdue_s(overdue: dict[asyncio.Future, float]) -> float | None:
    if not overdue:
        return None
    return asyncio.get_running_loop().time() - min(overdue.values())


class AdmissionGate(Generic[T, R]):
    """For engines that batch by themselves (vLLM's continuous batching).

    No coalescing and no waiting: every submit goes straight to the backend, so
    concurrent requests meet inside the engine. Same interface as :class:`MicroBatcher`.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        tokens_of: Callable[[T], int],
        on_batch: Callable[[BatchStats], None] | None = None,
        call_timeout_s: float | None = None,
    ):
        self._run = run
        self._tokens_of = tokens_of
        self._on_batch = on_batch
        self.call_timeout_s = call_timeout_s
        self._overdue: dict[asyncio.Future, float] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self._open = False
        self._started = False
        self._recent_s = 0.5  # smoothed request time, for Retry-After

    @property
    def depth(self) -> int:
        """Sequences admitted and not yet finished."""
        return self._in_flight

    @property
    def retry_after_s(self) -> int:
        """The recent time of one request in the engine (at least 1 s)."""
        return max(1, math.ceil(self._recent_s))

    @property
    def overdue_s(self) -> float | None:
        """How long the oldest backend call past its deadline has been running (None: none)."""
        return _overdue_s(self._overdue)

    def start(self) -> None:
        self._open = self._started = True

    async def stop(self) -> None:
        """Refuse new work and cancel what is in the engine (its waiters get an error)."""
        self._open = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, payloads: Sequence[T]) -> list[R]:
        """Run payloads on the backend now and return their results, in order."""
        if not self._open:
            raise RuntimeError("the server is shutting down" if self._started
                               else "AdmissionGate.start() was not called")
        n = len(payloads)
        loop = asyncio.get_running_loop()
        self._in_flight += n
        # A task of its own, so that stop() can cancel the engine work without cancelling
        # the caller; a cancelled caller (client gone) still cancels the task it awaits.
        task = loop.create_task(self._run(list(payloads)))
        self._tasks.add(task)
        started = loop.time()
        try:
            results = list(await _bounded(task, self.call_timeout_s, self._overdue))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not self._open and not (current and current.cancelling()):
                raise RuntimeError("the server is shutting down") from None
            raise
        finally:
            self._tasks.discard(task)
            self._in_flight -= n
        if len(results) != n:
            raise RuntimeError(f"backend returned {len(results)} results for {n} inputs")
        elapsed = loop.time() - started
        self._recent_s = 0.8 * self._recent_s + 0.2 * elapsed
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(n, sum(self._tokens_of(p) for p in payloads), elapsed))
            except Exception:
                log.exception("on_batch callback failed")
        return results
