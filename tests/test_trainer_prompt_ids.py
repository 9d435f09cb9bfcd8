"""PPO and trl's GRPO/RLOO condition the policy on the same token ids for the same prompt.

trl applies the chat template only to message lists; a plain string prompt reached the policy
untemplated and the embedded policy ended at once. Here trl's own tokenisation
(``_tokenize_prompts``, what its generation step calls) is compared with PPO's encode_prompts.
"""

from __future__ import annotations

import pytest

from trainer.analysis.metrics_log import MetricsLog
from trainer.config import TRLConfig
from trainer.frameworks.trl_heldout import HeldOutCallback
from trainer.frameworks.trl_training import build_trl_trainer
from trainer.ppo.models import encode_prompts, load_tokenizer, resolve_policy

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    [{"role": "user", "content": "Give me one tip for sleeping better."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime number."}],
    "Human: How do I boil an egg?\n\nAssistant:",
]


def ppo_prompt_ids(prompts) -> list[list[int]]:
    tokenizer = load_tokenizer(resolve_policy(None))
    enc = encode_prompts(tokenizer, prompts)
    return [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_renders_the_prompt_ids_ppo_renders(algorithm, tmp_path, fresh_accelerate_state):
    from trainer.data.prompt_datasets import to_prompt

    # HH transcripts are parsed into messages on load, as the CLI does.
    prompts = [to_prompt({"prompt": p}, "prompt") for p in PROMPTS]
    config = TRLConfig(output_dir=str(tmp_path), steps=1, batch_size=4, num_generations=4, eval_prompts=0)
    trainer = build_trl_trainer(algorithm, config, prompts, HeldOutCallback(config, [], MetricsLog(tmp_path)))
    dataset_prompts = list(trainer.train_dataset["prompt"])
    trl_ids, _, _ = trainer._tokenize_prompts(dataset_prompts)
    expected = ppo_prompt_ids(prompts)
    assert [list(ids) for ids in trl_ids] == expected
    # The chat template is really there: every prompt ends with the assistant header.
    tokenizer = load_tokenizer(resolve_policy(None))
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert all(ids[-len(header):] == header for ids in expected)
