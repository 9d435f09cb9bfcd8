"""Load and soak: many concurrent clients against a small queue, in repeated storms.

Starts a real drlaif-server subprocess on the embedded labeler (or --model) with a small
queue (--max-queue-items 64 --max-batch-items 16 --max-items-per-request 16) and the
reward cache off (--reward-cache-items 0, so every read is computed); --server-arg adds
or overrides server flags (the last occurrence of a flag wins). Then runs --storms storms
(default 3), --pause-s apart. In each, --clients concurrent clients (default 64,
httpx.AsyncClient over loopback) send small /score requests (1 or 2 short items, text
never repeated) for --duration-s seconds (default 40). A client that gets 429 sleeps for
the Retry-After it was given (at most 2 s, jittered) and goes on.
Per storm it prints:
  - the status counts (only 200 and 429 expected; transport errors are counted by name);
  - p50/p99 latency of the 200s, and the items/s they scored;
  - hangs: requests unfinished after --request-timeout-s (default 60 s; 0 expected);
  - the server's RSS after the storm (VmRSS summed over its process tree, from /proc);
  - the latency of one single-item /score request right after the storm.
At the end: RSS growth from storm 2 to the last storm (target under 5%; storm 1 warms
the allocator and the caches), and one PASS/FAIL line for: no hangs, only 200/429, the
server still alive, growth under 5%.
Every request has a timeout and clients start none after the storm's end, so the run
takes at most about storms x (duration + request timeout + pause) plus startup.
Run: python bench/load.py   (quick check: --clients 8 --duration-s 5 --storms 2)
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import math
import os
import random
import time
from dataclasses import dataclass, field

import httpx

from drlaif.server_process import ServerProcess

SERVER_DEFAULTS = ["--log-level", "warning", "--max-queue-items", "64", "--max-batch-items", "16",
                   "--max-items-per-request", "16", "--reward-cache-items", "0"]

SUBJECTS = ["a lighthouse", "the moon", "a bicycle", "rain", "a library", "volcanoes", "bread",
            "a chess opening", "honeybees", "the tides", "a violin", "glaciers", "a compass", "tea"]
ASKS = ["Describe {s} in one sentence.", "Give one fact about {s}.", "Why do people like {s}?",
        "Write a haiku about {s}.", "What is {s} for?", "Name something related to {s}."]
ANSWERS = ["{S} is more interesting than it looks.", "People have studied {s} for centuries.",
           "I am not sure, but {s} matters to many.", "{S}: simple, useful and old.",
           "Here is one: {s} changes with the seasons."]
WORDS = ["quiet", "bright", "curious", "steady", "ancient", "gentle", "rapid", "hidden", "warm", "open"]

_serial = itertools.count()


def fresh_item(rng: random.Random) -> dict[str, str]:
    """A short item whose text never repeats (a serial number and random words)."""
    s = rng.choice(SUBJECTS)
    n = next(_serial)
    prompt = f"{rng.choice(ASKS).format(s=s)} (#{n})"
    answer = rng.choice(ANSWERS).format(s=s, S=s[:1].upper() + s[1:])
    return {"prompt": prompt, "response": f"{answer} {rng.choice(WORDS)} {rng.choice(WORDS)} {n % 997}."}


def fresh_body(rng: random.Random) -> dict:
    return {"items": [fresh_item(rng) for _ in range(rng.randint(1, 2))]}


def _ppid_and_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        # The command name may hold spaces or parentheses: the fields follow the last ")".
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children[ppid].append(int(name))
    return children


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # exited, or a kernel thread


def tree_rss_mib(pid: int) -> tuple[float, int]:
    """VmRSS summed over ``pid`` and all its descendants (MiB), and how many processes."""
    children = _ppid_and_children()
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children.get(p, []))
    return sum(map(_rss_kib, seen)) / 1024, len(seen)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); nan when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Storm:
    statuses: collections.Counter = field(default_factory=collections.Counter)
    ok_latencies: list[float] = field(default_factory=list)
    ok_items: int = 0
    hangs: int = 0
    wall_s: float = 0.0
    rss_mib: float = 0.0
    processes: int = 0
    probe_s: float = math.nan
    probe_status: str = ""


async def client_loop(aclient: httpx.AsyncClient, rng: random.Random, end: float, timeout_s: float,
                      storm: Storm) -> None:
    while time.monotonic() < end:
        body = fresh_body(rng)
        started = time.perf_counter()
        try:
            # httpx's own timeout (connect, pool, write and read each) and a hard one on top.
            response = await asyncio.wait_for(aclient.post("/score", json=body), timeout_s + 5)
        except (TimeoutError, httpx.TimeoutException):
            storm.hangs += 1
            storm.statuses["timeout"] += 1
            continue
        except httpx.HTTPError as exc:  # refused, reset...: counted, then a pause so it doesn't spin
            storm.statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.5)
            continue
        elapsed = time.perf_counter() - started
        storm.statuses[response.status_code] += 1
        if response.status_code == 200:
            storm.ok_latencies.append(elapsed)
            storm.ok_items += len(body["items"])
        elif response.status_code == 429:
            try:
                retry = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                retry = 1.0
            await asyncio.sleep(min(retry, 2.0) * rng.uniform(0.5, 1.0))
        else:
            await asyncio.sleep(0.5)


async def run_storm(url: str, clients: int, duration_s: float, timeout_s: float, seed: int) -> Storm:
    storm = Storm()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s), limits=limits) as aclient:
        started = time.monotonic()
        end = started + duration_s
        tasks = [asyncio.create_task(client_loop(aclient, random.Random(seed * 100_003 + i), end, timeout_s,
                                                 storm)) for i in range(clients)]
        # Bounded even if something in a client misbehaves: no request starts after `end`.
        done, pending = await asyncio.wait(tasks, timeout=duration_s + timeout_s + 30)
        for t in pending:
            t.cancel()
            storm.hangs += 1
            storm.statuses["client stuck"] += 1
        for t in done:
            if t.exception() is not None:
                storm.statuses[f"client error {type(t.exception()).__name__}"] += 1
        storm.wall_s = time.monotonic() - started
    return storm


def probe(client: httpx.Client, rng: random.Random) -> tuple[float, str]:
    """Seconds for one single-item /score request, and its status."""
    started = time.perf_counter()
    try:
        status = str(client.post("/score", json={"items": [fresh_item(rng)]}).status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return time.perf_counter() - started, status


def fmt_statuses(counter: collections.Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients per storm")
    parser.add_argument("--duration-s", type=float, default=40.0, help="seconds each storm sends requests")
    parser.add_argument("--storms", type=int, default=3)
    parser.add_argument("--pause-s", type=float, default=5.0, help="pause between storms")
    parser.add_argument("--request-timeout-s", type=float, default=60.0,
                        help="a request unfinished after this long counts as a hang")
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra drlaif-server flag, repeatable, e.g. --server-arg=--max-queue-items=128")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.clients < 1 or args.storms < 1 or args.duration_s <= 0:
        parser.error("--clients and --storms must be at least 1, --duration-s positive")

    server_args = [*SERVER_DEFAULTS, *(["--model", args.model] if args.model else []), *args.server_arg]
    rng = random.Random(args.seed)
    storms: list[Storm] = []
    with ServerProcess(*server_args) as server:
        pid = server.proc.pid
        client = httpx.Client(base_url=server.url, timeout=args.request_timeout_s)
        info = client.get("/info").json()
        rss0, nproc = tree_rss_mib(pid)
        warm_s, warm_status = probe(client, rng)  # the first forward pass is slow
        rss_warm, _ = tree_rss_mib(pid)
        print(f"labeler {info.get('model')} on {info.get('device')} ({info.get('dtype')}); server args: "
              f"{' '.join(server_args)}")
        print(f"{args.clients} clients x {args.duration_s:g} s x {args.storms} storms, "
              f"{args.pause_s:g} s apart; request timeout {args.request_timeout_s:g} s")
        print(f"server RSS at ready {rss0:.0f} MiB ({nproc} process{'es' if nproc > 1 else ''}); "
              f"warm-up request {warm_s * 1000:.0f} ms ({warm_status}); RSS after it {rss_warm:.0f} MiB\n")
        for k in range(args.storms):
            if k:
                time.sleep(args.pause_s)
            storm = asyncio.run(run_storm(server.url, args.clients, args.duration_s, args.request_timeout_s,
                                          args.seed * 1000 + k + 1))
            storm.rss_mib, storm.processes = tree_rss_mib(pid)
            storm.probe_s, storm.probe_status = probe(client, rng)
            storms.append(storm)
            ok = storm.ok_latencies
            print(f"storm {k + 1}: {sum(storm.statuses.values())} requests in {storm.wall_s:.1f} s "
                  f"({fmt_statuses(storm.statuses)})")
            print(f"    200s: p50 {percentile(ok, 50) * 1000:.0f} ms, "
                  f"p99 {percentile(ok, 99) * 1000:.0f} ms, {storm.ok_items / storm.wall_s:.1f} items/s; "
                  f"hangs {storm.hangs}")
            print(f"    RSS after {storm.rss_mib:.0f} MiB; one /score right after "
                  f"{storm.probe_s * 1000:.0f} ms ({storm.probe_status})")
            if not server.alive():
                print("    the server exited:\n" + server.output())
                break
        alive = server.alive()
        client.close()

    statuses = sum((s.statuses for s in storms), collections.Counter())
    hangs = sum(s.hangs for s in storms)
    unexpected = {k: v for k, v in statuses.items() if k not in (200, 429)}
    probes_ok = all(s.probe_status == "200" for s in storms)
    growth = None
    if len(storms) >= 3:
        growth = (storms[-1].rss_mib - storms[1].rss_mib) / storms[1].rss_mib * 100
        print(f"\nRSS growth storm 2 -> storm {len(storms)}: {growth:+.2f}% "
              f"({storms[1].rss_mib:.0f} -> {storms[-1].rss_mib:.0f} MiB; target under 5%)")
    else:
        print("\nRSS growth: n/a (needs at least 3 storms: storm 1 warms up, storm 2 is the base)")
    all_ok = [x for s in storms for x in s.ok_latencies]
    print(f"all storms: {fmt_statuses(statuses)}; 200s p50 {percentile(all_ok, 50) * 1000:.0f} ms, "
          f"p99 {percentile(all_ok, 99) * 1000:.0f} ms")
    checks = {"no hangs": hangs == 0, "only 200/429": not unexpected, "server alive": alive,
              "probes 200": probes_ok, "some 200s": statuses[200] > 0}
    if growth is not None:
        checks["RSS growth < 5%"] = growth < 5
    passed = all(checks.values())
    verdict = ", ".join(f"{k} {'ok' if v else 'NO'}" for k, v in checks.items())
    print(("PASS" if passed else "FAIL") + ": " + verdict)
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
