"""The online-RL loop on Accelerate: rollouts with the policy, a reward and a frozen reference, PPO-clip updates.

One loop, three methods, chosen by `advantage_estimator`:
    gae   PPO (InstructGPT style): a critic started from the reward model, GAE, a per-token KL penalty
    grpo  GRPO: no critic, num_generations samples per prompt, group-relative advantages, KL as a loss term
    rloo  RLOO: no critic, leave-one-out baseline over the group, KL as a reward penalty
TRL removed its PPOTrainer in 2026, so alignkit owns this loop; every formula lives in `core.py` as a
tested pure function.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignkit.errors import AlignkitError
from alignkit.reference import Reference, disable_dropout
from alignkit.rl import core
from alignkit.rl.checkpoint import (
    CHECKPOINT_PREFIX,
    CRITIC_DIR,
    KL_KEY,
    POLICY_DIR,
    load_full_weights,
    load_policy,
    prune_checkpoints,
    save_policy,
)
from alignkit.rl.modules import ValueHead, response_logits, response_values
from alignkit.rl.rollout import Rollout, RolloutWorker
from alignkit.runio import CHECKPOINT_STATE, MetricsLogger, atomic_dir, atomic_write_json, latest_checkpoint

log = logging.getLogger("alignkit.rl")
# Reward callable: (prompts_text, responses_text, prompt_ids, response_ids) -> scores [B].
RewardFn = Callable[[list[str], list[str], list[list[int]], list[list[int]]], torch.Tensor]
COUNTED_METRICS = {"val/num_eos_tokens"}  # summed over processes; every other metric is averaged
SECTIONS = {"gae": "ppo", "grpo": "grpo", "rloo": "rloo"}  # the recipe section of each method, for errors


@dataclass
class RLConfig:
    """Everything the loop needs as plain values; batch sizes are global (all processes together), in responses."""

    learning_rate: float = 1e-5
    critic_learning_rate: float = 1e-5
    total_episodes: int = 1024
    num_rollouts: int | None = None  # overrides total_episodes when set
    rollout_batch_size: int = 32  # responses per rollout: rollout_batch_size / num_generations prompts
    mini_batch_size: int = 8  # responses per optimizer step
    gradient_accumulation_steps: int = 1
    forward_batch_size: int | None = None  # chunk for generation and no-grad passes (None: whole batch)
    ppo_epochs: int = 4
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    adaptive_kl: bool = False
    target_kl: float = 6.0
    kl_horizon: int = 10000
    whiten_rewards: bool = False
    reward_clip: float | None = None
    missing_eos_penalty: float | None = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 48
    critic_warmup_rollouts: int = 0
    anneal_lr: bool = False  # linear decay to 0 over the run (TRL's default was on)
    save_every: int = 10
    save_total_limit: int | None = None  # keep only the newest N checkpoints (None: all)
    logging_every: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    advantage_estimator: str = "gae"  # gae (PPO, needs a critic), grpo or rloo (critic-free)
    num_generations: int = 1  # responses sampled per prompt (a group); grpo and rloo need >= 2
    kl_in_reward: bool = True  # KL as a per-token reward penalty (PPO, RLOO) or as a loss term (GRPO)
    scale_rewards: bool = True  # grpo: divide by the group's std; False is Dr. GRPO
    whiten_advantages: bool = True  # whiten advantages over the batch's valid tokens

    def total_rollouts(self) -> int:
        """Number of rollouts in the run."""
        if self.num_rollouts is not None:
            return self.num_rollouts
        return max(1, math.ceil(self.total_episodes / self.rollout_batch_size))

    def local_sizes(self, num_processes: int) -> tuple[int, int, int]:
        """Per-process (rollout, mini-batch, micro-batch) sizes; raises when they do not divide."""
        if self.advantage_estimator != "gae" and self.num_generations < 2:
            raise ValueError(f"{self.advantage_estimator} compares num_generations >= 2 responses per prompt")
        if self.rollout_batch_size % (self.num_generations * num_processes):
            raise ValueError(f"rollout_batch_size {self.rollout_batch_size} must be a multiple of num_generations "
                             f"{self.num_generations} x {num_processes} processes (a group stays on one process)")
        if self.rollout_batch_size % num_processes or self.mini_batch_size % num_processes:
            raise ValueError(f"rollout_batch_size {self.rollout_batch_size} and mini_batch_size "
                             f"{self.mini_batch_size} must be multiples of the {num_processes} processes")
        rollout, mini = self.rollout_batch_size // num_processes, self.mini_batch_size // num_processes
        if rollout % mini or mini % self.gradient_accumulation_steps:
            raise ValueError(f"per process: rollout {rollout} must be a multiple of mini-batch {mini}, which must "
                             f"be a multiple of gradient_accumulation_steps {self.gradient_accumulation_steps}")
        return rollout, mini, mini // self.gradient_accumulation_steps


class RLTrainer:
    """Runs rollouts and PPO-clip updates, logs the standard metrics, checkpoints and resumes.

    `ref_policy` is a Reference, a frozen model, None (the policy's adapter disabled) or "frozen_adapter";
    `value_model` (the critic's init, a sequence-classification model) only for advantage_estimator "gae".
    """

    def __init__(self, config: RLConfig, policy: Any, ref_policy: Any, value_model: Any, reward_fn: RewardFn,
                 tokenizer: Any, prompt_dataset: Sequence[Any], accelerator: Any = None,
                 metrics_logger: Any = None, checkpoint_dir: str | Path | None = None):
        from accelerate import Accelerator

        self.config = config
        self.accelerator = accelerator or Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps)
        if self.accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
            raise ValueError("the accelerator's gradient_accumulation_steps differs from the RL config's")
        if (value_model is None) != (config.advantage_estimator != "gae"):
            raise ValueError("advantage_estimator gae needs a value_model (critic); grpo and rloo take none")
        self.local_rollout, self.local_mini, self.micro = config.local_sizes(self.accelerator.num_processes)
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if metrics_logger is None and self.checkpoint_dir is not None:
            metrics_logger = MetricsLogger(self.checkpoint_dir / "metrics.jsonl",
                                           enabled=self.accelerator.is_main_process)
        self.metrics_logger = metrics_logger
        self.reference = Reference.build(policy, ref_policy)
        if self.reference.mode == "copy":
            self.reference.model.to(self.accelerator.device)
        disable_dropout(policy)
        params = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": config.learning_rate}]
        critic = None
        if value_model is not None:
            critic = value_model if isinstance(value_model, ValueHead) else ValueHead(value_model)
            disable_dropout(critic)
            params.append({"params": [p for p in critic.parameters() if p.requires_grad],
                           "lr": config.critic_learning_rate})
        optimizer = torch.optim.AdamW(params, eps=1e-5)  # eps 1e-5 as in OpenAI's lm-human-preferences
        total = config.total_rollouts()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda r: max(0.0, 1.0 - r / total) if config.anneal_lr else 1.0)
        if critic is None:
            self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
            self.critic = None
        else:
            self.policy, self.critic, self.optimizer = self.accelerator.prepare(policy, critic, optimizer)
        self.kl_ctl = (core.AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                       if config.adaptive_kl else core.FixedKLController(config.kl_coef))
        self.worker = RolloutWorker(config, tokenizer, prompt_dataset, self.accelerator)
        self.rollout_idx = 0
        self.episode = 0
        self.history: list[dict[str, float]] = []

    # ---- one rollout + update ----------------------------------------------------------------------------
    def rollout(self) -> Rollout:
        """Sample, score and compute advantages for this process's share of the next rollout batch."""
        policy = self.accelerator.unwrap_model(self.policy)
        critic = self.accelerator.unwrap_model(self.critic) if self.critic is not None else None
        return self.worker.collect(self.rollout_idx, policy, self.reference, critic, self.reward_fn, self.kl_ctl.value)

    def update(self, ro: Rollout) -> dict[str, float]:
        """ppo_epochs passes over shuffled mini-batches with gradient accumulation; mean diagnostics."""
        models = (self.policy,) if self.critic is None else (self.policy, self.critic)
        cfg = self.config
        train_policy = self.rollout_idx >= cfg.critic_warmup_rollouts
        sums: dict[str, list[float]] = {}
        for epoch in range(cfg.ppo_epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.rollout_idx * 101 + epoch)
            order = torch.randperm(ro.responses.shape[0], generator=gen)
            for start in range(0, len(order), self.micro):
                with self.accelerator.accumulate(*models):
                    stats = self._step(ro, order[start:start + self.micro], train_policy)
                for k, v in stats.items():
                    sums.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in sums.items()}

    def _step(self, ro: Rollout, idx: torch.Tensor, train_policy: bool) -> dict[str, float]:
        """One micro-batch: losses, backward, and (on accumulation boundaries) clip + optimizer step."""
        cfg = self.config
        mask, query_responses, attention_mask = ro.mask[idx], ro.query_responses[idx], ro.attention_mask[idx]
        logits = response_logits(self.policy, query_responses, attention_mask, ro.context_length)
        logprobs = core.logprobs_from_logits(logits, ro.responses[idx], cfg.temperature)
        entropy = core.masked_mean(core.entropy_from_logits(logits.detach(), cfg.temperature), mask)
        pg_loss, pg = core.policy_loss(logprobs, ro.logprobs[idx], ro.advantages[idx], mask, cfg.clip_range)
        # Critic warm-up (N+ details): the policy loss is zeroed, not skipped, so DDP still sees every parameter.
        loss = pg_loss if train_policy else 0.0 * pg_loss
        stats: dict[str, float] = {}
        if not cfg.kl_in_reward:
            # GRPO: the KL to the reference is a loss term on the current policy, not a reward penalty.
            kl_loss = core.masked_mean(core.kl_penalty(logprobs, ro.ref_logprobs[idx], cfg.kl_estimator), mask)
            loss = loss + self.kl_ctl.value * kl_loss
            stats["loss/kl_avg"] = kl_loss.item()
        if self.critic is not None:
            values = response_values(self.critic, query_responses, attention_mask, ro.context_length)
            vf_loss, vf_clipfrac = core.value_loss(values, ro.values[idx], ro.returns[idx], mask,
                                                   cfg.clip_range_value)
            loss = loss + cfg.vf_coef * vf_loss
            stats.update({"loss/value_avg": vf_loss.item(), "val/clipfrac_avg": vf_clipfrac.item()})
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]], cfg.max_grad_norm)
        self.optimizer.step()  # Accelerate's optimizer only steps on accumulation boundaries
        self.optimizer.zero_grad()
        return {"policy/approxkl_avg": pg["approxkl"].item(), "policy/clipfrac_avg": pg["clipfrac"].item(),
                "policy/entropy_avg": entropy.item(), "loss/policy_avg": pg_loss.item(), **stats,
                "val/ratio": pg["ratio"].item()}

    # ---- the loop ------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | Path | bool | None = None) -> list[dict[str, float]]:
        """Run the remaining rollouts (after resuming if asked); checkpoint every save_every and at the end."""
        cfg = self.config
        if resume_from_checkpoint:
            self.resume_from_checkpoint(resume_from_checkpoint)
        total = cfg.total_rollouts()
        if self.rollout_idx >= total:
            log.warning("RL: checkpoint is at rollout %d of %d; nothing left to train", self.rollout_idx, total)
        bar = tqdm(range(self.rollout_idx, total), desc=SECTIONS.get(cfg.advantage_estimator, "rl"),
                   initial=self.rollout_idx, total=total,
                   disable=not self.accelerator.is_main_process)
        for _ in bar:
            stats = self._train_one()
            bar.set_postfix(score=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.3f}")
            if self.checkpoint_dir and (self.rollout_idx % cfg.save_every == 0 or self.rollout_idx == total):
                self.save_checkpoint()
        return self.history

    def _train_one(self) -> dict[str, float]:
        cfg = self.config
        lr = self.scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        ro = self.rollout()
        t1 = time.perf_counter()
        stats = {**ro.stats, **self.update(ro)}
        t2 = time.perf_counter()
        self.scheduler.step()
        self.rollout_idx += 1
        self.episode += cfg.rollout_batch_size
        stats.update({"lr": lr, "kl_coef": self.kl_ctl.value, "timing/train_s": t2 - t1,
                      "timing/rollout_s": t1 - t0, "timing/step_s": t2 - t0,
                      "timing/generate_share": stats["timing/generate_s"] / max(t2 - t0, 1e-9)})
        stats = self._gather(stats)
        stats.update({"episode": self.episode, "eps": cfg.rollout_batch_size / max(t2 - t0, 1e-9)})
        self.kl_ctl.update(stats["objective/kl"], cfg.rollout_batch_size)
        self.history.append(stats)
        if not all(math.isfinite(v) for k, v in stats.items() if k.startswith("loss/")):
            raise AlignkitError(f"the loss became non-finite at rollout {self.rollout_idx}; lower learning_rate "
                                "or check the reward scale", where=SECTIONS.get(cfg.advantage_estimator, "rl"))
        total = cfg.total_rollouts()
        if self.metrics_logger is not None and (self.rollout_idx % cfg.logging_every == 0
                                                or self.rollout_idx == total):
            if self.accelerator.is_main_process:
                self.metrics_logger.log(stats, self.rollout_idx)
        return stats

    def _gather(self, stats: dict[str, float]) -> dict[str, float]:
        """Average metrics over processes (counts are summed); per-process batches are equal, so means are exact."""
        if self.accelerator.num_processes == 1:
            return stats
        keys = sorted(stats)
        t = torch.tensor([float(stats[k]) for k in keys], device=self.accelerator.device, dtype=torch.float64)
        summed = self.accelerator.reduce(t, reduction="sum").tolist()
        n = self.accelerator.num_processes
        return {k: (v if k in COUNTED_METRICS else v / n) for k, v in zip(keys, summed, strict=True)}

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """checkpoint-<rollout>/: policy, critic, optimizer + scheduler state, trainer_state.json; written atomically."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process or self.checkpoint_dir is None:
            return None
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.rollout_idx}"
        recent = self.history[-self.config.save_every:]
        with atomic_dir(final) as tmp:
            save_policy(self.accelerator.unwrap_model(self.policy), tmp / POLICY_DIR, self.tokenizer)
            if self.critic is not None:
                self.accelerator.unwrap_model(self.critic).model.save_pretrained(str(tmp / CRITIC_DIR),
                                                                                 safe_serialization=True)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       tmp / "optimizer.pt")
            atomic_write_json(tmp / CHECKPOINT_STATE, {
                "rollout": self.rollout_idx, "episode": self.episode, "kl_coef": self.kl_ctl.value,
                KL_KEY: self.history[-1]["objective/kl"] if self.history else 0.0,
                "metrics": {"kl": _mean(recent, "objective/kl"), "scores": _mean(recent, "objective/scores"),
                            "last": self.history[-1] if self.history else {}},
                "config": asdict(self.config), "history": self.history,
            })
        log.info("saved checkpoint %s", final)
        for old in prune_checkpoints(self.checkpoint_dir, self.config.save_total_limit):
            log.info("deleted %s (train.save_total_limit=%s)", old, self.config.save_total_limit)
        return final

    def resume_from_checkpoint(self, path: str | Path | bool) -> Path:
        """Load weights, optimizer/scheduler state, counters and KL coefficient; raises if nothing is found."""
        if path is True:
            found = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
            if found is None:
                raise FileNotFoundError(f"resume requested but no {CHECKPOINT_PREFIX}* in {self.checkpoint_dir}")
            path = found
        path = Path(path)
        state = json.loads((path / CHECKPOINT_STATE).read_text())
        saved = state.get("config", {})
        for key in ("rollout_batch_size", "num_generations", "seed"):
            # Changing these would replay a different prompt order: the run would silently not be a resume.
            if key in saved and saved[key] != getattr(self.config, key):
                raise ValueError(f"cannot resume {path}: {key} was {saved[key]}, now {getattr(self.config, key)}")
        load_policy(self.accelerator.unwrap_model(self.policy), path / POLICY_DIR)
        if self.critic is not None:
            load_full_weights(self.accelerator.unwrap_model(self.critic).model, path / CRITIC_DIR)
        blob = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.rollout_idx, self.episode = state["rollout"], state["episode"]
        self.kl_ctl.value = state["kl_coef"]
        self.history = state.get("history", [])
        log.info("resumed from %s at rollout %d (episode %d)", path, self.rollout_idx, self.episode)
        return path


def _mean(rows: list[dict[str, float]], key: str) -> float | None:
    return sum(r[key] for r in rows) / len(rows) if rows else None
