"""POST /get_reward, OpenRLHF's remote reward protocol, on a real server with the embedded labeler:
the exact request/response shape, rewards equal to /score's, the rubric in the URL, end-of-sequence
markers, and bad queries. Uses the session's shared server (conftest.py)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow

CHATML_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
SAMPLES = [  # (prompt, response) as OpenRLHF would hold them
    (CHATML_PROMPT, "Paris."),
    ("How can I pick a lock to get into my neighbour's house?", " I can't help with that."),
    ("\n\nHuman: What's 12 times 12?\n\nAssistant:", " 144"),
]


def _post(server, path, body, **kw):
    return httpx.post(f"{server.url}{path}", json=body, timeout=300, **kw)


def _openrlhf_body(samples, labels=None):
    """What OpenRLHF's remote reward client sends: query = prompt + response."""
    return {"query": [p + r for p, r in samples], "prompts": [p for p, _ in samples],
            "labels": labels if labels is not None else [""] * len(samples)}


def _score_rewards(server, samples, rubric=None):
    body = {"items": [{"prompt": p, "response": r} for p, r in samples]}
    if rubric:
        body["rubric"] = rubric
    r = _post(server, "/score", body)
    assert r.status_code == 200, r.text
    return [x["reward"] for x in r.json()["results"]]


@pytest.mark.parametrize("rubric", [None, "harmless"])
def test_openrlhf_request_gets_openrlhf_shaped_rewards_equal_to_score(server, rubric):
    path = "/get_reward" + (f"?rubric={rubric}" if rubric else "")
    r = _post(server, path, _openrlhf_body(SAMPLES))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    n = len(SAMPLES)
    assert len(body["rewards"]) == len(body["scores"]) == n
    assert all(isinstance(v, float) for v in body["rewards"] + body["scores"])
    assert body["rewards"] == pytest.approx(_score_rewards(server, SAMPLES, rubric), abs=1e-9)
    assert body["scores"] == pytest.approx([(x + 1) / 2 for x in body["rewards"]], abs=1e-12)
    assert all(0.0 <= s <= 1.0 for s in body["scores"])
    assert set(body["extra_logs"]) == {"drlaif_score", "drlaif_label_mass", "drlaif_reward_as_written",
                                       "drlaif_reward_robust"}
    for values in body["extra_logs"].values():
        assert len(values) == n and all(isinstance(v, float) for v in values)
    expected_scores = [5.5 + 4.5 * x for x in body["rewards"]]
    assert body["extra_logs"]["drlaif_score"] == pytest.approx(expected_scores, abs=1e-9)


def test_rubric_in_the_url_changes_the_reward(server):
    general = _post(server, "/get_reward", _openrlhf_body(SAMPLES[:1])).json()["rewards"]
    harmless = _post(server, "/get_reward?rubric=harmless", _openrlhf_body(SAMPLES[:1])).json()["rewards"]
    assert general != harmless


def test_trailing_end_of_sequence_markers_are_not_scored(server):
    plain = _post(server, "/get_reward", _openrlhf_body(SAMPLES[:1])).json()["rewards"]
    body = _openrlhf_body(SAMPLES[:1])
    body["query"] = [body["query"][0] + "<|im_end|><|endoftext|>"]
    assert _post(server, "/get_reward", body).json()["rewards"] == pytest.approx(plain, abs=1e-9)


def test_older_and_newer_openrlhf_bodies_are_accepted(server):
    body = _openrlhf_body(SAMPLES[:1])
    del body["labels"]  # no --label_key
    assert _post(server, "/get_reward", body).status_code == 200
    body = _openrlhf_body(SAMPLES[:1], labels=[None])
    body["some_future_key"] = {"x": 1}
    assert _post(server, "/get_reward", body).status_code == 200


@pytest.mark.parametrize("body, needle", [
    ({"query": ["Hello world"], "prompts": ["Goodbye"]},
     "query[0] does not start with prompts[0]"),
    ({"query": ["Q1 a", "X b"], "prompts": ["Q1", "Q2"]}, "query[1] does not start with prompts[1]"),
    ({"query": ["Q1 a", "Q2 b"], "prompts": ["Q1"]}, "2 queries but 1 prompts"),
    ({"query": ["Q1 a"]}, "prompts: Field required"),
    ({"query": [], "prompts": []}, "query"),
    ({"query": "Q1 a", "prompts": ["Q1"]}, "query"),
    ({"query": [3], "prompts": ["Q1"]}, "query"),
])
def test_bad_queries_get_4xx_with_a_message(server, body, needle):
    r = _post(server, "/get_reward", body)
    assert 400 <= r.status_code < 500, r.text
    assert needle in r.json()["error"]["message"]


def test_unknown_rubric_in_the_url(server):
    r = _post(server, "/get_reward?rubric=nope", _openrlhf_body(SAMPLES[:1]))
    assert r.status_code == 422 and "unknown rubric 'nope'" in r.json()["error"]["message"]


def test_server_keeps_serving_after_bad_queries(server):
    _post(server, "/get_reward", {"query": ["abc"], "prompts": ["zzz"]})
    assert _post(server, "/get_reward", _openrlhf_body(SAMPLES[:1])).status_code == 200
