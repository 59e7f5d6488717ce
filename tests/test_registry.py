"""The stage registry is the one place a stage is declared: schema, docs, recipes and card tags follow it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from alignkit.config.recipe import REQUIRED_SECTIONS, Recipe, load_yaml
from alignkit.config.registry import ONLINE_RL_TRAIN_KEYS, REGISTRY, STAGE_NAMES
from alignkit.modelcard import metadata
from alignkit.stages import run_function

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "alignkit"


def shipped_recipe_stages() -> set[str]:
    """The stages of the recipes shipped under recipes/ (accelerate configs have none)."""
    return {stage for f in (ROOT / "recipes").rglob("*.yaml") if isinstance(stage := load_yaml(f).get("stage"), str)}


def test_recipe_schema_is_derived_from_the_registry():
    assert typing.get_args(Recipe.model_fields["stage"].annotation) == STAGE_NAMES
    assert REQUIRED_SECTIONS == {name: spec.required for name, spec in REGISTRY.items()}
    for name, spec in REGISTRY.items():
        assert spec.section in typing.get_args(Recipe.model_fields[name].annotation), name
        assert set(spec.required) <= set(Recipe.model_fields), name


def test_every_stage_has_a_recipe_docs_and_card_tags():
    docs = (ROOT / "docs" / "adding_a_stage.md").read_text() + (ROOT / "README.md").read_text()
    assert set(STAGE_NAMES) <= shipped_recipe_stages()
    for name, spec in REGISTRY.items():
        assert f"`{name}`" in docs, f"stage {name} is mentioned in neither docs/adding_a_stage.md nor README.md"
        if not spec.owns_folder:  # a pipeline writes no model of its own: its steps' cards carry their tags
            tags = metadata({}, name, False, "apache-2.0")["tags"]
            assert set(spec.tags) <= set(tags) and spec.tags, name


def test_every_run_function_imports():
    for name in STAGE_NAMES:
        assert callable(run_function(name)), name


@pytest.mark.parametrize("stage", ["ppo", "grpo", "rloo"])
def test_online_rl_train_keys_are_what_the_online_stage_reads(stage):
    """Every train.<key> the online-RL code reads is declared, and nothing it does not read."""
    text = "".join(p.read_text() for p in [SRC / "online_stage.py", *(SRC / "rl").glob("*.py")])
    read = {key for key in REGISTRY["ppo"].train_keys if f"train.{key}" in text or f"t.{key}" in text}
    assert REGISTRY[stage].train_keys == ONLINE_RL_TRAIN_KEYS
    assert read | {"overwrite_output_dir"} == ONLINE_RL_TRAIN_KEYS  # the lifecycle reads overwrite_output_dir
