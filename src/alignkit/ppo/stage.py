"""Stage 4: PPO RLHF from a recipe — builds policy, reference, critic and reward model, runs PPOTrainer.

Reference choices (memory is one base model with LoRA, not four):
    copy              full policy; the reference is a frozen second copy of the SFT model
    adapter_disabled  LoRA on a merged SFT model; the reference is the policy with its adapter off
    frozen_adapter    the policy continues an SFT LoRA adapter; the reference is a frozen copy of that
                      adapter on the same base (disabling the adapter would give the base, not SFT)
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from alignkit.config import Recipe
from alignkit.config.base import ModelSection
from alignkit.data.loading import load_spec
from alignkit.errors import AlignkitError
from alignkit.models import (
    adapter_base,
    apply_lora,
    attach_adapter,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    merge_dequantized,
)
from alignkit.ppo.modules import FROZEN_ADAPTER, REF_ADAPTER
from alignkit.ppo.trainer import PPOConfig, PPOTrainer
from alignkit.runio import MetricsLogger, RunDir, atomic_dir, read_metrics

log = logging.getLogger("alignkit.ppo")
CURVES = ["objective/scores", "objective/kl", "objective/rlhf_reward", "objective/entropy",
          "policy/approxkl_avg", "policy/clipfrac_avg", "loss/value_avg", "val/ratio", "val/eos_rate"]


def load_prompts(recipe: Recipe, tokenizer: Any, with_meta: bool = False) -> tuple[list[list[int]], list[dict]]:
    """Chat-templated prompt token ids from data.datasets, and with `with_meta` each row's `meta` (the
    world's rubric inputs, for ppo.reward: oracle); a prompt too long to leave room is an error."""
    limit = recipe.model.max_length - recipe.ppo.max_new_tokens
    out: list[list[int]] = []
    metas: list[dict] = []
    for i, spec in enumerate(recipe.data.datasets):
        ds = load_spec(spec, where=f"data.datasets.{i}")
        columns = ds.column_names or []
        if "prompt" not in columns:
            raise AlignkitError(f"needs a 'prompt' column (has {ds.column_names}); map one with columns:",
                                where=f"data.datasets.{i}: {spec.path}")
        if with_meta and "meta" not in columns:
            raise AlignkitError("ppo.reward: oracle needs a 'meta' column (the world's prompt rows carry one)",
                                where=f"data.datasets.{i}: {spec.path}")
        for row_no, row in enumerate(ds, start=1):
            prompt = row["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                raise AlignkitError(f"prompt is {len(ids)} tokens; model.max_length - ppo.max_new_tokens is {limit}",
                                    where=f"{spec.path}:{row_no}")
            out.append(ids)
            if with_meta:
                metas.append(row["meta"])
    return out, metas


def reference_mode(recipe: Recipe) -> str:
    """Pick (or check) how the reference policy is computed."""
    is_adapter = adapter_base(recipe.model.name_or_path) is not None
    auto = "frozen_adapter" if is_adapter else ("adapter_disabled" if recipe.peft else "copy")
    mode = recipe.ppo.reference
    if mode == "auto":
        return auto
    if mode == "adapter_disabled" and is_adapter:
        raise AlignkitError("the policy starts from an unmerged SFT adapter, so disabling it gives the base "
                            "model, not SFT; use frozen_adapter (or merge the SFT adapter first)", where="ppo.reference")
    if mode in {"adapter_disabled", "frozen_adapter"} and not (is_adapter or recipe.peft):
        raise AlignkitError(f"reference {mode} needs a LoRA policy (a peft section or an adapter model)",
                            where="ppo.reference")
    if mode == "frozen_adapter" and not is_adapter:
        raise AlignkitError("frozen_adapter needs model.name_or_path to be an SFT adapter folder", where="ppo.reference")
    return mode


def build_policy(recipe: Recipe, mode: str) -> tuple[Any, Any]:
    """The trainable policy from the SFT model and PPOTrainer's ref_policy argument for `mode`.

    Resuming loads the checkpoint's weights into these models inside PPOTrainer, so the reference is
    always built from the starting SFT model.
    """
    path = recipe.model.name_or_path
    if mode == "copy":
        policy = load_causal_lm(recipe.model)
        ref = load_causal_lm(recipe.model)
        return policy, ref
    base_path = adapter_base(path) or path
    base = load_causal_lm(recipe.model.model_copy(update={"name_or_path": base_path}), recipe.quantization)
    if mode == "adapter_disabled":
        quant = recipe.quantization
        return apply_lora(base, recipe.peft, quantized=bool(quant and quant.load_in_4bit)), None
    return attach_adapter(base, path, is_trainable=True), FROZEN_ADAPTER


def oracle_reward_fn(prompt_ids: list[list[int]], metas: list[dict], eos_token_id: int) -> Any:
    """PPOTrainer's reward callable over the world's oracle: each response scored against its prompt's meta."""
    import torch

    from alignkit.world import oracle

    by_prompt = {tuple(ids): meta for ids, meta in zip(prompt_ids, metas, strict=True)}

    def reward_fn(prompts_text: list[str], responses_text: list[str], prompt_ids: list[list[int]],
                  response_ids: list[list[int]]) -> torch.Tensor:
        return torch.tensor([
            oracle.score(by_prompt[tuple(p)], text, bool(r) and r[-1] == eos_token_id).total
            for p, text, r in zip(prompt_ids, responses_text, response_ids, strict=True)])

    return reward_fn


def scorer_reward_fn(scorer: Any, pad_token_id: int) -> Any:
    """PPOTrainer's reward callable over a RewardScorer: prompt ids + response ids (EOS kept), right-padded."""
    import torch

    def reward_fn(prompts_text: list[str], responses_text: list[str], prompt_ids: list[list[int]],
                  response_ids: list[list[int]]) -> torch.Tensor:
        rows = [p + r for p, r in zip(prompt_ids, response_ids, strict=True)]
        width = max(map(len, rows))
        device = next(scorer.model.parameters()).device
        ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        return scorer.score_ids(ids, mask)

    return reward_fn


def ppo_config(recipe: Recipe) -> PPOConfig:
    """Plain PPO settings from the recipe's ppo and train sections."""
    s, t = recipe.ppo, recipe.train
    return PPOConfig(
        learning_rate=s.learning_rate or t.learning_rate,
        critic_learning_rate=s.critic_learning_rate or s.learning_rate or t.learning_rate,
        total_episodes=s.total_episodes, rollout_batch_size=s.rollout_batch_size, mini_batch_size=s.mini_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, ppo_epochs=s.ppo_epochs,
        clip_range=s.clip_range, clip_range_value=s.clip_range_value, vf_coef=s.vf_coef, gamma=s.gamma, lam=s.lam,
        kl_coef=s.kl_coef, kl_estimator=s.kl_estimator, adaptive_kl=s.adaptive_kl, target_kl=s.target_kl,
        kl_horizon=s.kl_horizon, whiten_rewards=s.whiten_rewards, reward_clip=s.reward_clip,
        missing_eos_penalty=s.missing_eos_penalty, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
        max_new_tokens=s.max_new_tokens, critic_warmup_rollouts=s.critic_warmup_rollouts, save_every=s.save_every,
        save_total_limit=t.save_total_limit, max_grad_norm=t.max_grad_norm, seed=recipe.seed,
    )


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Run PPO; save the final policy (merged full model in model/, the adapter in adapter/) and curves."""
    import torch
    from accelerate import Accelerator

    from alignkit.reward_model import RewardScorer

    torch.manual_seed(recipe.seed)
    accelerator = Accelerator(gradient_accumulation_steps=recipe.train.gradient_accumulation_steps)
    resume = run_dir.resolve_resume(recipe.train.resume_from_checkpoint)
    tokenizer = load_tokenizer(recipe.model, padding_side="left", chat=True)
    oracle_reward = recipe.ppo.reward == "oracle"
    prompts, metas = load_prompts(recipe, tokenizer, with_meta=oracle_reward)
    mode = reference_mode(recipe)
    policy, ref_policy = build_policy(recipe, mode)
    if oracle_reward:
        reward_fn = oracle_reward_fn(prompts, metas, tokenizer.eos_token_id)
    else:
        scorer = RewardScorer.from_pretrained(recipe.ppo.reward_model, device=accelerator.device)
        if scorer.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise AlignkitError("the reward model's tokenizer differs from the policy's", where="ppo.reward_model")
        scorer.model.requires_grad_(False)
        reward_fn = scorer_reward_fn(scorer, tokenizer.pad_token_id)
    critic_path = recipe.ppo.value_model or recipe.ppo.reward_model
    value_model = load_reward_model(critic_path, ModelSection(name_or_path=critic_path))
    logger = MetricsLogger(run_dir.path / "metrics.jsonl", report_to=recipe.train.report_to,
                           enabled=accelerator.is_main_process)
    config = ppo_config(recipe)
    trainer = PPOTrainer(config, policy, ref_policy, value_model, reward_fn, tokenizer, prompts,
                         accelerator=accelerator, metrics_logger=logger, checkpoint_dir=run_dir.checkpoints)
    log.info("PPO: %d rollouts of %d prompts, reference=%s", config.total_rollouts(), config.rollout_batch_size, mode)
    start = time.time()
    history = trainer.train(resume_from_checkpoint=resume)
    logger.close()
    metrics = summarize(history, time.time() - start, mode)
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(trainer.policy), tokenizer, run_dir, mode)
        plot_curves(run_dir)
    return metrics


def summarize(history: list[dict[str, float]], seconds: float, mode: str) -> dict[str, Any]:
    """Final-window metrics and timing shares."""
    if not history:
        return {"reference": mode}
    tail = history[-max(1, len(history) // 5):]

    def avg(key: str, rows: list[dict] = tail) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return {
        "reference": mode, "rollouts": len(history), "episodes": history[-1]["episode"],
        "scores_first": history[0]["objective/scores"], "scores_final": avg("objective/scores"),
        "kl_final": avg("objective/kl"), "eos_rate_final": avg("val/eos_rate"),
        "response_length_final": avg("val/response_length"),
        "seconds_per_step": avg("timing/step_s", history), "generate_share": avg("timing/generate_share", history),
        "train_seconds": round(seconds, 1),
    }


def save_policy(policy: Any, tokenizer: Any, run_dir: RunDir, mode: str) -> None:
    """model/: a full model that loads with plain transformers; adapter/: the LoRA adapter when there is one."""
    from alignkit.models import set_generation_eos

    if mode != "copy":
        if REF_ADAPTER in policy.peft_config:
            policy.delete_adapter(REF_ADAPTER)
        with atomic_dir(run_dir.path / "adapter") as tmp:
            policy.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        policy = merge_dequantized(policy)  # a 4-bit base is dequantized first: model/ is the policy trained
    set_generation_eos(policy, tokenizer)
    tokenizer.padding_side = "right"
    with atomic_dir(run_dir.model_dir) as tmp:
        policy.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))


def plot_curves(run_dir: RunDir) -> Path | None:
    """ppo_curves.png: the standard PPO metrics against rollouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir.path / "metrics.jsonl")
    keys = [k for k in CURVES if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(12, 3 * math.ceil(len(keys) / cols)))
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("rollout")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    out = run_dir.path / "ppo_curves.png"
    tmp = out.with_name(".ppo_curves.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out
