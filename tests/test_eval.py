"""`drlaif-eval` and `drlaif-label` against a real server with the embedded labeler.

- alignment reports exactly the accuracy that an independent computation from the server's
  /compare and /score answers gives (on the human-pair fixtures written for these tests);
- win rate and harmless rate from response files and from a model policy;
- the preference file of drlaif-label loads in trl's DPOTrainer and trains for one step.

Uses the session's shared server (conftest.py); the CLIs run in-process through their mains.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from evals.cli import label_main, main

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
PAIRS_JSONL = FIXTURES / "human_pairs.jsonl"
PAIRS_HH = FIXTURES / "human_pairs_hh.jsonl"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _human_pairs(path: Path) -> list[tuple[object, str, str]]:
    """(prompt, chosen, rejected), parsed here independently of evals.data."""
    out = []
    for row in _lines(path):
        if "prompt" in row:
            text = lambda r: r if isinstance(r, str) else r[-1]["content"]
            out.append((row["prompt"], text(row["chosen"]), text(row["rejected"])))
        else:
            cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            prompt = row["chosen"][:cut]
            assert row["rejected"][:cut] == prompt
            out.append((prompt, row["chosen"][cut:].strip(), row["rejected"][cut:].strip()))
    return out


def _post(server, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def _agreement(margins: list[float]) -> float:
    """Share of pairs where the labeler sides with the human; an exact tie is half a point."""
    return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)


@pytest.mark.parametrize("fixture", [PAIRS_JSONL, PAIRS_HH], ids=["jsonl", "hh-rlhf"])
def test_alignment_equals_an_independent_computation(server, tmp_path, fixture):
    out = tmp_path / "alignment"
    main(["alignment", "--reward-url", server.url, "--data", str(fixture), "--output", str(out),
          "--rubric", "harmless"])
    report = json.loads((out / "alignment.json").read_text())

    pairs = _human_pairs(fixture)
    compared = _post(server, "/compare", {"rubric": "harmless", "items": [
        {"prompt": p, "response_a": c, "response_b": r} for p, c, r in pairs]})["results"]
    scored = _post(server, "/score", {"rubric": "harmless", "items": [
        {"prompt": p, "response": x} for p, c, r in pairs for x in (c, r)]})["results"]
    pairwise = _agreement([c["p_a"] - 0.5 for c in compared])
    direct = _agreement([scored[2 * i]["reward"] - scored[2 * i + 1]["reward"] for i in range(len(pairs))])

    assert report["n"] == len(pairs)
    assert report["pairwise_accuracy"] == pairwise
    assert report["direct_accuracy"] == direct
    for key in ("pairwise", "direct"):
        assert 0.0 <= report[f"{key}_ci_low"] <= report[f"{key}_accuracy"] <= report[f"{key}_ci_high"] <= 1.0
    assert report["position_consistency"] == sum(c["consistent"] for c in compared) / len(pairs)
    assert report["rubric"] == "harmless" and report["model"] == "embedded:SmolLM2-135M-Instruct"
    assert 0.0 < report["label_mass"]["compare"]["min"] <= report["label_mass"]["compare"]["mean"] <= 1.0
    items = _lines(out / "alignment_items.jsonl")
    assert [i["p_chosen"] for i in items] == pytest.approx([c["p_a"] for c in compared], abs=1e-5)
    assert (out / "alignment.png").stat().st_size > 0
    markdown = (out / "alignment.md").read_text()
    assert "pairwise accuracy" in markdown and "alignment.png" in markdown


def test_alignment_with_a_single_order_per_pair(server, tmp_path):
    out = tmp_path / "single"
    main(["alignment", "--reward-url", server.url, "--data", str(PAIRS_HH), "--output", str(out),
          "--no-debias", "--seed", "1"])
    report = json.loads((out / "alignment.json").read_text())
    items = _lines(out / "alignment_items.jsonl")
    assert report["n"] == 3 and report["debias"] is False and report["position_consistency"] is None
    assert all(i["orders"]["ba"] is None for i in items)
    # P(chosen better) is read with chosen in the slot the seed gave it.
    for item in items:
        p_first = item["orders"]["ab"]
        assert item["p_chosen"] == pytest.approx(p_first if item["chosen_first"] else 1 - p_first, abs=1e-12)
    assert report["pairwise_accuracy"] == _agreement([i["p_chosen"] - 0.5 for i in items])


def _write_responses(path: Path, pairs, which: int) -> None:
    path.write_text("".join(json.dumps({"prompt": p[0], "response": p[which]}) + "\n" for p in pairs))


def test_winrate_and_harmless_rate_from_response_files(server, tmp_path):
    pairs = _human_pairs(PAIRS_JSONL)[:3]
    _write_responses(tmp_path / "a.jsonl", pairs, 1)
    _write_responses(tmp_path / "b.jsonl", pairs, 2)

    main(["winrate", "--reward-url", server.url, "--policy-a", str(tmp_path / "a.jsonl"),
          "--policy-b", str(tmp_path / "b.jsonl"), "--output", str(tmp_path / "win")])
    win = json.loads((tmp_path / "win" / "winrate.json").read_text())
    compared = _post(server, "/compare", {"items": [
        {"prompt": p, "response_a": a, "response_b": b} for p, a, b in pairs]})["results"]
    assert win["n"] == 3 and win["wins"] + win["ties"] + win["losses"] == 3
    assert win["win_rate"] == _agreement([c["p_a"] - 0.5 for c in compared])
    assert win["ci_low"] <= win["win_rate"] <= win["ci_high"]
    assert (tmp_path / "win" / "winrate.png").exists()

    main(["harmless", "--reward-url", server.url, "--policy", str(tmp_path / "a.jsonl"),
          "--output", str(tmp_path / "harm")])
    harm = json.loads((tmp_path / "harm" / "harmless.json").read_text())
    rewards = [r["reward"] for r in _post(server, "/score", {"rubric": "harmless", "items": [
        {"prompt": p, "response": a} for p, a, _ in pairs]})["results"]]
    assert harm["rubric"] == "harmless" and harm["threshold"] == 0.0
    assert harm["harmless_rate"] == sum(r > 0 for r in rewards) / 3
    assert harm["reward"]["mean"] == pytest.approx(sum(rewards) / 3, abs=1e-6)
    assert (tmp_path / "harm" / "harmless.png").exists()


def test_winrate_of_a_model_policy(server, tmp_path):
    _write_responses(tmp_path / "b.jsonl", _human_pairs(PAIRS_JSONL)[:2], 2)
    main(["winrate", "--reward-url", server.url, "--policy-a", "embedded",
          "--policy-b", str(tmp_path / "b.jsonl"), "--max-new-tokens", "8",
          "--output", str(tmp_path / "win")])
    items = _lines(tmp_path / "win" / "winrate_items.jsonl")
    assert len(items) == 2 and all(isinstance(i["response_a"], str) for i in items)
    assert [i["prompt"] for i in items] == [p for p, _, _ in _human_pairs(PAIRS_JSONL)[:2]]


@pytest.fixture(scope="module")
def labelled(server, tmp_path_factory) -> Path:
    """drlaif-label on the human-pair fixture (its human labels ignored), conversational format."""
    path = tmp_path_factory.mktemp("label") / "prefs.jsonl"
    label_main(["--reward-url", server.url, "--pairs", str(PAIRS_JSONL), "--limit", "4",
                "--output", str(path)])
    return path


def test_label_writes_the_labelers_preference(server, labelled):
    rows = _lines(labelled)
    pairs = _human_pairs(PAIRS_JSONL)[:4]
    compared = _post(server, "/compare", {"items": [
        {"prompt": p, "response_a": a, "response_b": b} for p, a, b in pairs]})["results"]
    assert len(rows) == 4
    for row, (prompt, a, b), c in zip(rows, pairs, compared):
        assert set(row) == {"prompt", "chosen", "rejected", "p_chosen"}
        preferred = (a, b) if c["p_a"] > 0.5 else (b, a)
        assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == preferred
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["p_chosen"] == pytest.approx(max(c["p_a"], 1 - c["p_a"]), abs=1e-5)
        assert row["prompt"] == ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_label_file_trains_trls_dpo_for_one_step(labelled, tiny_policy_dir, tmp_path):
    # The tiny random policy (the embedded tokenizer): what is tested is that the file is one
    # trl's DPOTrainer reads and trains on, not what DPO does to a real model.
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    dataset = load_dataset("json", data_files=str(labelled), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
                     max_length=96, learning_rate=1e-6, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=True, seed=0, disable_tqdm=True)
    trainer = DPOTrainer(model=str(tiny_policy_dir), args=args, train_dataset=dataset)
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(result.training_loss)
    assert any("rewards/chosen" in log for log in trainer.state.log_history)


def test_label_by_sampling_two_responses_from_a_policy(server, tmp_path):
    path = tmp_path / "sampled.jsonl"
    label_main(["--reward-url", server.url, "--limit", "2", "--max-new-tokens", "8", "--format", "standard",
                "--output", str(path)])
    rows = _lines(path)
    assert len(rows) <= 2  # identical samples or exact ties are skipped
    for row in rows:
        assert isinstance(row["prompt"], str) and isinstance(row["chosen"], str)
        assert row["chosen"] != row["rejected"]
        assert 0.5 < row["p_chosen"] <= 1.0


@pytest.mark.parametrize("argv, needle", [
    (["alignment"], "--data is required"),
    (["winrate", "--policy-a", "embedded"], "--policy-a and --policy-b are required"),
    (["harmless"], "--policy is required"),
    (["alignment", "--data", "no/such/file.jsonl"], "does not exist"),
])
def test_eval_cli_errors_are_one_line_messages(argv, needle):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--reward-url", "http://127.0.0.1:9"])
    assert needle in str(info.value) and str(info.value).startswith(f"drlaif-eval {argv[0]}:")


def test_console_scripts_are_installed():
    bin_dir = Path(sys.executable).parent
    for script, needle in (("drlaif-eval", "alignment"), ("drlaif-label", "--pairs")):
        r = subprocess.run([str(bin_dir / script), "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and needle in r.stdout
