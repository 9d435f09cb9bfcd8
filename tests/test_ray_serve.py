"""drlaif on Ray Serve (server/ray_serve.py): a local Ray instance started here, 2 replicas of
the embedded labeler behind Ray Serve's HTTP proxy at one URL, started as the docs say
(`serve run server.ray_serve:build replicas=2 ...` is the same builder and arguments).

The same items score as on a single drlaif-server; a replica actor killed (as a crashed node
or an OOM kill would) while 64 requests are in flight loses none of them, and Ray brings the
replica back; a PPO run pointed at the Ray URL finishes while a replica is killed. A second
application on the same Ray instance, with an API key, allowed hosts and a small body budget,
shows the ingress refusing what it must before it reads a body, and bounding the bodies it holds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support import HELD_OUT, OutputReader, metrics, read_http_response, rollouts, train, wait_for_steps

from drlaif.client import RewardClient, RewardClientConfig
from drlaif.server_process import free_port

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

APP = "drlaif"
RETRYABLE = {429, 502, 503, 504}


def replica_actors() -> set[str]:
    """Names of the labeler replicas' actors (Ray names each replica's actor)."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{APP}#labeler#")}


def kill_one_replica() -> str:
    name = min(replica_actors())
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


def wait_for_replicas(n: int, gone: str, timeout: float = 120) -> None:
    """Until ``n`` replicas run and ``gone`` is not among them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = serve.status().applications[APP].deployments["labeler"].replica_states.get("RUNNING", 0)
        if running == n and gone not in replica_actors() and len(replica_actors()) == n:
            return
        time.sleep(1)
    raise AssertionError(f"{n} replicas were not running again within {timeout}s")


@pytest.fixture(scope="module")
def ray_proxy() -> int:
    """A local Ray instance with Serve's HTTP proxy on 127.0.0.1; its port."""
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def fleet(ray_proxy):
    from server.ray_serve import build

    serve.run(build({"replicas": 2, "num_cpus": 0.5, "torch_threads": 1, "reward_cache_items": 0}),
              name=APP, route_prefix="/")
    return f"http://127.0.0.1:{ray_proxy}"


KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 64 * 1024  # max_body_bytes of the guarded fleet; its ingress holds two such bodies at most
GUARDED = "/guarded"


@pytest.fixture(scope="module")
def guarded_fleet(ray_proxy):
    """One replica behind an ingress with an API key, allowed hosts and a budget of 2 bodies,
    as its arguments come from `serve run` (strings) or a config file; (port, path prefix)."""
    from server.ray_serve import build

    serve.run(build({"replicas": 1, "num_cpus": 0.5, "torch_threads": 1, "reward_cache_items": 0,
                     "api_key": KEY, "allowed_hosts": "127.0.0.1,localhost", "max_body_bytes": LIMIT,
                     "ingress_bytes_in_flight": 2 * LIMIT}),
              name="guarded", route_prefix=GUARDED)
    return ray_proxy, GUARDED


def _stalled_upload(port: int, path: str, headers: dict[str, str], length: int = LIMIT) -> socket.socket:
    """A POST that announces ``length`` bytes of body and sends 10 of them, then stalls."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", **headers}.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\n{head}Content-Length: {length}\r\n\r\n".encode() + b'{"items": ')
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of the response to a stalled upload, which must come
    while the body is still unsent."""
    try:
        return read_http_response(sock)
    except TimeoutError:
        pytest.fail("no answer within 30 s while the body was unsent: the ingress waited for it")


def _until(send: Callable[[], httpx.Response], wanted: Callable[[httpx.Response], bool], what: str,
           timeout: float = 60) -> httpx.Response:
    """The first answer of ``send()`` that is ``wanted`` (sent again until then)."""
    deadline = time.monotonic() + timeout
    while not wanted(answer := send()):
        assert time.monotonic() < deadline, f"not {what} within {timeout}s: {answer.status_code} {answer.text}"
        time.sleep(0.2)
    return answer


def test_two_replicas_serve_the_whole_api_with_a_single_servers_rewards(fleet, server):
    info = httpx.get(f"{fleet}/info", timeout=30)
    assert info.status_code == 200 and info.json()["replicas"] == 2
    assert info.headers["x-drlaif-replica"]
    assert httpx.get(f"{fleet}/health/ready", timeout=30).status_code == 200
    body = {"items": HELD_OUT[:6]}
    ours = httpx.post(f"{fleet}/score", json=body, timeout=120)
    single = httpx.post(f"{server.url}/score", json=body, timeout=120)
    assert ours.status_code == 200, ours.text
    for a, b in zip(ours.json()["results"], single.json()["results"], strict=True):
        # Float32 rounding only: the first two items share a prompt, whose KV a fresh replica
        # computes on top of another kept prefix than the session's long-running server does
        # (measured 1.1e-6).
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5)
        assert a["distribution"] == pytest.approx(b["distribution"], abs=1e-5)
    # Errors are the server's own, word for word.
    bad = httpx.post(f"{fleet}/score", json={"items": []}, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request"
    assert "drlaif_items_scored_total" in httpx.get(f"{fleet}/metrics", timeout=30).text


def test_a_replica_killed_under_64_concurrent_requests_loses_none_and_comes_back(fleet):
    def post(k: int) -> httpx.Response:
        item = HELD_OUT[k % len(HELD_OUT)]
        items = [{"prompt": f"Question {k}: {item['prompt']}", "response": item["response"]}]
        return httpx.post(f"{fleet}/score", json={"items": items}, timeout=300)

    prompts = [f"Question {k}" for k in range(16)]
    config = RewardClientConfig(urls=[fleet], deadline_s=300)
    with RewardClient(config) as client, ThreadPoolExecutor(64) as pool:
        answers = [pool.submit(post, k) for k in range(63)]
        rewards = pool.submit(client.score, prompts, ["An answer."] * 16)  # the 64th request
        time.sleep(1.5)  # requests are in the replicas now
        killed = kill_one_replica()
        statuses = [a.result().status_code for a in answers]
        # The reward client, retrying what was retryable, gets every reward.
        assert len(rewards.result()) == 16 and all(-1 <= r <= 1 for r in rewards.result())
    assert set(statuses) <= {200} | RETRYABLE, statuses
    wait_for_replicas(2, killed)


def test_a_ppo_run_against_the_ray_url_finishes_while_a_replica_is_killed(fleet, tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    # The tiny random policy: what is under test is the judge fleet, not what the policy learns.
    proc = train(fleet, out, "--steps", "2", "--batch-size", "4", "--max-new-tokens", "8",
                 "--model", str(tiny_policy_dir), wait=False)
    reader = OutputReader(proc)
    try:
        wait_for_steps(out, 1, proc, output=reader.text)
        killed = kill_one_replica()
        output = reader.finish(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert all(-1 <= s["reward"] <= 1 for s in rollouts(out))
    wait_for_replicas(2, killed)


def test_the_ingress_refuses_a_foreign_host_or_a_missing_key_before_it_reads_the_body(guarded_fleet):
    """Each request announces a body within the limit and sends 10 bytes of it: the refusal,
    the server's own (type, message, header), comes while the client still owes the rest."""
    from server.app.auth import MESSAGE

    port, prefix = guarded_fleet
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        with _stalled_upload(port, f"{prefix}/score", headers) as sock:
            status, answer_headers, body = _answer(sock)
        assert status == 401, (headers, body)
        assert answer_headers["www-authenticate"] == "Bearer"
        assert body == {"error": {"type": "unauthorized", "message": MESSAGE}}
    with _stalled_upload(port, f"{prefix}/score", {**AUTH, "Host": "rebound.example"}) as sock:
        status, _, body = _answer(sock)
    assert status == 421 and body["error"]["type"] == "host_not_allowed", body
    # What passes: the key and an allowed name; the probes with neither; the playground's page.
    url = f"http://127.0.0.1:{port}{prefix}"
    r = httpx.post(f"{url}/score", json={"items": HELD_OUT[:1]}, headers={**AUTH, "Host": f"localhost:{port}"},
                   timeout=120)
    assert r.status_code == 200 and r.headers["x-drlaif-replica"], r.text
    assert httpx.get(f"{url}/health/ready", headers={"Host": "10.1.2.3:8000"}, timeout=30).status_code == 200
    assert httpx.get(f"{url}/ui/", timeout=30).status_code == 200
    # A body over the limit: the server's 413, from its Content-Length.
    with _stalled_upload(port, f"{prefix}/score", AUTH, length=LIMIT + 1) as sock:
        status, _, body = _answer(sock)
    assert status == 413 and body["error"]["type"] == "body_too_large", body


def test_the_ingress_holds_at_most_ingress_bytes_in_flight_of_bodies(guarded_fleet):
    """Two stalled uploads of a full body each hold the whole budget: another body is refused
    with 429 and Retry-After at once, a request without a body still passes, and each upload
    that ends gives its bytes back."""
    port, prefix = guarded_fleet
    url = f"http://127.0.0.1:{port}{prefix}"

    def small_post() -> httpx.Response:
        return httpx.post(f"{url}/render", json={"items": HELD_OUT[:1]}, headers=AUTH, timeout=60)

    uploads = [_stalled_upload(port, f"{prefix}/score", AUTH) for _ in range(2)]
    try:
        refused = _until(small_post, lambda r: r.status_code == 429, "refused with 429")
        assert refused.json()["error"]["type"] == "ingress_full" and refused.headers["retry-after"] == "1"
        assert httpx.get(f"{url}/info", headers=AUTH, timeout=30).status_code == 200
        uploads.pop().close()
        served = _until(small_post, lambda r: r.status_code != 429, "served again")
        assert served.status_code == 200, served.text
        assert small_post().status_code == 200  # one body's room: the other upload still holds its own
    finally:
        for sock in uploads:
            sock.close()


def test_deployment_options_fixed_autoscaled_and_tensor_parallel():
    from server.config import ServerSettings
    from server.ray_serve import FleetSettings, build

    plain = FleetSettings(replicas=3, num_gpus=1).deployment_options(ServerSettings())
    assert plain["num_replicas"] == 3 and plain["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    scaled = FleetSettings(min_replicas=1, max_replicas=4).deployment_options(ServerSettings())
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16.0}
    sharded = FleetSettings(num_cpus=2).deployment_options(ServerSettings(backend="vllm", tensor_parallel_size=2))
    assert sharded["placement_group_bundles"] == [{"CPU": 2.0}, {"GPU": 1.0}, {"GPU": 1.0}]
    assert sharded["ray_actor_options"]["num_gpus"] == 0
    with pytest.raises(ValueError, match="go together"):
        FleetSettings(min_replicas=1)
    with pytest.raises(ValueError, match="max_queue_items"):  # server settings are checked before any replica starts
        build({"max_items_per_request": 10, "max_queue_items": 5})
    with pytest.raises(ValueError, match="unknown setting.*replica"):
        build({"replica": 2})


def test_the_ingress_takes_what_the_replicas_can_and_its_budget_fits_the_largest_body():
    from server.ray_serve import FleetSettings, build

    assert FleetSettings().ingress_options() == {"max_ongoing_requests": 64}
    assert FleetSettings(replicas=3, max_ongoing_requests=8).ingress_options() == {"max_ongoing_requests": 24}
    assert FleetSettings(min_replicas=1, max_replicas=4).ingress_options() == {"max_ongoing_requests": 256}
    assert FleetSettings().ingress_bytes_in_flight == 2**30
    with pytest.raises(ValueError, match="ingress_bytes_in_flight.*at least max_body_bytes"):
        build({"ingress_bytes_in_flight": 2**20, "max_body_bytes": 2**20 + 1})
    build({"ingress_bytes_in_flight": 2**20, "max_body_bytes": 2**20})


def test_the_shipped_serve_config_is_valid_and_builds():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from server.ray_serve import build

    config = yaml.safe_load((Path(__file__).parents[1] / "docker" / "ray-serve.yaml").read_text())
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == "server.ray_serve:build"
    build(app.args)  # every argument is a known deployment or server setting
