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

    def submit_score_items(self, prompts: list[Prompt], responses: list[str],
                           rubric: str | None = None) -> concurrent.futures.Future[list[ItemScore]]:
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
