"""End-to-end trainer runs: real `drlaif-train` processes against real reward servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.process import free_port

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from length_reward_server import reward as length_reward  # noqa: E402

# Small, fast PPO settings for a 2-core CPU.
FAST = ["--batch-size", "8", "--max-new-tokens", "24", "--eval-prompts", "0", "--seed", "1"]


class LengthServer:
    """The deterministic length-reward server as a subprocess; can be stopped and restarted."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> LengthServer:
        self.proc = subprocess.Popen([sys.executable, str(FIXTURES / "length_reward_server.py"), str(self.port)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError("length reward server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def length_server():
    server = LengthServer().start()
    yield server
    server.stop()


def train(url: str, out: Path, *extra: str, timeout: float = 900, wait: bool = True):
    cmd = [sys.executable, "-m", "trainer.cli", "ppo", "--reward-url", url, "--output-dir", str(out), *FAST, *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def rollouts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


def wait_for_steps(out: Path, n: int, proc, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").exists() and len(metrics(out)) >= n:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    raise TimeoutError(f"trainer did not reach step {n}")


def test_ppo_raises_a_deterministic_reward(length_server, tmp_path):
    out = tmp_path / "run"
    result = train(length_server.url, out, "--steps", "8", "--eval-prompts", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in ("reward_mean", "reward_std", "kl", "entropy", "policy_loss", "value_loss", "clipfrac",
                "response_length_mean", "reward_seconds", "step_seconds"):
        assert all(isinstance(r[key], float) for r in rows), key
    early = sum(r["reward_mean"] for r in rows[:3]) / 3
    late = sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert late > early + 0.2, [round(r["reward_mean"], 3) for r in rows]
    # Every reward the trainer logged is exactly what the server computes for that response.
    for sample in rollouts(out):
        assert sample["reward"] == pytest.approx(length_reward(sample["response"]), abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["reward_mean"] > summary["before"]["reward_mean"]
    assert (out / "curves.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")
    assert "held-out reward: before" in result.stdout


def test_server_outage_within_deadline_is_ridden_out(length_server, tmp_path):
    out = tmp_path / "run"
    proc = train(length_server.url, out, "--steps", "4", "--reward-deadline-s", "120", wait=False)
    try:
        wait_for_steps(out, 1, proc)
        length_server.stop()
        time.sleep(4)
        length_server.start()
        output, _ = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    samples = rollouts(out)
    assert len(samples) == 4 * 8
    for sample in samples:  # no made-up rewards: all are what the server computes
        assert sample["reward"] == pytest.approx(length_reward(sample["response"]), abs=1e-6)


def test_server_gone_past_deadline_exits_with_checkpoint_then_resumes(length_server, tmp_path):
    out = tmp_path / "run"
    proc = train(length_server.url, out, "--steps", "3", "--reward-deadline-s", "6", wait=False)
    try:
        wait_for_steps(out, 1, proc)
        length_server.stop()
        output, _ = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "reward server is unavailable" in output and "--resume auto" in output
    done = len(metrics(out))
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints and checkpoints[-1].name == f"step-{done:06d}"
    length_server.start()
    result = train(length_server.url, out, "--steps", "3", "--resume", "auto")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_resume_restores_step_and_optimizer_state(length_server, tmp_path):
    import torch

    from trainer.config import PPOConfig
    from trainer.ppo import PPOTrainer
    from trainer.prompts import load_prompt_dataset

    train_prompts, eval_prompts = load_prompt_dataset(None, "train", "prompt")
    config = PPOConfig(reward_url=[length_server.url], output_dir=str(tmp_path / "run"), batch_size=4,
                       minibatch_size=4, ppo_epochs=1, max_new_tokens=8, eval_prompts=0, steps=2)
    first = PPOTrainer(config, train_prompts, eval_prompts)
    try:
        first.step_done = 1
        first.metrics.write(first.step(0))
        path = first.save_checkpoint()
        saved = {k: v.clone() for k, v in first.optimizer.state_dict()["state"][0].items()}
        saved_lr = first.scheduler.get_last_lr()
    finally:
        first.close()
    config.resume = "auto"
    second = PPOTrainer(config, train_prompts, eval_prompts)
    try:
        second.load_checkpoint(second.latest_checkpoint())
        assert second.latest_checkpoint() == path and second.step_done == 1
        state = second.optimizer.state_dict()["state"][0]
        for key, value in saved.items():
            assert torch.equal(state[key], value), key
        assert second.scheduler.get_last_lr() == saved_lr
        assert second.batch_prompts(1) == first.batch_prompts(1)
    finally:
        second.close()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_algorithms_run_two_steps_on_the_real_labeler(server, tmp_path, algorithm):
    out = tmp_path / algorithm
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", algorithm, "--reward-url", server.url, "--output-dir", str(out),
         "--steps", "2", "--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "8",
         "--save-every", "0", "--rubric", "helpful"],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(-1.0 <= r["reward_mean"] <= 1.0 for r in rows)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")
