"""`drlaif-train ppo` and `grpo` end to end against a reward server of your own: the docs' stdlib
example (docs/examples/own_reward_server.py, fixture ``own_server``), whose /score answers only
rewards, on the tiny random policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support import metrics, rollouts, train

pytestmark = pytest.mark.slow

# What a server that sends only rewards leaves out of the metrics.
ABSENT = {"label_entropy", "label_mass", "label_mass_min", "judge_text_rate", "reward_disagreement",
          "reward_robust_gap"}


def rule(response: str) -> float:
    """The example server's rule (docs/examples/own_reward_server.py: reward)."""
    return 1.0 - 2.0 * min(1.0, len(response.split()) / 30)


def test_ppo_trains_on_a_server_that_answers_only_rewards(own_server, tiny_policy_dir, tmp_path):
    out = tmp_path / "ppo"
    result = train(own_server, out, "--model", str(tiny_policy_dir), "--steps", "2", "--batch-size", "4",
                   "--max-new-tokens", "8", "--eval-prompts", "4", "--save-every", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(-1.0 <= r["reward_mean"] <= 1.0 and isinstance(r["kl"], float) for r in rows)
    assert not ABSENT & set().union(*rows)
    samples = rollouts(out)
    assert len(samples) == 8
    for sample in samples:  # each reward is the server's, for that response
        assert sample["reward"] == pytest.approx(rule(sample["response"]), abs=1e-6)
    assert (out / "report.md").exists() and (out / "summary.json").exists()


def test_grpo_trains_on_a_server_that_answers_only_rewards(own_server, tiny_policy_dir, tmp_path):
    out = tmp_path / "grpo"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "grpo", "--reward-url", own_server, "--output-dir", str(out),
         "--model", str(tiny_policy_dir), "--steps", "2", "--batch-size", "2", "--num-generations", "2",
         "--max-new-tokens", "8", "--save-every", "0", "--eval-prompts", "4", "--eval-samples", "2"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(-1.0 <= r["reward_mean"] <= 1.0 for r in rows)
    assert all(r["label_entropy"] is None and r["label_mass"] is None for r in rows)
    summary = json.loads((out / "summary.json").read_text())  # held-out evaluation, as PPO's
    for example in summary["before"]["examples"] + summary["after"]["examples"]:
        assert example["reward"] == pytest.approx(sum(map(rule, example["responses"])) / 2, abs=1e-6)
    assert (out / "report.md").exists()
