"""Stage 4b: DPO, the offline alternative to RM + PPO (TRL DPOTrainer), on the reward stage's data.

K-way rankings become (chosen, rejected) pairs: the best response against each other one (K-1
pairs, the default) or all C(K,2) pairs. The reference is the starting model: a frozen copy for full
fine-tuning; with a fresh LoRA adapter, the same model with the adapter disabled (TRL's default, one
base in memory); when the starting model is itself an adapter, a frozen copy of that adapter.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from alignkit.config import Recipe
from alignkit.config.dpo import DPOSection
from alignkit.data.preferences import load_preference_datasets, to_pairs
from alignkit.errors import AlignkitError
from alignkit.models import (
    DTYPES,
    adapter_base,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    match_adapter_dtype,
)
from alignkit.runio import RunDir
from alignkit.trainer_utils import make_config, metrics_callback, peak_memory_mb, save_final_model

log = logging.getLogger("alignkit.dpo")
REPORTED = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def ranking_to_pairs(rankings: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Rankings (best first) as two-response rankings: best vs each other response, or all C(K,2) pairs."""
    if mode == "all":
        return to_pairs(rankings)
    return [{**r, "responses": [r["responses"][0], worse]} for r in rankings for worse in r["responses"][1:]]


def dpo_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's conversational preference rows: prompt messages, one-message chosen/rejected completions."""
    return [{"prompt": p["prompt"],
             "chosen": [{"role": "assistant", "content": p["responses"][0]}],
             "rejected": [{"role": "assistant", "content": p["responses"][1]}]} for p in pairs]


def drop_long_prompts(rows: list[dict[str, Any]], tokenizer: Any, limit: int | None) -> list[dict[str, Any]]:
    """Drop rows whose rendered prompt exceeds `limit` tokens (TRL 1.x no longer truncates prompts)."""
    if limit is None:
        return rows
    kept = [r for r in rows if len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True,
                                                                  tokenize=True, return_dict=False)) <= limit]
    if not kept:
        raise AlignkitError(f"every prompt is longer than {limit} tokens", where="dpo.max_prompt_length")
    if len(kept) < len(rows):
        log.warning("dropped %d of %d pairs with prompts over dpo.max_prompt_length=%d",
                    len(rows) - len(kept), len(rows), limit)
    return kept


def split_rankings(recipe: Recipe, rankings: list[dict]) -> tuple[list[dict], list[dict]]:
    """Hold out `data.eval_split_size` of the prompts (before pairing, so no prompt is in both)."""
    share = recipe.data.eval_split_size
    if not share:
        return rankings, []
    order = list(range(len(rankings)))
    random.Random(recipe.data.shuffle_seed).shuffle(order)
    n_eval = max(1, int(len(order) * share))
    return [rankings[i] for i in order[n_eval:]], [rankings[i] for i in order[:n_eval]]


def load_pairs(recipe: Recipe, section: DPOSection, tokenizer: Any) -> tuple[Any, Any]:
    """Train and eval datasets of DPO pairs from the recipe's preference data."""
    import datasets

    rankings = load_preference_datasets(recipe.data.datasets, "data.datasets")
    if recipe.data.eval_datasets:
        train, heldout = rankings, load_preference_datasets(recipe.data.eval_datasets, "data.eval_datasets")
    else:
        train, heldout = split_rankings(recipe, rankings)
    limit = section.max_prompt_length
    train_rows = drop_long_prompts(dpo_rows(ranking_to_pairs(train, section.pairs)), tokenizer, limit)
    # Held-out pairs are always scored on every pair, so accuracy means the same whatever `pairs` says.
    eval_rows = drop_long_prompts(dpo_rows(to_pairs(heldout)), tokenizer, limit) if heldout else []
    log.info("DPO pairs: %d train (%s) from %d rankings, %d held out", len(train_rows), section.pairs,
             len(train), len(eval_rows))
    return datasets.Dataset.from_list(train_rows), (datasets.Dataset.from_list(eval_rows) if eval_rows else None)


def build_models(recipe: Recipe, section: DPOSection, tokenizer: Any) -> tuple[Any, Any, Any]:
    """(policy, ref_model, peft_config) for DPOTrainer: full, fresh LoRA/QLoRA, or a trainable SFT adapter."""
    quant = recipe.quantization
    quantized = bool(quant and (quant.load_in_4bit or quant.load_in_8bit))
    is_adapter = adapter_base(recipe.model.name_or_path) is not None
    if recipe.peft is not None and is_adapter:
        raise AlignkitError("the model is already a LoRA adapter; merge it first (alignkit merge) or drop the "
                            "peft section to keep training that adapter", where="peft")
    if quantized and recipe.peft is None:
        raise AlignkitError("a quantized model cannot be fully fine-tuned; add a peft section (QLoRA)",
                            where="quantization")
    policy = load_causal_lm(recipe.model, quant, tokenizer, adapter_trainable=is_adapter)
    if recipe.peft is not None:
        if quantized:
            from peft import prepare_model_for_kbit_training

            policy = prepare_model_for_kbit_training(
                policy, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
        # TRL wraps the model itself and computes the reference with the adapter disabled.
        return policy, None, lora_config(recipe.peft, model=policy)
    if is_adapter or section.precompute_ref_log_probs:
        return policy, None, None  # TRL copies the adapter as "ref", or scores the reference once up front
    ref_model = load_causal_lm(recipe.model, None, tokenizer).eval()
    ref_model.requires_grad_(False)
    return policy, ref_model, None


def build_trainer(recipe: Recipe, section: DPOSection, run_dir: RunDir) -> Any:
    """A TRL DPOTrainer configured from the recipe (DPOConfig from `train:` + `dpo:`)."""
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(recipe.model, chat=True)
    train_ds, eval_ds = load_pairs(recipe, section, tokenizer)
    policy, ref_model, peft_config = build_models(recipe, section, tokenizer)
    config = make_config(DPOConfig, recipe, run_dir, has_eval=eval_ds is not None,
                         beta=section.beta, loss_type=[section.loss_type], label_smoothing=section.label_smoothing,
                         max_length=recipe.model.max_length,
                         precompute_ref_log_probs=section.precompute_ref_log_probs)
    trainer = DPOTrainer(model=policy, ref_model=ref_model, args=config, train_dataset=train_ds,
                         eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[metrics_callback(run_dir)])
    quant = recipe.quantization
    if quant is not None and quant.load_in_4bit:
        # Undo TRL's bf16 cast of QLoRA adapters (slow kernels on CPU), as the SFT stage does.
        match_adapter_dtype(trainer.model, DTYPES[quant.bnb_4bit_compute_dtype])
    return trainer


def last_logged(log_history: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    """The most recent training-log value of each key (TRL averages them over the logging window)."""
    out: dict[str, float] = {}
    for row in reversed(log_history):
        for key in keys:
            if key in row and key not in out:
                out[key] = row[key]
    return out


def final_policy(trainer: Any) -> Any:
    """The trained policy without TRL's frozen "ref" adapter (it must not be saved beside the result)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    return model


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Train with DPO; save run_dir/model (full model or adapter); return implicit-reward metrics."""
    section = recipe.dpo or DPOSection()
    trainer = build_trainer(recipe, section, run_dir)
    resume = run_dir.resolve_resume(recipe.train.resume_from_checkpoint)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                               "train_seconds": round(time.time() - start, 1), "peak_memory_mb": peak_memory_mb()}
    metrics.update(last_logged(trainer.state.log_history, REPORTED))
    if trainer.eval_dataset is not None:
        evals = trainer.evaluate()
        metrics.update({k: v for k, v in evals.items() if k.removeprefix("eval_") in REPORTED or k == "eval_loss"})
    save_final_model(final_policy(trainer), trainer.processing_class, run_dir)
    log.info("DPO: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics
