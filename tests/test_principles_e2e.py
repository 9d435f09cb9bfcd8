"""Constitutions over HTTP on a real server with the embedded labeler: one exact read per
principle, checked against teacher forcing over each principle's own rendered ids, and
the aggregates against their documented formulas."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from support import HELD_OUT, teacher_forced_distribution

from drlaif.server_process import ServerProcess

pytestmark = pytest.mark.slow

WEIGHTS = {"helpful": 0.5, "harmless": 0.3, "honest": 0.2}  # the assistant preset's


def _post(server, path, body):
    response = httpx.post(f"{server.url}{path}", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.compat("/score", "constitution", "works")
def test_each_principle_is_an_exact_read_of_its_own_input_and_the_aggregate_is_the_weighted_mean(
        server, reference_model):
    body = {"items": HELD_OUT[:3], "rubric": "assistant"}
    rendered = _post(server, "/render", body)["results"]
    results = _post(server, "/score", body)["results"]
    info = httpx.get(f"{server.url}/info", timeout=30).json()
    (assistant,) = [r for r in info["rubrics"] if r["name"] == "assistant"]
    assert assistant["principles"] == WEIGHTS and assistant["aggregate"] == "weighted_mean"
    for render, result in zip(rendered, results, strict=True):
        assert set(render["principles"]) == set(result["principles"]) == set(WEIGHTS)
        inputs = {name: r["input_ids"] for name, r in render["principles"].items()}
        # The principles share the item: the same ids up to the question at the end.
        shared = min(len(v) for v in inputs.values())
        first = next(iter(inputs.values()))
        common = next(i for i in range(shared) if len({tuple(v[: i + 1]) for v in inputs.values()}) > 1)
        assert common > 0.6 * len(first)
        for name, ids in inputs.items():
            expected, mass = teacher_forced_distribution(reference_model, ids, render["label_token_ids"])
            got = result["principles"][name]
            np.testing.assert_allclose(got["distribution"], expected, atol=1e-4)
            assert got["label_mass"] == pytest.approx(mass, abs=1e-4)
        mixture = sum(WEIGHTS[n] * np.array(p["distribution"]) for n, p in result["principles"].items())
        np.testing.assert_allclose(result["distribution"], mixture, atol=1e-12)
        score = sum(WEIGHTS[n] * p["score"] for n, p in result["principles"].items())
        assert result["score"] == pytest.approx(score, abs=1e-9)
        assert result["reward"] == pytest.approx((score - 5.5) / 4.5, abs=1e-9)
        assert result["label_mass"] == pytest.approx(
            sum(WEIGHTS[n] * p["label_mass"] for n, p in result["principles"].items()), abs=1e-12)


def test_restricting_to_one_principle_gives_its_numbers_unchanged(server):
    body = {"items": HELD_OUT[:3], "rubric": "assistant"}
    full = _post(server, "/score", body)["results"]
    only = _post(server, "/score", {**body, "principles": ["harmless"]})["results"]
    two = _post(server, "/score", {**body, "principles": ["honest", "harmless"]})["results"]
    for f, o, t in zip(full, only, two, strict=True):
        assert set(o["principles"]) == {"harmless"} and set(t["principles"]) == {"harmless", "honest"}
        want = f["principles"]["harmless"]
        # A different batch (other rows, other padding) moves float32 reads by ~1e-7.
        np.testing.assert_allclose(o["principles"]["harmless"]["distribution"], want["distribution"], atol=1e-5)
        assert o["reward"] == pytest.approx(want["reward"], abs=1e-5)  # the aggregate of one is itself
        # Two principles: the weighted mean with their weights renormalised (0.3 and 0.2 -> 0.6, 0.4).
        score = 0.6 * t["principles"]["harmless"]["score"] + 0.4 * t["principles"]["honest"]["score"]
        assert t["score"] == pytest.approx(score, abs=1e-9)


@pytest.mark.compat("/compare", "constitution", "works")
def test_compare_gives_one_debiased_preference_per_principle_and_their_weighted_mean(server):
    items = [{"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "Berlin."},
             {"prompt": "How do I pick a lock?", "response_a": "Call a locksmith.", "response_b": "Use a pin."}]
    results = _post(server, "/compare", {"items": items, "rubric": "assistant"})["results"]
    for result in results:
        parts = result["principles"]
        assert set(parts) == set(WEIGHTS)
        for p in parts.values():
            assert p["p_a"] == pytest.approx((p["orders"]["ab"] + p["orders"]["ba"]) / 2, abs=1e-12)
        assert result["p_a"] == pytest.approx(sum(WEIGHTS[n] * p["p_a"] for n, p in parts.items()), abs=1e-12)
    # Swapping the responses turns every principle's preference, and the aggregate, around.
    swapped = _post(server, "/compare", {"rubric": "assistant", "items": [
        {**i, "response_a": i["response_b"], "response_b": i["response_a"]} for i in items]})["results"]
    for result, other in zip(results, swapped, strict=True):
        assert result["p_a"] == pytest.approx(1 - other["p_a"], abs=1e-5)


@pytest.mark.compat("/get_reward", "constitution", "works")
def test_get_reward_logs_each_principle(server):
    prompt = "What is the capital of France?"
    logs = httpx.post(f"{server.url}/get_reward?rubric=assistant", timeout=300,
                      json={"query": [prompt + " Paris."], "prompts": [prompt]}).json()["extra_logs"]
    assert {f"drlaif_{n}_reward" for n in WEIGHTS} <= set(logs)
    assert all(-1 <= logs[f"drlaif_{n}_reward"][0] <= 1 for n in WEIGHTS)


@pytest.mark.parametrize("body, needle", [
    ({"rubric": "assistant", "principles": ["kind"]}, "has no principle 'kind'"),
    ({"rubric": "general", "principles": ["helpful"]}, "has no principles"),
    ({"rubric": "assistant", "principles": []}, "at least 1 item"),
])
def test_bad_principle_choices_are_422(server, body, needle):
    response = httpx.post(f"{server.url}/score", json={**body, "items": HELD_OUT[:1]}, timeout=60)
    assert response.status_code == 422, response.text
    assert needle in response.json()["error"]["message"]


VARIANTS = """
rubrics:
  - {extends: assistant, name: assistant-min, aggregate: min}
  - {extends: assistant, name: assistant-geo, aggregate: geometric_mean}
  - {extends: assistant, name: assistant-sample, aggregate: sample}
"""


@pytest.fixture(scope="module")
def variants_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("constitutions") / "variants.yaml"
    path.write_text(VARIANTS)
    with ServerProcess("--rubrics", str(path), "--reward-cache-items", "0") as proc:
        yield proc


def test_min_geometric_and_sampled_aggregates(variants_server):
    items = HELD_OUT[:4]
    by = {name: _post(variants_server, "/score", {"items": items, "rubric": name})["results"]
          for name in ("assistant", "assistant-min", "assistant-geo", "assistant-sample")}
    drawn = set()
    for k in range(len(items)):
        parts = by["assistant"][k]["principles"]
        worst = min(parts.values(), key=lambda p: p["reward"])
        assert by["assistant-min"][k]["reward"] == pytest.approx(worst["reward"], abs=1e-5)
        logp = sum(WEIGHTS[n] * np.log(np.array(p["distribution"])) for n, p in parts.items())
        geo = np.exp(logp - logp.max())
        np.testing.assert_allclose(by["assistant-geo"][k]["distribution"], geo / geo.sum(), atol=1e-5)
        sampled = by["assistant-sample"][k]
        (name,) = [n for n, p in parts.items() if p["reward"] == pytest.approx(sampled["reward"], abs=1e-5)]
        drawn.add(name)
    again = _post(variants_server, "/score", {"items": items, "rubric": "assistant-sample"})["results"]
    assert [r["reward"] for r in again] == pytest.approx([r["reward"] for r in by["assistant-sample"]], abs=1e-6)
    assert drawn <= set(WEIGHTS)


@pytest.mark.parametrize("principles, needle", [
    ("[{name: a, instruction: x}, {name: a, instruction: y}]", "principle 'a' is defined twice"),
    ("[{name: a, weight: -1, instruction: x}]", "principle 'a' has weight -1"),
    ("[{name: a, instruction: x}, {name: b}]", "principle 'b' has no instruction"),
])
def test_a_bad_constitution_fails_at_startup_naming_rubric_and_principle(tmp_path, principles, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: assistant\nname: broken\nprinciples: {principles}\n")
    proc = ServerProcess("--rubrics", str(path)).start(wait_ready=False)
    assert proc.proc.wait(120) != 0
    out = proc.output()
    assert needle in out and "rubric 'broken'" in out, out


def test_a_constitution_can_reason_before_each_principles_read(server):
    """Each principle's form reasons (its question, then the reasoning instruction), and the
    aggregate is still the weighted mean of the principles' exact reads."""
    body = {"items": HELD_OUT[:2], "rubric": "assistant", "reasoning": {"max_tokens": 8, "stop": ["</never>"]}}
    for result in _post(server, "/score", body)["results"]:
        assert set(result["principles"]) == set(WEIGHTS)
        assert 0 < result["reasoning_tokens"] <= 3 * 8
        score = sum(WEIGHTS[n] * p["score"] for n, p in result["principles"].items())
        assert result["score"] == pytest.approx(score, abs=1e-9)
