"""Stage 1: pretraining. From scratch (tokenizer + random-init Llama) or continued from a checkpoint.

Documents are packed into fixed-length rows separated by EOS; several datasets mix by sampling
proportion; streaming datasets are packed on the fly.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from typing import Any

from alignkit.config import Recipe
from alignkit.config.base import ModelSection
from alignkit.data.formats import text_value
from alignkit.data.loading import load_specs, mix
from alignkit.data.packing import pack_documents
from alignkit.errors import AlignkitError
from alignkit.models import load_causal_lm, load_tokenizer
from alignkit.runio import RunDir
from alignkit.tokenizer import train_bpe_tokenizer
from alignkit.trainer_utils import metrics_callback, save_final_model, train, training_arguments

log = logging.getLogger("alignkit.pretrain")


def _texts(ds: Any, column: str, limit: int | None = None) -> Any:
    names = ds.column_names or []
    if names and column not in names:
        raise AlignkitError(f"no '{column}' column (has {names}); map one with columns: {{text: ...}}",
                            where="data.datasets")
    rows = ds if limit is None else itertools.islice(ds, limit)
    return (text_value(row[column], column, f"data.datasets (document {i})") for i, row in enumerate(rows, start=1))


def build_tokenizer(recipe: Recipe, corpus: Any) -> Any:
    """Train a tokenizer for from-scratch runs, else load the model's."""
    section = recipe.pretrain
    if section.from_scratch:
        cfg = section.tokenizer_training
        if cfg is None:
            raise AlignkitError("from_scratch needs a tokenizer_training section", where="pretrain.tokenizer_training")
        texts = _texts(corpus, section.text_column, cfg.max_documents)
        return train_bpe_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    if recipe.model is None:
        raise AlignkitError("continued pretraining needs a model section", where="model")
    return load_tokenizer(recipe.model)


def build_model(recipe: Recipe, tokenizer: Any) -> Any:
    """A random-init Llama from `pretrain.architecture`, or the recipe's model to continue from."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    section = recipe.pretrain
    if not section.from_scratch:
        return load_causal_lm(recipe.model or ModelSection(name_or_path=""), recipe.quantization, tokenizer)
    arch = section.architecture
    if arch is None:
        raise AlignkitError("from_scratch needs an architecture section", where="pretrain.architecture")
    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads or arch.num_attention_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=arch.tie_word_embeddings,
        rope_theta=arch.rope_theta,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def packed_dataset(texts: Any, tokenizer: Any, block_size: int, streaming: bool) -> Any:
    """Tokenize and pack documents into rows; a generator-backed IterableDataset when streaming."""
    import datasets

    def rows() -> Any:
        docs = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts() if t)
        yield from pack_documents(docs, block_size, tokenizer.eos_token_id, tokenizer.pad_token_id)

    if streaming:
        return datasets.IterableDataset.from_generator(rows)
    packed = list(rows())
    if not packed:
        raise AlignkitError("no text to train on", where="data.datasets")
    return datasets.Dataset.from_list(packed)


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Pretrain and save model + tokenizer to run_dir/model; return held-out loss and perplexity."""
    from transformers import Trainer, default_data_collator

    section, data = recipe.pretrain, recipe.data
    streaming = any(s.streaming for s in data.datasets)
    if streaming and recipe.train.max_steps <= 0:
        raise AlignkitError("streaming datasets need train.max_steps (their length is unknown)", where="train.max_steps")
    parts = load_specs(data.datasets)
    corpus = mix(parts, [s.weight for s in data.datasets], data.shuffle_seed, section.mixture_stopping)
    holdout = section.eval_holdout_documents if not streaming else 0
    if not streaming:
        corpus = corpus.shuffle(seed=data.shuffle_seed)
        if holdout >= len(corpus):
            raise AlignkitError(f"holds {len(corpus)} documents, fewer than the held-out {holdout}",
                                where="pretrain.eval_holdout_documents")
        eval_docs, corpus = corpus.select(range(holdout)), corpus.select(range(holdout, len(corpus)))
    tokenizer = build_tokenizer(recipe, corpus)
    model = build_model(recipe, tokenizer)
    column = section.text_column
    train_ds = packed_dataset(lambda: _texts(corpus, column), tokenizer, section.block_size, streaming)
    eval_ds = packed_dataset(lambda: _texts(eval_docs, column), tokenizer, section.block_size, False) if holdout else None
    n_params = sum(p.numel() for p in model.parameters())
    n_tokens = sum(sum(r) for r in train_ds["attention_mask"]) if not streaming else None
    log.info("model: %.2fM parameters; train tokens: %s", n_params / 1e6, n_tokens)
    args = training_arguments(recipe, run_dir, has_eval=eval_ds is not None)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=default_data_collator, processing_class=tokenizer,
                      callbacks=[metrics_callback(run_dir)])
    start = time.time()
    resume = run_dir.resolve_resume(recipe.train.resume_from_checkpoint)
    result = train(trainer, resume)
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "train_seconds": round(time.time() - start, 1),
                               "parameters": n_params, "train_tokens": n_tokens, "global_step": result.global_step}
    if eval_ds is not None:
        ev = trainer.evaluate()
        metrics.update(eval_loss=ev["eval_loss"], eval_perplexity=math.exp(ev["eval_loss"]))
    save_final_model(trainer.model, tokenizer, run_dir)
    return metrics
