"""Models for PPO: the policy, its value model, and how prompts become policy input."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from drlaif.embedded_model import default_cache_dir, resolve_model
from trainer.data.prompt_datasets import Prompt


def resolve_policy(model: str | None) -> str:
    """A loadable path or hub id; None is the embedded SmolLM2-135M-Instruct."""
    path, _ = resolve_model(model, default_cache_dir())
    return path


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # generation continues from the right edge
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: str) -> nn.Module:
    # fp32 master weights; accelerate's mixed precision casts the compute.
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def value_head(hidden: int) -> nn.Linear:
    """A scalar head that starts at V = 0 everywhere.

    A random head gives per-token values of about +-1.4 against rewards in [-1, 1]: after GAE
    almost all of the advantage is the critic's noise. At zero, the first updates are REINFORCE
    with the batch mean as baseline (after whitening) until the critic has learned something.
    """
    head = nn.Linear(hidden, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class ValueModel(nn.Module):
    """The policy's backbone (a separate copy) with a scalar head: V(prefix) per position."""

    def __init__(self, path: str):
        super().__init__()
        self.backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        self.head = value_head(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                last: int) -> torch.Tensor:
        """Values of the states that predict the last ``last`` tokens: shape (batch, last)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state
        return self.head(hidden[:, -last - 1 : -1]).squeeze(-1).float()


def response_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    last: int) -> torch.Tensor:
    """Logits that predict the last ``last`` tokens (only those positions are projected)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                 logits_to_keep=last + 1).logits[:, :-1]


class PolicyAndValue(nn.Module):
    """One module for accelerate: one optimizer, one prepare(), one gradient clip, and a
    forward that goes through DDP's hooks under multi-GPU.

    ``value`` is either a separate :class:`ValueModel` or, when None, a scalar head on the
    policy's own last hidden state. The head reads that state with the gradient stopped, so the
    value loss trains the head alone and cannot pull the policy; it costs no second backbone,
    neither in memory nor in the forward and backward passes of every step.
    """

    def __init__(self, policy: nn.Module, value: ValueModel | None):
        super().__init__()
        self.policy = policy
        self.value = value
        self.value_head = value_head(policy.config.hidden_size) if value is None else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                last: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy logits, values) for the last ``last`` tokens."""
        positions = position_ids(attention_mask)
        if self.value is not None:
            logits = response_logits(self.policy, input_ids, attention_mask, last)
            return logits, self.value(input_ids, attention_mask, positions, last)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          logits_to_keep=last + 1, output_hidden_states=True)
        hidden = out.hidden_states[-1][:, -last - 1 : -1].detach()
        return out.logits[:, :-1], self.value_head(hidden).squeeze(-1).float()


def policy_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> Prompt:
    """A prompt in the form the policy is conditioned on, whichever trainer runs it.

    With a chat template every prompt is a conversation (a string becomes one user turn), so
    PPO and trl (which templates only message lists) render it identically; without one, the
    message contents are joined as plain text.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer.chat_template:
        return messages
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
    """Left-padded policy input: each prompt through the chat template, ready to generate."""
    texts = []
    for prompt in prompts:
        rendered = policy_prompt(tokenizer, prompt)
        if isinstance(rendered, list):
            rendered = tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
        texts.append(rendered)
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)
