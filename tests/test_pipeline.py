"""Pipeline: chaining via ${steps.NAME.output}, the manifest, skip on rerun, --force, and reference errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from alignkit.cli import train
from alignkit.config.steps import resolve_refs
from alignkit.errors import AlignkitError
from alignkit.pipeline import input_paths
from alignkit.runio import current_umask


def _continued_pretrain(path: Path, model: str, corpus: Path) -> Path:
    """A two-step continued-pretraining recipe on a tiny corpus (seconds on a CPU)."""
    recipe = {
        "stage": "pretrain", "output_dir": "unused", "seed": 0,
        "model": {"name_or_path": model, "max_length": 64},
        "data": {"datasets": [{"path": str(corpus), "format": "text"}]},
        "pretrain": {"from_scratch": False, "block_size": 32, "eval_holdout_documents": 0},
        "train": {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "report_to": [],
                  "learning_rate": 1e-3, "save_steps": 100},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def pipeline_recipe(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    """pipeline.yaml: step `first` continues the tiny model, step `second` continues `first`'s output."""
    corpus = tmp_path / "corpus.jsonl"
    with open("data/world/corpus.jsonl") as src:
        corpus.write_text("".join(next(src) for _ in range(20)))
    stage = _continued_pretrain(tmp_path / "stage.yaml", str(tiny_model_dir), corpus)
    out = tmp_path / "pipe"
    pipeline = {
        "stage": "pipeline", "output_dir": str(out),
        "pipeline": {"steps": [
            {"name": "first", "recipe": str(stage)},
            {"name": "second", "recipe": str(stage),
             "overrides": ["model.name_or_path=${steps.first.output}", "train.learning_rate=5e-4"]},
        ]},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    return path, out


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _finished(out: Path, step: str) -> str:
    return json.loads((out / step / "run.json").read_text())["finished_at"] + str(
        (out / step / "run.json").stat().st_mtime_ns)


def test_chain_manifest_skip_and_force(pipeline_recipe: tuple[Path, Path]) -> None:
    path, out = pipeline_recipe
    metrics = train(str(path), [])
    assert metrics["steps_run"] == ["first", "second"]
    m = _manifest(out)
    first, second = m["steps"]["first"], m["steps"]["second"]
    # chaining: the second step trained on the first step's saved model, recorded with its content hash
    assert second["resolved_recipe"]["model"]["name_or_path"] == str(out / "first" / "model")
    assert str(out / "first" / "model") in second["inputs"]
    assert first["outputs"]["output"] == str(out / "first" / "model")
    assert second["resolved_recipe"]["output_dir"] == str(out / "second")
    assert all(len(h) == 64 for h in second["inputs"].values())
    assert len(first["recipe_sha256"]) == 64 and first["metrics"]["global_step"] == 2
    assert (out / "second" / "model" / "model.safetensors").is_file()
    # run.json states what model/ holds; files are published with the usual permissions, not mkstemp's 0600
    assert json.loads((out / "second" / "run.json").read_text())["model_kind"] == "full"
    umask = current_umask()
    assert stat.S_IMODE((out / "second" / "model").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o666 & ~umask
    stamps = {s: _finished(out, s) for s in ("first", "second")}

    # rerun: nothing changed, nothing trains
    metrics = train(str(path), [])
    assert metrics["steps_run"] == [] and metrics["steps_skipped"] == ["first", "second"]
    assert {s: _finished(out, s) for s in ("first", "second")} == stamps
    assert _manifest(out)["steps"]["second"]["status"] == "skipped"

    # --force by step name redoes that step; the second reruns only if the first's output bytes changed
    metrics = train(str(path), [], force=["first"])
    assert metrics["steps_run"][0] == "first"
    assert _finished(out, "first") != stamps["first"]
    m = _manifest(out)
    changed = m["steps"]["second"]["inputs"] != second["inputs"]
    assert ("second" in metrics["steps_run"]) == changed

    # --force by stage name redoes every step of that stage
    assert train(str(path), [], force=["pretrain"])["steps_run"] == ["first", "second"]


def test_changed_override_reruns_only_downstream(pipeline_recipe: tuple[Path, Path]) -> None:
    path, out = pipeline_recipe
    train(str(path), [])
    raw = yaml.safe_load(path.read_text())
    raw["pipeline"]["steps"][1]["overrides"].append("train.max_steps=3")
    path.write_text(yaml.safe_dump(raw))
    metrics = train(str(path), [])
    assert metrics["steps_run"] == ["second"] and metrics["steps_skipped"] == ["first"]
    assert _manifest(out)["steps"]["second"]["metrics"]["global_step"] == 3


def test_unknown_force_and_bad_reference(pipeline_recipe: tuple[Path, Path]) -> None:
    path, _ = pipeline_recipe
    with pytest.raises(AlignkitError, match="names no step or stage"):
        train(str(path), [], force=["nope"])
    with pytest.raises(AlignkitError, match="names no earlier step"):
        resolve_refs({"model": {"name_or_path": "${steps.later.output}"}}, {"first": {}}, "step")


def test_resolve_refs_and_input_paths(tmp_path: Path) -> None:
    outputs = {"sft": {"output": "runs/p/sft/merged", "run_dir": "runs/p/sft"}}
    raw = {"a": ["${steps.sft.output}", {"b": "x/${steps.sft.run_dir}/y"}], "n": 3}
    assert resolve_refs(raw, outputs, "s") == {"a": ["runs/p/sft/merged", {"b": "x/runs/p/sft/y"}], "n": 3}
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    dump = {"output_dir": str(tmp_path), "data": [str(data), "org/hub-id", "train"], "k": 1}
    assert input_paths(dump, skip={"output_dir"}) == [str(data)]


def test_a_pipeline_never_writes_into_another_run_or_the_users_files(pipeline_recipe: tuple[Path, Path]) -> None:
    """A finished SFT run as output_dir had its run.json and recipe.yaml overwritten; a user's folder named like
    a step was deleted with its files."""
    path, out = pipeline_recipe
    out.mkdir()
    (out / "run.json").write_text('{"status": "complete", "stage": "sft"}\n')
    (out / "recipe.yaml").write_text("stage: sft\n")
    with pytest.raises(AlignkitError, match="holds a finished run of another stage and no pipeline manifest.json"):
        train(str(path), [])
    assert (out / "recipe.yaml").read_text() == "stage: sft\n" and not (out / "first").exists()
    (out / "run.json").unlink()
    (out / "recipe.yaml").unlink()
    (out / "first").mkdir()
    (out / "first" / "notes.txt").write_text("mine\n")
    with pytest.raises(AlignkitError, match="holds files of something else"):
        train(str(path), [])
    assert (out / "first" / "notes.txt").read_text() == "mine\n"


def test_a_failed_rerun_keeps_the_finished_step_and_the_folder_as_it_was(pipeline_recipe: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """An edited step whose data is bad once deleted the finished step (model, checkpoints, run.json) before the
    data was read, and left the pipeline's recipe.yaml describing the failed run."""
    path, out = pipeline_recipe
    train(str(path), [])
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": null}\n')
    with pytest.raises(AlignkitError, match=r"document 2\): 'text' must be text, got null"):
        train(str(path), [f"pipeline.steps.0.overrides=[data.datasets.0.path={bad}]"])
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before


def test_report_must_name_an_eval_step(pipeline_recipe: tuple[Path, Path]) -> None:
    path, out = pipeline_recipe
    with pytest.raises(AlignkitError, match="step first is stage pretrain; name an eval step") as err:
        train(str(path), ["pipeline.report=first"])
    assert err.value.where == "pipeline.report" and not out.exists()


def test_a_step_killed_midway_keeps_its_last_finished_run(pipeline_recipe: tuple[Path, Path], tmp_path: Path) -> None:
    """A pipeline killed during a step leaves the finished run in .<step>.previous and the attempt in <step>/; the
    next run must not delete the finished one before its new attempt succeeds."""
    path, out = pipeline_recipe
    train(str(path), [])
    finished = (out / "first" / "run.json").read_bytes()
    (out / "first").rename(out / ".first.previous")     # as run_step leaves it when killed mid-step
    (out / "first").mkdir()
    (out / "first" / "partial.txt").write_text("half a run\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": null}\n')
    with pytest.raises(AlignkitError, match="must be text, got null"):
        train(str(path), [f"pipeline.steps.0.overrides=[data.datasets.0.path={bad}]"])
    assert (out / "first" / "run.json").read_bytes() == finished and not (out / "first" / "partial.txt").exists()
    assert not (out / ".first.previous").exists()
