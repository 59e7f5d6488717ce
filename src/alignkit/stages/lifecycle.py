"""The run lifecycle every stage goes through: preflight, run folder, seed, the stage, completion marker, push."""

from __future__ import annotations

import logging
from typing import Any

import yaml
from accelerate import PartialState
from transformers import set_seed

from alignkit.config.base import resolve_precision
from alignkit.config.recipe import Recipe
from alignkit.config.registry import stage_spec
from alignkit.errors import AlignkitError
from alignkit.hub import push_run
from alignkit.preflight import preflight
from alignkit.runio import RunDir, atomic_write_text, disk_full_as_error, redact
from alignkit.stages import run_function
from alignkit.trainer_utils import reset_peak_memory

log = logging.getLogger("alignkit")


# What a resume may change: how long it goes on, and how it reports. Anything else (learning rate, data, model,
# LoRA shape, PPO settings) is restored from the checkpoint or mixes two runs into one model, while recipe.yaml
# would record the new value as if it had been used.
RESUMABLE_CHANGES = ("output_dir", "train.max_steps", "train.num_train_epochs", "train.resume_from_checkpoint",
                     "train.overwrite_output_dir", "train.report_to", "train.save_total_limit", "hub")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def check_resume_matches(before: Any, now: dict[str, Any]) -> None:
    """A resume continues the run in its folder as it was recorded; a changed setting is a user error."""
    old, new = _flat(before if isinstance(before, dict) else {}), _flat(now)
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUMABLE_CHANGES) or old.get(key) == new.get(key):
            continue
        raise AlignkitError(f"differs from the run being resumed ({old.get(key)!r} there, {new.get(key)!r} now); a "
                            "resume continues that run as it was: restore the value, or start over with "
                            "train.overwrite_output_dir=true", where=key)


def run_recipe(recipe: Recipe, recipe_path: str, force: list[str] | None = None) -> dict[str, Any]:
    """Run a validated recipe (the pipeline calls this for each step): preflight, folder, stage, marker last."""
    preflight(recipe, training=True)  # before anything is written or any model loads
    resolve_precision(recipe.train)  # train.bf16/fp16: true on a machine without it stops here, not after loading
    spec = stage_spec(recipe.stage)
    run = run_function(recipe.stage)
    run_dir = RunDir(recipe.output_dir)
    if spec.owns_folder:
        return run(recipe, run_dir, recipe_path, force=force or []) or {}
    main_process = PartialState().is_main_process
    run_dir.prepare(overwrite=recipe.train.overwrite_output_dir, resume=recipe.train.resume_from_checkpoint)
    saved = run_dir.path / "recipe.yaml"
    previous = saved.read_text() if saved.is_file() else None
    progress = run_dir.latest_checkpoint()
    if recipe.train.resume_from_checkpoint and previous is not None:
        check_resume_matches(yaml.safe_load(previous), redact(recipe.dump()))
    if main_process:
        run_dir.save_recipe(recipe.dump())
    # Seed before any model or adapter is built: LoRA and value-head initialisation must follow the
    # recipe's seed, and be the same on every DDP rank as in a single-process run.
    set_seed(recipe.seed)
    reset_peak_memory()  # peak_memory_mb is this stage's, also as a later pipeline step
    try:
        with disk_full_as_error(run_dir.path):  # a full disk anywhere in the stage: one line, not a traceback
            metrics = run(recipe, run_dir, recipe_path) or {}
    except AlignkitError:
        # A run rejected before it saved anything (a bad data row, ...) leaves the folder's recipe.yaml
        # describing the run the folder holds (a finished model, or the checkpoints a resume would continue).
        if main_process and previous is not None and run_dir.latest_checkpoint() == progress:
            atomic_write_text(saved, previous)
        raise
    if main_process:
        run_dir.finish(metrics, stage=recipe.stage, recipe=str(recipe_path), **run_dir.model_record())
        if recipe.hub is not None and recipe.hub.push_on_finish:
            log.info("pushed to %s", push_run(run_dir.path))
    return metrics
