"""Sampling responses from a policy and reading their KL to the reference.

PPO's rollouts and every trainer's held-out evaluation (trainer/analysis/heldout_eval.py, for
PPO and for trl's GRPO and RLOO alike) sample through here, so a response is the same text and
a KL the same number whichever algorithm trained the policy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from trainer.data.prompt_datasets import Prompt
from trainer.ppo.models import encode_prompts, response_logits
from trainer.ppo.tensor_math import response_mask, token_logprobs


@dataclass
class Rollout:
    prompts: list[Prompt]
    responses: list[str]
    input_ids: torch.Tensor        # (B, P + R): prompt (left-padded) then response
    attention_mask: torch.Tensor   # (B, P + R)
    response_ids: torch.Tensor     # (B, R)
    mask: torch.Tensor             # (B, R): response tokens up to and including EOS
    ended: torch.Tensor            # (B,): the response reached EOS

    @property
    def response_len(self) -> int:
        return self.response_ids.shape[1]


@dataclass(frozen=True)
class Sampler:
    """How a policy's responses are drawn: its tokenizer, its end tokens and the generation settings."""

    tokenizer: PreTrainedTokenizerBase
    eos_ids: list[int]
    generation: GenerationConfig

    @classmethod
    def for_policy(cls, policy: nn.Module, tokenizer: PreTrainedTokenizerBase, temperature: float,
                   max_new_tokens: int, greedy: bool = False) -> Sampler:
        """Pure sampling at ``temperature`` (no top-k or top-p: the distribution the policy
        gradient assumes), or greedy decoding; ends at any of the policy's EOS tokens."""
        defaults = GenerationConfig.from_model_config(policy.config)
        eos = defaults.eos_token_id if defaults.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        drawing = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature,
                                                       "top_k": 0, "top_p": 1.0}
        return cls(tokenizer, eos_ids, GenerationConfig(**drawing, max_new_tokens=max_new_tokens,
                                                        eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id))

    @torch.no_grad()
    def sample(self, policy: nn.Module, prompts: list[Prompt], device: torch.device) -> Rollout:
        """One response to each prompt, sampled in eval mode (the caller restores train mode)."""
        enc = encode_prompts(self.tokenizer, prompts).to(device)
        policy.eval()
        out = policy.generate(**enc, generation_config=self.generation)
        response_ids = out[:, enc["input_ids"].shape[1]:]
        if response_ids.shape[1] == 0:  # every row stopped at once: keep one (EOS) column
            response_ids = torch.full((len(prompts), 1), self.eos_ids[0], device=out.device)
        mask = response_mask(response_ids, self.eos_ids)
        ended = torch.isin(response_ids, torch.tensor(self.eos_ids, device=out.device)).any(-1)
        pad = self.tokenizer.pad_token_id
        responses = self.tokenizer.batch_decode(response_ids * mask.long() + pad * (1 - mask.long()),
                                                skip_special_tokens=True)
        attention = torch.cat([enc["attention_mask"], mask.long()], dim=1)
        return Rollout(prompts, [r.strip() for r in responses], torch.cat([enc["input_ids"], response_ids], 1),
                       attention, response_ids, mask, ended)


def reference_logits(policy: nn.Module, reference: nn.Module | None, rollout: Rollout) -> torch.Tensor:
    """The reference's logits for the rollout's responses: ``reference``, or with LoRA (None) the
    policy with its adapters switched off, which is the base model the run started from."""
    ids, att, last = rollout.input_ids, rollout.attention_mask, rollout.response_len
    if reference is not None:
        return response_logits(reference, ids, att, last)
    with policy.disable_adapter():
        return response_logits(policy, ids, att, last)


@torch.no_grad()
def response_kl(policy: nn.Module, reference: nn.Module | None, rollout: Rollout, temperature: float,
                autocast: contextlib.AbstractContextManager | None = None) -> list[float]:
    """Each response's KL to the reference in nats: the sum over its tokens of
    log pi(token) - log pi_ref(token), both at the sampling temperature (the single-sample
    estimate whose mean over samples is the sequence KL)."""
    ids, att, last = rollout.input_ids, rollout.attention_mask, rollout.response_len
    with autocast or contextlib.nullcontext():
        logprobs = token_logprobs(response_logits(policy, ids, att, last), rollout.response_ids, temperature)
        ref_logprobs = token_logprobs(reference_logits(policy, reference, rollout), rollout.response_ids,
                                      temperature)
    return ((logprobs - ref_logprobs) * rollout.mask).sum(-1).float().tolist()
