"""trainer/ppo/tensor_math.py: the PPO math as pure tensor functions, checked against hand-computed
values (GAE, KL-shaped rewards, clipped losses), direct torch computations (log-probs,
entropy), and the invariants of masking after EOS and whitening. No models, no I/O."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.ppo.tensor_math import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    response_mask,
    token_entropy,
    token_logprobs,
)

F64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def close(actual, expected, **kw) -> None:
    expected = expected if isinstance(expected, torch.Tensor) else torch.as_tensor(expected, dtype=F64)
    torch.testing.assert_close(actual.to(F64), expected.to(F64), rtol=1e-9, atol=1e-12, **kw)


# --------------------------------------------------------------------------- response_mask


def test_response_mask_keeps_first_eos_and_masks_after_it():
    ids = torch.tensor([[5, 2, 7, 2],   # EOS at 1: keep it, mask 2 and 3 (even the second EOS)
                        [5, 6, 7, 8],   # no EOS: all ones
                        [2, 9, 9, 9],   # EOS first: only it survives
                        [5, 6, 7, 2]])  # EOS last
    mask = response_mask(ids, 2)
    assert mask.dtype == torch.float32
    close(mask, [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]])


def test_response_mask_several_eos_ids():
    ids = torch.tensor([[5, 0, 2, 7],   # id 0 comes first
                        [5, 2, 0, 7],   # id 2 comes first
                        [5, 6, 7, 8]])
    close(response_mask(ids, [2, 0]), [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    # With only one of them as EOS the other is an ordinary token.
    close(response_mask(ids, [2]), [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])


def test_response_mask_no_eos_anywhere_is_all_ones():
    ids = torch.arange(12).reshape(3, 4) + 10
    close(response_mask(ids, [0, 1]), torch.ones(3, 4))


# --------------------------------------------------------------------------- masked_mean / whiten


def test_masked_mean_ignores_masked_entries():
    x = t([[1.0, 2.0, 3.0, 1000.0], [4.0, -1000.0, -1000.0, -1000.0]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]])
    close(masked_mean(x, mask), (1 + 2 + 3 + 4) / 4)
    close(masked_mean(x, mask, dim=1), [2.0, 4.0])
    # An all-zero mask does not divide by zero.
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)


def _masked_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    vals = x[mask.bool()]
    return vals.mean().item(), vals.var(unbiased=False).item()


def test_masked_whiten_mean_zero_var_one_over_masked_entries():
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=F64) * 3.0 + 5.0
    mask = t([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    x_garbage = x.clone()
    x_garbage[~mask.bool()] = 1e6  # values past EOS must not influence anything

    w = masked_whiten(x_garbage, mask)
    mean, var = _masked_stats(w, mask)
    assert mean == pytest.approx(0.0, abs=1e-9)
    assert var == pytest.approx(1.0, abs=1e-6)
    assert (w[~mask.bool()] == 0).all()
    close(w, masked_whiten(x, mask))

    # By hand: (x - mean) / std over the masked entries.
    vals = x[mask.bool()]
    expected = (x - vals.mean()) / vals.std(unbiased=False) * mask
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)


def test_masked_whiten_without_shift_keeps_the_mean():
    torch.manual_seed(1)
    x = torch.randn(2, 5, dtype=F64) * 2.0 + 3.0
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    orig_mean, _ = _masked_stats(x, mask)
    w = masked_whiten(x, mask, shift_mean=False)
    mean, var = _masked_stats(w, mask)
    assert mean == pytest.approx(orig_mean, abs=1e-9)
    assert var == pytest.approx(1.0, abs=1e-6)
    assert (w[~mask.bool()] == 0).all()


# --------------------------------------------------------------------------- log-probs / entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_token_logprobs_and_entropy_match_torch(temperature):
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 11)
    tokens = torch.randint(0, 11, (2, 3))
    dist = torch.distributions.Categorical(logits=logits / temperature)

    torch.testing.assert_close(token_logprobs(logits, tokens, temperature), dist.log_prob(tokens))
    torch.testing.assert_close(token_entropy(logits, temperature), dist.entropy())
    # By hand, for one position.
    z = logits[1, 2] / temperature
    p = torch.softmax(z, -1)
    assert token_logprobs(logits, tokens, temperature)[1, 2].item() == pytest.approx(
        math.log(p[tokens[1, 2]].item()), rel=1e-5)
    assert token_entropy(logits, temperature)[1, 2].item() == pytest.approx(
        -(p * p.log()).sum().item(), rel=1e-5)


def test_temperature_changes_the_distribution():
    torch.manual_seed(3)
    logits = torch.randn(1, 4, 7)
    # Higher temperature flattens the distribution: entropy rises towards log(V).
    h_cold, h1, h_hot = (token_entropy(logits, T) for T in (0.5, 1.0, 3.0))
    assert (h_cold < h1).all() and (h1 < h_hot).all() and (h_hot < math.log(7)).all()


def test_token_logprobs_upcast_half_precision_logits():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 5).to(torch.bfloat16)
    tokens = torch.randint(0, 5, (2, 3))
    lp = token_logprobs(logits, tokens, 0.8)
    assert lp.dtype == torch.float32
    expected = torch.distributions.Categorical(logits=logits.float() / 0.8).log_prob(tokens)
    torch.testing.assert_close(lp, expected)
    assert token_entropy(logits).dtype == torch.float32


# --------------------------------------------------------------------------- KL-shaped rewards


def test_kl_shaped_rewards_by_hand():
    logprobs = t([[-1.0, -2.0, -0.5, -1.5], [-0.3, -0.7, -9.0, -9.0]])
    ref = t([[-1.5, -1.0, -0.5, -2.5], [-0.1, -0.2, -1.0, -1.0]])
    mask = t([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1 ends (EOS) at index 1
    scores = t([2.0, -1.0])
    kl_coef = 0.1

    rewards, kl = kl_shaped_rewards(scores, logprobs, ref, mask, kl_coef)

    # kl = logp - ref on response tokens, 0 after EOS
    close(kl, [[0.5, -1.0, 0.0, 1.0], [-0.2, -0.5, 0.0, 0.0]])
    # -0.1 * kl everywhere; the score lands on the last unmasked token only.
    close(rewards, [[-0.05, 0.1, 0.0, -0.1 + 2.0],
                    [0.02, 0.05 - 1.0, 0.0, 0.0]])
    # The (large) log-prob differences after EOS leak nowhere.
    assert (rewards[1, 2:] == 0).all() and (kl[1, 2:] == 0).all()


def test_kl_shaped_rewards_zero_kl_coef_is_the_score_at_the_end():
    logprobs = torch.randn(3, 5, dtype=F64)
    ref = torch.randn(3, 5, dtype=F64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    scores = t([0.5, 1.5, -2.0])
    rewards, _ = kl_shaped_rewards(scores, logprobs, ref, mask, 0.0)
    expected = torch.zeros(3, 5, dtype=F64)
    expected[0, 4], expected[1, 2], expected[2, 0] = 0.5, 1.5, -2.0
    close(rewards, expected)
    close(rewards.sum(-1), scores)


# --------------------------------------------------------------------------- GAE


GAMMA, LAM = 0.9, 0.8  # gamma * lam = 0.72


def _gae_inputs():
    rewards = t([[0.1, -0.2, 0.3, 1.0],
                 [0.2, 0.5, 7.0, -3.0]])   # row 1: garbage after EOS
    values = t([[0.5, 0.4, -0.1, 0.2],
                [0.3, 0.6, 5.0, 9.0]])     # row 1: garbage after EOS
    mask = t([[1, 1, 1, 1],
              [1, 1, 0, 0]])
    return rewards, values, mask


def test_gae_hand_computed():
    rewards, values, mask = _gae_inputs()
    adv, ret = generalized_advantages(rewards, values, mask, GAMMA, LAM)

    # Row 0 (no EOS before the end; V = 0 after the last token):
    #   d3 = 1.0 + 0.9*0    - 0.2    =  0.8
    #   d2 = 0.3 + 0.9*0.2  - (-0.1) =  0.58
    #   d1 = -0.2 + 0.9*(-0.1) - 0.4 = -0.69
    #   d0 = 0.1 + 0.9*0.4  - 0.5    = -0.04
    #   A3 = 0.8
    #   A2 = 0.58  + 0.72*0.8     = 1.156
    #   A1 = -0.69 + 0.72*1.156   = 0.14232
    #   A0 = -0.04 + 0.72*0.14232 = 0.0624704
    # Row 1 (ends at index 1, so it bootstraps from V = 0 there, not from V[2] = 5.0):
    #   d1 = 0.5 + 0.9*0 - 0.6 = -0.1
    #   d0 = 0.2 + 0.9*0.6 - 0.3 = 0.44
    #   A1 = -0.1
    #   A0 = 0.44 + 0.72*(-0.1) = 0.368
    expected_adv = t([[0.0624704, 0.14232, 1.156, 0.8],
                      [0.368, -0.1, 0.0, 0.0]])
    close(adv, expected_adv)
    # returns = A + V on response tokens, 0 after EOS
    close(ret, t([[0.5624704, 0.54232, 1.056, 1.0],
                  [0.668, 0.5, 0.0, 0.0]]))


def test_gae_positions_after_eos_do_not_leak():
    rewards, values, mask = _gae_inputs()
    adv, ret = generalized_advantages(rewards, values, mask, GAMMA, LAM)
    assert (adv[1, 2:] == 0).all() and (ret[1, 2:] == 0).all()

    # Whatever lies after EOS, the advantages and returns stay the same.
    rewards2, values2 = rewards.clone(), values.clone()
    rewards2[1, 2:] = t([-50.0, 123.0])
    values2[1, 2:] = t([77.0, -8.0])
    adv2, ret2 = generalized_advantages(rewards2, values2, mask, GAMMA, LAM)
    close(adv2, adv)
    close(ret2, ret)

    # The truncated row equals the same row computed on its own with length 2.
    adv_short, ret_short = generalized_advantages(rewards[1:, :2], values[1:, :2],
                                                  torch.ones(1, 2, dtype=F64), GAMMA, LAM)
    close(adv[1:, :2], adv_short)
    close(ret[1:, :2], ret_short)


def test_gae_special_cases():
    rewards, values, mask = _gae_inputs()
    # lam = 0: one-step TD errors.
    adv, _ = generalized_advantages(rewards, values, mask, GAMMA, 0.0)
    close(adv[0], t([-0.04, -0.69, 0.58, 0.8]))
    # gamma = lam = 1: A_t = (sum of future rewards) - V_t, so returns are reward-to-go.
    adv, ret = generalized_advantages(rewards, values, mask, 1.0, 1.0)
    close(ret, t([[1.2, 1.1, 1.3, 1.0], [0.7, 0.5, 0.0, 0.0]]))
    close(adv, ret - values * mask)


# --------------------------------------------------------------------------- clipped policy loss


def test_clipped_policy_loss_hand_computed_and_gradients():
    eps = 0.2
    adv = t([[1.0, 1.0, 1.0, -1.0],
             [-1.0, -1.0, 1.0, 1.0]])
    ratio = t([[1.1, 1.5, 0.5, 0.5],
               [1.5, 0.9, 3.0, 3.0]])
    mask = t([[1, 1, 1, 1],
              [1, 1, 0, 0]])
    old = t([[-1.0, -2.0, -0.5, -3.0], [-1.2, -0.1, -0.4, -2.2]])
    logprobs = (old + ratio.log()).requires_grad_()

    stats = clipped_policy_loss(logprobs, old, adv, mask, eps)

    # Per token: -min(r*A, clip(r)*A)  ==  max(-r*A, -clip(r)*A)
    #   A=+1 r=1.1 inside   -> -1.1      (unclipped)
    #   A=+1 r=1.5 above    -> -1.2      (clipped: no incentive to push further)
    #   A=+1 r=0.5 below    -> -0.5      (unclipped: pessimistic bound keeps the gradient)
    #   A=-1 r=0.5 below    ->  0.8      (clipped)
    #   A=-1 r=1.5 above    ->  1.5      (unclipped)
    #   A=-1 r=0.9 inside   ->  0.9      (unclipped)
    #   masked tokens (r=3.0) do not count
    per_token = [-1.1, -1.2, -0.5, 0.8, 1.5, 0.9]
    close(stats.loss.detach(), sum(per_token) / 6)
    close(stats.clipfrac, 2 / 6)
    assert not stats.clipfrac.requires_grad
    log_r = ratio.log()[mask.bool()]
    close(stats.approx_kl, (0.5 * log_r**2).mean())

    stats.loss.backward()
    # d/dlogp (-A * r) = -A * r on unclipped tokens, / 6 for the mean; 0 where clipped or masked.
    expected_grad = t([[-1.1, 0.0, -0.5, 0.0],
                       [1.5, 0.9, 0.0, 0.0]]) / 6
    close(logprobs.grad, expected_grad)
    assert logprobs.grad[0, 1] == 0 and logprobs.grad[0, 3] == 0  # clipped -> no gradient


def test_clipped_policy_loss_at_ratio_one_is_minus_mean_advantage():
    torch.manual_seed(5)
    adv = torch.randn(2, 4, dtype=F64)
    mask = t([[1, 1, 1, 1], [1, 1, 1, 0]])
    old = torch.randn(2, 4, dtype=F64)
    logprobs = old.clone().requires_grad_()
    stats = clipped_policy_loss(logprobs, old, adv, mask, 0.2)
    close(stats.loss.detach(), -adv[mask.bool()].mean())
    close(stats.clipfrac, 0.0)
    close(stats.approx_kl, 0.0)
    stats.loss.backward()
    close(logprobs.grad, -adv * mask / mask.sum())


# --------------------------------------------------------------------------- clipped value loss


def test_clipped_value_loss_hand_computed():
    eps = 0.2
    values = t([[1.0, 1.5, 1.5, 0.0],
                [0.5, 2.0, 100.0, 100.0]])
    old = t([[0.875, 1.0, 1.0, 1.0],
             [0.5, 1.0, 0.0, 0.0]])
    returns = t([[2.0, 2.0, 1.0, -1.0],
                 [0.0, 2.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 1],
              [1, 1, 0, 0]])
    values_g = values.clone().requires_grad_()

    stats = clipped_value_loss(values_g, old, returns, mask, eps)

    # clip(V) = V_old + clip(V - V_old, -0.2, 0.2); per token max((V-R)^2, (clip(V)-R)^2):
    #   V=1.0 Vo=0.875 R=2  : inside, clip(V)=1.0 -> 1.0 (not clipped)
    #   V=1.5 Vo=1.0   R=2  : clip(V)=1.2 -> max(0.25, 0.64) = 0.64 (clipped)
    #   V=1.5 Vo=1.0   R=1  : clip(V)=1.2 -> max(0.25, 0.04) = 0.25 (not clipped)
    #   V=0.0 Vo=1.0   R=-1 : clip(V)=0.8 -> max(1.0, 3.24)  = 3.24 (clipped)
    #   V=0.5 Vo=0.5   R=0  : 0.25 (not clipped)
    #   V=2.0 Vo=1.0   R=2  : clip(V)=1.2 -> max(0.0, 0.64)  = 0.64 (clipped)
    #   masked tokens (V=100) do not count
    per_token = [1.0, 0.64, 0.25, 3.24, 0.25, 0.64]
    close(stats.loss.detach(), 0.5 * sum(per_token) / 6)
    close(stats.clipfrac, 3 / 6)
    assert stats.approx_kl is None

    stats.loss.backward()
    # Gradient flows only through unclipped terms: 0.5 * 2 * (V - R) / 6.
    expected_grad = t([[-1.0, 0.0, 0.5, 0.0],
                       [0.5, 0.0, 0.0, 0.0]]) / 6
    close(values_g.grad, expected_grad)


# --------------------------------------------------------------------------- KL controller


def test_fixed_kl_controller_never_changes():
    ctl = KLController(0.05)
    for kl in (0.0, 0.01, 10.0, 1e6):
        ctl.update(kl, n_steps=64)
    assert ctl.value == 0.05


def test_adaptive_kl_controller_moves_towards_target():
    ctl = KLController(0.1, target=1.0, horizon=100)
    ctl.update(1.1, n_steps=10)  # error +0.1 -> *= 1 + 0.1 * 10/100
    assert ctl.value == pytest.approx(0.1 * 1.01)
    ctl.update(0.95, n_steps=10)  # error -0.05, above the floor
    assert ctl.value == pytest.approx(0.1 * 1.01 * 0.995)

    ctl = KLController(0.1, target=1.0, horizon=100)
    ctl.update(1.0, n_steps=10)  # on target
    assert ctl.value == pytest.approx(0.1)


def test_adaptive_kl_controller_never_goes_below_its_start():
    ctl = KLController(0.1, target=4.0)
    for _ in range(5):
        ctl.update(0.0, n_steps=8)  # a policy still at its reference
    assert ctl.value == 0.1
    ctl.update(40.0, n_steps=8)
    ctl.update(40.0, n_steps=8)
    ctl.update(0.0, n_steps=8)
    assert ctl.value == pytest.approx(0.1 * 1.2 * 1.2 * 0.8)
    ctl.update(0.0, n_steps=8)
    assert ctl.value == 0.1


def test_adaptive_kl_controller_horizon_defaults_to_one_step():
    ctl = KLController(0.05, target=4.0)
    for _ in range(3):
        ctl.update(40.0, n_steps=64)  # far over target: +20% per step whatever the batch
    assert ctl.value == pytest.approx(0.05 * 1.2**3)


def test_a_zero_target_is_a_fixed_coefficient():
    ctl = KLController(0.05, target=0.0)
    ctl.update(100.0, n_steps=8)
    assert ctl.value == 0.05


@pytest.mark.parametrize("observed, factor", [(5.0, 1.02), (1e9, 1.02)])
def test_adaptive_kl_controller_error_is_clipped_at_0_2(observed, factor):
    ctl = KLController(0.1, target=1.0, horizon=100)
    ctl.update(observed, n_steps=10)  # error clipped to +0.2 -> *= 1 + 0.2 * 0.1
    assert ctl.value == pytest.approx(0.1 * factor)
    ctl.update(1e9, n_steps=40)
    ctl.update(0.0, n_steps=25)  # error clipped to -0.2 -> *= 1 - 0.2 * 0.25
    assert ctl.value == pytest.approx(0.1 * factor * 1.08 * 0.95)


def test_kl_controller_state_dict_round_trip():
    ctl = KLController(0.1, target=0.5, horizon=50)
    for kl in (2.0, 0.1, 0.7):
        ctl.update(kl, n_steps=8)
    state = ctl.state_dict()
    fresh = KLController(0.1, target=0.5, horizon=50)
    fresh.load_state_dict(state)
    assert fresh.value == ctl.value != 0.1
    # Both continue identically.
    ctl.update(3.0, n_steps=8)
    fresh.update(3.0, n_steps=8)
    assert fresh.value == ctl.value


def test_leave_one_out_centres_each_score_on_its_siblings():
    from trainer.ppo.tensor_math import leave_one_out_centred

    scores = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.2, 0.4])
    centred = leave_one_out_centred(scores, 4)
    # group 1: 1 - mean(0, 0, 0.5) = 0.8333...; 0 - mean(1, 0, 0.5) = -0.5; 0.5 - mean(1, 0, 0) = 0.1667
    torch.testing.assert_close(centred[:4], torch.tensor([5 / 6, -0.5, -0.5, 1 / 6]))
    # group 2: 0.5 - mean(0.5, 0.2, 0.4), ..., 0.4 - mean(0.5, 0.5, 0.2) = 0
    torch.testing.assert_close(centred[4:], torch.tensor([0.5 - 1.1 / 3, 0.5 - 1.1 / 3, 0.2 - 1.4 / 3, 0.0]))
    # equal scores give no advantage, whatever their level
    torch.testing.assert_close(leave_one_out_centred(torch.full((4,), 0.7), 2), torch.zeros(4))
    with pytest.raises(ValueError, match="groups of 3"):
        leave_one_out_centred(scores, 3)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_centred(scores, 1)


def test_leave_one_out_skips_dropped_samples():
    from trainer.ppo.tensor_math import leave_one_out_centred

    scores = torch.tensor([1.0, 0.0, 0.5, 0.9, 0.2, 0.4])
    kept = torch.tensor([True, True, False, True, False, False])
    centred = leave_one_out_centred(scores, 3, kept)
    # Group 1: the dropped 0.5 is in no baseline; group 2: 0.9 has no kept sibling.
    assert centred.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    assert leave_one_out_centred(scores, 3).tolist() == leave_one_out_centred(scores, 3, torch.ones(6) > 0).tolist()
