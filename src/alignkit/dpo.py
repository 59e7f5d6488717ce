"""Stage 4b: DPO, the offline alternative to RM + PPO (TRL DPOTrainer), on the reward stage's data.

K-way rankings become (chosen, rejected) pairs: the best response against each other one (K-1
pairs, the default) or all C(K,2) pairs. The reference is the starting model: a frozen copy for full
fine-tuning; with a fresh LoRA adapter, the same model with the adapter disabled (TRL's default, one
base in memory); when the starting model is itself an adapter, a frozen copy of that adapter.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from alignkit.config import Recipe
from alignkit.config.dpo import DPOSection
from alignkit.data.preferences import load_preference_datasets, to_pairs
from alignkit.errors import AlignkitError
from alignkit.models import (
    DTYPES,
    adapter_base,
    base_quantization,
    is_quantized_config,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    match_adapter_dtype,
    quantization_record,
)
from alignkit.reference import ADAPTER_DISABLED, FROZEN_ADAPTER, resolve_mode, without_reference_adapter
from alignkit.reward_model import reward_input_ids
from alignkit.runio import RunDir
from alignkit.trainer_utils import make_config, metrics_callback, save_final_model, train_with_metrics

log = logging.getLogger("alignkit.dpo")
REPORTED = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def ranking_to_pairs(rankings: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Rankings (best first) as two-response rankings: best vs each other response, or all C(K,2) pairs."""
    if mode == "all":
        return to_pairs(rankings)
    return [{**r, "responses": [r["responses"][0], worse]} for r in rankings for worse in r["responses"][1:]]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def pair_ids(tokenizer: Any, prompt: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, list[int]]:
    """Token ids of one pair for TRL's DPO collator: the templated prompt, then each response + EOS.

    The text is the reward stage's (`reward_input_text`): a completion ends at EOS, the token the policy
    stops on. Rendering the assistant turn with the chat template would also score what the template
    writes after EOS (the shipped one's newline), a token the policy never generates.
    """
    prompt_ids = reward_input_ids(tokenizer, prompt, "", ended=False)
    full = [reward_input_ids(tokenizer, prompt, response) for response in (chosen, rejected)]
    # Tokens may merge across the prompt/response boundary: the completion starts where the ids diverge (as TRL).
    start = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return {"prompt_ids": prompt_ids[:start], "chosen_ids": full[0][start:], "rejected_ids": full[1][start:]}


def tokenize_pairs(pairs: list[dict[str, Any]], tokenizer: Any, max_length: int, max_prompt_length: int | None,
                   where: str) -> list[dict[str, list[int]]]:
    """Ids of every pair that fits; pairs longer than model.max_length (or dpo.max_prompt_length) are dropped.

    TRL truncates what does not fit, which cuts off EOS, and a prompt that fills max_length leaves
    chosen and rejected the same few tokens (loss ln 2, rewards 0): drop such pairs and count them, as the
    reward stage does, and refuse a dataset where none is left.
    """
    kept: list[dict[str, list[int]]] = []
    long_prompts = too_long = 0
    for p in pairs:
        ids = pair_ids(tokenizer, p["prompt"], p["responses"][0], p["responses"][1])
        if max_prompt_length is not None and len(ids["prompt_ids"]) > max_prompt_length:
            long_prompts += 1
        elif len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"])) > max_length:
            too_long += 1
        else:
            kept.append(ids)
    if long_prompts:
        log.warning("dropped %d of %d pairs of %s with prompts over dpo.max_prompt_length=%d tokens",
                    long_prompts, len(pairs), where, max_prompt_length)
    if too_long:
        log.warning("dropped %d of %d pairs of %s longer than model.max_length=%d tokens (prompt + response + EOS)",
                    too_long, len(pairs), where, max_length)
    if not kept and too_long:
        raise AlignkitError(f"no pair of {where} fits in {max_length} tokens (prompt + response + EOS); "
                            "raise model.max_length", where="model.max_length")
    if not kept:
        raise AlignkitError(f"every prompt of {where} is longer than {max_prompt_length} tokens",
                            where="dpo.max_prompt_length")
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
    limits = recipe.model.max_length, section.max_prompt_length
    train_rows = tokenize_pairs(ranking_to_pairs(train, section.pairs), tokenizer, *limits, "data.datasets")
    # Held-out pairs are always scored on every pair, so accuracy means the same whatever `pairs` says.
    eval_where = "data.eval_datasets" if recipe.data.eval_datasets else "data.eval_split_size"
    eval_rows = tokenize_pairs(to_pairs(heldout), tokenizer, *limits, eval_where) if heldout else []
    log.info("DPO pairs: %d train (%s) from %d rankings, %d held out", len(train_rows), section.pairs,
             len(train), len(eval_rows))
    return datasets.Dataset.from_list(train_rows), (datasets.Dataset.from_list(eval_rows) if eval_rows else None)


def build_models(recipe: Recipe, section: DPOSection, tokenizer: Any) -> tuple[Any, Any, Any]:
    """(policy, ref_model, peft_config) for DPOTrainer: full, fresh LoRA/QLoRA, or a trainable SFT adapter."""
    quant = recipe.quantization
    quantized = is_quantized_config(quant)
    # The shared reference rule (alignkit.reference) decides which of TRL's three references to ask for.
    mode = resolve_mode(recipe.model.name_or_path, recipe.peft is not None)
    if recipe.peft is not None and mode == FROZEN_ADAPTER:
        raise AlignkitError("the model is already a LoRA adapter; merge it first (alignkit merge) or drop the "
                            "peft section to keep training that adapter", where="peft")
    if quantized and recipe.peft is None:
        raise AlignkitError("a quantized model cannot be fully fine-tuned; add a peft section (QLoRA)",
                            where="quantization")
    policy = load_causal_lm(recipe.model, quant, tokenizer, adapter_trainable=mode == FROZEN_ADAPTER)
    if mode == ADAPTER_DISABLED:
        if quantized:
            from peft import prepare_model_for_kbit_training

            policy = prepare_model_for_kbit_training(
                policy, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
        # TRL wraps the model itself and computes the reference with the adapter disabled.
        return policy, None, lora_config(recipe.peft, model=policy)
    if mode == FROZEN_ADAPTER or section.precompute_ref_log_probs:
        return policy, None, None  # TRL copies the adapter as "ref", or scores the reference once up front
    ref_model = load_causal_lm(recipe.model, None, tokenizer).eval()
    ref_model.requires_grad_(False)
    return policy, ref_model, None


def dpo_trainer_class() -> type:
    """TRL's DPOTrainer taking alignkit's tokenized pairs (`tokenize_pairs`) as they are."""
    from trl import DPOTrainer

    class AlignkitDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            # Already tokenized and filtered: TRL's own pass would re-render the turns with the template.
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names or []):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return AlignkitDPOTrainer


def dpo_losses(section: DPOSection) -> dict[str, Any]:
    """DPOConfig's loss_type (and loss_weights): the preference loss, plus TRL's "sft" NLL term when weighted."""
    if section.sft_loss_weight == 0:
        return {"loss_type": [section.loss_type]}
    return {"loss_type": [section.loss_type, "sft"], "loss_weights": [1.0, section.sft_loss_weight]}


def build_trainer(recipe: Recipe, section: DPOSection, run_dir: RunDir) -> Any:
    """A TRL DPOTrainer configured from the recipe (DPOConfig from `train:` + `dpo:`)."""
    from trl import DPOConfig

    tokenizer = load_tokenizer(recipe.model, chat=True)
    train_ds, eval_ds = load_pairs(recipe, section, tokenizer)
    policy, ref_model, peft_config = build_models(recipe, section, tokenizer)
    config = make_config(DPOConfig, recipe, run_dir, has_eval=eval_ds is not None,
                         beta=section.beta, label_smoothing=section.label_smoothing, **dpo_losses(section),
                         max_length=recipe.model.max_length,
                         precompute_ref_log_probs=section.precompute_ref_log_probs)
    trainer = dpo_trainer_class()(model=policy, ref_model=ref_model, args=config, train_dataset=train_ds,
                         eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[metrics_callback(run_dir)])
    quant = base_quantization(recipe.model.name_or_path, recipe.quantization)
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
    return without_reference_adapter(trainer.accelerator.unwrap_model(trainer.model))


def saved_quantization(recipe: Recipe) -> dict[str, Any] | None:
    """The quantization record model/ carries: an adapter on a 4/8-bit base records that base.

    Merge and eval then rebuild the model that was trained (a float base under the adapter is another model).
    """
    path = recipe.model.name_or_path
    if recipe.peft is None and adapter_base(path) is None:
        return None  # full fine-tuning: model/ holds plain weights
    return quantization_record(base_quantization(path, recipe.quantization))


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Train with DPO; save run_dir/model (full model or adapter); return implicit-reward metrics."""
    section = recipe.dpo or DPOSection()
    trainer = build_trainer(recipe, section, run_dir)
    _, metrics = train_with_metrics(trainer, recipe, run_dir)
    metrics.update(last_logged(trainer.state.log_history, REPORTED))
    if trainer.eval_dataset is not None:
        evals = trainer.evaluate()
        metrics.update({k: v for k, v in evals.items() if k.removeprefix("eval_") in REPORTED or k == "eval_loss"})
    save_final_model(final_policy(trainer), trainer.processing_class, run_dir, quantization=saved_quantization(recipe))
    log.info("DPO: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics
