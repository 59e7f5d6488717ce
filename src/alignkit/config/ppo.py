"""The ppo stage section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.config.base import Section


class PPOSection(Section):
    """PPO RLHF: the reward model, the reference and the algorithm's knobs (InstructGPT defaults)."""

    reward_model: str
    reward: Literal["model", "oracle"] = Field(
        "model", description="oracle: the embedded world's rubric scores each response from its prompt row's "
        "`meta` (a gold reward, as in Gao et al. 2022: what PPO reaches with a perfect reward model); "
        "reward_model then only initialises the critic")
    value_model: str | None = Field(None, description="critic init; default: the reward model")
    reference: Literal["auto", "copy", "adapter_disabled", "frozen_adapter"] = "auto"
    total_episodes: int = Field(1024, gt=0)
    rollout_batch_size: int = Field(32, gt=0)
    mini_batch_size: int = Field(8, gt=0)
    ppo_epochs: int = Field(4, gt=0)
    learning_rate: float | None = Field(None, gt=0)
    critic_learning_rate: float | None = Field(None, gt=0)
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    kl_coef: float = Field(0.05, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    target_kl: float = Field(6.0, gt=0)
    kl_horizon: int = Field(10000, gt=0)
    whiten_rewards: bool = False
    reward_clip: float | None = Field(None, gt=0)
    missing_eos_penalty: float | None = 1.0
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(48, gt=0)
    critic_warmup_rollouts: int = Field(0, ge=0)
    save_every: int = Field(10, gt=0)
