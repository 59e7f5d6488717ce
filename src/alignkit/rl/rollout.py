"""Experience collection: sample responses, score them, and turn scores + KL into advantages.

The advantage estimator is a setting (OpenRLHF's and verl's switch): "gae" with a critic (PPO),
"grpo" (group-relative) or "rloo" (leave-one-out) over the `num_generations` samples of each prompt.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList

from alignkit.reference import Reference
from alignkit.rl import core
from alignkit.rl.modules import response_logits, response_values
from alignkit.rl.sampling import RowSeededSampler, greedy_config, row_seed

ESTIMATORS = ("gae", "grpo", "rloo")


@dataclass
class Samples:
    """Sampled responses of one batch; response-aligned tensors are [B, R]."""

    prompt_ids: list[list[int]]
    prompt_texts: list[str]
    query_responses: torch.Tensor
    attention_mask: torch.Tensor
    context_length: int
    responses: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    has_eos: torch.Tensor
    generate_s: float


@dataclass
class Rollout:
    """One process's batch of experience; response-aligned tensors are [B, R]."""

    query_responses: torch.Tensor
    attention_mask: torch.Tensor
    context_length: int
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stats: dict[str, float]


def normalize_prompts(prompt_dataset: Sequence[Any], tokenizer: Any) -> list[tuple[list[int], str]]:
    """(token ids, text) pairs from lists of ids, or dicts with input_ids and an optional prompt/text."""
    out = []
    for row in prompt_dataset:
        if isinstance(row, dict):
            ids = list(row["input_ids"])
            text = row.get("text", row.get("prompt"))
        else:
            ids, text = list(row), None
        if not isinstance(text, str):
            text = tokenizer.decode(ids, skip_special_tokens=False)
        out.append((ids, text))
    if not out:
        raise ValueError("the prompt dataset is empty")
    return out


def left_pad(batch: list[list[int]], pad_token_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask: decoder-only generation continues from the right edge."""
    width = max(map(len, batch))
    ids = torch.tensor([[pad_token_id] * (width - len(b)) + b for b in batch], device=device)
    mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
    return ids, mask


def right_pad(rows: list[torch.Tensor], pad_token_id: int) -> torch.Tensor:
    """Stack 1-D tensors of different lengths, padding on the right."""
    width = max(r.shape[0] for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0]), value=pad_token_id) for r in rows])


class RolloutWorker:
    """Draws prompt batches deterministically and collects experience with the current policy."""

    def __init__(self, config: Any, tokenizer: Any, prompt_dataset: Sequence[Any], accelerator: Any):
        self.config, self.tokenizer, self.accelerator = config, tokenizer, accelerator
        self.prompts = normalize_prompts(prompt_dataset, tokenizer)
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        if self.pad is None or self.pad == self.eos:
            raise ValueError("online RL needs a pad token distinct from EOS (else the policy never learns to stop)")
        if config.advantage_estimator not in ESTIMATORS:
            raise ValueError(f"unknown advantage_estimator {config.advantage_estimator!r} ({', '.join(ESTIMATORS)})")

    def prompt_batch(self, rollout_idx: int) -> list[tuple[list[int], str]]:
        """This process's share of rollout `rollout_idx`: a function of (seed, rollout) so resume replays it.

        Each prompt appears num_generations times in a row: a group never spans processes.
        """
        group = self.config.num_generations
        n, rank = self.config.rollout_batch_size // group, self.accelerator.process_index
        local = n // self.accelerator.num_processes
        picks = []
        for i in range(rollout_idx * n + rank * local, rollout_idx * n + (rank + 1) * local):
            epoch, pos = divmod(i, len(self.prompts))
            order = list(range(len(self.prompts)))
            random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)  # reshuffled every pass
            picks.extend([self.prompts[order[pos]]] * group)
        return picks

    def first_row(self) -> int:
        """Global index (within a rollout) of this process's first response row."""
        return self.accelerator.process_index * (self.config.rollout_batch_size // self.accelerator.num_processes)

    def sampler(self, rollout_idx: int, rows: range) -> RowSeededSampler:
        """Pure sampling (top_k=0, top_p=1 unless asked; other filters bias the KL, N+ details), one stream a row."""
        cfg = self.config
        # A row's randomness is a function of (seed, rollout, global row): a resumed run samples what an unbroken
        # one would, and N processes sample what one process would for the same global batch.
        seeds = [row_seed(cfg.seed, rollout_idx, self.first_row() + r) for r in rows]
        return RowSeededSampler(seeds, self.accelerator.device, cfg.temperature, cfg.top_k, cfg.top_p)

    @torch.no_grad()
    def sample(self, rollout_idx: int, policy: Any) -> Samples:
        """Generate this process's responses of rollout `rollout_idx`, cut after the first EOS."""
        cfg, device = self.config, self.accelerator.device
        batch = self.prompt_batch(rollout_idx)
        prompt_ids, prompt_mask = left_pad([ids for ids, _ in batch], self.pad, device)
        chunk = cfg.forward_batch_size or len(batch)
        generation_config = greedy_config(cfg.max_new_tokens, self.eos, self.pad)
        was_training = policy.training
        policy.eval()
        t0 = time.perf_counter()
        responses = []
        for s in range(0, len(batch), chunk):
            rows = range(s, min(s + chunk, len(batch)))
            seq = policy.generate(input_ids=prompt_ids[s:s + chunk], attention_mask=prompt_mask[s:s + chunk],
                                  generation_config=generation_config,
                                  logits_processor=LogitsProcessorList([self.sampler(rollout_idx, rows)]))
            responses.extend(seq[:, prompt_ids.shape[1]:])
        generate_s = time.perf_counter() - t0
        policy.train(was_training)
        responses = right_pad(responses, self.pad)
        mask, lengths = core.first_eos_mask(responses, self.eos, self.pad)
        responses = core.pad_after_eos(responses, mask, self.pad)
        return Samples([ids for ids, _ in batch], [text for _, text in batch], torch.cat([prompt_ids, responses], 1),
                       torch.cat([prompt_mask, mask], 1), prompt_ids.shape[1], responses, mask, lengths,
                       core.contains_eos(responses, self.eos), generate_s)

    @torch.no_grad()
    def token_logprobs(self, sm: Samples, policy: Any, reference: Reference) -> dict[str, torch.Tensor]:
        """logprobs, ref_logprobs and entropy [B, R] of the sampled responses, in forward_batch_size chunks."""
        cfg, chunk = self.config, self.config.forward_batch_size or sm.responses.shape[0]
        was_training = policy.training
        policy.eval()
        parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "entropy": []}
        for s in range(0, sm.responses.shape[0], chunk):
            qr, am = sm.query_responses[s:s + chunk], sm.attention_mask[s:s + chunk]
            resp = sm.responses[s:s + chunk]
            logits = response_logits(policy, qr, am, sm.context_length)
            parts["logprobs"].append(core.logprobs_from_logits(logits, resp, cfg.temperature))
            parts["entropy"].append(core.entropy_from_logits(logits, cfg.temperature))
            del logits
            with reference.active(policy) as ref:
                ref_logits = response_logits(ref, qr, am, sm.context_length)
            parts["ref_logprobs"].append(core.logprobs_from_logits(ref_logits, resp, cfg.temperature))
            del ref_logits
        policy.train(was_training)
        return {k: torch.cat(v) for k, v in parts.items()}

    @torch.no_grad()
    def values(self, sm: Samples, critic: Any) -> torch.Tensor:
        """(B, R): the critic's value before each response token, zero on padding."""
        chunk = self.config.forward_batch_size or sm.responses.shape[0]
        values = torch.cat([response_values(critic, sm.query_responses[s:s + chunk], sm.attention_mask[s:s + chunk],
                                            sm.context_length) for s in range(0, sm.responses.shape[0], chunk)])
        return values * sm.mask

    def scores(self, sm: Samples, reward_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Reward of each response (EOS kept in the ids, dropped from the text), clipped when reward_clip is set."""
        response_lists = [r[:n].tolist() for r, n in zip(sm.responses, sm.lengths.tolist(), strict=True)]
        scores = reward_fn(sm.prompt_texts, self.tokenizer.batch_decode(response_lists, skip_special_tokens=True),
                           sm.prompt_ids, response_lists)
        scores = torch.as_tensor(scores, device=self.accelerator.device).float().reshape(-1)
        if self.config.reward_clip is not None:
            scores = scores.clamp(-self.config.reward_clip, self.config.reward_clip)
        return scores

    def reduce_sum(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Sum over processes, so whitening statistics come from the global batch as in one process."""
        if self.accelerator.num_processes == 1:
            return None
        return lambda t: self.accelerator.reduce(t, reduction="sum")

    def advantages(self, rewards: torch.Tensor, non_score_reward: torch.Tensor, penalised: torch.Tensor,
                   values: torch.Tensor | None, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, returns) [B, R] by the configured estimator; returns are zero without a critic."""
        cfg, reduce_sum = self.config, self.reduce_sum()
        if cfg.advantage_estimator == "gae":
            if cfg.whiten_rewards:
                rewards = core.masked_whiten(rewards, mask, shift_mean=False, reduce_sum=reduce_sum)
            advantages, returns = core.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        else:
            # One reward per sequence; the KL penalty joins it (RLOO) or stays out for the loss term (GRPO).
            sequence_reward = penalised + (non_score_reward.sum(1) if cfg.kl_in_reward else 0.0)
            if cfg.advantage_estimator == "grpo":
                per_sequence = core.group_relative_advantages(sequence_reward, cfg.num_generations,
                                                              cfg.scale_rewards)
            else:
                per_sequence = core.leave_one_out_advantages(sequence_reward, cfg.num_generations)
            advantages = per_sequence.unsqueeze(1) * mask  # (B, R): every token of a response shares its advantage
            returns = torch.zeros_like(advantages)
        if cfg.whiten_advantages:
            # Whiten advantages over valid tokens every batch (N+ details; TRL, OpenRLHF).
            advantages = core.masked_whiten(advantages, mask, reduce_sum=reduce_sum)
        return advantages, returns

    def collect(self, rollout_idx: int, policy: Any, reference: Reference, critic: Any,
                reward_fn: Callable[..., torch.Tensor], kl_coef: float) -> Rollout:
        """Generate, recompute logprobs / ref_logprobs (/ values with a critic), score, and compute advantages."""
        cfg = self.config
        sm = self.sample(rollout_idx, policy)
        lp = self.token_logprobs(sm, policy, reference)
        values = self.values(sm, critic) if critic is not None else torch.zeros_like(lp["logprobs"])
        scores = self.scores(sm, reward_fn)
        penalised = core.penalize_missing_eos(scores, sm.has_eos, cfg.missing_eos_penalty)
        rewards, non_score_reward, kl = core.compute_rewards(penalised, lp["logprobs"], lp["ref_logprobs"], sm.mask,
                                                             kl_coef, cfg.kl_estimator)
        advantages, returns = self.advantages(rewards, non_score_reward, penalised,
                                              values if critic is not None else None, sm.mask)
        stats = rollout_stats(sm, lp, scores, penalised, non_score_reward, kl)
        return Rollout(sm.query_responses, sm.attention_mask, sm.context_length, sm.responses, sm.mask,
                       lp["logprobs"], lp["ref_logprobs"], values, scores, rewards, advantages, returns, stats)


def rollout_stats(sm: Samples, lp: dict[str, torch.Tensor], scores: torch.Tensor, penalised: torch.Tensor,
                  non_score_reward: torch.Tensor, kl: torch.Tensor) -> dict[str, float]:
    """The rollout's metrics under TRL's names, the same for every method."""
    mask, has_eos = sm.mask, sm.has_eos
    return {
        "objective/kl": kl.sum(1).mean().item(),
        "objective/entropy": (-lp["logprobs"] * mask).sum(1).mean().item(),  # sample estimate, as TRL logged it
        "objective/token_entropy": core.masked_mean(lp["entropy"], mask).item(),
        "objective/scores": scores.mean().item(),
        "objective/scores_penalized": penalised.mean().item(),
        "objective/non_score_reward": non_score_reward.sum(1).mean().item(),
        "objective/rlhf_reward": (penalised + non_score_reward.sum(1)).mean().item(),
        "val/num_eos_tokens": has_eos.float().sum().item(),
        "val/eos_rate": has_eos.float().mean().item(),
        "val/response_length": sm.lengths.float().mean().item(),
        "timing/generate_s": sm.generate_s,
    }
