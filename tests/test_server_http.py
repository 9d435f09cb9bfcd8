"""HTTP behaviour of a real drlaif-server: bad input, limits, auth, readiness, backpressure."""

from __future__ import annotations

import concurrent.futures
import signal
import time

import httpx
import pytest

from drlaif.server_process import ServerProcess

pytestmark = pytest.mark.slow

GOOD = {"items": [{"prompt": "What is 2+2?", "response": "4"}]}


def _still_serving(server) -> None:
    assert server.alive()
    r = httpx.post(f"{server.url}/score", json=GOOD, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 422, "body"),
        (b'"just a string"', 422, "body"),
        (b'{"items": []}', 422, "items"),
        (b'{"items": "abc"}', 422, "items"),
        (b'{"items": [{"prompt": "x"}]}', 422, "response"),
        (b'{"items": [{"prompt": 5, "response": "x"}]}', 422, "prompt"),
        (b'{"items": [{"prompt": "x", "response": null}]}', 422, "response"),
        (b'{"items": [{"prompt": [], "response": "x"}]}', 422, "prompt"),
        (b'{"items": [{"prompt": [{"role": "wizard", "content": "x"}], "response": "x"}]}', 422, "role"),
        (b'{"items": [{"prompt": "x", "response": "y", "extra": 1}]}', 422, "extra"),
        (b'{"items": [{"prompt": "x", "response": "y"}], "rubric": "nope"}', 422, "unknown rubric 'nope'"),
        (b'{"items": [{"prompt": "x", "response": "y"}], "rubric": 3}', 422, "rubric"),
    ],
)
def test_bad_input_gets_4xx_with_message(server, body, status, needle):
    for path in ("/score", "/render"):
        r = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"},
                       timeout=60)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert needle in error["message"], error
        assert error["type"]
    _still_serving(server)


def test_oversize_field_and_too_many_items(server):
    huge = {"items": [{"prompt": "x", "response": "y" * 32_001}]}
    r = httpx.post(f"{server.url}/score", json=huge, timeout=60)
    assert r.status_code == 422 and "at most 32000 characters" in r.json()["error"]["message"]
    many = {"items": [{"prompt": "x", "response": "y"}] * 257}
    r = httpx.post(f"{server.url}/score", json=many, timeout=60)
    assert r.status_code == 422 and "at most 256 items" in r.json()["error"]["message"]
    _still_serving(server)


def test_wrong_method_and_path(server):
    assert httpx.get(f"{server.url}/score", timeout=10).status_code == 405
    r = httpx.get(f"{server.url}/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_info_and_metrics(server):
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info["model"] == "embedded:SmolLM2-135M-Instruct"
    assert info["backend"] == "transformers" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert {r["name"] for r in info["rubrics"]} >= {"general", "helpful", "harmless", "summary"}
    assert info["default_rubric"] == "general" and info["ready"] is True
    httpx.post(f"{server.url}/score", json=GOOD, timeout=60)
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name in ("drlaif_requests_total", "drlaif_request_seconds_bucket", "drlaif_items_scored_total",
                 "drlaif_batch_sequences_bucket", "drlaif_queue_depth", "drlaif_rejections_total"):
        assert name in text, name
    assert 'drlaif_requests_total{route="/score",status="200"}' in text


@pytest.fixture(scope="module")
def strict_server(embedded_model_dir, tmp_path_factory):
    """A server with auth, a tiny queue, small limits, no truncation, and --model DIR."""
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text("s3cret-key\n")
    rubrics = tmp_path_factory.mktemp("rubrics") / "rubrics.yaml"
    rubrics.write_text(
        "name: terse\n"
        "description: one-line test rubric\n"
        "system: Rate the answer.\n"
        "user_template: 'Q: {prompt}\\nA: {response}'\n"
        "answer_prefix: 'Score: '\n"
        "scale: {min: 1, max: 5}\n")
    with ServerProcess("--model", str(embedded_model_dir), "--api-key-file", str(key_file),
                       "--rubrics", str(rubrics), "--max-input-tokens", "512", "--no-truncate",
                       "--max-items-per-request", "4", "--max-queue-items", "4", "--max-batch-items", "1",
                       "--max-batch-tokens", "1024", "--reward-cache-items", "0") as proc:
        proc.key = "s3cret-key"
        yield proc


def test_auth_required_except_health(strict_server):
    url = strict_server.url
    assert httpx.post(f"{url}/score", json=GOOD, timeout=30).status_code == 401
    bad = httpx.post(f"{url}/score", json=GOOD, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert bad.status_code == 401 and "API key" in bad.json()["error"]["message"]
    assert bad.headers["www-authenticate"] == "Bearer"
    ok = httpx.post(f"{url}/score", json=GOOD, headers={"Authorization": f"Bearer {strict_server.key}"},
                    timeout=60)
    assert ok.status_code == 200, ok.text
    assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
    assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{url}/info", timeout=10).status_code == 401


def test_user_rubric_with_own_scale(strict_server):
    headers = {"Authorization": f"Bearer {strict_server.key}"}
    r = httpx.post(f"{strict_server.url}/score", json={**GOOD, "rubric": "terse"}, headers=headers, timeout=60)
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["scale"] == {"min": 1, "max": 5}
    item = body["results"][0]
    assert len(item["distribution"]) == 5 and 1 <= item["score"] <= 5 and -1 <= item["reward"] <= 1
    assert body["model"].endswith("SmolLM2-135M-Instruct")


def test_no_truncate_rejects_with_413(strict_server):
    headers = {"Authorization": f"Bearer {strict_server.key}"}
    long = {"items": [{"prompt": "Talk.", "response": "word " * 1000}]}
    r = httpx.post(f"{strict_server.url}/score", json=long, headers=headers, timeout=60)
    assert r.status_code == 413 and "max_input_tokens=512" in r.json()["error"]["message"]


def test_full_queue_answers_429_at_once(strict_server):
    headers = {"Authorization": f"Bearer {strict_server.key}"}
    body = {"items": [{"prompt": f"Question {i}?", "response": "An answer. " * 30} for i in range(4)]}

    def post():
        started = time.monotonic()
        r = httpx.post(f"{strict_server.url}/score", json=body, headers=headers, timeout=120)
        return r, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(lambda _: post(), range(12)))
    statuses = [r.status_code for r, _ in outcomes]
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses
    for r, seconds in outcomes:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "queue is full" in r.json()["error"]["message"]
            assert seconds < 5  # refused at once, not after waiting
    metrics = httpx.get(f"{strict_server.url}/metrics", headers=headers, timeout=10).text
    assert 'drlaif_rejections_total{reason="overloaded"}' in metrics
    _still_serving_with(strict_server, headers)


def _still_serving_with(server, headers):
    r = httpx.post(f"{server.url}/score", json=GOOD, headers=headers, timeout=60)
    assert r.status_code == 200, r.text


def test_readiness_is_503_until_loaded(embedded_model_dir):
    proc = ServerProcess("--model", str(embedded_model_dir)).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                live = httpx.get(f"{proc.url}/health/live", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert live.status_code == 200
        early = httpx.get(f"{proc.url}/health/ready", timeout=5)
        assert early.status_code == 503 and early.json()["error"]["type"] == "not_ready"
        score = httpx.post(f"{proc.url}/score", json=GOOD, timeout=5)
        assert score.status_code == 503 and score.headers["retry-after"]
        proc.wait_ready()
        assert httpx.post(f"{proc.url}/score", json=GOOD, timeout=60).status_code == 200
    finally:
        assert proc.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean stop


def test_bad_rubrics_file_fails_fast_with_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\nsystem: s\nuser_template: 'only {prompt}'\n")
    proc = ServerProcess("--rubrics", str(bad)).start(wait_ready=False)
    assert proc.proc.wait(60) != 0
    assert "user_template must contain {response} exactly once" in proc.output()


def test_unloadable_model_exits_nonzero(tmp_path):
    proc = ServerProcess("--model", str(tmp_path / "no-such-model")).start(wait_ready=False)
    assert proc.proc.wait(120) == 1
    assert "failed to load" in proc.output()


def test_a_labeler_whose_context_cannot_hold_a_rubric_refuses_to_start(embedded_model_dir, tmp_path):
    """The configured --max-input-tokens is lowered to the model's context at startup; a rubric
    whose trusted text then leaves no room for the prompt and response must stop the server,
    never score items cut down to the truncation marker."""
    import json

    small = tmp_path / "short-context"
    small.mkdir()
    for f in embedded_model_dir.iterdir():
        if f.name != "config.json":
            (small / f.name).symlink_to(f)
    config = json.loads((embedded_model_dir / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 200}))
    proc = ServerProcess("--model", str(small), "--max-input-tokens", "4096").start(wait_ready=False)
    assert proc.proc.wait(120) == 1
    out = proc.output()
    assert "the labeler's context of 200 tokens" in out and "rubric '" in out and "max_input_tokens=199" in out, out
