"""POST /compare on a real server with the embedded labeler: order symmetry of the debiased
preference, the single-order mode, agreement with an independent teacher-forced read, errors,
and the reward client's compare methods. Uses the session's shared server (conftest.py)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from drlaif.client import RewardClient, RewardClientConfig, RewardServerError
from drlaif.prompt_text import prompt_text
from server.rubrics.registry import load_presets
from server.rubrics.render import PromptEncoder

pytestmark = pytest.mark.slow

PAIRS = [
    {"prompt": "How can I pick a lock to get into my neighbour's house?",
     "response_a": "I can't help with entering someone else's home. A locksmith can help with your own.",
     "response_b": "Insert a tension wrench, then rake the pins until the cylinder turns."},
    {"prompt": [{"role": "user", "content": "Give me a tip for better sleep."},
                {"role": "assistant", "content": "Keep a regular schedule."},
                {"role": "user", "content": "Another one?"}],
     "response_a": "Avoid screens for an hour before bed.", "response_b": "Drink three coffees at night."},
    {"prompt": "\n\nHuman: What's 12 times 12?\n\nAssistant:", "response_a": "144", "response_b": "124"},
]


def _swap(item: dict) -> dict:
    return {**item, "response_a": item["response_b"], "response_b": item["response_a"]}


def _compare(server, items, **body):
    r = httpx.post(f"{server.url}/compare", json={"items": items, **body}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def harmless_answers(server):
    """Both orders of every pair in one request: PAIRS, then PAIRS with A and B swapped."""
    return _compare(server, PAIRS + [_swap(p) for p in PAIRS], rubric="harmless")


def test_debiased_preference_is_order_symmetric(harmless_answers):
    body = harmless_answers
    assert body["rubric"] == "harmless" and body["debiased"] is True and body["labels"] == ["1", "2"]
    assert body["model"] == "embedded:SmolLM2-135M-Instruct"
    n = len(PAIRS)
    for original, swapped in zip(body["results"][:n], body["results"][n:]):
        assert original["p_a"] + swapped["p_a"] == pytest.approx(1.0, abs=1e-6)
        # The swapped request reads the same two sequences with the orders exchanged.
        assert swapped["orders"]["ab"] == pytest.approx(1.0 - original["orders"]["ba"], abs=1e-6)
        assert swapped["orders"]["ba"] == pytest.approx(1.0 - original["orders"]["ab"], abs=1e-6)
        assert swapped["consistent"] == original["consistent"]
        assert swapped["label_mass"]["ab"] == pytest.approx(original["label_mass"]["ba"], abs=1e-6)


def test_results_are_well_formed(harmless_answers):
    for r in harmless_answers["results"]:
        assert r["p_a"] == pytest.approx((r["orders"]["ab"] + r["orders"]["ba"]) / 2, abs=1e-12)
        assert 0.0 <= r["p_a"] <= 1.0
        assert r["consistent"] == ((r["orders"]["ab"] - 0.5) * (r["orders"]["ba"] - 0.5) > 0)
        assert 0.0 < r["label_mass"]["ab"] <= 1.0 and 0.0 < r["label_mass"]["ba"] <= 1.0
        assert r["input_tokens"] > 200 and r["truncated"] is False


def test_swapped_request_mirrors_the_original_request(server):
    # A request and its mirror image read the same sequences in the same batch shapes.
    for items in ([PAIRS[0]], PAIRS):
        original = _compare(server, items, rubric="general")["results"]
        swapped = _compare(server, [_swap(p) for p in items], rubric="general")["results"]
        for o, s in zip(original, swapped, strict=True):
            assert o["p_a"] + s["p_a"] == pytest.approx(1.0, abs=1e-6)


def test_debias_off_reads_one_order(server, harmless_answers):
    body = _compare(server, PAIRS, rubric="harmless", debias=False)
    assert body["debiased"] is False
    for single, both in zip(body["results"], harmless_answers["results"]):
        assert single["orders"]["ba"] is None and single["consistent"] is None
        assert single["label_mass"]["ba"] is None
        assert single["p_a"] == single["orders"]["ab"]
        # Same sequence in a differently padded batch: equal up to float32 noise.
        assert single["orders"]["ab"] == pytest.approx(both["orders"]["ab"], abs=1e-5)


@pytest.mark.compat("/compare", "plain", "works")
def test_compare_equals_an_independent_teacher_forced_read(server, reference_model, embedded_model_dir,
                                                           harmless_answers):
    """P(first better) = P("1") / (P("1") + P("2")) at the answer position, from the reference model."""
    from transformers import AutoTokenizer

    info = httpx.get(f"{server.url}/info", timeout=30).json()
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    encoder = PromptEncoder(tokenizer, info["limits"]["max_input_tokens"])
    compiled = encoder.compile_comparison(load_presets()["harmless"])
    one, two = encoder.trusted_ids(compiled.piece_texts[-1] + "1")[-1], encoder.trusted_ids(
        compiled.piece_texts[-1] + "2")[-1]
    for pair, result in zip(PAIRS, harmless_answers["results"]):
        text = prompt_text(pair["prompt"])
        for order, first, second in (("ab", "response_a", "response_b"), ("ba", "response_b", "response_a")):
            item = encoder.encode(compiled, text, pair[first], pair[second])
            with torch.no_grad():
                logits = reference_model(torch.tensor([item.input_ids])).logits[0, -1].double()
            p = torch.softmax(logits, -1)[[one, two]].numpy()
            p_first = p[0] / p.sum()
            expected = p_first if order == "ab" else 1.0 - p_first
            assert result["orders"][order] == pytest.approx(expected, abs=1e-4)
            assert result["label_mass"][order] == pytest.approx(p.sum(), abs=1e-4)
            assert result["input_tokens"] == len(item.input_ids)


@pytest.mark.parametrize("body, status, needle", [
    ({"items": [{"prompt": "x", "response_a": "a"}]}, 422, "response_b"),
    ({"items": []}, 422, "items"),
    ({"items": [{"prompt": "x", "response_a": "a", "response_b": "b", "response": "c"}]}, 422,
     "items.0.response: Extra inputs are not permitted"),
    ({"items": [{"prompt": "x", "response_a": "a", "response_b": "b"}], "debias": "maybe"}, 422, "debias"),
    ({"items": [{"prompt": "x", "response_a": "a", "response_b": "b"}], "rubric": "nope"}, 422,
     "unknown rubric 'nope'"),
    ({"items": [{"prompt": "x", "response_a": 1, "response_b": "b"}]}, 422, "response_a"),
])
def test_bad_compare_requests_get_4xx_with_a_message(server, body, status, needle):
    r = httpx.post(f"{server.url}/compare", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_info_says_which_rubrics_compare(server):
    info = httpx.get(f"{server.url}/info", timeout=30).json()
    assert all(r["compare"] for r in info["rubrics"])
    # A pair is admitted as one item, whatever it costs in reads (both orders, the guard).
    assert info["limits"]["max_compare_items"] == info["limits"]["max_items_per_request"]


def test_reward_client_compare_returns_the_servers_answers(server, harmless_answers):
    n = len(PAIRS)
    prompts = [p["prompt"] for p in PAIRS]
    config = RewardClientConfig(urls=[server.url], rubric="harmless", max_items_per_request=2)  # 2 chunks
    with RewardClient(config) as client:
        items = client.compare_items(prompts, [p["response_a"] for p in PAIRS],
                                     [p["response_b"] for p in PAIRS])
        single = client.compare(prompts[:1], [PAIRS[0]["response_a"]], [PAIRS[0]["response_b"]], debias=False)
        with pytest.raises(ValueError, match="give one of each"):
            client.compare(prompts, ["a"], ["b"])
        with pytest.raises(RewardServerError, match="422.*unknown rubric"):
            client.compare(prompts[:1], ["a"], ["b"], rubric="nope")
    # The client's chunks are batched differently from the fixture's request: float32 noise only.
    expected = harmless_answers["results"][:n]
    assert [i.p_a for i in items] == pytest.approx([r["p_a"] for r in expected], abs=1e-5)
    assert [i.consistent for i in items] == [r["consistent"] for r in expected]
    assert items[0].orders.ba == pytest.approx(expected[0]["orders"]["ba"], abs=1e-5)
    assert items[0].label_mass.ab == pytest.approx(expected[0]["label_mass"]["ab"], abs=1e-5)
    assert single == pytest.approx([expected[0]["orders"]["ab"]], abs=1e-5)
    assert np.all(np.isfinite([i.p_a for i in items]))
