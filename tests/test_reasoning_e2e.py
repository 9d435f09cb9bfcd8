"""Reasoned judgements over HTTP on a real server with the embedded labeler: the labeler
writes a rationale, the server appends the answer prefix and reads the labels exactly.

Checked against an independent teacher-forced computation over the ids the server reports
(rendered input + rationale + answer prefix), so anyone holding /render and the result
can verify a reasoned reward.
"""

from __future__ import annotations

import concurrent.futures
import re
import time

import httpx
import numpy as np
import pytest
from support import HELD_OUT, teacher_forced_distribution

from drlaif.server_process import ServerProcess

pytestmark = pytest.mark.slow

SHORT = {"max_tokens": 32}  # a rationale budget that keeps these tests quick on a CPU


def _post(server, path, body, **kw):
    return httpx.post(f"{server.url}{path}", json=body, timeout=300, **kw)


def _score(server, body):
    response = _post(server, "/score", body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.mark.compat("/score", "reasoning", "works")
def test_reasoned_reward_equals_teacher_forcing_after_the_reported_rationale(server, reference_model):
    body = {"items": HELD_OUT[:4], "rubric": "general-reasoned", "reasoning": SHORT, "return_rationale": True}
    rendered = _post(server, "/render", body).json()["results"]
    results = _score(server, body)
    for render, result in zip(rendered, results, strict=True):
        reasoning = render["reasoning"]
        assert reasoning["max_tokens"] == 32 and reasoning["samples"] == 1
        (sample,) = result["samples"]
        ids = sample["label_input_ids"]
        n = len(render["input_ids"])
        # The label input is exactly: the rendered input, the rationale, the server's answer prefix.
        assert ids[:n] == render["input_ids"]
        assert ids[len(ids) - len(reasoning["answer_ids"]):] == reasoning["answer_ids"]
        rationale_ids = ids[n : len(ids) - len(reasoning["answer_ids"])]
        assert len(rationale_ids) == result["reasoning_tokens"] <= 32
        assert sample["finish_reason"] in ("stop", "length", "eos")
        expected, mass = teacher_forced_distribution(reference_model, ids, render["label_token_ids"])
        np.testing.assert_allclose(sample["distribution"], expected, atol=1e-4)
        np.testing.assert_allclose(result["distribution"], expected, atol=1e-4)  # one sample: its own read
        assert result["label_mass"] == pytest.approx(mass, abs=1e-4)
        assert result["score"] == pytest.approx(float(np.dot(expected, np.arange(1, 11))), abs=1e-3)
        assert result["sample_scores"] == [sample["score"]] and result["score_spread"] == 0.0


def test_greedy_rationales_are_the_labelers_argmax_path(server, reference_model):
    """Independent of the backend's decoding loop: one forward pass over input + rationale."""
    import torch

    body = {"items": HELD_OUT[:3], "rubric": "helpful-reasoned", "reasoning": SHORT, "return_rationale": True}
    rendered = _post(server, "/render", body).json()["results"]
    for render, result in zip(rendered, _score(server, body), strict=True):
        ids = result["samples"][0]["label_input_ids"]
        n, answer = len(render["input_ids"]), render["reasoning"]["answer_ids"]
        rationale = ids[n : len(ids) - len(answer)]
        with torch.no_grad():
            logits = reference_model(torch.tensor([ids[: len(ids) - len(answer)]])).logits[0, n - 1 : -1]
        assert logits.argmax(-1).tolist() == rationale


def test_a_rationale_that_writes_its_own_rating_does_not_decide_the_score(server, reference_model):
    """The labeler is told to write "Rating: 10" and does; the reward is still the exact read
    at the position the server appended, not 10 (and the stop string never matches here)."""
    body = {"rubric": "general", "return_rationale": True,
            "reasoning": {"instruction": 'Write "Rating: 10" on the first line, then explain.', "max_tokens": 32,
                          "stop": ["</verdict>"]},
            "items": [{"prompt": "What is 2+2?", "response": "2+2 is 4."},
                      {"prompt": "Name a colour.", "response": "Blue."}]}
    rendered = _post(server, "/render", body).json()["results"]
    claims = 0
    for render, result in zip(rendered, _score(server, body), strict=True):
        sample = result["samples"][0]
        claimed = re.findall(r"Rating:\s*(\d+)", sample["rationale"])
        claims += bool(claimed)
        expected, _ = teacher_forced_distribution(reference_model, sample["label_input_ids"],
                                                  render["label_token_ids"])
        np.testing.assert_allclose(result["distribution"], expected, atol=1e-4)
        if claimed:
            assert abs(result["score"] - float(claimed[-1])) > 0.5  # the read, not the rationale's claim
    assert claims >= 1, "the labeler wrote no rating of its own: the test no longer tests anything"


def test_sampled_reasoning_with_a_seed_is_reproducible_and_the_mean_of_its_samples(server):
    # Each sampled rationale costs a prefill of its item on the CPU: one short item, three samples.
    body = {"items": HELD_OUT[:1], "rubric": "harmless-reasoned", "seed": 1234, "return_rationale": True,
            "reasoning": {"samples": 3, "temperature": 0.7, "max_tokens": 16}}

    def rationales(results: list[dict]) -> list[list[list[int]]]:
        return [[s["label_input_ids"] for s in r["samples"]] for r in results]

    first, second = _score(server, body), _score(server, body)  # the session server has no reward cache
    assert [r["reward"] for r in first] == [r["reward"] for r in second]
    assert rationales(first) == rationales(second)
    for result in first:
        samples = result["samples"]
        assert len(samples) == 3 and len({tuple(s["label_input_ids"]) for s in samples}) > 1
        mean = np.mean([s["distribution"] for s in samples], axis=0)
        np.testing.assert_allclose(result["distribution"], mean, atol=1e-12)
        assert result["score"] == pytest.approx(float(np.dot(mean, np.arange(1, 11))), abs=1e-9)
        assert result["sample_scores"] == [s["score"] for s in samples]
        assert result["score_spread"] == pytest.approx(float(np.std(result["sample_scores"])), abs=1e-12)
        assert result["label_mass"] == pytest.approx(float(np.mean([s["label_mass"] for s in samples])), abs=1e-12)
    # Without a seed the default seed (0) applies: the same rationales twice, and other ones than
    # seed 1234's (another seed, other samples).
    unseeded = {k: v for k, v in body.items() if k != "seed"}
    default, again = _score(server, unseeded), _score(server, unseeded)
    assert [r["reward"] for r in default] == [r["reward"] for r in again]
    assert rationales(default) == rationales(again)
    assert rationales(default) != rationales(first) and [r["reward"] for r in default] != [r["reward"] for r in first]


def test_without_return_rationale_results_keep_the_per_sample_scores_only(server):
    (result,) = _score(server, {"items": HELD_OUT[:1], "rubric": "general-reasoned", "reasoning": SHORT})
    assert result["samples"] is None and len(result["sample_scores"]) == 1 and result["reasoning_tokens"] > 0
    (direct,) = _score(server, {"items": HELD_OUT[:1], "rubric": "general"})
    assert direct["reasoning_tokens"] == 0 and direct["sample_scores"] is None and direct["samples"] is None


def test_a_zero_budget_reads_right_after_the_instruction_and_answer_prefix(server, reference_model):
    body = {"items": HELD_OUT[:2], "rubric": "general-reasoned", "reasoning": {"max_tokens": 0},
            "return_rationale": True}
    rendered = _post(server, "/render", body).json()["results"]
    for render, result in zip(rendered, _score(server, body), strict=True):
        sample = result["samples"][0]
        assert sample["rationale"] == "" and sample["finish_reason"] == "none" and result["reasoning_tokens"] == 0
        assert sample["label_input_ids"] == render["input_ids"] + render["reasoning"]["answer_ids"]
        expected, _ = teacher_forced_distribution(reference_model, sample["label_input_ids"],
                                                  render["label_token_ids"])
        np.testing.assert_allclose(result["distribution"], expected, atol=1e-4)


@pytest.mark.compat("/compare", "reasoning", "works")
def test_compare_reasons_in_each_order_then_reads_the_pair_labels(server, reference_model):
    item = {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "Berlin."}
    body = {"items": [item], "rubric": "general-reasoned", "reasoning": {"max_tokens": 24}, "return_rationale": True}
    response = _post(server, "/compare", body)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    samples = result["samples"]
    assert len(samples["ab"]) == len(samples["ba"]) == 1
    assert 0 < result["reasoning_tokens"] <= 2 * 24
    # Both orders share the rendered text before the first response; their rationales differ.
    assert samples["ab"][0]["label_input_ids"] != samples["ba"][0]["label_input_ids"]
    labels = response.json()["labels"]
    rendered = _post(server, "/render", {"items": [{"prompt": item["prompt"], "response": "x"}],
                                         "rubric": "general-reasoned"}).json()["results"][0]
    assert set(rendered["label_token_ids"]) == {str(v) for v in range(1, 11)}  # /render is the rating form
    for order, p_a in (("ab", result["orders"]["ab"]), ("ba", result["orders"]["ba"])):
        (sample,) = samples[order]
        p_first, p_second = sample["distribution"]
        assert p_first + p_second == pytest.approx(1.0)
        assert p_a == pytest.approx(p_first if order == "ab" else p_second, abs=1e-12)
    assert result["p_a"] == pytest.approx((result["orders"]["ab"] + result["orders"]["ba"]) / 2)
    assert labels == ["1", "2"]


@pytest.mark.compat("/get_reward", "reasoning", "works")
def test_get_reward_logs_the_reasoning(server):
    query = "What is the capital of France? Paris."
    response = _post(server, "/get_reward?rubric=general-reasoned",
                     {"query": [query], "prompts": ["What is the capital of France?"]})
    assert response.status_code == 200, response.text
    logs = response.json()["extra_logs"]
    assert logs["drlaif_reasoning_tokens"][0] > 0 and logs["drlaif_score_spread"] == [0.0]


@pytest.mark.parametrize("reasoning, status, needle", [
    ({"samples": 3}, 422, "needs temperature > 0"),
    ({"max_tokens": -1}, 422, "greater than or equal to 0"),
    ({"temperature": -0.5}, 422, "greater than or equal to 0"),
    ({"stop": ["<|im_end|>"]}, 422, "special token"),
    ({"stop": [""]}, 422, "at least 1 character"),
    ({"max_tokens": 8000}, 422, "raise the limit"),
    ({"instruction": "   "}, 422, "instruction is empty"),
    ({"thinking": True}, 422, "enable_thinking"),
    ({"samples": 2, "temperature": "0.5"}, 422, "valid number"),
])
def test_malformed_reasoning_settings_are_422_with_a_message(server, reasoning, status, needle):
    response = _post(server, "/score", {"items": HELD_OUT[:1], "reasoning": reasoning})
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]
    assert _post(server, "/score", {"items": HELD_OUT[:1]}).status_code == 200  # the server is fine


def test_bad_seeds_are_422(server):
    for seed in (-1, 2**63, 1.5, True):
        assert _post(server, "/score", {"items": HELD_OUT[:1], "seed": seed}).status_code == 422


def test_a_rubric_file_with_malformed_reasoning_fails_at_startup(tmp_path):
    cases = {
        "samples: 2\n    temperature: 0": "needs temperature > 0",
        "max_tokens: -5": "greater than or equal to 0",
        "stop: ['<|im_end|>']": "special token",
    }
    for block, needle in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"extends: general\nname: broken\nreasoning:\n    {block}\n")
        proc = ServerProcess("--rubrics", str(bad)).start(wait_ready=False)
        assert proc.proc.wait(120) != 0
        out = proc.output()
        assert needle in out and ("'broken'" in out or "rubric #1" in out), out


def test_reasoning_never_holds_direct_reads_for_a_whole_rationale(small_queue_server):
    """A long rationale runs; a direct request sent after it has started is answered first."""
    server = small_queue_server
    long_body = {"items": HELD_OUT[:1], "rubric": "general",
                 "reasoning": {"max_tokens": 200, "stop": ["</never>"]}}
    done: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(lambda: (_score(server, long_body), done.append("reasoned")))
        time.sleep(1.0)  # the rationale is being generated (200 tokens take seconds here)
        fast = pool.submit(lambda: (_score(server, {"items": HELD_OUT[:2]}), done.append("direct")))
        fast.result(), slow.result()
    assert done == ["direct", "reasoned"]


def test_rationales_never_make_a_request_too_large_and_items_in_flight_are_bounded(small_queue_server):
    server = small_queue_server
    # 3 items x 3 samples = 9 rationales and 9 reads on a server that admits 8 items: served.
    many = {"items": HELD_OUT[:3], "reasoning": {"samples": 3, "temperature": 0.7, "max_tokens": 4}}
    assert len(_score(server, many)) == 3
    # While 8 items are in flight, one more item is refused at once.
    full = {"items": (HELD_OUT * 8)[:8], "reasoning": {"max_tokens": 48, "stop": ["</never>"]}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, server, "/score", full)
        time.sleep(1.0)
        refused = _post(server, "/score", {"items": HELD_OUT[:1]})
        assert first.result().status_code == 200
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] and refused.json()["error"]["type"] == "overloaded"
    assert "8 of 8 items in flight" in refused.json()["error"]["message"]
