"""Reference answers on a real server and the embedded labeler: /score, /render, /compare,
/get_reward (OpenRLHF's labels), group-pairwise judging, veRL's ground_truth, trl's dataset
column, drlaif-eval and drlaif-train; every read still exact against teacher forcing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from support import teacher_forced_distribution, train

from drlaif.client import RewardServerError

pytestmark = pytest.mark.slow

MATH = [
    {"prompt": "What is 7 + 5?", "response": "7 + 5 = 12.", "reference": "12"},
    {"prompt": "What is 7 + 5?", "response": "It is 13.", "reference": "12"},
    {"prompt": "What is 9 x 3?", "response": "9 x 3 is 27.", "reference": "27"},
    {"prompt": "How many sides has a hexagon?", "response": "A hexagon has 6 sides.", "reference": "6"},
]


def post(server, path: str, body: dict, expect: int = 200) -> dict:
    resp = httpx.post(f"{server.url}{path}", json=body, timeout=600)
    assert resp.status_code == expect, resp.text
    return resp.json()


def direct(server, items: list[dict], rubric: str = "correctness") -> list[float]:
    return [r["reward"] for r in post(server, "/score", {"items": items, "rubric": rubric})["results"]]


@pytest.mark.compat("/score", "plain", "works")
def test_score_with_references_is_exact_against_teacher_forcing(server, reference_model):
    body = {"items": MATH, "rubric": "correctness"}
    rendered = post(server, "/render", body)["results"]
    results = post(server, "/score", body)["results"]
    for item, render, result in zip(MATH, rendered, results, strict=True):
        slots = {s["name"]: s for s in render["slots"]}
        assert [s["name"] for s in render["slots"]] == ["prompt", "reference", "response"]
        assert render["text"][slots["reference"]["start"]:slots["reference"]["end"]] == item["reference"]
        expected, mass = teacher_forced_distribution(reference_model, render["input_ids"], render["label_token_ids"])
        np.testing.assert_allclose(result["distribution"], expected, atol=1e-4)
        assert result["label_mass"] == pytest.approx(mass, abs=1e-4)
    # Label "10" is a two-token label here: its mass is read, not folded into "1".
    assert all(len(ids) == 2 for label, ids in rendered[0]["label_token_ids"].items() if label == "10")
    info = httpx.get(f"{server.url}/info", timeout=30).json()
    flags = {r["name"]: r["takes_reference"] for r in info["rubrics"]}
    assert flags["correctness"] and flags["faithfulness"] and not flags["general"]


def test_the_reference_reaches_the_labeler(server):
    item = {"prompt": "What is 7 + 5?", "response": "The answer is 12."}
    right, wrong = (post(server, "/score", {"items": [{**item, "reference": ref}], "rubric": "correctness"})
                    ["results"][0] for ref in ("12", "15"))
    assert right["distribution"] != wrong["distribution"]


LAB_CONSTITUTION = """
name: graded
system: Grade the answer against the reference answer.
user_template: "Question: {prompt}\\nReference: {reference}\\nAnswer: {response}"
principles:
  - {name: result, weight: 2, instruction: "Is the final result the reference's? Rate 1 to 10."}
  - {name: steps, weight: 1, instruction: "Are the steps sound? Rate 1 to 10."}
"""


def test_a_reasoned_rubric_and_a_constitution_take_references_too(server):
    reasoned = post(server, "/score", {"items": MATH[:2], "rubric": "correctness", "reasoning": {"max_tokens": 8},
                                       "return_rationale": True})["results"]
    for result in reasoned:
        assert result["reasoning_tokens"] > 0 and len(result["samples"]) == 1
    lab = post(server, "/ui/rubric-lab/score", {"rubric_yaml": LAB_CONSTITUTION, "items": MATH[:2]})
    assert lab["rubric"]["takes_reference"] and set(lab["results"][0]["principles"]) == {"result", "steps"}
    err = post(server, "/ui/rubric-lab/score", {"rubric_yaml": LAB_CONSTITUTION,
                                              "items": [{"prompt": "q", "response": "a"}]}, 422)
    assert err["error"]["type"] == "reference_required"


@pytest.mark.compat("/score", "plain", "refused", error="reference_required")
@pytest.mark.compat("/compare", "plain", "refused", error="reference_required")
def test_a_missing_or_unused_reference_is_a_422_naming_it(server):
    err = post(server, "/score", {"items": [{"prompt": "q", "response": "a"}], "rubric": "correctness"}, 422)
    assert err["error"]["type"] == "reference_required" and "reference" in err["error"]["message"]
    err = post(server, "/score", {"items": [{"prompt": "q", "response": "a", "reference": "r"}]}, 422)
    assert err["error"]["type"] == "reference_unused"
    err = post(server, "/compare", {"items": [{"prompt": "q", "response_a": "a", "response_b": "b"}],
                                    "rubric": "correctness"}, 422)
    assert err["error"]["type"] == "reference_required"


@pytest.mark.compat("/compare", "plain", "works")
def test_compare_and_group_pairwise_judge_against_the_reference(server):
    pair = {"prompt": "What is 7 + 5?", "response_a": "12", "response_b": "13", "reference": "12"}
    (one,) = post(server, "/compare", {"items": [pair], "rubric": "correctness"})["results"]
    (other,) = post(server, "/compare", {"items": [{**pair, "reference": "13"}], "rubric": "correctness"})["results"]
    assert one["p_a"] != other["p_a"]
    grouped = post(server, "/score", {"items": MATH[:2], "rubric": "correctness", "group_pairwise": True,
                                      "return_pairs": True})["results"]
    assert [r["group"]["group"] for r in grouped] == [0, 0]
    assert grouped[0]["group"]["reward"] == pytest.approx(-grouped[1]["group"]["reward"], abs=1e-9)
    # The pair read the groups judge by is /compare's, reference included.
    pairwise = {"prompt": MATH[0]["prompt"], "response_a": MATH[0]["response"], "response_b": MATH[1]["response"],
                "reference": "12"}
    (c,) = post(server, "/compare", {"items": [pairwise], "rubric": "correctness"})["results"]
    assert grouped[0]["group"]["pairs"][0]["p_win"] == pytest.approx(c["p_a"], abs=1e-6)


@pytest.mark.compat("/get_reward", "plain", "works")
@pytest.mark.compat("/get_reward", "plain", "refused", error="reference_required")
def test_openrlhf_labels_are_the_references(server):
    queries = [f"{it['prompt']} {it['response']}" for it in MATH]
    body = {"query": queries, "prompts": [it["prompt"] for it in MATH], "labels": [it["reference"] for it in MATH]}
    got = post(server, "/get_reward?rubric=correctness", body)["rewards"]
    # The response is what follows the prompt in its query (the space included).
    expected = direct(server, [{**it, "response": " " + it["response"]} for it in MATH])
    assert got == pytest.approx(expected, abs=1e-5)
    err = post(server, "/get_reward?rubric=correctness", {**body, "labels": None}, 422)
    assert err["error"]["type"] == "reference_required" and "--label_key" in err["error"]["message"]
    # A rubric without a reference slot never sees them: OpenRLHF sends labels whether or not they are used.
    assert post(server, "/get_reward", body)["rewards"] == pytest.approx(
        direct(server, [{"prompt": it["prompt"], "response": " " + it["response"]} for it in MATH], rubric="general"),
        abs=1e-5)


@pytest.mark.compat("veRL batch manager", "plain", "works")
@pytest.mark.compat("veRL compute_score", "plain", "works")
def test_verl_ground_truth_reaches_the_rubric(server, monkeypatch):
    from trainer.frameworks import verl_reward

    monkeypatch.setenv("DRLAIF_REWARD_URL", server.url)
    monkeypatch.setenv("DRLAIF_RUBRIC", "correctness")
    infos = [{"question": it["prompt"]} for it in MATH]
    batch = verl_reward.compute_score_batch(["math"] * 4, [it["response"] for it in MATH],
                                            [it["reference"] for it in MATH], infos)
    expected = direct(server, MATH)
    assert [r["score"] for r in batch] == pytest.approx(expected, abs=1e-5)
    one = asyncio.run(verl_reward.compute_score("math", MATH[2]["response"], 27, infos[2]))  # a number: its text
    assert one["score"] == pytest.approx(expected[2], abs=1e-5)
    with pytest.raises(RewardServerError, match="give every item a non-empty reference"):
        verl_reward.compute_score_sync("math", MATH[0]["response"], None, infos[0])


def test_trl_reward_function_reads_the_reference_column(server):
    from trainer.frameworks.trl_reward import make_reward_func

    reward = make_reward_func(server.url, "correctness")
    prompts, completions = [it["prompt"] for it in MATH], [it["response"] for it in MATH]
    got = asyncio.run(reward(prompts=prompts, completions=completions, reference=[it["reference"] for it in MATH]))
    assert got == pytest.approx(direct(server, MATH), abs=1e-5)
    with pytest.raises(ValueError, match="trl passed no 'reference' column"):
        asyncio.run(make_reward_func(server.url, "correctness")(prompts=prompts, completions=completions))
    # The same column is never sent to a rubric without a reference slot.
    plain = asyncio.run(make_reward_func(server.url, "general")(prompts=prompts, completions=completions,
                                                                 reference=["x"] * 4))
    assert plain == pytest.approx(direct(server, [{"prompt": p, "response": c} for p, c in zip(prompts, completions)],
                                         rubric="general"), abs=1e-5)


def test_drlaif_eval_sends_a_files_references(server, tmp_path):
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps(it) + "\n" for it in MATH))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "evals.cli", "harmless", "--policy", str(responses), "--rubric", "correctness",
           "--reward-url", server.url, "--output", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    items = [json.loads(line) for line in (out / "harmless_items.jsonl").read_text().splitlines()]
    assert [it["reward"] for it in items] == pytest.approx(direct(server, MATH), abs=1e-5)
    responses.write_text("".join(json.dumps({k: v for k, v in it.items() if k != "reference"}) + "\n" for it in MATH))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "4 of 4 responses have none" in run.stderr


def test_drlaif_train_sends_the_dataset_references(server, tmp_path, tiny_policy_dir):
    data = tmp_path / "math.jsonl"
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(1, 5) for b in range(1, 6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    run = train(server.url, out, "--model", str(tiny_policy_dir), "--rubric", "correctness", "--dataset", str(data),
                "--reference-field", "answer", "--steps", "1", "--batch-size", "4", "--max-new-tokens", "8",
                "--eval-prompts", "2", "--eval-samples", "1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sample = json.loads((out / "rollouts.jsonl").read_text().splitlines()[0])
    reference = next(r["answer"] for r in rows if r["prompt"] == sample["prompt"])
    (again,) = direct(server, [{"prompt": sample["prompt"], "response": sample["response"], "reference": reference}])
    assert sample["reward"] == pytest.approx(again, abs=1e-5)
    # Without the field, the run stops before it starts, naming it.
    run = train(server.url, tmp_path / "none", "--model", str(tiny_policy_dir), "--rubric", "correctness",
                "--dataset", str(data), "--steps", "1")
    assert run.returncode != 0 and "have no 'reference' field" in run.stderr
