"""Group-relative (GRPO, Dr. GRPO) and leave-one-out (RLOO) advantages against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.rl import core


def test_group_relative_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0])  # two groups of 4
    # Group 1: mean 3, Bessel std sqrt((4 + 1 + 0 + 9) / 3); group 2: mean 2, std sqrt(16 / 3).
    std1, std2 = math.sqrt(14 / 3), math.sqrt(16 / 3)
    expected = [-2 / std1, -1 / std1, 0.0, 3 / std1, -2 / std2, -2 / std2, 2 / std2, 2 / std2]
    got = core.group_relative_advantages(rewards, 4, eps=0.0)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    # Dr. GRPO: no division by the std, only the group mean is removed.
    assert core.group_relative_advantages(rewards, 4, scale=False).tolist() == pytest.approx(
        [-2, -1, 0, 3, -2, -2, 2, 2])


def test_group_relative_advantages_of_a_tied_group_are_zero_not_nan():
    got = core.group_relative_advantages(torch.tensor([0.5, 0.5, 1.0, 0.0]), 2)
    # Group 2: mean 0.5, Bessel std sqrt(0.5), eps 1e-4 as TRL.
    assert got.tolist() == pytest.approx([0.0, 0.0, 0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4)])


def test_leave_one_out_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 6.0, 3.0, 3.0, 0.0])  # two groups of 3
    # r_i minus the mean of the other two in its group.
    expected = [1 - 4, 2 - 3.5, 6 - 1.5, 3 - 1.5, 3 - 1.5, 0 - 3]
    assert core.leave_one_out_advantages(rewards, 3).tolist() == pytest.approx(expected)
    # Equivalent form: G / (G - 1) * (r_i - group mean).
    assert core.leave_one_out_advantages(rewards, 3).tolist() == pytest.approx(
        [1.5 * (r - m) for r, m in zip(rewards.tolist(), [3, 3, 3, 2, 2, 2], strict=True)])
    with pytest.raises(ValueError, match="at least 2"):
        core.leave_one_out_advantages(rewards, 1)
