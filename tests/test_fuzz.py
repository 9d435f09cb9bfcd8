"""Fuzzing: schemathesis generates requests for every operation of a real server's own
/openapi.json (valid ones and ones that break the schema) and checks each answer: no 5xx,
a documented status code and content type, a body that matches the documented schema.

The server is a real drlaif-server subprocess on the embedded labeler, with small limits so
that generated requests stay cheap on a CPU (at most 4 items of 200 characters, 8 queued
sequences, which also bounds /get_reward's queries, and labeler inputs truncated to 512
tokens: a prompt may be 256 chat messages), and a rubrics file adding one rubric without a
pairwise form: the schema's rubric enums must come from the loaded registry.

Schemathesis parametrizes at collection, before any fixture runs, so the document is the
one the same settings build in-process (no labeler is loaded for it);
test_the_served_document_is_the_one_fuzzed checks that the server serves exactly it.
(``schemathesis.pytest.from_fixture``, which would fetch it from the server, does not run
on pytest 9.2: it sets ``Function._nodeid``, which pytest 9.2 no longer has.)
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from drlaif.server_process import ServerProcess
from server.app import create_app
from server.config import parse_settings
from server.rubrics.registry import load_presets

pytestmark = pytest.mark.slow

LIMITS = ("--max-items-per-request", "4", "--max-field-chars", "200", "--max-queue-items", "8",
          "--max-input-tokens", "512")
EXTRA_RUBRIC = {  # score-only (no compare section): in /score's rubric enum, not in /compare's
    "name": "terse",
    "description": "Brevity of the reply.",
    "system": "You rate how brief an assistant reply is, from 1 (rambling) to 10 (terse).",
    "user_template": "<conversation>\n{prompt}\n</conversation>\n\n<reply>\n{response}\n</reply>\n\n"
                     "How terse is the reply, from 1 to 10? Answer with the number only.",
}
PRESETS = sorted(load_presets())  # every preset has a pairwise form
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 30

RUBRICS = Path(tempfile.mkdtemp(prefix="drlaif-fuzz-")) / "rubrics.yaml"
RUBRICS.write_text(yaml.safe_dump(EXTRA_RUBRIC))
atexit.register(shutil.rmtree, RUBRICS.parent, True)
ARGS = (*LIMITS, "--rubrics", str(RUBRICS))
# The app `drlaif-server ARGS` builds (ServerProcess passes on no DRLAIF_* setting, so none is
# read here either); its labeler loads only when the app is served, so not here.
with mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if not k.startswith("DRLAIF_")},
                     clear=True):
    OPENAPI = create_app(parse_settings(list(ARGS))).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def fuzz_server(embedded_model_dir) -> ServerProcess:
    with ServerProcess(*ARGS) as proc:
        yield proc


@pytest.fixture(scope="module")
def openapi(fuzz_server) -> dict:
    return httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).json()


def test_the_served_document_is_the_one_fuzzed(openapi):
    assert openapi == OPENAPI


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, fuzz_server):
    case.call_and_validate(base_url=fuzz_server.url, checks=CHECKS, timeout=60)


def _schema_of(openapi: dict, name: str) -> dict:
    return openapi["components"]["schemas"][name]


def test_rubric_enums_are_the_loaded_rubrics(openapi):
    every, pairwise = sorted([*PRESETS, "terse"]), PRESETS
    for model in ("ScoreRequest", "CompareRequest"):
        string, null = _schema_of(openapi, model)["properties"]["rubric"]["anyOf"]
        assert null == {"type": "null"}
        assert string["enum"] == (pairwise if model == "CompareRequest" else every)
    params = {p["name"]: p for p in openapi["paths"]["/get_reward"]["post"]["parameters"]}
    assert set(params) == {"rubric", "group_pairwise", "reward_field"}  # the query parameters it takes
    assert all(p["in"] == "query" for p in params.values())
    assert params["rubric"]["schema"]["enum"] == every
    assert params["reward_field"]["schema"]["enum"] == ["reward", "reward_robust", "reward_as_written"]


def test_metrics_are_documented_as_prometheus_text(fuzz_server, openapi):
    r = httpx.get(f"{fuzz_server.url}/metrics", timeout=30)
    assert r.status_code == 200 and "drlaif" in r.text
    documented = openapi["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert documented == {r.headers["content-type"]: {"schema": {"type": "string"}}}


def test_scoring_errors_are_documented_as_error_json(openapi):
    for path in ("/score", "/compare", "/get_reward"):
        responses = openapi["paths"][path]["post"]["responses"]
        assert {"400", "401", "413", "422", "429", "503", "504"} <= set(responses)
        for code, response in responses.items():
            if code != "200":
                assert response["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


@pytest.mark.parametrize("debias", [0, 1, "true", "false", None])
def test_debias_must_be_a_json_boolean(fuzz_server, debias):
    body = {"items": [{"prompt": "Hi", "response_a": "Hello", "response_b": "Go away"}], "debias": debias}
    r = httpx.post(f"{fuzz_server.url}/compare", json=body, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request" and "debias" in r.json()["error"]["message"]


def test_unknown_and_score_only_rubrics_are_422_with_their_type(fuzz_server):
    r = httpx.post(f"{fuzz_server.url}/score", json={"items": [{"prompt": "Hi", "response": "Hello"}],
                                                      "rubric": "nope"}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["type"] == "unknown_rubric"
    assert "terse" in r.json()["error"]["message"]
    r = httpx.post(f"{fuzz_server.url}/compare", json={
        "items": [{"prompt": "Hi", "response_a": "Hello", "response_b": "Go away"}], "rubric": "terse"},
        timeout=60)
    assert r.status_code == 422 and r.json()["error"]["type"] == "rubric_cannot_compare"
