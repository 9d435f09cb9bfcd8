"""PPO samples and reads its rollouts in eval mode and updates in train mode: with dropout on,
the old log-probs and values would be one noisy draw, not the policy that sampled."""

from __future__ import annotations

import concurrent.futures

import pytest
import torch
from support import item_score

from drlaif.protocol import ItemScore
from trainer.config import PPOConfig
from trainer.data.prompt_datasets import Prompt
from trainer.ppo.trainer import PPOTrainer

PROMPTS: list[Prompt] = ["Name a colour.", "Say hello.", "Count to three.", "Name a fruit."]


class FixedReward:
    """A reward source that scores every response 0.5: these tests are about modes, not rewards."""

    def score(self, prompts: list[Prompt], responses: list[str], rubric: str | None = None) -> list[float]:
        return [0.5] * len(responses)

    def submit_score_items(self, prompts: list[Prompt], responses: list[str], rubric: str | None = None,
                           references: list[str | None] | None = None,
                           ) -> concurrent.futures.Future[list[ItemScore]]:
        done: concurrent.futures.Future[list[ItemScore]] = concurrent.futures.Future()
        done.set_result([item_score(0.5)] * len(responses))
        return done

    def close(self) -> None:
        pass


@pytest.fixture
def trainer(tiny_policy_dir, tmp_path, fresh_accelerate_state):
    config = PPOConfig(model=str(tiny_policy_dir), output_dir=str(tmp_path), batch_size=4, minibatch_size=2,
                       samples_per_prompt=2, ppo_epochs=1, max_new_tokens=4, eval_prompts=0, steps=1)
    trainer = PPOTrainer(config, PROMPTS, [], reward=FixedReward())
    yield trainer
    trainer.close()


def test_reads_of_a_rollout_are_the_same_each_time(trainer):
    rollout = trainer.rollout(trainer.batch_prompts(0))
    first, second = trainer.read_rollout(rollout), trainer.read_rollout(rollout)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)


def test_no_grad_reads_run_in_eval_mode_and_updates_in_train_mode(trainer):
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    calls: list[tuple[bool, bool]] = []  # (gradient on, train mode) per forward of the policy
    policy.register_forward_pre_hook(lambda module, args: calls.append((torch.is_grad_enabled(), module.training)))
    trainer.step(0)
    assert {training for grad, training in calls if not grad} == {False}  # generation and reads
    assert {training for grad, training in calls if grad} == {True}       # the updates


@pytest.fixture
def dropout_free_policy_dir(tiny_policy_dir, tmp_path):
    """The tiny policy with its attention dropout off: a train-mode forward reads as eval mode does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, attention_dropout=0.0)
    model.save_pretrained(tmp_path / "policy")
    AutoTokenizer.from_pretrained(tiny_policy_dir).save_pretrained(tmp_path / "policy")
    return tmp_path / "policy"


def test_the_first_epochs_forward_is_the_rollouts_policy_read(dropout_free_policy_dir, tmp_path, fresh_accelerate_state,
                                                               tiny_policy_dir):
    config = PPOConfig(model=str(dropout_free_policy_dir), output_dir=str(tmp_path / "run"), batch_size=4,
                       minibatch_size=4, samples_per_prompt=2, ppo_epochs=2, max_new_tokens=4, eval_prompts=0, steps=1)
    trainer = PPOTrainer(config, PROMPTS, [], reward=FixedReward())
    try:
        assert trainer.fused_read
        rollout = trainer.rollout(trainer.batch_prompts(0))
        trainer.fused_read = False
        separate = trainer.read_rollout(rollout)
        trainer.fused_read = True
        fused = trainer.read_rollout(rollout)
        assert set(fused) == {"ref_logprobs"}
        zeros = torch.zeros_like(rollout.mask, dtype=torch.float32)
        trainer.optimise(rollout, fused, zeros, zeros, rollout.mask.float())
        for key in ("logprobs", "ref_logprobs", "values", "entropy"):
            torch.testing.assert_close(fused[key], separate[key], rtol=0, atol=1e-5, msg=key)
        row = trainer.step(0)  # a whole step on the fused read
        assert row["kl"] == row["kl"] and row["entropy"] > 0 and row["read_seconds"] >= 0
    finally:
        trainer.close()
    # Dropout, several minibatches, or a read that step 3 needs: the policy is read on its own.
    for policy, overrides in ((tiny_policy_dir, {}), (dropout_free_policy_dir, {"minibatch_size": 2}),
                              (dropout_free_policy_dir, {"kl_penalty": "reward"}),
                              (dropout_free_policy_dir, {"advantage_estimator": "gae"})):
        fields = {**config.__dict__, "model": str(policy), **overrides}
        trainer = PPOTrainer(PPOConfig(**fields), PROMPTS, [], reward=FixedReward())
        try:
            assert not trainer.fused_read, overrides
        finally:
            trainer.close()
