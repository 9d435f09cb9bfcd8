"""The API key guards every route but /health/*, and an oversized body is refused with 413
before it is parsed; a real drlaif-server with a key and a small body limit. Without a key,
a server on 127.0.0.1 answers only localhost names in its Host header (DNS rebinding), and
--allowed-hosts replaces them.

The route walk enumerates the routes of the app itself (``create_app``, built in-process
without its lifespan, so nothing loads), so that a route added later without the key's
protection fails here.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route
from support import read_http_response

from drlaif.server_process import ServerProcess, server_env
from server.app import create_app
from server.config import ServerSettings

KEY = "s3cret-key"
LIMIT = 8 * 1024  # --max-body-bytes of the test server
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = {"items": [{"prompt": "What is 2+2?", "response": "4"}]}


# ------------------------------------------------------------------------------------------------
# No server: what ServerProcess passes on
# ------------------------------------------------------------------------------------------------

def test_server_process_ignores_drlaif_settings_of_the_shell(monkeypatch, tmp_path):
    for name, value in {"DRLAIF_API_KEY": "x", "DRLAIF_MODEL": "y", "DRLAIF_BACKEND": "vllm",
                        "DRLAIF_CACHE_DIR": str(tmp_path), "VLLM_CPU_KVCACHE_SPACE": "3",
                        "HF_HOME": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(name, value)
    proc = ServerProcess("--log-level", "warning", env={"DRLAIF_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        env = proc.env
        assert not {"DRLAIF_API_KEY", "DRLAIF_MODEL", "DRLAIF_BACKEND"} & env.keys()
        assert env["DRLAIF_DEVICE"] == "cpu"  # given explicitly: passed on
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # explicit wins over inherited
        assert env["HF_HOME"] == str(tmp_path / "hf") and env["PATH"] == os.environ["PATH"]
        assert env["DRLAIF_CACHE_DIR"] == str(tmp_path)  # a location, not a setting
    finally:
        proc.log.close()
        Path(proc.log.name).unlink()
    assert server_env({"DRLAIF_API_KEY": "mine"}, base={"DRLAIF_API_KEY": "x", "A": "1"}) == {
        "DRLAIF_API_KEY": "mine", "A": "1"}


# ------------------------------------------------------------------------------------------------
# A real server with a key
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed_server(embedded_model_dir, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    with ServerProcess("--model", str(embedded_model_dir), "--api-key-file", str(key_file),
                       "--max-body-bytes", str(LIMIT), "--reward-cache-items", "0",
                       "--log-level", "warning") as proc:
        proc.settings = ServerSettings(model=str(embedded_model_dir), api_key_file=key_file,
                                       max_body_bytes=LIMIT)
        yield proc


def _routes(settings: ServerSettings) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    app = create_app(settings)
    walked = []
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r}: a kind of route this test cannot walk"
        path = route.path_format
        for name in route.param_convertors:
            path = path.replace(f"{{{name}}}", "x")
        walked += [(method, path) for method in sorted(route.methods or {"GET"})]
    return walked


def _request(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(method, f"{url}{path}", content=body, timeout=60,
                         headers={"content-type": "application/json", **(headers or {})})


def _assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["www-authenticate"] == "Bearer"
    if r.request.method != "HEAD":
        error = r.json()["error"]
        assert error["type"] == "unauthorized" and "API key" in error["message"]


@pytest.mark.slow
def test_every_route_but_health_needs_the_key(keyed_server):
    routes = _routes(keyed_server.settings)
    paths = {path for _, path in routes}
    # Not vacuous: the API, the schema and docs pages, and the probes are all walked.
    assert {"/score", "/compare", "/get_reward", "/render", "/info", "/metrics", "/openapi.json", "/docs",
            "/docs/oauth2-redirect", "/redoc", "/health/live", "/health/ready"} <= paths
    for method, path in routes:
        if path.startswith("/health/"):
            assert _request(keyed_server.url, method, path).status_code == 200, (method, path)
            continue
        _assert_unauthorized(_request(keyed_server.url, method, path))
        _assert_unauthorized(_request(keyed_server.url, method, path, {"Authorization": "Bearer wrong"}))
        _assert_unauthorized(_request(keyed_server.url, method, path, {"Authorization": KEY}))  # no scheme
        r = _request(keyed_server.url, method, path, AUTH)
        assert r.status_code != 401 and r.status_code < 500, (method, path, r.status_code, r.text)
    # With the key the pages really are served (the POST routes above were 422 on "{}").
    assert _request(keyed_server.url, "GET", "/openapi.json", AUTH).json()["paths"]["/score"]
    assert "swagger" in _request(keyed_server.url, "GET", "/docs", AUTH).text.lower()


@pytest.mark.slow
def test_key_works_for_scoring_and_unknown_paths_reveal_nothing(keyed_server):
    url = keyed_server.url
    r = httpx.post(f"{url}/score", json=GOOD, headers={"Authorization": f"bearer {KEY}"}, timeout=60)
    assert r.status_code == 200 and -1 <= r.json()["results"][0]["reward"] <= 1, r.text
    _assert_unauthorized(httpx.get(f"{url}/nope", timeout=10))
    assert httpx.get(f"{url}/nope", headers=AUTH, timeout=10).status_code == 404


# ------------------------------------------------------------------------------------------------
# Body size limit
# ------------------------------------------------------------------------------------------------

def _assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["type"] == "body_too_large" and f"limit of {LIMIT} bytes" in error["message"], error


def _chunks(data: bytes, size: int = 8192):
    """A generator body: httpx sends it chunked, without Content-Length."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _refused_bodies(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    counts = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith('drlaif_rejections_total{reason="body_too_large"}')]
    return sum(counts)


def _still_serving(server) -> None:
    assert server.alive()
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200
    r = httpx.post(f"{server.url}/render", json=GOOD, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_oversized_body_is_refused_with_413_before_parsing(keyed_server):
    url = keyed_server.url
    refused = _refused_bodies(url)
    # Not JSON at all: a 413, not a 400, so the body was never parsed.
    junk = b"{" * (LIMIT + 1)
    with_length = httpx.post(f"{url}/score", content=junk, headers=AUTH, timeout=60)
    assert "content-length" in with_length.request.headers
    _assert_too_large(with_length)
    chunked = httpx.post(f"{url}/score", content=_chunks(junk), headers=AUTH, timeout=60)
    assert "content-length" not in chunked.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    _assert_too_large(chunked)
    # The key is checked first: no key, no 413 (and nothing read).
    _assert_unauthorized(httpx.post(f"{url}/score", content=junk, timeout=60))
    _still_serving(keyed_server)
    assert _refused_bodies(url) == refused + 2


@pytest.mark.slow
def test_body_within_the_limit_is_served_with_or_without_content_length(keyed_server):
    items = [{"prompt": "Say something.", "response": f"{i}: " + "It is a fine day. " * 210} for i in range(2)]
    body = json.dumps({"items": items}).encode()
    assert LIMIT - 1_000 < len(body) <= LIMIT
    answers = []
    for content in (body, _chunks(body, 500)):  # chunked: the buffered chunks reach the route intact
        r = httpx.post(f"{keyed_server.url}/render", content=content, timeout=60,
                       headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert answers[0] == answers[1]
    first, second = answers[0]["results"]
    assert first["input_ids"] != second["input_ids"]  # both items, each its own


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.slow
def test_refused_as_soon_as_the_limit_is_passed(keyed_server, framing):
    """The answer comes while the body is still unsent: a 100 MB Content-Length is refused from
    the header, a chunked body once its chunks pass the limit, without waiting for its end."""
    head = (f"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\n")
    if framing == "content-length":
        request = (head + "Content-Length: 100000000\r\n\r\n").encode() + b'{"items": ['
    else:
        chunk = b"x" * 4096
        request = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + (
            b"%x\r\n%s\r\n" % (len(chunk), chunk)) * (LIMIT // len(chunk) + 2)  # no last chunk
    with socket.create_connection(("127.0.0.1", keyed_server.port), timeout=60) as sock:
        sock.sendall(request)
        status, _, body = read_http_response(sock)
    assert status == 413, status
    assert body["error"]["type"] == "body_too_large"
    _still_serving(keyed_server)


# ------------------------------------------------------------------------------------------------
# Allowed hosts (DNS rebinding)
# ------------------------------------------------------------------------------------------------

FOREIGN = {"Host": "rebound.example"}  # what a page that rebinds its own name to 127.0.0.1 sends


def _assert_host_refused(r: httpx.Response) -> None:
    assert r.status_code == 421, (r.request.url, r.request.headers["host"], r.status_code, r.text)
    error = r.json()["error"]
    assert error["type"] == "host_not_allowed" and "--allowed-hosts" in error["message"], error


def _host_refusals(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith('drlaif_rejections_total{reason="host_not_allowed"}'))


@pytest.mark.slow
def test_a_server_on_localhost_without_a_key_answers_only_localhost_names(server):
    """The default server (127.0.0.1, no key): a foreign Host is refused on every route but the
    probes, before the body is read; the names of this machine are served, with any port."""
    url, port = server.url, server.port
    refused = _host_refusals(url)
    _assert_host_refused(httpx.get(f"{url}/info", headers=FOREIGN, timeout=10))
    _assert_host_refused(httpx.get(f"{url}/ui/", headers=FOREIGN, timeout=10))
    # Not JSON: a 421, not a 400, so the body was never parsed.
    _assert_host_refused(httpx.post(f"{url}/score", content=b"{", headers=FOREIGN, timeout=10))
    lookalike = {"Host": f"127.0.0.1.rebound.example:{port}"}
    _assert_host_refused(httpx.get(f"{url}/info", headers=lookalike, timeout=10))
    assert _host_refusals(url) == refused + 4
    for probe in ("/health/live", "/health/ready"):  # Kubernetes probes send the pod's address
        assert httpx.get(f"{url}{probe}", headers=FOREIGN, timeout=10).status_code == 200, probe
    for host in (f"localhost:{port}", "LOCALHOST", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost.:9999"):
        r = httpx.get(f"{url}/info", headers={"Host": host}, timeout=10)
        assert r.status_code == 200, (host, r.text)
    r = httpx.post(f"{url}/render", json=GOOD, headers={"Host": f"localhost:{port}"}, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_with_an_api_key_any_host_is_served(keyed_server):
    """Off by default with a key: a rebinding page cannot send it."""
    r = httpx.get(f"{keyed_server.url}/info", headers={**FOREIGN, **AUTH}, timeout=10)
    assert r.status_code == 200, r.text
    _assert_unauthorized(httpx.get(f"{keyed_server.url}/info", headers=FOREIGN, timeout=10))


@pytest.mark.slow
def test_allowed_hosts_replace_the_localhost_names(embedded_model_dir):
    with ServerProcess("--model", str(embedded_model_dir), "--log-level", "warning",
                       env={"DRLAIF_ALLOWED_HOSTS": "judge.internal,127.0.0.1"}) as proc:
        for host in (f"judge.internal:{proc.port}", "JUDGE.internal", f"127.0.0.1:{proc.port}"):
            assert httpx.get(f"{proc.url}/info", headers={"Host": host}, timeout=10).status_code == 200, host
        for host in (f"localhost:{proc.port}", "rebound.example", "internal"):
            _assert_host_refused(httpx.get(f"{proc.url}/info", headers={"Host": host}, timeout=10))
        assert httpx.get(f"{proc.url}/health/ready", headers=FOREIGN, timeout=10).status_code == 200
