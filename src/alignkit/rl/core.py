"""Online RL for LLMs (PPO, GRPO, RLOO) as small pure functions over [batch, response_len] tensors.

Sources: InstructGPT (arXiv 2203.02155); "The N+ Implementation Details of RLHF with PPO"
(arXiv 2403.17031); Ziegler et al. 2019 (adaptive KL); Schulman, "Approximating KL divergence" (2020);
GRPO (DeepSeekMath, arXiv 2402.03300); Dr. GRPO (arXiv 2503.20783); RLOO (Ahmadian et al., arXiv 2402.14740).
`mask` is 1 on valid response tokens (up to and including the first EOS) and 0 on padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of `tokens` under the logits divided by the sampling temperature."""
    # The samples came from softmax(logits / T); scoring them under softmax(logits) measures a different
    # policy and the KL to the reference explodes (N+ details, "temperature scaling").
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token entropy of the temperature-scaled policy distribution."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def first_eos_mask(response_ids: torch.Tensor, eos_token_id: int,
                   pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (1 up to and including the first EOS, 0 after) and the sequence lengths of the responses."""
    # EOS is a real action the policy must learn to take; if PAD == EOS it would be masked out as padding
    # and the policy could never learn to stop (N+ details; trl #2059).
    if eos_token_id == pad_token_id:
        raise ValueError("PAD and EOS must be different tokens for PPO (set a dedicated pad token)")
    width = response_ids.shape[1]
    is_eos = response_ids == eos_token_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), torch.full_like(is_eos[:, 0], width, dtype=torch.long))
    positions = torch.arange(width, device=response_ids.device).unsqueeze(0)
    mask = (positions <= first.unsqueeze(-1)).long()
    return mask, mask.sum(-1)


def contains_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Whether each response emitted EOS at all."""
    return (response_ids == eos_token_id).any(-1)


def pad_after_eos(response_ids: torch.Tensor, mask: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Replace every token past the first EOS with PAD."""
    return torch.where(mask.bool(), response_ids, torch.full_like(response_ids, pad_token_id))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over valid positions; `reduce_sum` (whole-tensor means only) sums over data-parallel processes."""
    mask = mask.to(x.dtype)
    if dim is None:
        total = reduce_sum or (lambda t: t)
        return total((x * mask).sum()) / total(mask.sum()).clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Variance over valid positions (Bessel-corrected by default), over all processes with `reduce_sum`."""
    mean = masked_mean(x, mask, reduce_sum=reduce_sum)
    var = masked_mean((x - mean) ** 2, mask, reduce_sum=reduce_sum)
    n = (reduce_sum or (lambda t: t))(mask.to(x.dtype).sum())
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Normalise to unit variance (and zero mean when shift_mean) using valid tokens only; padding stays 0.

    `reduce_sum` sums a tensor over data-parallel processes, so that every rank whitens with the
    statistics of the global batch, as one process holding all of it would.
    """
    # Padding must not pull the statistics (N+ details, "advantage whitening"); shift_mean=False keeps the
    # sign of rewards when whitening rewards.
    mean, var = masked_mean(x, mask, reduce_sum=reduce_sum), masked_var(x, mask, reduce_sum=reduce_sum)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) on tokens sampled from the policy."""
    # Schulman's estimators with r = p_ref / p_policy: k1 = -log r (unbiased, negative per token at
    # times); k3 = (r - 1) - log r (unbiased, always >= 0, lower variance).
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (k1 or k3)")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid response token of each row."""
    return (mask.sum(-1) - 1).clamp(min=0)


def penalize_missing_eos(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Scores less `penalty` where a response never emitted EOS; unchanged when penalty is None."""
    # A response cut off by max_new_tokens never ended properly (N+ details, "EOS trick").
    if penalty is None:
        return scores
    return torch.where(has_eos, scores, scores - penalty)


def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                    kl_coef: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards -kl_coef * KL plus the (penalised) score on the last valid token.

    Returns (rewards, non_score_reward, kl), each [B, R].
    """
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    # The score belongs to the last real response token (OpenRLHF, DeepSpeed-Chat), not one past it (TRL's quirk).
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score_reward, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015) over response tokens; returns (advantages, returns)."""
    # delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}; V and A are zero past the
    # last valid token, so the episode ends there and padding contributes nothing.
    rewards, values = rewards * mask, values * mask
    width = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = advantages + values
    return advantages, returns


def group_relative_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                              eps: float = 1e-4) -> torch.Tensor:
    """GRPO: (r - mean_group) / (std_group + eps) over consecutive groups; scale=False is Dr. GRPO."""
    # Dr. GRPO drops the std division: it up-weights groups whose rewards barely differ (too easy or too hard).
    grouped = rewards.reshape(-1, group_size)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(-1, keepdim=True) + eps)  # Bessel-corrected, as GRPO and TRL
    return advantages.reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: r_i - mean_{j != i} r_j within consecutive groups of `group_size` (needs group_size >= 2)."""
    if group_size < 2:
        raise ValueError("leave-one-out needs at least 2 samples per prompt")
    grouped = rewards.reshape(-1, group_size)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss (Schulman et al. 2017) and its diagnostics: clipfrac, approxkl, ratio."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2) and its clip fraction."""
    # Clipping the critic's move around the rollout values mirrors PPO-clip (OpenAI baselines, TRL).
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Ziegler et al. 2019: scale the coefficient so the observed KL tracks a target."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Proportional control with the error clipped to +-20%, scaled by n_steps / horizon."""
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon
