"""The online-RL sections: knobs shared by ppo, grpo and rloo, and PPO's own (critic, GAE, adaptive KL)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignkit.config.base import Section
from alignkit.user_reward import load_callable

CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # module.path:function


class OnlineRLSection(Section):
    """What every online method reads: the reward, the reference, sampling, batches and the PPO-clip update."""

    reward_model: str | None = None
    reward: str = Field(
        "model", description="model: the reward model scores each response; oracle: the embedded world's rubric "
        "scores it from its prompt row's `meta` (a gold reward, as in Gao et al. 2022); module:function: a Python "
        "callable (prompts_text, responses_text, prompt_ids, response_ids) -> one float per response")
    reference: Literal["auto", "copy", "adapter_disabled", "frozen_adapter"] = "auto"
    total_episodes: int = Field(1024, gt=0, description="responses sampled over the run")
    rollout_batch_size: int = Field(32, gt=0, description="responses per rollout")
    mini_batch_size: int = Field(8, gt=0, description="responses per optimizer step")
    forward_batch_size: int | None = Field(None, gt=0, description="chunk for generation and no-grad passes")
    ppo_epochs: int = Field(4, gt=0, description="passes over each rollout (TRL GRPO's num_iterations)")
    learning_rate: float | None = Field(None, gt=0, description="default: train.learning_rate")
    anneal_lr: bool = Field(False, description="decay the learning rate linearly to 0 over the run")
    clip_range: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.05, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    reward_clip: float | None = Field(None, gt=0)
    missing_eos_penalty: float | None = 1.0
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(48, gt=0)
    save_every: int = Field(10, gt=0)

    @field_validator("reward")
    @classmethod
    def _reward_kind(cls, value: str) -> str:
        if value not in {"model", "oracle"}:
            if not CALLABLE.match(value):
                raise ValueError("reward is model, oracle or a Python callable written module.path:function")
            load_callable(value)  # importable, with the reward's arguments: an error before any model loads
        return value

    @model_validator(mode="after")
    def _needs_reward_model(self) -> OnlineRLSection:
        if self.reward == "model" and self.reward_model is None:
            raise ValueError("reward: model needs reward_model (or set reward: oracle or module:function)")
        return self


class PPOSection(OnlineRLSection):
    """PPO RLHF: the reward model, the reference and the algorithm's knobs (InstructGPT defaults)."""

    reward_model: str = Field(description="scores responses (reward: model) and initialises the critic")
    value_model: str | None = Field(None, description="critic init; default: the reward model")
    critic_learning_rate: float | None = Field(None, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    adaptive_kl: bool = False
    target_kl: float = Field(6.0, gt=0)
    kl_horizon: int = Field(10000, gt=0)
    whiten_rewards: bool = False
    critic_warmup_rollouts: int = Field(0, ge=0)


class GroupRLSection(OnlineRLSection):
    """Critic-free methods: num_generations responses per prompt are each other's baseline."""

    num_generations: int = Field(4, ge=2, description="responses sampled per prompt (the group)")
    ppo_epochs: int = Field(1, gt=0, description="passes over each rollout (TRL's num_iterations)")
    whiten_advantages: bool = Field(False, description="also whiten the advantages over the batch")

    @model_validator(mode="after")
    def _whole_groups(self) -> GroupRLSection:
        if self.rollout_batch_size % self.num_generations:
            raise ValueError(f"rollout_batch_size {self.rollout_batch_size} must be a multiple of num_generations "
                             f"{self.num_generations}")
        return self


class GRPOSection(GroupRLSection):
    """GRPO (DeepSeekMath): group-relative advantages, KL to the reference as a loss term (beta = kl_coef)."""

    kl_coef: float = Field(0.04, ge=0, description="beta: weight of the KL loss term")
    kl_estimator: Literal["k1", "k3"] = Field("k3", description="k3 is GRPO's (unbiased, >= 0)")
    scale_rewards: bool = Field(True, description="divide by the group's std; false is Dr. GRPO")


class RLOOSection(GroupRLSection):
    """RLOO (Ahmadian et al. 2024): leave-one-out baseline, KL to the reference as a reward penalty."""
