"""Load-aware routing over a fleet with one slow replica: least-loaded against round-robin.

Starts two real drlaif-server subprocesses on the embedded labeler (or --model), one torch
thread each so that they share this machine's cores fairly, reward cache off (every read is
computed), and at most --items-per-request items per forward pass, so that one request is one
batch. The slow one runs through tests/fixtures/faulty_server.py, which waits a fixed delay
before every batch of its real backend. The delay is calibrated in this run: the fast replica's
time for one request, measured alone, times (--slowdown - 1); each replica's throughput alone
(on the first 2 x --concurrency requests' items) is printed, with the slowdown it really has.

The workload: --items (256) short items (one-line answers, as GRPO groups often are), scored by
the reward client (drlaif/client.py) in requests of --items-per-request items, at most
--concurrency in flight. It is run with the client's least-loaded routing (power of two choices on requests in
flight) and with round-robin, in interleaved rounds (median of --rounds); the requests each
replica got are counted by the client. Prints items/s of each and the line
``least-loaded/round-robin = <ratio>`` (target >= 1.3 with one replica 3x slower).

Then (or alone, with --only ray): the Ray Serve application (server/ray_serve.py) on a local Ray instance,
with 1 and then 2 replicas of the same labeler (one torch thread each, the same batch cap), the
same items through the same client at the same concurrency; prints items/s of each and
``ray serve 2 replicas/1 replica = <ratio>``.

Run: python bench/fleet.py [--rounds 3] [--concurrency 8] [--items-per-request 4] [--slowdown 3] [--only routing|ray]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from score_throughput import interleaved, short_items

from drlaif.client import AsyncRewardClient, RewardClientConfig
from drlaif.replica_routing import ReplicaStats
from drlaif.server_process import ServerProcess

FAULTY_SERVER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faulty_server.py"
# One torch thread per server: two servers on a 2-core machine, neither starving the other.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class DelayedServer(ServerProcess):
    """drlaif-server whose real backend waits ``delay_s`` before every batch (set while it runs)."""

    def __init__(self, workdir: Path, *args: str):
        self.control = workdir / "control.json"
        self.control.write_text("{}")
        super().__init__(*args, env={**ONE_THREAD, "FAULTY_CONTROL": str(self.control),
                                     "FAULTY_CALLS": str(workdir / "calls.txt")})
        self.args = [sys.executable, str(FAULTY_SERVER), *self.args[3:]]  # in place of "-m server.cli"

    def set_delay(self, seconds: float) -> None:
        self.control.write_text(json.dumps({"delay_s": seconds}))


def score_all(urls: list[str], items: list[dict[str, str]], args: argparse.Namespace,
              routing: str = "least-loaded") -> dict[str, ReplicaStats]:
    """Score ``items`` through a fresh reward client; returns the requests each URL got."""
    config = RewardClientConfig(urls=urls, routing=routing, max_items_per_request=args.items_per_request,
                                max_concurrency=args.concurrency, api_key_env="")

    async def run() -> dict[str, ReplicaStats]:
        async with AsyncRewardClient(config) as client:
            rewards = await client.score([i["prompt"] for i in items], [i["response"] for i in items])
            assert len(rewards) == len(items)
            return client.replica_stats()

    return asyncio.run(run())


def request_seconds(url: str, items: list[dict[str, str]], repeats: int = 5) -> float:
    """Median seconds of one request of ``items`` to one server, alone, after a warm-up."""
    with httpx.Client(base_url=url, timeout=600) as client:
        client.post("/score", json={"items": items}).raise_for_status()
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            client.post("/score", json={"items": items}).raise_for_status()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="labeler (default: the embedded one)")
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--items-per-request", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    parser.add_argument("--slowdown", type=float, default=3.0, help="how much slower the slow replica is")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("routing", "ray"), help="run one part (default: both)")
    args = parser.parse_args()

    items = short_items(args.items)
    server_args = ["--log-level", "warning", "--reward-cache-items", "0",
                   "--max-batch-items", str(args.items_per_request), *(["--model", args.model] if args.model else [])]
    if args.only != "ray":
        routing_policies(items, server_args, args)
    if args.only != "routing":
        ray_replicas(items, server_args, args)


def routing_policies(items: list[dict[str, str]], server_args: list[str], args: argparse.Namespace) -> None:
    """Least-loaded against round-robin over a fast and a slow replica (see the module docstring)."""
    n, k = args.items, args.items_per_request
    with tempfile.TemporaryDirectory(prefix="drlaif-fleet-") as tmp, \
            ServerProcess(*server_args, env=ONE_THREAD) as fast, DelayedServer(Path(tmp), *server_args) as slow:
        one_request = request_seconds(fast.url, items[:k])
        delay = (args.slowdown - 1) * one_request
        slow.set_delay(delay)
        # Each replica alone, at the same concurrency: the slowdown the slow one really has. On
        # enough requests to keep the replica's queue full, not all of them: the slow one is slow.
        some = items[:2 * args.concurrency * k]
        alone = {url: 0.0 for url in (fast.url, slow.url)}
        for url in alone:
            started = time.perf_counter()
            score_all([url], some, args)
            alone[url] = time.perf_counter() - started

        urls = [slow.url, fast.url]  # the slow one first: ties go to it
        shares: dict[str, list[float]] = {"least-loaded": [], "round-robin": []}

        def fleet(policy: str) -> Callable[[], None]:
            def run() -> None:
                stats = score_all(urls, items, args, policy)
                shares[policy].append(stats[slow.url].requests / sum(s.requests for s in stats.values()))
            return run

        # Interleaved rounds, so drift in machine speed hits both policies alike; the servers are warm.
        least, rr = interleaved([fleet("least-loaded"), fleet("round-robin")], args.rounds, warmup=False)

    print(f"\n{n} short items, {k} per request (one batch each), at most {args.concurrency} requests "
          f"in flight; two replicas, one torch thread each")
    print(f"fast replica, one {k}-item request alone: {one_request * 1000:.0f} ms; slow replica's added delay per "
          f"batch: {delay * 1000:.0f} ms")
    print(f"fast replica alone                {len(some) / alone[fast.url]:8.2f} items/s  ({len(some)} items)")
    print(f"slow replica alone                {len(some) / alone[slow.url]:8.2f} items/s  "
          f"(fast/slow = {alone[slow.url] / alone[fast.url]:.2f})")
    for name, seconds in (("least-loaded", least), ("round-robin", rr)):
        print(f"both, {name:<13}           {n / seconds:8.2f} items/s  ({seconds:.1f} s; "
              f"{statistics.median(shares[name]):.0%} of requests to the slow replica)")
    print(f"least-loaded/round-robin = {rr / least:.2f}   (target >= 1.3)")


def ray_replicas(items: list[dict[str, str]], server_args: list[str], args: argparse.Namespace) -> None:
    """Items/s of the Ray Serve application with 1 and with 2 replicas, from one run."""
    import ray
    from ray import serve

    from drlaif.server_process import free_port
    from server.ray_serve import build

    # drlaif-server's flags as the builder's arguments ("--max-batch-items 4" -> max_batch_items=4).
    settings = {flag.removeprefix("--").replace("-", "_"): value
                for flag, value in zip(server_args[::2], server_args[1::2], strict=True)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        rates = {}
        for replicas in (1, 2):
            serve.run(build({**settings, "replicas": replicas, "num_cpus": 1, "torch_threads": 1}),
                      name="drlaif", route_prefix="/")
            score_all([url], items[: 2 * args.concurrency * args.items_per_request], args)  # warm up
            started = time.perf_counter()
            score_all([url], items, args)
            rates[replicas] = len(items) / (time.perf_counter() - started)
            print(f"ray serve, {replicas} replica(s)          {rates[replicas]:8.2f} items/s")
        print(f"ray serve 2 replicas/1 replica = {rates[2] / rates[1]:.2f}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
