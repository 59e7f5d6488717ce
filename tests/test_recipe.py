"""Recipe loading: typed validation, one-line errors naming the YAML path, dotted overrides."""

from pathlib import Path

import pytest
import yaml

from alignkit.config.recipe import apply_overrides, load_recipe, load_yaml
from alignkit.errors import AlignkitError

BASE = {
    "stage": "pretrain",
    "output_dir": "runs/x",
    "data": {"datasets": [{"path": "data/world/corpus.jsonl"}]},
    "pretrain": {"from_scratch": True, "tokenizer_training": {}, "architecture": {}},
}


def write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_valid_recipe_has_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE))
    assert recipe.stage == "pretrain"
    assert recipe.train.learning_rate == 2e-4
    assert recipe.model is None
    assert recipe.dump()["train"]["per_device_train_batch_size"] == 8


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, {**BASE, "train": {"learnin_rate": 1e-4}})
    with pytest.raises(AlignkitError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: train.learnin_rate: unknown key; did you mean learning_rate?"


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, {**BASE, "train": {"per_device_train_batch_size": "eight"}})
    with pytest.raises(AlignkitError, match=r"train\.per_device_train_batch_size: .*'eight'"):
        load_recipe(path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, {k: v for k, v in BASE.items() if k != "output_dir"})
    with pytest.raises(AlignkitError, match="output_dir: required key is missing"):
        load_recipe(path)


def test_missing_section_for_stage(tmp_path):
    path = write(tmp_path, {k: v for k, v in BASE.items() if k != "pretrain"})
    with pytest.raises(AlignkitError, match="missing section 'pretrain' required by stage pretrain"):
        load_recipe(path)


def test_missing_data_file_is_named(tmp_path):
    path = write(tmp_path, {**BASE, "data": {"datasets": [{"path": "data/nope.jsonl"}]}})
    with pytest.raises(AlignkitError, match=r"data\.datasets\.0\.path: file not found: data/nope.jsonl"):
        load_recipe(path)


def test_hub_ids_are_not_checked_as_files(tmp_path):
    recipe = load_recipe(write(tmp_path, {**BASE, "data": {"datasets": [{"path": "HuggingFaceH4/ultrachat_200k"}]}}))
    assert recipe.data.datasets[0].path == "HuggingFaceH4/ultrachat_200k"


def test_overrides_parse_yaml_values(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), ["train.learning_rate=1e-3", "train.report_to=[]",
                                                "data.datasets.0.weight=2", "seed=7"])
    assert recipe.train.learning_rate == 1e-3
    assert recipe.train.report_to == []
    assert recipe.data.datasets[0].weight == 2.0
    assert recipe.seed == 7


def test_bad_override_key_is_an_error(tmp_path):
    with pytest.raises(AlignkitError, match="train.learnin_rate: unknown key; did you mean learning_rate"):
        load_recipe(write(tmp_path, BASE), ["train.learnin_rate=1"])
    with pytest.raises(AlignkitError, match="key.subkey=value"):
        apply_overrides({}, ["no_equals_sign"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage: sft\noutput_dir: [unclosed\n")
    with pytest.raises(AlignkitError, match=r"bad.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_yaml_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("stage: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(AlignkitError, match="not valid YAML"):
        load_recipe(path)


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    """Regression: PyYAML keeps the last of two `train:` sections and silently drops the first."""
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "train:\n  max_steps: 2\ntrain:\n  learning_rate: 0.1\n")
    line = len(path.read_text().splitlines())  # the second `train:` is the second-to-last line
    with pytest.raises(AlignkitError, match=rf"dup.yaml:{line - 1}: not valid YAML \(duplicate key 'train'"):
        load_recipe(path)
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "train:\n  max_steps: 2\n  max_steps: 3\n")
    with pytest.raises(AlignkitError, match="duplicate key 'max_steps'"):
        load_recipe(path)


def test_yaml_merge_keys_may_override(tmp_path):
    """`<<: *anchor` then a key of the mapping's own is an override, not a duplicate."""
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False)
                    + "defaults: &d {learning_rate: 0.1, max_steps: 2}\ntrain:\n  <<: *d\n  learning_rate: 0.2\n")
    raw = load_yaml(path)
    assert raw["train"] == {"learning_rate": 0.2, "max_steps": 2}


def test_override_that_is_not_yaml_is_one_line(tmp_path):
    with pytest.raises(AlignkitError) as err:
        load_recipe(write(tmp_path, BASE), ["train.learning_rate=[1,"])
    assert str(err.value).startswith("override train.learning_rate=[1,: the value is not valid YAML")
    with pytest.raises(AlignkitError, match="duplicate key 'a'"):
        apply_overrides({}, ["train.trainer_kwargs={a: 1, a: 2}"])


def test_jinja_overrides_are_plain_strings():
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    raw = apply_overrides({}, [f"model.chat_template={template}", "model.revision={{ not_yaml }}",
                               "a.b=Hello {{ name }}", "a.c={ x: 1 }"])
    assert raw["model"] == {"chat_template": template, "revision": "{{ not_yaml }}"}
    assert raw["a"] == {"b": "Hello {{ name }}", "c": {"x": 1}}  # YAML that is not Jinja still parses


PPO = {"stage": "ppo", "output_dir": "runs/p", "model": {"name_or_path": "data/models/tiny-sft"},
       "data": {"datasets": [{"path": "data/world/rl_prompts.jsonl"}]},
       "ppo": {"reward_model": "data/models/tiny-rm"}}


@pytest.mark.parametrize("key,value", [("bf16", True), ("gradient_checkpointing", True), ("optim", "adafactor"),
                                       ("warmup_ratio", 0.1), ("per_device_train_batch_size", 4)])
def test_a_train_key_the_stage_ignores_is_refused_by_name(tmp_path, key, value):
    path = write(tmp_path, {**PPO, "train": {key: value}})
    with pytest.raises(AlignkitError) as err:
        load_recipe(path)
    assert f"train.{key} is not used by stage ppo" in str(err.value)
    assert str(err.value).startswith(str(path))


def test_train_keys_the_stage_reads_or_left_at_default_are_accepted(tmp_path):
    train = {"learning_rate": 1e-5, "max_grad_norm": 0.5, "save_total_limit": None, "report_to": [],
             "bf16": False, "optim": "adamw_torch"}  # the last two are the defaults: harmless
    recipe = load_recipe(write(tmp_path, {**PPO, "train": train}))
    assert recipe.train.learning_rate == 1e-5
    assert load_recipe(write(tmp_path, {**BASE, "train": {"bf16": "auto", "optim": "adafactor"}})).train.bf16 == "auto"


def test_home_folder_in_paths_is_expanded(tmp_path, monkeypatch):
    """`~` in output_dir and in local paths is the home folder (it was a literal "~" folder beside the run)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data.jsonl").write_text("{}\n")
    recipe = load_recipe("recipes/sft_lora.yaml", ["output_dir=~/runs/x", "data.datasets.0.path=~/data.jsonl"])
    assert recipe.output_dir == str(tmp_path / "runs" / "x")
    assert recipe.data.datasets[0].path == str(tmp_path / "data.jsonl")
