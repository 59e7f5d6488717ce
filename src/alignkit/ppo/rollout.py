"""Experience collection: sample responses, score them, and turn scores + KL into advantages."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignkit.ppo import core
from alignkit.ppo.modules import Reference, response_logits


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
        raise ValueError("the PPO prompt dataset is empty")
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
            raise ValueError("PPO needs a pad token distinct from EOS (else the policy never learns to stop)")

    def prompt_batch(self, rollout_idx: int) -> list[tuple[list[int], str]]:
        """This process's share of rollout `rollout_idx`: a function of (seed, rollout) so resume replays it."""
        n, rank = self.config.rollout_batch_size, self.accelerator.process_index
        local = n // self.accelerator.num_processes
        picks = []
        for i in range(rollout_idx * n + rank * local, rollout_idx * n + (rank + 1) * local):
            epoch, pos = divmod(i, len(self.prompts))
            order = list(range(len(self.prompts)))
            random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)  # reshuffled every pass
            picks.append(self.prompts[order[pos]])
        return picks

    def generation_config(self) -> Any:
        """Pure sampling: top_k=0, top_p=1 unless asked; other filters bias the KL (N+ details)."""
        from transformers import GenerationConfig

        cfg = self.config
        # An explicit config so the model's own generation defaults (top_k=50, repetition penalty...) cannot sneak in.
        return GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, eos_token_id=self.eos, pad_token_id=self.pad,
                                use_cache=True)

    @torch.no_grad()
    def collect(self, rollout_idx: int, policy: Any, reference: Reference, critic: Any,
                reward_fn: Callable[..., torch.Tensor], kl_coef: float) -> Rollout:
        """Generate, recompute logprobs / ref_logprobs / values, score, and compute GAE advantages."""
        cfg, device = self.config, self.accelerator.device
        # Randomness is a function of (seed, rollout, rank), so a resumed run samples what an unbroken one would.
        torch.manual_seed(cfg.seed * 1_000_003 + rollout_idx * 1009 + self.accelerator.process_index)
        batch = self.prompt_batch(rollout_idx)
        prompt_ids, prompt_mask = left_pad([ids for ids, _ in batch], self.pad, device)
        chunk = cfg.forward_batch_size or len(batch)
        was_training = policy.training
        policy.eval()
        t0 = time.perf_counter()
        responses = []
        for s in range(0, len(batch), chunk):
            seq = policy.generate(input_ids=prompt_ids[s:s + chunk], attention_mask=prompt_mask[s:s + chunk],
                                  generation_config=self.generation_config())
            responses.extend(seq[:, prompt_ids.shape[1]:])
        generate_s = time.perf_counter() - t0
        responses = right_pad(responses, self.pad)
        mask, lengths = core.first_eos_mask(responses, self.eos, self.pad)
        responses = core.pad_after_eos(responses, mask, self.pad)
        has_eos = core.contains_eos(responses, self.eos)
        context = prompt_ids.shape[1]
        query_responses = torch.cat([prompt_ids, responses], 1)
        attention_mask = torch.cat([prompt_mask, mask], 1)
        parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": [], "entropy": []}
        for s in range(0, len(batch), chunk):
            qr, am, resp = query_responses[s:s + chunk], attention_mask[s:s + chunk], responses[s:s + chunk]
            logits = response_logits(policy, qr, am, context)
            parts["logprobs"].append(core.logprobs_from_logits(logits, resp, cfg.temperature))
            parts["entropy"].append(core.entropy_from_logits(logits, cfg.temperature))
            del logits
            with reference.active(policy) as ref:
                ref_logits = response_logits(ref, qr, am, context)
            parts["ref_logprobs"].append(core.logprobs_from_logits(ref_logits, resp, cfg.temperature))
            del ref_logits
            parts["values"].append(critic(qr, am)[:, context - 1:-1])
        policy.train(was_training)
        logprobs, ref_logprobs, values, entropy = (torch.cat(parts[k]) for k in ("logprobs", "ref_logprobs",
                                                                                  "values", "entropy"))
        values = values * mask
        response_lists = [r[:n].tolist() for r, n in zip(responses, lengths.tolist(), strict=True)]
        scores = reward_fn([text for _, text in batch],
                           self.tokenizer.batch_decode(response_lists, skip_special_tokens=True),
                           [ids for ids, _ in batch], response_lists)
        scores = torch.as_tensor(scores, device=device).float().reshape(-1)
        if cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        rewards, non_score_reward, kl = core.compute_rewards(
            scores, logprobs, ref_logprobs, mask, kl_coef, cfg.kl_estimator, cfg.missing_eos_penalty, has_eos)
        # Whitening statistics come from the global batch: DDP ranks whiten as one process would.
        reduce_sum = ((lambda t: self.accelerator.reduce(t, reduction="sum"))
                      if self.accelerator.num_processes > 1 else None)
        if cfg.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, reduce_sum=reduce_sum)
        advantages, returns = core.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        # Whiten advantages over valid tokens every batch (N+ details; TRL, OpenRLHF).
        advantages = core.masked_whiten(advantages, mask, reduce_sum=reduce_sum)
        penalised = torch.where(has_eos, scores, scores - (cfg.missing_eos_penalty or 0.0))
        stats = {
            "objective/kl": kl.sum(1).mean().item(),
            "objective/entropy": (-logprobs * mask).sum(1).mean().item(),  # sample estimate, as TRL logged it
            "objective/token_entropy": core.masked_mean(entropy, mask).item(),
            "objective/scores": scores.mean().item(),
            "objective/scores_penalized": penalised.mean().item(),
            "objective/non_score_reward": non_score_reward.sum(1).mean().item(),
            "objective/rlhf_reward": (penalised + non_score_reward.sum(1)).mean().item(),
            "val/num_eos_tokens": has_eos.float().sum().item(),
            "val/eos_rate": has_eos.float().mean().item(),
            "val/response_length": lengths.float().mean().item(),
            "timing/generate_s": generate_s,
        }
        return Rollout(query_responses, attention_mask, context, responses, mask, logprobs, ref_logprobs, values,
                       scores, rewards, advantages, returns, stats)
