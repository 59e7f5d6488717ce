"""The online methods' config lives once: RLConfig is built from the recipe section (model_dump)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.config.ppo import GRPOSection, PPOSection, RLOOSection
from alignkit.config.recipe import load_recipe, validate_recipe
from alignkit.errors import AlignkitError
from alignkit.online_stage import RECIPE_ONLY, config_fields, reference_mode, trainer_config

REPO = Path(__file__).resolve().parents[2]


def recipe(stage: str, tmp_path: Path, **section: object) -> object:
    return validate_recipe({"stage": stage, "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "x"},
                            "data": {"datasets": [{"path": "data/world/rl_prompts.jsonl"}]},
                            stage: {"reward_model": "x", **section}})


@pytest.mark.parametrize("section", [PPOSection, GRPOSection, RLOOSection])
def test_every_section_key_is_an_rlconfig_field_or_chooses_models(section):
    assert set(section.model_fields) - RECIPE_ONLY <= config_fields()


@pytest.mark.parametrize("stage", ["ppo", "grpo", "rloo"])
def test_forward_batch_size_and_anneal_lr_reach_the_trainer(stage, tmp_path):
    default = trainer_config(recipe(stage, tmp_path))
    assert default.forward_batch_size is None and default.anneal_lr is False
    cfg = trainer_config(recipe(stage, tmp_path, forward_batch_size=8, anneal_lr=True, max_new_tokens=17))
    assert cfg.forward_batch_size == 8 and cfg.anneal_lr is True and cfg.max_new_tokens == 17


def test_each_stage_is_its_configuration_of_the_loop(tmp_path):
    ppo, grpo, rloo = (trainer_config(recipe(s, tmp_path)) for s in ("ppo", "grpo", "rloo"))
    assert (ppo.advantage_estimator, ppo.num_generations, ppo.kl_in_reward, ppo.whiten_advantages) == \
        ("gae", 1, True, True)
    assert (grpo.advantage_estimator, grpo.num_generations, grpo.kl_in_reward) == ("grpo", 4, False)
    assert (grpo.kl_coef, grpo.kl_estimator, grpo.scale_rewards, grpo.ppo_epochs) == (0.04, "k3", True, 1)
    assert (rloo.advantage_estimator, rloo.num_generations, rloo.kl_in_reward) == ("rloo", 4, True)
    assert ppo.learning_rate == grpo.learning_rate == rloo.learning_rate == 2e-4  # train.learning_rate's default
    assert trainer_config(recipe("grpo", tmp_path, scale_rewards=False)).scale_rewards is False  # Dr. GRPO


def test_shipped_recipes_validate_and_share_the_ppo_recipes_models():
    ppo = load_recipe(REPO / "recipes" / "ppo.yaml")
    for stage in ("grpo", "rloo"):
        r = load_recipe(REPO / "recipes" / f"{stage}.yaml")
        section = getattr(r, stage)
        assert r.model.name_or_path == ppo.model.name_or_path and section.reward_model == ppo.ppo.reward_model
        assert section.num_generations >= 2 and section.total_episodes == ppo.ppo.total_episodes
        assert reference_mode(r) == "adapter_disabled"


def test_group_section_errors(tmp_path):
    with pytest.raises(AlignkitError, match="multiple of num_generations"):
        recipe("grpo", tmp_path, rollout_batch_size=30, num_generations=4)
    with pytest.raises(AlignkitError, match="needs reward_model"):
        validate_recipe({"stage": "rloo", "output_dir": str(tmp_path), "model": {"name_or_path": "x"},
                         "data": {"datasets": [{"path": "data/world/rl_prompts.jsonl"}]}, "rloo": {}})
    assert recipe("rloo", tmp_path, reward="oracle").rloo.reward == "oracle"


def test_rlconfig_defaults_for_library_users_are_the_ppo_sections():
    """RLTrainer used without a recipe behaves as a recipe's ppo section with nothing set."""
    from alignkit.rl.trainer import RLConfig

    library = RLConfig()
    shared = {k: v.default for k, v in PPOSection.model_fields.items() if k not in RECIPE_ONLY and not v.is_required()}
    for key in ("learning_rate", "critic_learning_rate"):  # None in a recipe: train.learning_rate
        shared.pop(key)
    assert {k: getattr(library, k) for k in shared} == shared
