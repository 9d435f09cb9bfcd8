"""trainer/frameworks/verl_reward.py under veRL's own reward loop (verl 0.9.1 from PyPI), against a real
server.

No mirror of veRL here: these veRL modules run for real, unpatched.

- ``verl.trainer.config``: ``ppo_trainer.yaml``, composed by Hydra with the command-line
  overrides a veRL user gives (``reward.custom_reward_function.*``, ``reward.reward_manager.name``,
  ``ray_kwargs.ray_init.*`` carrying the ``DRLAIF_*`` settings to the workers);
- ``verl.experimental.reward_loop.reward_loop``: ``RewardLoopManager`` on a local Ray instance,
  its ``RewardLoopWorker`` actor, and ``compute_rm_score`` (padding and chunking the batch over
  the workers, ``assemble_rm_scores``); the rate-limited test runs ``RewardLoopWorker`` in this
  process, driven by its own event loop, as one more Ray actor would cost some 15 s here;
- ``verl.trainer.ppo.reward``: ``load_reward_manager`` and ``get_custom_reward_fn``, which load
  drlaif's ``compute_score`` from a file path or a ``pkg://`` module path;
- ``verl.experimental.reward_loop.reward_manager.naive.NaiveRewardManager`` and
  ``...limited.RateLimitedRewardManager`` (``run_single``: decoding the response with the
  tokenizer, calling the async reward function, reading ``extra_info``);
- ``verl.protocol.DataProto`` and ``verl.utils.hf_tokenizer`` (the embedded labeler's tokenizer
  stands in for the policy's).

The batch is a rollout as veRL's agent loop hands it over: left-padded prompt ids, right-padded
response ids ending in EOS, the attention mask over both, and ``data_source``, ``reward_model``
and ``extra_info`` (holding the prompt under ``question``) per sample. veRL's rewards, at each
response's last token of ``rm_scores``, equal drlaif's ``/score`` rewards for the same items
within 1e-6. The labeler's float32 rewards move by up to about 2e-6 with the composition of the
batch they are read in, so each run has one reward worker whose drlaif coalescer (given time to
gather) sends the whole batch as one ``/score`` request: the labeler reads the same batch as the
direct ``/score`` call (in another order, which does not change them).

verl goes in without its dependencies (the Makefile's framework-clients step), with the few
small packages these imports need; both reward managers import and run on CPU.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from support import HELD_OUT, score_requests

pytestmark = pytest.mark.slow

verl = pytest.importorskip("verl")
ray = pytest.importorskip("ray")

REWARD_FILE = Path(__file__).resolve().parent.parent / "trainer" / "frameworks" / "verl_reward.py"
PROMPT_LEN, RESPONSE_LEN = 96, 48


def verl_config(model_dir: Path, *overrides: str):
    """veRL's PPO config, composed from its own ppo_trainer.yaml as ``python -m
    verl.trainer.main_ppo OVERRIDES...`` composes it."""
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=[f"actor_rollout_ref.model.path={model_dir}", *overrides])


def rollout_batch(tokenizer, items: list[dict]):
    """A DataProto as veRL's rollout produces it, for these (prompt, response) items."""
    import torch
    from verl import DataProto

    prompts, responses, masks = [], [], []
    for item in items:
        messages = item["prompt"] if isinstance(item["prompt"], list) else [
            {"role": "user", "content": item["prompt"]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        response = tokenizer.encode(item["response"], add_special_tokens=False) + [tokenizer.eos_token_id]
        assert len(prompt) <= PROMPT_LEN and len(response) <= RESPONSE_LEN
        # veRL decodes with skip_special_tokens: the text it scores must be the item's response.
        assert tokenizer.decode(response, skip_special_tokens=True) == item["response"]
        prompts.append([tokenizer.pad_token_id] * (PROMPT_LEN - len(prompt)) + prompt)
        responses.append(response + [tokenizer.pad_token_id] * (RESPONSE_LEN - len(response)))
        masks.append([0] * (PROMPT_LEN - len(prompt)) + [1] * (len(prompt) + len(response))
                     + [0] * (RESPONSE_LEN - len(response)))
    prompts, responses, mask = torch.tensor(prompts), torch.tensor(responses), torch.tensor(masks)
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
                 "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)},
        non_tensors={
            "data_source": np.array(["drlaif/held_out"] * len(items), dtype=object),
            "reward_model": np.array([{"style": "model", "ground_truth": None}] * len(items), dtype=object),
            "extra_info": np.array([{"question": item["prompt"], "index": i} for i, item in enumerate(items)],
                                   dtype=object)})


def score_rewards(url: str, items: list[dict]) -> list[float]:
    response = httpx.post(f"{url}/score", json={"items": items}, timeout=600)
    response.raise_for_status()
    return [r["reward"] for r in response.json()["results"]]


def assert_rm_scores_are(batch, rm_scores, rewards: list[float]) -> None:
    """Each reward sits at its response's last valid token, zeros elsewhere."""
    import torch

    expected = torch.zeros_like(rm_scores)
    lengths = batch.batch["attention_mask"][:, PROMPT_LEN:].sum(-1)
    for i, (length, reward) in enumerate(zip(lengths, rewards, strict=True)):
        expected[i, length - 1] = reward
    torch.testing.assert_close(rm_scores, expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from verl.utils import hf_tokenizer

    return hf_tokenizer(str(embedded_model_dir))


def test_naive_reward_loop_on_ray_gives_score_rewards(server, embedded_model_dir, tokenizer):
    from omegaconf import OmegaConf
    from verl.experimental.reward_loop import RewardLoopManager
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    config = verl_config(
        embedded_model_dir,
        f"reward.custom_reward_function.path={REWARD_FILE}",
        "reward.custom_reward_function.name=compute_score",
        "reward.reward_manager.name=naive",
        "reward.num_workers=1",
        "ray_kwargs.ray_init.num_cpus=2",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.DRLAIF_REWARD_URL={server.url}",
        "+ray_kwargs.ray_init.runtime_env.env_vars.DRLAIF_COALESCE_MS='500'",
        "+ray_kwargs.ray_init.include_dashboard=false",
        f"+ray_kwargs.ray_init.object_store_memory={100 * 2**20}",
        "+ray_kwargs.ray_init.log_to_driver=false",
    )
    batch = rollout_batch(tokenizer, HELD_OUT)
    # Ray starts as verl.trainer.main_ppo.run_ppo starts it: veRL's runtime env under the config's.
    ray_init = config.ray_kwargs.ray_init
    runtime_env = OmegaConf.merge(get_ppo_ray_runtime_env(config), ray_init.runtime_env)
    ray.init(**OmegaConf.to_container(OmegaConf.create({**ray_init, "runtime_env": runtime_env})))
    try:
        manager = RewardLoopManager(config)
        before = score_requests(server.url)
        scored = manager.compute_rm_score(batch)
        assert score_requests(server.url) - before == 1
    finally:
        ray.shutdown()

    rewards = score_rewards(server.url, HELD_OUT)
    assert_rm_scores_are(batch, scored.batch["rm_scores"], rewards)
    assert scored.meta_info["reward_extra_keys"] == ["score", "label_mass", "label_entropy", "drlaif_score"]
    assert list(scored.non_tensor_batch["score"]) == pytest.approx(rewards, abs=1e-6)
    assert all(0 < m <= 1 for m in scored.non_tensor_batch["label_mass"])


def test_rate_limited_reward_manager_gives_score_rewards(server, embedded_model_dir, tokenizer, monkeypatch):
    """The rate-limited manager, its limits configured, with the reward function named by
    ``pkg://``; veRL's RewardLoopWorker runs in this process, the manager's event loop driving it."""
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.experimental.reward_loop.reward_manager.limited import RateLimitedRewardManager

    monkeypatch.setenv("DRLAIF_REWARD_URL", server.url)
    monkeypatch.setenv("DRLAIF_COALESCE_MS", "500")
    config = verl_config(
        embedded_model_dir,
        "reward.custom_reward_function.path=pkg://trainer.frameworks.verl_reward",
        "reward.custom_reward_function.name=compute_score",
        "reward.reward_manager.name=rate_limited",
        "+reward.max_concurrent=8",  # its default, 1, would send the samples one by one
        "+reward.max_rpm=6000",  # high enough not to wait, but its token bucket runs
        "+reward.timeout=120",
    )
    worker = RewardLoopWorker(config)
    assert isinstance(worker.reward_manager, RateLimitedRewardManager)
    batch = rollout_batch(tokenizer, HELD_OUT)
    before = score_requests(server.url)
    try:
        outputs = worker.loop.run_until_complete(worker.compute_score_batch(batch))
    finally:
        worker.loop.close()
        asyncio.set_event_loop(None)
    assert score_requests(server.url) - before == 1

    # The rate-limited manager turns a failed call into reward 0.0 with an "error" entry.
    assert not any({"error", "timeout"} & set(o["reward_extra_info"]) for o in outputs), outputs
    rm_scores = RateLimitedRewardManager.assemble_rm_scores(batch, [o["reward_score"] for o in outputs])
    assert_rm_scores_are(batch, rm_scores, score_rewards(server.url, HELD_OUT))


@pytest.mark.compat("veRL batch manager", "group-pairwise", "works")
@pytest.mark.compat("veRL compute_score", "group-pairwise", "refused", error="RuntimeError")
def test_batch_reward_manager_judges_grpo_groups_pairwise(server, tokenizer, monkeypatch):
    """veRL's batch reward manager passes a whole rollout batch to compute_score_batch: with
    DRLAIF_REWARD_MODE=group-pairwise each prompt's responses are judged against each other,
    and the rewards are /score's group-pairwise rewards for the same items."""
    from verl.workers.reward_manager.batch import BatchRewardManager

    from trainer.frameworks import verl_reward

    monkeypatch.setenv("DRLAIF_REWARD_URL", server.url)
    monkeypatch.setenv("DRLAIF_REWARD_MODE", "group-pairwise")
    prompts = [HELD_OUT[0]["prompt"], HELD_OUT[2]["prompt"]]
    items = [{"prompt": p, "response": r} for p in prompts
             for r in ("Paris.", "I am not sure.", "Autumn leaves fall.")]
    manager = BatchRewardManager(tokenizer, num_examine=0, compute_score=verl_reward.compute_score_batch)
    batch = rollout_batch(tokenizer, items)
    before = score_requests(server.url)
    out = manager(batch, return_dict=True)
    assert score_requests(server.url) - before == 1  # the whole batch, both groups, in one request
    answer = httpx.post(f"{server.url}/score", json={"items": items, "group_pairwise": True}, timeout=600)
    answer.raise_for_status()
    results = answer.json()["results"]
    assert [r["group"]["opponents"] for r in results] == [2] * 6
    assert_rm_scores_are(batch, out["reward_tensor"], [r["reward"] for r in results])
    with pytest.raises(RuntimeError, match="batch reward manager"):  # one sample at a time cannot be a group
        verl_reward.compute_score_sync("drlaif/held_out", "Paris.", None, {"question": prompts[0]})
