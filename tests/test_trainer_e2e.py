"""End-to-end trainer runs: real `drlaif-train` processes against real reward servers."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from support import OutputReader, evals, metrics, rollouts, train, wait_for_steps

from drlaif.server_process import free_port, wait_until_ready

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from length_reward_server import reward as length_reward

# The warning drlaif/client.py logs each time it waits and tries a /score request again.
RETRY_WARNING = re.compile(r"reward server http://\S+/score failed \(.+\); retry \d+ in [\d.]+ s")


class LengthServer:
    """The deterministic length-reward server as a subprocess; can be stopped and restarted."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> LengthServer:
        self.proc = subprocess.Popen([sys.executable, str(FIXTURES / "length_reward_server.py"), str(self.port)])
        wait_until_ready(self.url, self.proc, 60)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def length_server():
    server = LengthServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stopping_policy_dir(tiny_policy_dir, tmp_path_factory) -> Path:
    """The tiny random policy, able to end its answers. Its answers run to --max-new-tokens (EOS is 1
    token in 49k), so a length rule has nothing it can learn in a few steps; here every embedding
    shares one direction, as a trained model's do, and EOS's leans far along it: EOS then takes
    about 5% a token, and its answers end anywhere, the policy's to shorten."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("stopping-policy") / "policy"
    shutil.copytree(tiny_policy_dir, path)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight  # tied: also the output layer
        shared = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(0))
        shared *= embeddings.norm(dim=1).mean() / shared.norm()  # as long as a typical embedding
        embeddings += shared
        embeddings[model.config.eos_token_id] += 18 * shared
    model.save_pretrained(path)
    return path


@pytest.mark.compat("drlaif-train ppo", "plain", "works")
def test_ppo_raises_a_deterministic_reward(length_server, stopping_policy_dir, tmp_path):
    out = tmp_path / "run"
    # A tiny policy learns in seconds what the 135M default took minutes to: to end its answers
    # sooner, which the length rule pays for. Its learning rate is a tiny model's, not the 135M
    # default's 1e-4, and 8 steps leave no room for the default warm-up; the KL budget is the
    # default's (the held-out KL stays near 2 of its 4 nats). Seeds 1, 2 and 3 gained +0.50
    # [+0.39, +0.61], +0.66 [+0.54, +0.76] and +0.62 [+0.44, +0.77] in 8 steps.
    result = train(length_server.url, out, "--model", str(stopping_policy_dir), "--steps", "8",
                   "--eval-prompts", "8", "--learning-rate", "3e-3", "--warmup-steps", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in ("reward_mean", "reward_std", "kl", "entropy", "policy_loss", "value_loss", "clipfrac",
                "response_length_mean", "reward_seconds", "step_seconds"):
        assert all(isinstance(r[key], float) for r in rows), key
    # Each step samples 2 prompts x 4 responses, so a step's mean reward moves with its prompts;
    # the held-out gain (the same prompts and random numbers before and after) is the clean test.
    early = sum(r["reward_mean"] for r in rows[:3]) / 3
    late = sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert late > early, [round(r["reward_mean"], 3) for r in rows]
    # Every reward the trainer logged is exactly what the server computes for that response.
    for sample in rollouts(out):
        assert sample["reward"] == pytest.approx(length_reward(sample["response"]), abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    gain = summary["report_stats"]["gain"]
    assert gain["ci_low"] > 0, gain  # the held-out gain is outside its 95% interval
    assert summary["after"]["reward_mean"] > summary["before"]["reward_mean"] + 0.1, gain
    assert (out / "report.md").exists()
    assert (out / "curves.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")
    assert "held-out reward: before" in result.stdout


def test_server_outage_within_deadline_is_ridden_out(length_server, tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    # The tiny random policy: what is under test is the reward client, not what the policy learns.
    proc = train(length_server.url, out, "--steps", "4", "--reward-deadline-s", "120",
                 "--model", str(tiny_policy_dir), wait=False)
    reader = OutputReader(proc)
    try:
        wait_for_steps(out, 1, proc, output=reader.text)
        before = len(metrics(out))  # rows written while the server was still up
        length_server.stop()
        # Restart only once the trainer has really hit the outage: a fixed pause could end while
        # it is still generating, and the test would pass without any outage to ride out.
        reader.wait_for(RETRY_WARNING, timeout=600)
        length_server.start()
        output = reader.finish(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert RETRY_WARNING.search(output), output
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # The retries are in the metrics too: none before the stop, at least one by the end.
    assert 1 <= before < 4
    assert [r["reward_retries"] for r in rows[:before]] == [0] * before
    assert rows[-1]["reward_retries"] >= 1, [r["reward_retries"] for r in rows]
    samples = rollouts(out)
    assert len(samples) == 4 * 8
    for sample in samples:  # no made-up rewards: all are what the server computes
        assert sample["reward"] == pytest.approx(length_reward(sample["response"]), abs=1e-6)


def test_a_replica_killed_after_the_first_update_is_routed_around(tiny_policy_dir, tmp_path):
    first, second = LengthServer().start(), LengthServer().start()
    out = tmp_path / "run"
    proc = train([first.url, second.url], out, "--steps", "5", "--model", str(tiny_policy_dir), wait=False)
    reader = OutputReader(proc)
    try:
        wait_for_steps(out, 1, proc, output=reader.text)
        first.stop()  # SIGKILL: no goodbye, connections refused from now on
        output = reader.finish(timeout=900)
    finally:
        proc.kill()
        first.stop()
        second.stop()
    assert proc.returncode == 0, output
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]
    samples = rollouts(out)
    assert len(samples) == 5 * 8
    for sample in samples:  # no made-up rewards: all are what the servers compute
        assert sample["reward"] == pytest.approx(length_reward(sample["response"]), abs=1e-6)
    # At the end the run says where its requests went: the killed replica failed (and got no more
    # traffic once its readiness probes went unanswered); the other one never failed.
    counts = re.search(rf"reward servers: {re.escape(first.url)}: (\d+) requests, (\d+) failed; "
                       rf"{re.escape(second.url)}: (\d+) requests, 0 failed", output)
    assert counts, output
    assert int(counts[2]) >= 1 and int(counts[3]) >= 4, counts.group()


def test_server_gone_past_deadline_exits_with_checkpoint_then_resumes(length_server, tiny_policy_dir,
                                                                       tmp_path):
    out = tmp_path / "run"
    tiny = ("--model", str(tiny_policy_dir))
    proc = train(length_server.url, out, "--steps", "3", "--reward-deadline-s", "6", *tiny, wait=False)
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
    result = train(length_server.url, out, "--steps", "3", "--resume", "auto", *tiny)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]


@pytest.mark.parametrize("algorithm, flags", [
    ("ppo", ["--samples-per-prompt", "2", "--minibatch-size", "2", "--ppo-epochs", "1", "--eval-prompts", "0"]),
    ("grpo", ["--num-generations", "2", "--eval-prompts", "2", "--eval-samples", "2"]),
])
def test_two_cpu_processes_under_torchrun_are_one_training(length_server, tiny_policy_dir, tmp_path, monkeypatch,
                                                           algorithm, flags):
    # Without ACCELERATE_USE_CPU accelerate formed no world on CPUs: each process trained alone,
    # with the same seed and data, and wrote every metrics row into the one output dir.
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    out = tmp_path / algorithm
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "trainer.cli", algorithm, "--reward-url", length_server.url, "--output-dir", str(out),
         "--model", str(tiny_policy_dir), "--steps", "2", "--batch-size", "2", "--max-new-tokens", "4",
         "--save-every", "0", *flags],
        check=False, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == [1, 2]
    if algorithm == "grpo":  # both processes evaluate; one writes
        assert [r["step"] for r in evals(out)] == [0, 2]


def _tensor_differences(got: Mapping, want: Mapping) -> list[str]:
    """Keys of two state dicts whose tensors are missing on one side or not exactly equal."""
    import torch

    return sorted(str(k) for k in got.keys() | want.keys()
                  if k not in got or k not in want or not torch.equal(got[k], want[k]))


def _optimizer_differences(got: dict, want: dict) -> list[str]:
    """Where two optimizer state dicts differ: any param's state tensor (exp_avg, exp_avg_sq,
    step, ...) in any group, the set of params with state, or the param groups' settings."""
    out = [f"state[{i}]" for i in sorted(got["state"].keys() ^ want["state"].keys())]
    for i in sorted(got["state"].keys() & want["state"].keys()):
        out += [f"state[{i}].{k}" for k in _tensor_differences(got["state"][i], want["state"][i])]
    if got["param_groups"] != want["param_groups"]:
        out.append("param_groups")
    return out


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_resume_restores_step_and_optimizer_state(length_server, tiny_policy_dir, tmp_path):
    from trainer.config import PPOConfig
    from trainer.data.prompt_datasets import load_prompt_dataset
    from trainer.ppo.trainer import PPOTrainer

    def snapshot(trainer: PPOTrainer) -> dict:
        """Copies of what a checkpoint must restore: policy, value head, optimizer state."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        return {"policy": {k: v.detach().clone() for k, v in model.policy.state_dict().items()},
                "value_head": {k: v.detach().clone() for k, v in model.value_head.state_dict().items()},
                "optimizer": copy.deepcopy(trainer.optimizer.state_dict())}

    train_prompts, eval_prompts, _ = load_prompt_dataset(None, "train", "prompt")
    # The tiny random policy: what a checkpoint must restore does not depend on the model's size.
    config = PPOConfig(reward_url=[length_server.url], output_dir=str(tmp_path / "run"), model=str(tiny_policy_dir),
                       batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=8, eval_prompts=0, steps=2)
    first = PPOTrainer(config, train_prompts, eval_prompts)
    try:
        first.step_done = 1
        first.metrics.write(first.step(0))
        path = first.save_checkpoint()
        saved = snapshot(first)
        saved_lr = first.scheduler.get_last_lr()
    finally:
        first.close()
    # Every param group took an optimizer step, else a no-op load could still match below.
    n_params = sum(len(g["params"]) for g in saved["optimizer"]["param_groups"])
    assert len(saved["optimizer"]["state"]) == n_params
    assert any(v.any() for v in saved["value_head"].values())  # the zero-initialised head has learned
    config.resume = "auto"
    second = PPOTrainer(config, train_prompts, eval_prompts)
    try:
        # Before loading, the fresh trainer is not what was saved, in each part checked after:
        # so a load that skipped any of them fails this test.
        fresh = snapshot(second)
        assert _tensor_differences(fresh["policy"], saved["policy"])
        assert _tensor_differences(fresh["value_head"], saved["value_head"])
        assert _optimizer_differences(fresh["optimizer"], saved["optimizer"])
        assert second.step_done == 0

        second.load_checkpoint(second.latest_checkpoint())
        assert second.latest_checkpoint() == path and second.step_done == 1
        loaded = snapshot(second)
        assert _tensor_differences(loaded["policy"], saved["policy"]) == []
        assert _tensor_differences(loaded["value_head"], saved["value_head"]) == []
        assert _optimizer_differences(loaded["optimizer"], saved["optimizer"]) == []
        assert second.scheduler.get_last_lr() == saved_lr
        assert second.batch_prompts(1) == first.batch_prompts(1)
    finally:
        second.close()


@pytest.mark.compat("drlaif-train ppo", "constitution", "works")
@pytest.mark.compat("drlaif-train ppo", "robust reward field", "works")
def test_ppo_on_the_real_labeler_logs_the_servers_rewards(server, tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    # After FAST, so these win (argparse keeps the last value).
    # Optimises the robust read (--reward-field), so the logged rewards must be that field.
    # Under a constitution, so that each principle's reward mean is logged too. The tiny random
    # policy: what is tested is which reward the trainer logs, not what the policy learns.
    result = train(server.url, out, "--model", str(tiny_policy_dir), "--steps", "2", "--batch-size", "4",
                   "--max-new-tokens", "8", "--eval-prompts", "2", "--eval-samples", "2", "--rubric", "assistant",
                   "--reward-field", "reward_robust")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(-1.0 <= r["reward_mean"] <= 1.0 for r in rows), rows
    for r in rows:  # the guard's signal is logged every step
        assert 0.0 <= r["judge_text_rate"] <= 1.0 and 0.0 <= r["reward_disagreement"] <= 1.0, r
        if r["judge_text_rate"] == 0.0:  # nothing addressed the judge: both reads are the same read
            assert r["reward_robust_gap"] == 0.0 and r["reward_disagreement"] == 0.0, r
        assert all(-1.0 <= r[f"reward_principle_{p}"] <= 1.0 for p in ("helpful", "harmless", "honest")), r
    samples = rollouts(out)
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    # Every logged reward is the labeler's own verdict on that exact (prompt, response) and rubric.
    items = [{"prompt": s["prompt"], "response": s["response"]} for s in samples]
    direct = httpx.post(f"{server.url}/score", json={"items": items, "rubric": "assistant"}, timeout=300)
    assert direct.status_code == 200, direct.text
    results = direct.json()["results"]
    assert len(results) == len(samples)
    for sample, want in zip(samples, results):
        assert -1.0 <= sample["reward"] <= 1.0
        # Different batch composition (padding) moves float32 results by ~1e-6.
        assert sample["reward"] == pytest.approx(want["reward_robust"], abs=1e-4), sample


def assert_proxy_is_read_directly(server, out: Path, rubric: str) -> None:
    """Each held-out reward is the rubric's direct read of its responses, whatever the run's
    reward mode: a group-pairwise reward averages to 0 over a prompt's samples, and a proxy curve
    of it could never rise."""
    summary = json.loads((out / "summary.json").read_text())
    examples = summary["before"]["examples"] + summary["after"]["examples"]
    items = [{"prompt": e["prompt"], "response": r} for e in examples for r in e["responses"]]
    answer = httpx.post(f"{server.url}/score", json={"items": items, "rubric": rubric}, timeout=300)
    assert answer.status_code == 200, answer.text
    direct = iter(r["reward"] for r in answer.json()["results"])
    for e in examples:
        assert e["rewards"] == pytest.approx([next(direct) for _ in e["responses"]], abs=1e-4), e
    assert max(abs(e["reward"]) for e in examples) > 1e-3  # not the pairwise mean, 0 by construction
    assert [r["step"] for r in evals(out)] == [0, 2]


@pytest.mark.parametrize("algorithm, mode", [
    pytest.param("grpo", "direct", marks=pytest.mark.compat("drlaif-train grpo", "plain", "works")),
    pytest.param("rloo", "direct", marks=pytest.mark.compat("drlaif-train rloo", "plain", "works")),
    pytest.param("grpo", "group-pairwise", marks=pytest.mark.compat("drlaif-train grpo", "group-pairwise", "works")),
])
def test_trl_algorithms_run_two_steps_on_the_real_labeler(server, tiny_policy_dir, tmp_path, algorithm, mode):
    out = tmp_path / algorithm
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # The tiny random policy: what is tested is the algorithm's loop and its rewards from the labeler.
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", algorithm, "--reward-url", server.url, "--output-dir", str(out),
         "--model", str(tiny_policy_dir), "--steps", "2", "--batch-size", "2", "--num-generations", "2",
         "--max-new-tokens", "8", "--save-every", "0", "--rubric", "helpful", "--reward-mode", mode,
         "--eval-prompts", "2", "--eval-samples", "2"],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(-1.0 <= r["reward_mean"] <= 1.0 for r in rows)
    assert_proxy_is_read_directly(server, out, "helpful")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")


@pytest.mark.compat("drlaif-train ppo", "group-pairwise", "works")
def test_ppo_group_pairwise_optimises_each_groups_pairwise_rewards(server, tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    result = train(server.url, out, "--model", str(tiny_policy_dir), "--steps", "2", "--batch-size", "4",
                   "--samples-per-prompt", "2", "--max-new-tokens", "6", "--rubric", "helpful",
                   "--reward-mode", "group-pairwise", "--eval-prompts", "2", "--eval-samples", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert_proxy_is_read_directly(server, out, "helpful")
    samples = rollouts(out)
    for step in (1, 2):  # each step's batch is one request: its prompt groups judged as the trainer's were
        batch = [s for s in samples if s["step"] == step]
        assert len({json.dumps(s["prompt"]) for s in batch}) == 2
        body = {"items": [{"prompt": s["prompt"], "response": s["response"]} for s in batch], "rubric": "helpful",
                "group_pairwise": True}
        answer = httpx.post(f"{server.url}/score", json=body, timeout=300)
        assert answer.status_code == 200, answer.text
        for sample, want in zip(batch, answer.json()["results"]):
            assert want["group"]["opponents"] == 1
            assert sample["reward"] == pytest.approx(want["group"]["reward"], abs=1e-4), sample
