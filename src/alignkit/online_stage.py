"""The online-RL stages (ppo, grpo, rloo) from a recipe: policy, reference, reward, critic, then RLTrainer.

Each stage module is a one-line configuration of `run` below; the maths and the loop are alignkit.rl's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import prepare_model_for_kbit_training

from alignkit.config import Recipe
from alignkit.config.base import ModelSection
from alignkit.config.ppo import OnlineRLSection, PPOSection
from alignkit.errors import AlignkitError
from alignkit.models import (
    adapter_base,
    apply_lora,
    attach_adapter,
    is_quantized_config,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    merge_dequantized,
    set_generation_eos,
)
from alignkit.preflight import local_path, reward_head_problem
from alignkit.reference import (
    ADAPTER_DISABLED,
    COPY,
    FROZEN_ADAPTER,
    Reference,
    resolve_mode,
    without_reference_adapter,
)
from alignkit.reward_model import RewardScorer
from alignkit.rl.prompts import load_prompts
from alignkit.rl.rewards import RewardFn, import_reward_fn, oracle_reward_fn, scorer_reward_fn
from alignkit.rl.trainer import RLConfig, RLTrainer
from alignkit.runio import MetricsLogger, RunDir, atomic_dir, read_metrics
from alignkit.trainer_utils import peak_memory_mb
from alignkit.world import oracle

log = logging.getLogger("alignkit.rl")
ESTIMATOR = {"ppo": "gae", "grpo": "grpo", "rloo": "rloo"}
# Section keys that choose models and rewards; every other key of a section is an RLConfig field of the same name.
RECIPE_ONLY = {"reward_model", "reward", "reference", "value_model"}
CURVES = ["objective/scores", "objective/kl", "objective/rlhf_reward", "objective/entropy",
          "policy/approxkl_avg", "policy/clipfrac_avg", "loss/value_avg", "loss/kl_avg", "val/ratio", "val/eos_rate"]


def section_of(recipe: Recipe) -> OnlineRLSection:
    """The recipe's section for its online stage (recipe.ppo, recipe.grpo or recipe.rloo)."""
    return getattr(recipe, recipe.stage)


def trainer_config(recipe: Recipe) -> RLConfig:
    """RLConfig from the stage's section (model_dump: no second copy of its defaults) and the train section."""
    s, t, stage = section_of(recipe), recipe.train, recipe.stage
    values = {k: v for k, v in s.model_dump().items() if k not in RECIPE_ONLY}
    lr = s.learning_rate or t.learning_rate
    values.update(learning_rate=lr, advantage_estimator=ESTIMATOR[stage], kl_in_reward=stage != "grpo",
                  gradient_accumulation_steps=t.gradient_accumulation_steps, save_total_limit=t.save_total_limit,
                  max_grad_norm=t.max_grad_norm, seed=recipe.seed)
    if isinstance(s, PPOSection):
        values["critic_learning_rate"] = s.critic_learning_rate or lr
    return RLConfig(**values)


def reference_mode(recipe: Recipe) -> str:
    """How the reference policy is computed for this recipe (the section's `reference`, checked)."""
    return resolve_mode(recipe.model.name_or_path, recipe.peft is not None, section_of(recipe).reference,
                        where=f"{recipe.stage}.reference")


def build_policy(recipe: Recipe, mode: str) -> tuple[Any, Reference]:
    """The trainable policy from the SFT model and its Reference for `mode`.

    Resuming loads the checkpoint's weights into these models inside RLTrainer, so the reference is
    always built from the starting SFT model.
    """
    path = recipe.model.name_or_path
    if mode == COPY:
        return load_causal_lm(recipe.model), Reference(COPY, load_causal_lm(recipe.model))
    base_path = adapter_base(path) or path
    base = load_causal_lm(recipe.model.model_copy(update={"name_or_path": base_path}), recipe.quantization)
    quantized = is_quantized_config(recipe.quantization)
    if mode == ADAPTER_DISABLED:
        return apply_lora(base, recipe.peft, quantized=quantized), Reference(ADAPTER_DISABLED)
    if quantized:  # a trainable adapter on a 4/8-bit base needs the same k-bit preparation as a fresh one
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return attach_adapter(base, path, is_trainable=True), Reference(FROZEN_ADAPTER)


def load_critic(s: PPOSection) -> Any:
    """The critic's init: ppo.value_model (a reward model, or a language model whose value head starts fresh)
    or else the reward model."""
    path = s.value_model or s.reward_model
    folder = local_path(path)
    if s.value_model and folder is not None and folder.is_dir() and reward_head_problem(folder):
        log.info("ppo.value_model %s is a language model: the critic starts from its weights with a fresh value "
                 "head (ppo.critic_warmup_rollouts trains it before the policy moves)", path)
    return load_reward_model(path, ModelSection(name_or_path=path))


def build_reward_fn(recipe: Recipe, tokenizer: Any, prompts: list[list[int]], metas: list[dict],
                    device: Any) -> RewardFn:
    """The section's reward: the reward model, the world's oracle, or a user `module:function`."""
    s, where = section_of(recipe), f"{recipe.stage}.reward"
    if s.reward == "oracle":
        return oracle_reward_fn(prompts, metas, tokenizer.eos_token_id, oracle)
    if s.reward != "model":
        return import_reward_fn(s.reward, where)
    scorer = RewardScorer.from_pretrained(s.reward_model, device=device)
    if scorer.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise AlignkitError("the reward model's tokenizer differs from the policy's",
                            where=f"{recipe.stage}.reward_model")
    scorer.model.requires_grad_(False)
    return scorer_reward_fn(scorer, tokenizer.pad_token_id)


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Train with the recipe's online method; save the final policy (model/, and adapter/ for LoRA) and curves."""
    s, stage = section_of(recipe), recipe.stage
    config = trainer_config(recipe)
    config.local_sizes(1)  # batch arithmetic is an error before any model loads
    torch.manual_seed(recipe.seed)
    accelerator = Accelerator(gradient_accumulation_steps=recipe.train.gradient_accumulation_steps)
    resume = run_dir.resolve_resume(recipe.train.resume_from_checkpoint)
    tokenizer = load_tokenizer(recipe.model, padding_side="left", chat=True)
    prompts, metas = load_prompts(recipe.data.datasets, tokenizer, recipe.model.max_length - s.max_new_tokens,
                                  f"model.max_length - {stage}.max_new_tokens", with_meta=s.reward == "oracle",
                                  meta_key=f"{stage}.reward")
    mode = reference_mode(recipe)
    policy, reference = build_policy(recipe, mode)
    reward_fn = build_reward_fn(recipe, tokenizer, prompts, metas, accelerator.device)
    value_model = None
    if isinstance(s, PPOSection):
        value_model = load_critic(s)
    logger = MetricsLogger(run_dir.path / "metrics.jsonl", report_to=recipe.train.report_to,
                           enabled=accelerator.is_main_process)
    trainer = RLTrainer(config, policy, reference, value_model, reward_fn, tokenizer, prompts,
                        accelerator=accelerator, metrics_logger=logger, checkpoint_dir=run_dir.checkpoints)
    log.info("%s: %d rollouts of %d responses, reference=%s", stage.upper(), config.total_rollouts(),
             config.rollout_batch_size, mode)
    start = time.time()
    history = trainer.train(resume_from_checkpoint=resume)
    logger.close()
    metrics = summarize(history, time.time() - start, mode)
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(trainer.policy), tokenizer, run_dir, mode)
        plot_curves(run_dir, stage)
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
        "train_seconds": round(seconds, 1), "peak_memory_mb": peak_memory_mb(),
    }


def save_policy(policy: Any, tokenizer: Any, run_dir: RunDir, mode: str) -> None:
    """model/: a full model that loads with plain transformers; adapter/: the LoRA adapter when there is one."""
    if mode != COPY:
        policy = without_reference_adapter(policy)
        with atomic_dir(run_dir.path / "adapter") as tmp:
            policy.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        policy = merge_dequantized(policy)  # a 4-bit base is dequantized first: model/ is the policy trained
    set_generation_eos(policy, tokenizer)
    tokenizer.padding_side = "right"
    with atomic_dir(run_dir.model_dir) as tmp:
        policy.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))


def plot_curves(run_dir: RunDir, stage: str = "ppo") -> Path | None:
    """<stage>_curves.png: the standard online-RL metrics against rollouts."""
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
    out = run_dir.path / f"{stage}_curves.png"
    tmp = out.with_name(f".{stage}_curves.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out


def config_fields() -> set[str]:
    """RLConfig's field names (a test checks every section key maps onto one)."""
    return {f.name for f in dataclasses.fields(RLConfig)}
