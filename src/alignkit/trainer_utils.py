"""What every Trainer-based stage shares: arguments from the recipe, the metrics callback, training with
atomic checkpoints and resume, the final save."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints

from alignkit.config import Recipe
from alignkit.config.base import resolve_precision
from alignkit.errors import AlignkitError
from alignkit.runio import (
    CHECKPOINT_STATE,
    MetricsLogger,
    RunDir,
    disk_full_error,
    is_disk_full,
    replace_dir,
    save_model,
)

log = logging.getLogger(__name__)


# `train:` keys that are not TrainingArguments fields of the same name: renamed or resolved below, read by the
# run lifecycle, or merged last. Every other key is passed as is, so a default lives only in TrainSection.
NOT_TRAINING_ARGUMENTS = frozenset({"warmup_ratio", "bf16", "fp16", "report_to", "resume_from_checkpoint",
                                    "overwrite_output_dir", "trainer_kwargs"})


def training_kwargs(recipe: Recipe, run_dir: RunDir, has_eval: bool = False) -> dict[str, Any]:
    """Keyword arguments for TrainingArguments (or a TRL config, which extends it) from `train:`."""
    t = recipe.train
    kwargs: dict[str, Any] = t.model_dump(exclude=set(NOT_TRAINING_ARGUMENTS))
    kwargs.update(
        output_dir=str(run_dir.checkpoints),
        warmup_steps=t.warmup_ratio,  # transformers 5 takes a ratio < 1 here
        save_strategy="steps",
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        **resolve_precision(t),  # train.bf16/fp16 may be auto: decided for this machine
        report_to=t.report_to or "none",
        seed=recipe.seed,
        data_seed=recipe.seed,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    kwargs.update(t.trainer_kwargs)
    return kwargs


def training_arguments(recipe: Recipe, run_dir: RunDir, has_eval: bool = False) -> Any:
    """transformers.TrainingArguments from the recipe, with alignkit's metrics callback attached later."""
    from transformers import TrainingArguments

    return TrainingArguments(**_known(TrainingArguments, training_kwargs(recipe, run_dir, has_eval)))


# Recipe keys keep the names users know; transformers >= 5.25 renamed these (the old names warn until v6).
RENAMED_TRAINING_ARGUMENTS = {"gradient_checkpointing": "activation_checkpointing",
                              "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def _known(cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs under the names `cls` takes (RENAMED_TRAINING_ARGUMENTS); an unknown one is a user error."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    for old, new in RENAMED_TRAINING_ARGUMENTS.items():
        if old in kwargs and new in names and new not in kwargs:
            kwargs = {**{k: v for k, v in kwargs.items() if k != old}, new: kwargs[old]}
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


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint-<step>/ appears complete, in one rename, or not at all.

    transformers writes a checkpoint file by file into its final folder, so a run killed (or out of disk)
    mid-save leaves a folder that looks resumable and is not. Here every rank writes into a hidden
    staging folder of the same name; the main process publishes it once all ranks are done.
    """

    _staging: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        # transformers asks this for the folder it creates checkpoint-<step> in.
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        root = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = root / f".tmp-{name}", root / name
        main = self.args.should_save
        if main:
            shutil.rmtree(staging, ignore_errors=True)  # left by a crashed earlier attempt at this step
        self.accelerator.wait_for_everyone()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # its own rotation sees only the staged checkpoint
        except BaseException as exc:
            if main:
                shutil.rmtree(staging, ignore_errors=True)  # frees the space a full disk needs back
            if is_disk_full(exc):
                raise disk_full_error(final) from exc
            raise
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank's files (its RNG state) are in before publishing
        if main:
            self._publish(staging / name, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(str(root), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _publish(self, staged: Path, final: Path) -> None:
        if self.state.best_model_checkpoint == str(staged):  # this step is the best so far: record where it lives
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(staged / CHECKPOINT_STATE))
        replace_dir(staged, final)


def atomic_checkpoints(trainer_cls: type) -> type:
    """`trainer_cls` with AtomicCheckpoints mixed in (the class itself if it already has it)."""
    if issubclass(trainer_cls, AtomicCheckpoints):
        return trainer_cls
    return type(trainer_cls.__name__, (AtomicCheckpoints, trainer_cls), {})


def checkpoint_step(checkpoint: str) -> int:
    """The global step a checkpoint was saved at (from its trainer_state.json)."""
    state = Path(checkpoint) / CHECKPOINT_STATE
    if not state.is_file():
        raise AlignkitError(f"not a complete checkpoint (no {CHECKPOINT_STATE})",
                            where=f"train.resume_from_checkpoint: {checkpoint}")
    return int(json.loads(state.read_text())["global_step"])


def planned_steps(trainer: Any) -> int:
    """The optimizer steps the schedule runs to: max_steps, or epochs x update steps per epoch."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(1, math.ceil(len(trainer.get_train_dataloader()) / args.gradient_accumulation_steps))
    return math.ceil(args.num_train_epochs * per_epoch)


def train(trainer: Any, resume: str | None) -> Any:
    """Train with atomic checkpoints, resuming model, optimizer, scheduler and data order from `resume`.

    A checkpoint at the schedule's end is loaded instead of trained from: the run crashed after its last
    checkpoint (in the final save, merge or eval), and transformers would train a stray step past
    max_steps (mid-epoch) or nothing at all; the stage then finishes as the uninterrupted run would.
    """
    trainer.__class__ = atomic_checkpoints(type(trainer))  # every Trainer-based stage trains through here
    if not resume:
        return trainer.train()
    start, total = checkpoint_step(resume), planned_steps(trainer)
    if start > total:
        raise AlignkitError(
            f"checkpoint is at step {start}, past the end of the schedule (step {total}); "
            "raise train.max_steps or train.num_train_epochs to continue it",
            where=f"train.resume_from_checkpoint: {resume}",
        )
    if start == total:
        log.info("resuming from %s: training had finished (step %d of %d); completing the run", resume, start, total)
        return finish_from_checkpoint(trainer, resume)
    log.info("resuming from %s at step %d of %d", resume, start, total)
    return trainer.train(resume_from_checkpoint=resume)


def train_with_metrics(trainer: Any, recipe: Recipe, run_dir: RunDir) -> tuple[Any, dict[str, Any]]:
    """Train, resuming as train.resume_from_checkpoint says; the TrainOutput and the metrics every stage reports."""
    resume = run_dir.resolve_resume(recipe.train.resume_from_checkpoint)
    start = time.time()
    result = train(trainer, resume)
    return result, {"train_loss": result.training_loss, "global_step": result.global_step,
                    "train_seconds": round(time.time() - start, 1), "peak_memory_mb": peak_memory_mb()}


def finish_from_checkpoint(trainer: Any, checkpoint: str) -> Any:
    """Load a final checkpoint's weights and state into `trainer` without training; its TrainOutput."""
    trainer._load_from_checkpoint(checkpoint)  # transformers' loader: full models, adapters, sharded files
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / CHECKPOINT_STATE))
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    # The uninterrupted run reports its mean training loss; the logged windows' mean stands in for it.
    loss = sum(losses) / len(losses) if losses else float("nan")
    return TrainOutput(trainer.state.global_step, loss, {"train_loss": loss})


def save_final_model(model: Any, tokenizer: Any, run_dir: RunDir, quantization: dict[str, Any] | None = None) -> None:
    """Save model (or adapter) + tokenizer + chat template to run_dir/model in one atomic rename.

    `quantization`: the record of the 4/8-bit base an adapter was trained on (models.quantization_record).
    """
    from accelerate import PartialState

    from alignkit.models import set_generation_eos

    if not PartialState().is_main_process:
        return
    set_generation_eos(model, tokenizer)
    save_model(model, tokenizer, run_dir.model_dir, quantization=quantization)


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on CPU."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak_rss_mb()


def reset_peak_memory() -> None:
    """Start peak_memory_mb afresh (a pipeline's later step then reports its own peak, not an earlier step's).

    CUDA: torch's peak statistics. Linux: writing 5 to /proc/self/clear_refs sets VmHWM back to the current
    resident set size. Elsewhere the peak stays process-wide.
    """
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


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
