"""The preflight's checks against independent references: datasets' own split, a real safetensors file, the schema."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from alignkit.config import Recipe
from alignkit.config.base import check_local_path
from alignkit.config.recipe import load_recipe
from alignkit.errors import AlignkitError
from alignkit.preflight import INPUT_KEYS, check_eval_split, check_pipeline, check_utf8, safetensors_problem
from tests.conftest import CHAT_ROWS, write_jsonl


def _path_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted keys (list items as *) of every field validated by check_local_path, found from the schema."""
    found = set()
    for decorator in model.__pydantic_decorators__.field_validators.values():
        if decorator.func is check_local_path or getattr(decorator.func, "__func__", None) is check_local_path:
            found |= {f"{prefix}{name}" for name in decorator.info.fields}
    for name, field in model.model_fields.items():
        options = typing.get_args(field.annotation) if typing.get_origin(field.annotation) else [field.annotation]
        for arg in options if typing.get_origin(field.annotation) is not list else [field.annotation]:
            is_list = typing.get_origin(arg) is list
            inner = typing.get_args(arg)[0] if is_list else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found |= _path_fields(inner, f"{prefix}{name}{'.*' if is_list else ''}.")
    return found


def test_every_path_field_is_an_input_of_the_output_dir_check():
    fields = _path_fields(Recipe)
    assert {"model.name_or_path", "data.datasets.*.path", "eval.models.*.path", "pipeline.steps.*.recipe"} <= fields
    assert fields - set(INPUT_KEYS) == set()


@pytest.mark.parametrize("rows", [1, 2, 3, 10])
@pytest.mark.parametrize("share", [0.05, 0.5, 0.9])
def test_eval_split_refused_exactly_when_datasets_cannot_split(tmp_path, rows, share):
    import datasets

    data = write_jsonl(tmp_path / "d.jsonl", CHAT_ROWS[:1] * rows)
    recipe = load_recipe(Path("recipes/sft_lora.yaml"), [f"output_dir={tmp_path}/out", f"data.datasets.0.path={data}",
                                                         f"data.eval_split_size={share}"])
    try:
        datasets.Dataset.from_list([{"x": i} for i in range(rows)]).train_test_split(test_size=share, seed=0)
        splits = True
    except ValueError:
        splits = False
    if splits:
        check_eval_split(recipe)
    else:
        with pytest.raises(AlignkitError, match="data.eval_split_size: holding out"):
            check_eval_split(recipe)


def test_safetensors_check_against_a_real_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(3, 5), "b": torch.zeros(7)}, str(path))
    assert safetensors_problem(path) is None
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    assert safetensors_problem(path).startswith(f"truncated: the header needs {len(whole)} bytes")
    path.write_bytes(whole[:20])
    assert "header of" in safetensors_problem(path)
    path.write_bytes(b"\x00" * 3)
    assert "too short" in safetensors_problem(path)


def test_utf8_check_names_line_and_offset(tmp_path):
    path = tmp_path / "x.jsonl"
    data = "é ok\nfine\n".encode() + b"bad \xff here\n"  # a multi-byte character first: offsets count bytes
    path.write_bytes(data)
    offset = data.index(b"\xff")
    with pytest.raises(AlignkitError) as err:
        check_utf8(path, "data.datasets.0.path")
    assert str(err.value) == (f"data.datasets.0.path: {path}:3: not UTF-8 text (byte 0xff at offset "
                              f"{offset}); re-save the file as UTF-8")


def test_shipped_pipeline_is_preflighted_per_step_before_its_first_run(tmp_path):
    recipe = load_recipe(Path("recipes/pipeline_tiny.yaml"), [f"output_dir={tmp_path}/pipe"])
    check_pipeline(recipe, training=True)  # later steps read outputs not written yet: skipped, not errors
    bad = load_recipe(Path("recipes/pipeline_tiny.yaml"),
                      [f"output_dir={tmp_path}/pipe", "pipeline.steps.3.overrides.0=model.name_or_path=${steps.sfft.output}"])
    with pytest.raises(AlignkitError, match=r"pipeline.steps.3 \(recipes/dpo.yaml\).model.name_or_path: "
                                            r"\$\{steps.sfft.output\} names no earlier step"):
        check_pipeline(bad, training=True)
    assert not (tmp_path / "pipe").exists()
