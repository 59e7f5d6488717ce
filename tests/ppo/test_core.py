"""PPO's pure functions against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.rl import core

EOS, PAD = 1, 0


def test_logprobs_divide_by_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    tokens = torch.tensor([[1]])
    assert core.logprobs_from_logits(logits, tokens).item() == pytest.approx(math.log(0.75))
    # At T=2 the logits become [0, ln(3)/2]: p(1) = sqrt(3) / (1 + sqrt(3)).
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    assert core.logprobs_from_logits(logits, tokens, temperature=2.0).item() == pytest.approx(expected)


def test_entropy_of_uniform_and_peaked():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    ent = core.entropy_from_logits(logits)
    assert ent[0, 0].item() == pytest.approx(math.log(4))
    assert ent[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_first_eos_mask_keeps_eos_and_pads_after():
    ids = torch.tensor([[5, 6, EOS, PAD, PAD],
                        [5, EOS, 7, EOS, 8],
                        [5, 6, 7, 8, 9]])
    mask, lengths = core.first_eos_mask(ids, EOS, PAD)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert lengths.tolist() == [3, 2, 5]
    assert core.contains_eos(ids, EOS).tolist() == [True, True, False]
    assert core.pad_after_eos(ids, mask, PAD)[1].tolist() == [5, EOS, PAD, PAD, PAD]


def test_first_eos_mask_refuses_pad_equal_to_eos():
    with pytest.raises(ValueError, match="PAD and EOS"):
        core.first_eos_mask(torch.tensor([[5, EOS]]), EOS, EOS)


def test_kl_estimators_k1_k3_by_hand():
    logprobs, ref_logprobs = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert core.kl_penalty(logprobs, ref_logprobs, "k1").item() == pytest.approx(math.log(2))
    # r = ref / p = 0.5: k3 = (r - 1) - log r = -0.5 + ln 2
    assert core.kl_penalty(logprobs, ref_logprobs, "k3").item() == pytest.approx(math.log(2) - 0.5)
    with pytest.raises(ValueError):
        core.kl_penalty(logprobs, ref_logprobs, "k9")


def test_k1_and_k3_are_unbiased_and_k3_nonnegative():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    exact_kl = (p * (p / q).log()).sum()
    k1 = core.kl_penalty(p.log(), q.log(), "k1")
    k3 = core.kl_penalty(p.log(), q.log(), "k3")
    # Expectation over samples from the policy p equals KL(p || q) for both estimators.
    assert (p * k1).sum().item() == pytest.approx(exact_kl.item(), rel=1e-5)
    assert (p * k3).sum().item() == pytest.approx(exact_kl.item(), rel=1e-5)
    assert (k3 >= 0).all() and (k1 < 0).any()


def test_score_lands_on_last_valid_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0, -9.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    scores = torch.tensor([2.0, 3.0])
    rewards, non_score, kl = core.compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0])
    assert non_score[0].tolist() == pytest.approx([-0.05, 0.0, 0.05, 0.0])
    # index 2 is the last valid token of row 0 (not index 3, one past it)
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.0, 2.05, 0.0])
    assert rewards[1].tolist() == pytest.approx([0.0, 0.0, 0.0, 3.0])


def test_missing_eos_penalty_is_subtracted_from_the_score():
    mask = torch.ones(2, 2, dtype=torch.long)
    zeros = torch.zeros(2, 2)
    penalised = core.penalize_missing_eos(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), 1.5)
    assert penalised.tolist() == pytest.approx([1.0, -0.5])
    assert core.penalize_missing_eos(penalised, torch.tensor([False, False]), None).tolist() == penalised.tolist()
    rewards, _, _ = core.compute_rewards(penalised, zeros, zeros, mask, 0.1)
    assert rewards[:, -1].tolist() == pytest.approx([1.0, -0.5])


def test_gae_by_hand_with_padding_ignored():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the 4th column is padding with junk in it
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = core.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # delta_2 = 1 - 0.3 = 0.7;  delta_1 = 0.3 - 0.4 = -0.1;  delta_0 = 0.4 - 0.5 = -0.1
    # A_2 = 0.7;  A_1 = -0.1 + 0.5 * 0.7 = 0.25;  A_0 = -0.1 + 0.5 * 0.25 = 0.025
    assert advantages[0].tolist() == pytest.approx([0.025, 0.25, 0.7, 0.0])
    assert returns[0].tolist() == pytest.approx([0.525, 0.65, 1.0, 0.0])


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.0, 0.0]])
    advantages, returns = core.gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=1.0)
    assert returns[0].tolist() == pytest.approx([1 + 0.81 * 2, 0.9 * 2, 2.0])
    assert advantages[0, 0].item() == pytest.approx(2.62 - 0.5)


def test_whitening_ignores_masked_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert core.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert core.masked_var(x, mask).item() == pytest.approx(1.0)
    assert core.masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert core.masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_policy_loss_clipfrac_on_crafted_ratios():
    ratios = torch.tensor([[1.5, 1.0, 0.5, 1.1, 7.0]])
    old = torch.zeros(1, 5)
    advantages = torch.tensor([[1.0, 1.0, -1.0, 1.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = core.policy_loss(ratios.log(), old, advantages, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -1.0, 0.8 (clipped), -1.1
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8 - 1.1) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio"].item() == pytest.approx((1.5 + 1.0 + 0.5 + 1.1) / 4)
    expected_kl = 0.5 * sum(math.log(r) ** 2 for r in (1.5, 1.0, 0.5, 1.1)) / 4
    assert stats["approxkl"].item() == pytest.approx(expected_kl)


def test_value_loss_clipped():
    values, old_values = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)
    returns = torch.tensor([[1.0, 0.5]])
    loss, clipfrac = core.value_loss(values, old_values, returns, torch.ones(1, 2), clip_range_value=0.2)
    # token 0: unclipped 0, clipped (0.2 - 1)^2 = 0.64;  token 1: both 0.25
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.25) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_kl_controllers():
    fixed = core.FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 100)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(5.4, 1000)  # error -0.1
    assert ctl.value == pytest.approx(0.1 * (1 - 0.1 * 1000 / 10000))
