"""What every Trainer-based stage shares: arguments from the recipe, the metrics callback, the final save."""

from __future__ import annotations

import math
from typing import Any

from alignkit.config import Recipe
from alignkit.config.base import resolve_precision
from alignkit.errors import AlignkitError
from alignkit.runio import MetricsLogger, RunDir, atomic_dir


def training_kwargs(recipe: Recipe, run_dir: RunDir, has_eval: bool = False) -> dict[str, Any]:
    """Keyword arguments for TrainingArguments (or a TRL config, which extends it) from `train:`."""
    t = recipe.train
    kwargs: dict[str, Any] = dict(
        output_dir=str(run_dir.checkpoints),
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_ratio,  # transformers 5 takes a ratio < 1 here
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        **resolve_precision(t),  # train.bf16/fp16 may be auto: decided for this machine
        report_to=t.report_to or "none",
        seed=recipe.seed,
        data_seed=recipe.seed,
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    kwargs.update(t.trainer_kwargs)
    return kwargs


def training_arguments(recipe: Recipe, run_dir: RunDir, has_eval: bool = False) -> Any:
    """transformers.TrainingArguments from the recipe, with alignkit's metrics callback attached later."""
    from transformers import TrainingArguments

    return TrainingArguments(**_known(TrainingArguments, training_kwargs(recipe, run_dir, has_eval)))


def _known(cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise AlignkitError(f"unknown trainer argument '{unknown[0]}'", where="train.trainer_kwargs")
    return kwargs


def make_config(cls: Any, recipe: Recipe, run_dir: RunDir, has_eval: bool = False, **stage_kwargs: Any) -> Any:
    """A TRL config (SFTConfig, RewardConfig, DPOConfig...) from `train:` plus stage-specific fields."""
    return cls(**_known(cls, {**training_kwargs(recipe, run_dir, has_eval), **stage_kwargs}))


def metrics_callback(run_dir: RunDir, enabled: bool = True) -> Any:
    """A TrainerCallback copying every log row to run_dir/metrics.jsonl and stopping on a NaN/Inf loss."""
    from transformers import TrainerCallback

    logger = MetricsLogger(run_dir.path / "metrics.jsonl", enabled=enabled)

    class _Metrics(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            logs = logs or {}
            if state.is_world_process_zero:  # logs are already reduced across ranks: one row per step
                logger.log({k: v for k, v in logs.items() if isinstance(v, (int, float))}, state.global_step)
            loss = logs.get("loss")
            if isinstance(loss, float) and not math.isfinite(loss):
                # Stop before the next save: the last checkpoint on disk is the last good one.
                raise AlignkitError(
                    f"training loss became {loss} at step {state.global_step}; last good checkpoint kept "
                    "(lower train.learning_rate or check the data)",
                    where="train",
                )

    return _Metrics()


def with_global_length_groups(trainer_cls: type) -> type:
    """`trainer_cls` whose group_by_length sampler groups over the global batch (every DDP rank together).

    transformers sizes its length groups by the per-device batch, so under DDP the same recipe would
    form different global batches than one process does; sized by the global batch, the index order is
    the same and Accelerate hands each rank its slice of the same batches.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class GlobalLengthGroups(trainer_cls):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = self.train_dataset if train_dataset is None else train_dataset
            args = self.args
            if args.train_sampling_strategy != "group_by_length" or args.length_column_name not in getattr(
                    dataset, "column_names", []):
                return super()._get_train_sampler(train_dataset)
            size = args.train_batch_size * args.world_size * args.gradient_accumulation_steps
            return LengthGroupedSampler(size, dataset=dataset, lengths=dataset[args.length_column_name])

    GlobalLengthGroups.__name__ = trainer_cls.__name__
    return GlobalLengthGroups


def save_final_model(model: Any, tokenizer: Any, run_dir: RunDir) -> None:
    """Save model (or adapter) + tokenizer + chat template to run_dir/model in one atomic rename."""
    from accelerate import PartialState

    from alignkit.models import set_generation_eos

    if not PartialState().is_main_process:
        return
    set_generation_eos(model, tokenizer)
    with atomic_dir(run_dir.model_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux VmHWM; ru_maxrss elsewhere).

    ru_maxrss survives fork + exec on Linux, so a process started by a big one (a benchmark driver,
    a pipeline) would report its parent's peak; VmHWM belongs to the process's own address space.
    """
    import resource

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
