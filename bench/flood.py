"""Small /score calls while clients flood the server with the largest requests it accepts.

Starts one drlaif-server subprocess on the embedded labeler (or --model) at its default
limits, with the reward cache off (--reward-cache-items 0, so that repeated text is read
again); --server-arg adds or overrides server flags. Then, against that one server:
  1. idle: --calls single-item /score calls, one at a time (after one warm-up call), and
     their p50/p99 latency;
  2. flood: --flood-clients concurrent clients send the largest /score requests the server's
     /info limits allow, back to back, for --seconds seconds: max_items_per_request items,
     judged group-pairwise in groups of 16 responses to a prompt (the server's default
     opponents), one-sentence answers, text never repeated. A client refused with 429 waits
     its Retry-After (at most 2 s). After --settle-s (the flood fills the queue) the same
     single-item calls, one at a time, until --calls are done or the flood ends, while
     /health/live is asked every 100 ms. A call refused with 429 is sent again after its
     Retry-After, as drlaif's client does: its latency is the time until it is answered.
Prints the idle and flooded p50/p99 of the single-item calls and their ratios, the statuses of
both (a 429 is a refusal at admission, expected under a flood; 504 ran out of
--request-timeout-s), the flood requests answered, refused or still open at the end, the
labeler's reads during the flood, and /health/live's max and p99 latency during it. Progress
lines go out as it runs. At the end the flood's clients close their connections, which drops
their requests' queued work.
Run: python bench/flood.py   (quick check: --calls 5 --flood-clients 2 --seconds 30)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import re
import time
from dataclasses import dataclass, field

import httpx
from load import fmt_statuses, percentile

from drlaif.server_process import ServerProcess

SERVER_DEFAULTS = ["--log-level", "warning", "--reward-cache-items", "0"]
GROUP = 16  # responses per prompt in a flood request, as a GRPO step with 16 generations sends them
TOPICS = ["a lighthouse", "the moon", "a bicycle", "rain", "a library", "volcanoes", "bread", "honeybees",
          "the tides", "a violin", "glaciers", "a compass", "tea", "a chess opening", "a harbour", "snow"]

_serial = itertools.count()


def single_item() -> dict:
    """A one-item /score body whose text never repeats."""
    n = next(_serial)
    a, b = n % 89, n % 97
    return {"items": [{"prompt": f"What is {a} plus {b}? (#{n})", "response": f"It is {a + b}."}]}


def flood_body(items: int) -> dict:
    """The largest group-pairwise /score body of ``items`` items: groups of :data:`GROUP`
    one-sentence answers to a prompt, its text never repeated."""
    n = next(_serial)
    return {"group_pairwise": True, "items": [
        {"prompt": f"Write one sentence about {TOPICS[k // GROUP % len(TOPICS)]}. (#{n}.{k // GROUP})",
         "response": f"{TOPICS[k % len(TOPICS)].capitalize()} is worth a look, answer {k}."}
        for k in range(items)]}


def labeler_reads(client: httpx.Client) -> float:
    """Sequences the labeler has read so far: the sum of the batch-size histogram."""
    match = re.search(r"^drlaif_batch_sequences_sum (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def retry_after(response: httpx.Response) -> float:
    """The wait a 429 asks for, at most 2 s (as bench/load.py's clients wait)."""
    try:
        return min(float(response.headers.get("Retry-After", "1")), 2.0)
    except ValueError:
        return 1.0


@dataclass
class Calls:
    """Single-item /score calls: the seconds each took to be answered (429s retried), the final
    statuses, and the refusals on the way."""

    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    refused: int = 0  # calls refused with 429 at least once
    refusals: int = 0
    reason: str = ""  # the first refusal's message

    async def call(self, client: httpx.AsyncClient, label: str, until: float = float("inf")) -> bool:
        """One call, sent again after each 429's Retry-After, as drlaif's client does, until it
        gets another answer or ``until`` (monotonic seconds) would pass; False if it gave up."""
        started = time.perf_counter()
        refusals = 0
        body = single_item()
        while True:
            try:
                response = await client.post("/score", json=body)
            except httpx.HTTPError as exc:
                status: int | str = type(exc).__name__
                break
            status = response.status_code
            if status != 429 or time.monotonic() + retry_after(response) > until:
                break
            refusals += 1
            self.reason = self.reason or response.json()["error"]["message"]
            await asyncio.sleep(retry_after(response))
        elapsed = time.perf_counter() - started
        self.statuses[status] += 1
        self.refused += refusals > 0
        self.refusals += refusals
        if status == 200:
            self.latencies.append(elapsed)
        retried = f" after {refusals} refusals" if refusals else ""
        print(f"  {label}: {elapsed * 1000:.0f} ms ({status}{retried})", flush=True)
        return status != 429

    def summary(self) -> str:
        n = sum(self.statuses.values())
        refused = f"; {self.refused} of {n} refused first ({self.refusals} 429s)" if self.refused else ""
        if not self.latencies:
            return f"none answered ({fmt_statuses(self.statuses)}{refused})"
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms of the 200s ({fmt_statuses(self.statuses)}{refused})"


@dataclass
class Flood:
    """What the flood's clients got, and the /health/live latencies during it."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    open_requests: int = 0
    abandoned: int = 0  # requests still open when the flood ended
    live: list[float] = field(default_factory=list)
    live_errors: collections.Counter = field(default_factory=collections.Counter)


async def flood_client(client: httpx.AsyncClient, items: int, flood: Flood) -> None:
    while True:
        flood.open_requests += 1
        try:
            response = await client.post("/score", json=flood_body(items))
        except httpx.HTTPError as exc:  # counted, then a pause so that it doesn't spin
            flood.statuses[type(exc).__name__] += 1
            response = None
        finally:
            flood.open_requests -= 1
        if response is None:
            await asyncio.sleep(0.5)
            continue
        flood.statuses[response.status_code] += 1
        if response.status_code == 429:
            await asyncio.sleep(retry_after(response))


async def watch_liveness(client: httpx.AsyncClient, flood: Flood) -> None:
    while True:
        started = time.perf_counter()
        try:
            status = (await client.get("/health/live")).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        flood.live.append(time.perf_counter() - started)
        if status != 200:
            flood.live_errors[status] += 1
        await asyncio.sleep(0.1)


async def report_progress(stats: httpx.Client, flood: Flood, started: float) -> None:
    while True:
        await asyncio.sleep(10)
        reads = await asyncio.to_thread(labeler_reads, stats)
        print(f"  [{time.monotonic() - started:4.0f} s] flood {fmt_statuses(flood.statuses) or 'no answers yet'}; "
              f"{flood.open_requests} open; labeler reads so far {reads:.0f}; /health/live max "
              f"{max(flood.live, default=0) * 1000:.0f} ms", flush=True)


async def run(url: str, args: argparse.Namespace, items: int) -> tuple[Calls, Calls, Flood, float, float]:
    """The idle calls, the flooded calls, the flood, its seconds and the labeler's reads during it."""
    idle, flooded, flood = Calls(), Calls(), Flood()
    timeout = httpx.Timeout(600)
    # One connection per flood client, and the probes' own, so that they never queue behind the flood's.
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as probe, \
            httpx.AsyncClient(base_url=url, timeout=timeout,
                              limits=httpx.Limits(max_connections=args.flood_clients)) as flooder, \
            httpx.AsyncClient(base_url=url, timeout=10) as live:
        stats = httpx.Client(base_url=url, timeout=30)
        print(f"idle: {args.calls} single-item /score calls, one at a time", flush=True)
        await Calls().call(probe, "warm-up")
        for k in range(args.calls):
            await idle.call(probe, f"idle call {k + 1}/{args.calls}")

        print(f"\nflood: {args.flood_clients} clients x {items}-item group-pairwise requests for "
              f"{args.seconds:g} s; single-item calls from {args.settle_s:g} s in", flush=True)
        reads_before = labeler_reads(stats)
        started = time.monotonic()
        end = started + args.seconds
        tasks = [asyncio.create_task(flood_client(flooder, items, flood)) for _ in range(args.flood_clients)]
        tasks += [asyncio.create_task(watch_liveness(live, flood)),
                  asyncio.create_task(report_progress(stats, flood, started))]
        await asyncio.sleep(args.settle_s)
        k, answered = 0, True
        while answered and k < args.calls and time.monotonic() < end:  # one that gave up ran out the flood
            k += 1
            answered = await flooded.call(probe, f"flooded call {k}/{args.calls}", until=end)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        seconds = time.monotonic() - started
        reads = labeler_reads(stats) - reads_before
        flood.abandoned = flood.open_requests
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats.close()
    return idle, flooded, flood, seconds, reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="single-item calls, idle and during the flood")
    parser.add_argument("--flood-clients", type=int, default=8, help="concurrent clients sending the flood")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the flood lasts")
    parser.add_argument("--settle-s", type=float, default=10.0,
                        help="seconds into the flood before the single-item calls start")
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra drlaif-server flag, repeatable, e.g. --server-arg=--max-queue-items=1024")
    args = parser.parse_args()
    if args.calls < 1 or args.flood_clients < 1 or args.seconds <= args.settle_s:
        parser.error("--calls and --flood-clients must be at least 1, --seconds more than --settle-s")

    server_args = [*SERVER_DEFAULTS, *(["--model", args.model] if args.model else []), *args.server_arg]
    with ServerProcess(*server_args) as server:
        info = httpx.get(f"{server.url}/info", timeout=30).json()
        limits = info["limits"]
        items = limits["max_items_per_request"]
        print(f"labeler {info['model']} on {info['device']} ({info['dtype']}); server args: {' '.join(server_args)}; "
              f"limits: {items} items per request, {limits['max_queue_items']} in flight, "
              f"{limits['max_batch_items']} per batch\n", flush=True)
        idle, flooded, flood, seconds, reads = asyncio.run(run(server.url, args, items))
        alive = server.alive()

    print(f"\nsingle-item /score, idle:         {idle.summary()}")
    print(f"single-item /score, during flood: {flooded.summary()}")
    for q in (50, 99):
        ratio = percentile(flooded.latencies, q) / percentile(idle.latencies, q)
        print(f"flooded / idle p{q}: " + (f"{ratio:.2f}" if flooded.latencies else "n/a (no call answered)"))
    if flooded.reason:
        print(f"the first refusal of a single-item call during the flood said: {flooded.reason}")
    print(f"flood: {flood.statuses[200]} answered, {flood.statuses[429]} refused (429), "
          f"{flood.abandoned} open at the end (abandoned); all statuses: {fmt_statuses(flood.statuses) or 'none'}")
    print(f"labeler reads during the flood: {reads:.0f} in {seconds:.0f} s ({reads / seconds:.1f}/s)")
    errors = f"; not 200: {fmt_statuses(flood.live_errors)}" if flood.live_errors else ""
    print(f"/health/live during the flood: max {max(flood.live, default=float('nan')) * 1000:.0f} ms, "
          f"p99 {percentile(flood.live, 99) * 1000:.0f} ms over {len(flood.live)} probes{errors}")
    print(f"server alive at the end: {alive}")


if __name__ == "__main__":
    main()
