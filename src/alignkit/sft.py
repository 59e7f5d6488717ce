"""Stage 2: supervised fine-tuning (full, LoRA, QLoRA) with TRL's SFTTrainer.

Loss on assistant tokens only (the chat template's {% generation %} markers, EOS included; for a template
without them, TRL's training variant of it or, failing that, spans found by rendering prefixes), packing
without cross-sample attention (padding-free rows with position_ids, from which transformers builds a
block-diagonal mask for sdpa/eager and varlen boundaries for flash attention), EOS/PAD saved in
generation_config so the trained model stops.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from jinja2 import TemplateError

from alignkit.config import Recipe
from alignkit.config.base import DatasetSpec
from alignkit.data.formats import normalize_sft_rows, special_token_rows
from alignkit.data.loading import load_spec
from alignkit.data.templates import needs_prefix_masks, require_chat_template, tokenize_with_assistant_masks
from alignkit.errors import AlignkitError
from alignkit.merge import merge_adapter
from alignkit.models import (
    DTYPES,
    apply_lora,
    is_quantized_config,
    load_causal_lm,
    load_tokenizer,
    match_adapter_dtype,
    quantization_record,
)
from alignkit.runio import RunDir
from alignkit.trainer_utils import make_config, metrics_callback, peak_memory_mb, save_final_model, train

log = logging.getLogger("alignkit.sft")

# Kernels that take packed sequences' boundaries from position_ids / cu_seqlens (variable-length attention).
VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3", "kernels-community/flash-attn",
                    "kernels-community/vllm-flash-attn3"}
# Attention that honours packed position_ids (transformers' masking utils build a block-diagonal mask).
PACKING_SAFE_ATTENTION = {"sdpa", "eager", "flex_attention", *VARLEN_ATTENTION}


def find_unrenderable_row(recipe: Recipe, tokenizer: Any, error: Exception) -> AlignkitError:
    """The file:row whose conversation the chat template refused (Mistral's and Gemma's raise on a system turn or
    two user turns in a row): looked for only after TRL's tokenization failed with a bare jinja2 error, so a
    large dataset is not rendered twice."""
    for group in ("datasets", "eval_datasets"):
        for i, spec in enumerate(getattr(recipe.data, group)):
            rows = normalize_sft_rows(load_spec(spec, where=f"data.{group}.{i}"), spec.format, source=spec.path)
            try:
                check_template_renders(rows, tokenizer, spec.path)
            except AlignkitError as found:
                return found
    return AlignkitError(f"the chat template cannot render the data ({error})", where="model.chat_template")


def check_template_renders(rows: list[dict[str, Any]], tokenizer: Any, source: str) -> None:
    """Every conversation of `rows` renders with the tokenizer's chat template, or one line names the row."""
    for i, row in enumerate(rows, start=1):
        conversation = row.get("messages") or (row["prompt"] + row["completion"]
                                               if isinstance(row.get("prompt"), list) else None)
        if conversation is None:
            return  # text rows: no template
        try:
            tokenizer.apply_chat_template(conversation, tokenize=False)
        except TemplateError as exc:
            raise AlignkitError(f"the chat template cannot render this conversation ({exc.message}); fix the row's "
                                "turns or choose another model.chat_template", where=f"{source}:{i}") from None


def load_sft_dataset(specs: list[DatasetSpec], where: str, special_tokens: list[str] = ()) -> Any:
    """Load and normalise datasets into one TRL SFT format (messages, prompt/completion or text).

    Rows whose text holds one of `special_tokens` as a string are dropped with a warning (see
    drop_special_token_rows).
    """
    import datasets

    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        if spec.streaming:
            raise AlignkitError("streaming is supported for pretraining only", where=f"{where}.{i}.streaming")
        ds = load_spec(spec, where=f"{where}.{i}")
        rows.extend(drop_special_token_rows(normalize_sft_rows(ds, spec.format, source=spec.path), special_tokens,
                                            spec.path))
    normalize_sft_rows(rows, "auto", source=where)  # one format across all datasets
    return datasets.Dataset.from_list(rows)


def special_token_strings(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens as text: the named ones and every added token marked special."""
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
    return sorted(set(tokenizer.all_special_tokens) | set(added))


def drop_special_token_rows(rows: list[dict[str, Any]], special_tokens: list[str], source: str) -> list[dict]:
    """Rows without a special token's text; the others dropped with a count, or an error if none is left.

    A literal '<|endoftext|>' (or a turn marker) in the data is read by the tokenizer as the token itself, so
    the model would learn to end, or open a turn, in the middle of an answer. TRL trains on it silently.
    """
    found = special_token_rows(rows, special_tokens)
    if not found:
        return rows
    index, token = found[0]
    if len(found) == len(rows):
        raise AlignkitError(f"every row holds a special token of the tokenizer as text (first: {token!r}), "
                            "which it would read as that token; remove them from the data", where=f"{source}:{index + 1}")
    log.warning("dropped %d of %d rows of %s holding a special token of the tokenizer as text (first: %r at row %d); "
                "the tokenizer would read it as that token", len(found), len(rows), source, token, index + 1)
    bad = {i for i, _ in found}
    return [row for i, row in enumerate(rows) if i not in bad]


def split_eval(recipe: Recipe, train: Any, special_tokens: list[str] = ()) -> tuple[Any, Any]:
    """The eval set: eval_datasets if given, else a held-out share of train (or none)."""
    data = recipe.data
    if data.eval_datasets:
        return train, load_sft_dataset(data.eval_datasets, "data.eval_datasets", special_tokens)
    if data.eval_split_size > 0:
        parts = train.train_test_split(test_size=data.eval_split_size, seed=data.shuffle_seed)
        return parts["train"], parts["test"]
    return train, None


def is_quantized(recipe: Recipe) -> bool:
    """True when the recipe loads a 4/8-bit base (QLoRA)."""
    return is_quantized_config(recipe.quantization)


def build_model(recipe: Recipe, tokenizer: Any) -> Any:
    """Base model, quantized for QLoRA, wrapped in a LoRA adapter when `peft:` is set."""
    quantized = is_quantized(recipe)
    if quantized and recipe.peft is None:
        raise AlignkitError("a quantized base cannot be trained directly; add a peft section (QLoRA)",
                            where="quantization")
    model = load_causal_lm(recipe.model, recipe.quantization, tokenizer)
    if recipe.data.packing:
        check_packing_attention(model)
    if recipe.peft is not None:
        model = apply_lora(model, recipe.peft, quantized=quantized,
                           gradient_checkpointing=recipe.train.gradient_checkpointing)
    return model


def packed_layout(recipe: Recipe, model: Any) -> str:
    """"flat" (TRL's padding-free single row) or "rows" ([batch, max_length], per-row position_ids)."""
    layout = recipe.sft.packed_layout if recipe.sft else "auto"
    if layout != "auto":
        return layout
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    # Without a varlen kernel one flattened row of batch x max_length tokens costs attention over all of
    # it (quadratic), where separate rows cost batch x max_length^2 (bench/packing.py measures it).
    return "flat" if impl in VARLEN_ATTENTION else "rows"


class PackedRowsCollator:
    """Packed rows kept as rows: padded to the longest, position_ids restart at each sample, no attention mask.

    TRL's bfd packing always collates padding-free (the whole batch flattened into one row), which only
    pays with a varlen flash-attention kernel. transformers derives a block-diagonal causal mask from
    position_ids when no attention mask is given, so rows keep samples apart at batch x L^2 attention cost.
    Pad tokens get position 0 (each attends to itself only) and label -100.
    """

    def __init__(self, pad_token_id: int):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=False,
                                                     return_position_ids=True)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        batch.pop("attention_mask")
        batch["labels"][batch["position_ids"] == 0] = -100  # no loss across a sample boundary
        return batch


def sft_trainer_class() -> type:
    """TRL's SFTTrainer, counting num_tokens right for the packed "rows" layout.

    TRL counts a batch without attention_mask as position_ids.size(1) tokens, which is right only for
    its single flattened row; with rows it would count one row per batch.
    """
    from trl import SFTTrainer

    class AlignkitSFTTrainer(SFTTrainer):
        rows_pad_id: int | None = None  # set when the PackedRowsCollator is in use

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.rows_pad_id is not None and self.model.training:
                ids, pos = inputs["input_ids"], inputs["position_ids"]
                real = ((ids != self.rows_pad_id) | (pos != 0)).sum()  # pads sit at position 0
                extra = self.accelerator.gather_for_metrics((real - pos.size(1)).reshape(1)).sum().item()
                self._total_train_tokens += extra // self._tp_size
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return out

    return AlignkitSFTTrainer


def check_packing_attention(model: Any) -> None:
    """Refuse packing with an attention kernel that would let packed samples attend to each other."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in PACKING_SAFE_ATTENTION:
        raise AlignkitError(
            f"packing needs an attention implementation that honours packed position_ids "
            f"({', '.join(sorted(PACKING_SAFE_ATTENTION))}); this model uses '{impl}'",
            where="model.attn_implementation",
        )


def assistant_only(recipe: Recipe) -> bool:
    """The recipe's sft.assistant_only_loss (default on)."""
    return bool(recipe.sft.assistant_only_loss if recipe.sft else True)


def tokenize_by_prefix(dataset: Any, tokenizer: Any) -> Any:
    """Conversational rows as input_ids + assistant_masks found by rendering prefixes (any chat template).

    For templates without {% generation %} markers that TRL has no training variant of. A chat
    prompt/completion row trains only the assistant turns of its completion, as TRL would.
    """
    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        if "messages" in row:
            return tokenize_with_assistant_masks(tokenizer, row["messages"])
        return tokenize_with_assistant_masks(tokenizer, [*row["prompt"], *row["completion"]], len(row["prompt"]))

    return dataset.map(encode, remove_columns=dataset.column_names)


def sft_config(recipe: Recipe, run_dir: RunDir, tokenizer: Any, conversational: bool, has_eval: bool) -> Any:
    """TRL SFTConfig from `train:` + `sft:`: assistant-only loss, packing, EOS.

    `conversational` is False for rows already tokenized with their own assistant masks.
    """
    from trl import SFTConfig

    sft = recipe.sft
    return make_config(
        SFTConfig, recipe, run_dir, has_eval=has_eval,
        max_length=recipe.model.max_length,
        packing=recipe.data.packing,
        # bfd packing turns on padding-free collation: rows carry position_ids, never a padded mask.
        packing_strategy=sft.packing_strategy if sft else "bfd",
        assistant_only_loss=assistant_only(recipe) and conversational,
        completion_only_loss=sft.completion_only_loss if sft else True,
        neftune_noise_alpha=sft.neftune_noise_alpha if sft else None,
        eos_token=tokenizer.eos_token,
        dataset_num_proc=None,
    )


def check_rows_left(prepared: Any, given: int, max_length: int, where: str) -> None:
    """Count the rows TRL dropped for having no trained token within max_length; refuse when none is left."""
    dropped = given - len(prepared)
    if dropped and dropped == given:
        raise AlignkitError(f"no row of {where} has a trained token within {max_length} tokens (the prompt "
                            "alone fills them); raise model.max_length", where="model.max_length")
    if dropped:
        log.warning("dropped %d of %d rows of %s with no trained token within model.max_length=%d tokens",
                    dropped, given, where, max_length)


def build_trainer(recipe: Recipe, run_dir: RunDir) -> Any:
    """An SFTTrainer with tokenized data, the model (full, LoRA or QLoRA) and alignkit's callback."""
    tokenizer = load_tokenizer(recipe.model)
    specials = special_token_strings(tokenizer)
    train_ds, eval_ds = split_eval(recipe, load_sft_dataset(recipe.data.datasets, "data.datasets", specials), specials)
    conversational = "messages" in train_ds.column_names or isinstance(train_ds[0].get("prompt"), list)
    if conversational:
        require_chat_template(tokenizer)
    if conversational and assistant_only(recipe) and needs_prefix_masks(tokenizer):
        try:
            train_ds = tokenize_by_prefix(train_ds, tokenizer)
            eval_ds = tokenize_by_prefix(eval_ds, tokenizer) if eval_ds is not None else None
        except TemplateError as exc:
            raise find_unrenderable_row(recipe, tokenizer, exc) from None
        conversational = False  # tokenized, with the masks TRL turns into labels
    model = build_model(recipe, tokenizer)
    config = sft_config(recipe, run_dir, tokenizer, conversational, eval_ds is not None)
    try:
        trainer = sft_trainer_class()(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                                      processing_class=tokenizer, callbacks=[metrics_callback(run_dir)])
    except TemplateError as exc:
        raise find_unrenderable_row(recipe, tokenizer, exc) from None
    if not recipe.data.packing:  # TRL truncates each row to max_length and drops rows left with no label
        check_rows_left(trainer.train_dataset, len(train_ds), recipe.model.max_length, "data.datasets")
        if eval_ds is not None:
            check_rows_left(trainer.eval_dataset, len(eval_ds), recipe.model.max_length, "the eval rows")
    if is_quantized(recipe):
        match_adapter_dtype(trainer.model, DTYPES[recipe.quantization.bnb_4bit_compute_dtype])
    if recipe.data.packing and packed_layout(recipe, model) == "rows":
        trainer.data_collator = PackedRowsCollator(tokenizer.pad_token_id)
        trainer.rows_pad_id = tokenizer.pad_token_id
    return trainer


def save_outputs(trainer: Any, recipe: Recipe, run_dir: RunDir) -> str | None:
    """run_dir/model (adapter or full model), the QLoRA quantization record, and optionally run_dir/merged."""
    # Merging must dequantize the same 4-bit base the adapter was trained on: model/ records how it was built.
    quantization = quantization_record(recipe.quantization) if recipe.peft is not None else None
    save_final_model(trainer.model, trainer.processing_class, run_dir, quantization=quantization)
    if not trainer.is_world_process_zero() or recipe.peft is None:
        return None
    if recipe.sft and recipe.sft.merge_adapter:
        return str(merge_adapter(str(run_dir.model_dir), str(run_dir.merged_dir)))
    return None


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Fine-tune, save run_dir/model (adapter or full), optionally run_dir/merged; return metrics."""
    trainer = build_trainer(recipe, run_dir)
    resume = run_dir.resolve_resume(recipe.train.resume_from_checkpoint)
    start = time.time()
    result = train(trainer, resume)
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "train_seconds": round(time.time() - start, 1),
        "train_rows": len(trainer.train_dataset),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "peak_memory_mb": peak_memory_mb(),
        "resumed_from": resume,
    }
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    merged = save_outputs(trainer, recipe, run_dir)
    if merged:
        metrics["merged"] = merged
    log.info("sft finished: %s", json.dumps({k: v for k, v in metrics.items() if k != "resumed_from"}))
    return metrics
