"""The stage registry: one line per stage declares everything the rest of alignkit needs to know about it.

A stage is a module with `run(recipe, run_dir, recipe_path) -> metrics` plus a recipe section named
after the stage. The recipe schema (the `stage:` values, required sections, the section fields), the
train-key check, the model card and the CLI all read this table; docs/adding_a_stage.md lists the steps.
Run functions are named by import path and imported only when a run starts (torch is slow to load):
alignkit.stages.run_function does that. The table lives in config, below the recipe schema that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.config.base import Section, TrainSection
from alignkit.config.dpo import DPOSection
from alignkit.config.eval import EvalSection
from alignkit.config.pipeline import PipelineSection
from alignkit.config.ppo import GRPOSection, PPOSection, RLOOSection
from alignkit.config.pretrain import PretrainSection
from alignkit.config.reward import RewardSection
from alignkit.config.sft import SFTSection
from alignkit.errors import AlignkitError

ALL_TRAIN_KEYS = frozenset(TrainSection.model_fields)
# The run lifecycle (stages.lifecycle) reads these for every stage that writes a run folder.
LIFECYCLE_TRAIN_KEYS = frozenset({"overwrite_output_dir", "resume_from_checkpoint"})
# What the online-RL stages read from `train:` (online_stage.trainer_config and run); their own section
# holds the rest (batch sizes, epochs, schedule), so e.g. train.bf16 or train.optim would be ignored there.
ONLINE_RL_TRAIN_KEYS = LIFECYCLE_TRAIN_KEYS | {
    "learning_rate", "gradient_accumulation_steps", "max_grad_norm", "save_total_limit", "report_to"}


@dataclass(frozen=True)
class StageSpec:
    """One stage: its recipe section, what a recipe must hold, how the model card names it, how it runs."""

    name: str
    run: str  # "module:function" with signature run(recipe, run_dir, recipe_path) -> dict of metrics
    section: type[Section]  # the recipe section named after the stage (recipe.<name>)
    required: tuple[str, ...]  # recipe sections the stage cannot run without
    description: str  # for the model card: "Trained with alignkit: <description> of <model>"
    tags: tuple[str, ...] = ()  # Hub model-card tags
    train_keys: frozenset[str] = ALL_TRAIN_KEYS  # the `train:` keys it honours; others must keep their defaults
    trains: bool = True  # trains a model (checks optimiser, scheduler and report_to before the run)
    model_keys: tuple[str, ...] = ()  # its section's keys naming model folders (preflight: safetensors, overlap)
    input_keys: tuple[str, ...] = ()  # its section's keys naming other files it reads (preflight: overlap)
    owns_folder: bool = False  # manages its run folder itself (pipeline): no prepare, no seed, no run.json here


REGISTRY: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("pretrain", "alignkit.pretrain:run", PretrainSection, ("data", "pretrain"),
              "(continued) pretraining", ("pretraining",)),
    StageSpec("sft", "alignkit.sft:run", SFTSection, ("model", "data"),
              "supervised fine-tuning (SFT)", ("sft", "trl")),
    StageSpec("reward", "alignkit.reward:run", RewardSection, ("model", "data"),
              "reward modelling (Bradley-Terry / K-way ranking loss)", ("reward-model", "trl")),
    StageSpec("ppo", "alignkit.ppo.stage:run", PPOSection, ("model", "data", "ppo"),
              "RLHF with PPO", ("ppo", "rlhf"), train_keys=ONLINE_RL_TRAIN_KEYS,
              model_keys=("ppo.reward_model", "ppo.value_model")),
    StageSpec("grpo", "alignkit.grpo:run", GRPOSection, ("model", "data", "grpo"),
              "online RL with GRPO (group-relative advantages)", ("grpo", "rlhf"), train_keys=ONLINE_RL_TRAIN_KEYS,
              model_keys=("grpo.reward_model",)),
    StageSpec("rloo", "alignkit.rloo:run", RLOOSection, ("model", "data", "rloo"),
              "online RL with RLOO (leave-one-out baseline)", ("rloo", "rlhf"), train_keys=ONLINE_RL_TRAIN_KEYS,
              model_keys=("rloo.reward_model",)),
    StageSpec("dpo", "alignkit.dpo:run", DPOSection, ("model", "data"),
              "direct preference optimisation (DPO)", ("dpo", "trl")),
    StageSpec("eval", "alignkit.stages.evaluate:run", EvalSection, ("eval",),
              "win-rate evaluation", ("evaluation",), train_keys=LIFECYCLE_TRAIN_KEYS, trains=False,
              model_keys=("eval.models.*.path", "eval.reward_model", "eval.judge.path"),
              input_keys=("eval.prompts", "eval.fewshot_template", "eval.ppo_run", "eval.judge.template",
                          "eval.judge.labels")),
    StageSpec("pipeline", "alignkit.pipeline:run", PipelineSection, ("pipeline",),
              "pipeline", (), train_keys=frozenset(), trains=False, owns_folder=True,
              input_keys=("pipeline.steps.*.recipe",)),
)}
STAGE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def stage_spec(stage: str) -> StageSpec:
    """The registry entry of a stage name."""
    try:
        return REGISTRY[stage]
    except KeyError:
        raise AlignkitError(f"unknown stage '{stage}' (one of {', '.join(STAGE_NAMES)})", where="stage") from None


def unused_train_keys(stage: str, train: TrainSection) -> list[str]:
    """The `train:` keys set to a non-default value that this stage would silently ignore."""
    honoured = stage_spec(stage).train_keys
    defaults = TrainSection()
    return [key for key in TrainSection.model_fields
            if key not in honoured and key in train.model_fields_set and getattr(train, key) != getattr(defaults, key)]
