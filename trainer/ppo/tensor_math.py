"""The PPO math, as pure tensor functions (no models, no I/O).

Shapes: ``(batch, response_len)`` for per-token tensors; ``mask`` is 1 on response
tokens up to and including the first EOS, 0 after it (and on padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance over the masked entries (zero mean unless told otherwise)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(response_ids: torch.Tensor, eos_ids: int | list[int]) -> torch.Tensor:
    """1 up to and including the first EOS of each row; rows without EOS are all 1."""
    eos = torch.tensor([eos_ids] if isinstance(eos_ids, int) else eos_ids, device=response_ids.device)
    is_eos = torch.isin(response_ids, eos).long()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0  # strictly after the first EOS
    return (~after_eos).float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) under the sampling distribution (logits / temperature)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) on every token, plus the
    sequence score on the last response token (Ziegler et al.; Lee et al. use 0.05).

    Returns (rewards, kl) where kl is the per-token estimate log pi - log pi_ref.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def leave_one_out_centred(scores: torch.Tensor, group_size: int, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Each score minus the mean score of the other responses to the same prompt (RLOO's baseline).

    ``scores`` holds ``group_size`` consecutive responses per prompt. The baseline is unbiased
    (it does not use the response itself) and is per prompt, so the prompt's difficulty drops
    out of the advantage: what is left is how this response did against its siblings.

    ``kept`` (bool, one per score) leaves responses without a reward out: their own entry and
    their value in the siblings' baselines are ignored, and they come back as 0. A response
    left without a kept sibling has no baseline and also comes back as 0.
    """
    if group_size < 2:
        raise ValueError("a leave-one-out baseline needs at least 2 responses per prompt")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    weight = torch.ones_like(scores) if kept is None else kept.to(scores.dtype)
    groups = (scores * weight).reshape(-1, group_size)
    weights = weight.reshape(-1, group_size)
    siblings = weights.sum(-1, keepdim=True) - weights
    others = (groups.sum(-1, keepdim=True) - groups) / siblings.clamp(min=1)
    centred = torch.where((siblings > 0) & (weights > 0), groups - others, torch.zeros_like(groups))
    return centred.reshape(scores.shape)


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                           gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016): A_t = sum_k (gamma*lam)^k delta_{t+k},
    delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 past the last response token.

    Returns (advantages, returns = advantages + values), zero where mask is 0.
    """
    # Masked rewards and values are 0 after the last token, so deltas there vanish
    # and the last real token bootstraps from V = 0.
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate exp(d) - d - 1 with d = log pi_ref - log pi (Schulman's
    k3): never negative, unbiased for tokens sampled from pi, and of low variance."""
    d = ref_logprobs - logprobs
    return d.exp() - d - 1


@dataclass
class LossStats:
    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor | None = None


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_range: float) -> LossStats:
    """PPO-clip: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), masked mean."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return LossStats(loss, clipfrac.detach(), approx_kl.detach())


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip_range: float | None) -> LossStats:
    """0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2), masked mean; plain 0.5 * (V - R)^2
    when ``clip_range`` is None."""
    if clip_range is None:
        loss = 0.5 * masked_mean((values - returns) ** 2, mask)
        return LossStats(loss, torch.zeros((), device=values.device))
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return LossStats(loss, clipfrac.detach())


class KLController:
    """Fixed KL coefficient, or adaptive towards ``target`` KL per response (Ziegler et al. 2019):
    kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon, never below its start.

    The floor is the starting coefficient: a run that begins far below its target (the policy is
    the reference) would otherwise shrink the penalty towards zero before the KL has had a chance
    to grow, and then need many steps to win it back once it does. ``horizon`` None means one
    step's rollouts, so the coefficient moves by at most 20% per step and can follow the KL within
    a run of tens of steps (Ziegler et al. used 10,000 with 512 rollouts per step).
    """

    def __init__(self, init_coef: float, target: float | None = None, horizon: int | None = None):
        self.value = self.floor = init_coef
        self.target = target if target else None
        self.horizon = horizon

    def update(self, observed_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = max(min(observed_kl / self.target - 1.0, 0.2), -0.2)
        self.value = max(self.floor, self.value * (1.0 + error * n_steps / (self.horizon or n_steps)))

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["value"]
