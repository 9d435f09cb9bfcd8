"""The critic: a zero-start value head on the policy's detached hidden state, or a separate model."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.ppo.models import PolicyAndValue, response_logits
from trainer.ppo.tensor_math import clipped_value_loss


def tiny_policy() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def batch():
    ids = torch.randint(1, 64, (3, 10))
    att = torch.ones_like(ids)
    att[0, :3] = 0  # left padding
    return ids, att


def test_value_head_starts_at_zero_and_logits_match_the_policy_alone():
    model = PolicyAndValue(tiny_policy(), None)
    ids, att = batch()
    logits, values = model(ids, att, 4)
    assert values.shape == (3, 4) and torch.count_nonzero(values) == 0
    torch.testing.assert_close(logits, response_logits(model.policy, ids, att, 4))


def test_value_loss_trains_the_head_and_leaves_the_policy_alone():
    model = PolicyAndValue(tiny_policy(), None)
    ids, att = batch()
    _, values = model(ids, att, 4)
    loss = clipped_value_loss(values, values.detach(), torch.ones_like(values), torch.ones_like(values), None)
    loss.loss.backward()
    assert model.value_head.weight.grad is not None and model.value_head.bias.grad.abs().item() > 0
    assert all(p.grad is None for p in model.policy.parameters())


def test_unclipped_value_loss_is_half_the_mean_squared_error():
    values, returns = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    old = torch.tensor([[0.9, 0.0]])  # a clip would matter here
    mask = torch.ones_like(values)
    assert clipped_value_loss(values, old, returns, mask, None).loss.item() == 0.25
    assert clipped_value_loss(values, old, returns, mask, 0.2).loss.item() > 0.25
