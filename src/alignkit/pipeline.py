"""The pipeline stage: run stage recipes in order, each step feeding its outputs to the next.

A step's recipe values and overrides may name an earlier step's results:
    ${steps.NAME.output}   its model: merged/ if it wrote one, else model/, else its run folder
    ${steps.NAME.model}    NAME's run folder /model       ${steps.NAME.merged}   /merged
    ${steps.NAME.adapter}  /adapter                       ${steps.NAME.run_dir}  the run folder
Each step runs in output_dir/<name>. output_dir/manifest.json (rewritten atomically after every step)
records each step's inputs (recipe and input files/models with content hashes), resolved recipe,
outputs and metrics. A step is skipped when its resolved recipe and input hashes match the manifest
and its run folder is complete; `--force NAME` (a step or stage name) redoes it, and downstream
steps then rerun exactly when their inputs' content changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from alignkit.config.base import DATA_SUFFIXES
from alignkit.config.pipeline import PipelineStep
from alignkit.config.recipe import Recipe, load_yaml
from alignkit.config.steps import step_outputs, step_recipe
from alignkit.errors import AlignkitError
from alignkit.runio import RunDir, atomic_write_json, atomic_write_text
from alignkit.stages.lifecycle import run_recipe

log = logging.getLogger("alignkit.pipeline")
MANIFEST = "manifest.json"


# ---- content hashes -----------------------------------------------------------------------------------

def file_sha256(path: Path, cache: dict[str, str]) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) so multi-GB weights are read once."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if key not in cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        cache[key] = h.hexdigest()
    return cache[key]


def path_sha256(path: Path, cache: dict[str, str]) -> str:
    """SHA-256 of a file, or of a folder's relative file names and contents (hidden temp files skipped)."""
    if path.is_file():
        return file_sha256(path, cache)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{file_sha256(f, cache)}\n".encode())
    return h.hexdigest()


def input_paths(obj: Any, skip: set[str]) -> list[str]:
    """Local files and folders a resolved recipe reads (strings that look like paths and exist)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in skip:
                found += input_paths(v, skip)
    elif isinstance(obj, list):
        for v in obj:
            found += input_paths(v, skip)
    elif isinstance(obj, str) and ("/" in obj or obj.endswith(DATA_SUFFIXES)) and Path(obj).exists():
        found.append(obj)
    return sorted(set(found))


def fingerprint(recipe_dump: dict[str, Any], inputs: dict[str, str]) -> str:
    """One hash of everything a step's result depends on: its resolved recipe and its inputs' contents."""
    text = json.dumps({"recipe": recipe_dump, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the manifest ---------------------------------------------------------------------------------------

def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an earlier run of this pipeline, or an empty one."""
    if not path.is_file():
        return {"steps": {}, "hash_cache": {}}
    data = json.loads(path.read_text())
    data.setdefault("steps", {})
    data.setdefault("hash_cache", {})
    return data


def check_force(force: list[str], steps: list[PipelineStep], stages: dict[str, str]) -> set[str]:
    """Step names selected by --force (each entry names a step or a stage)."""
    chosen: set[str] = set()
    for name in force:
        match = {s.name for s in steps if name in (s.name, stages.get(s.name))}
        if not match:
            raise AlignkitError(f"names no step or stage of this pipeline "
                                f"(steps: {', '.join(s.name for s in steps)})", where=f"--force {name}")
        chosen |= match
    return chosen


# ---- running ----------------------------------------------------------------------------------------------

def check_pipeline_folder(out: Path) -> None:
    """A pipeline writes into a new or empty folder, or one holding an earlier pipeline run (its manifest.json):
    anything else (a finished SFT run, the user's files) would be mixed into or overwritten."""
    if out.exists() and not out.is_dir():
        raise AlignkitError("exists and is not a folder", where=f"output_dir: {out}")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        what = "a finished run of another stage" if RunDir(out).is_complete() else "files of something else"
        raise AlignkitError(f"holds {what} and no pipeline manifest.json; choose a new or empty output_dir",
                            where=f"output_dir: {out}")


def run_step(recipe: Recipe, step: PipelineStep, run_dir: Path, ours: bool) -> dict[str, Any]:
    """Run one step's recipe in a clean run folder (kept only when it asks to resume a checkpoint).

    An earlier run of the step (`ours`: the manifest names it) is moved aside, not deleted, until the step
    finishes: a step that fails (a bad data row, a crash) gets its finished predecessor back."""
    aside = run_dir.with_name(f".{run_dir.name}.previous")
    if run_dir.exists() and not recipe.train.resume_from_checkpoint:
        if not ours and any(run_dir.iterdir()):
            raise AlignkitError(f"the folder of step {step.name} holds files this pipeline did not write; move them "
                                "or choose another output_dir", where=f"pipeline step {step.name}: {run_dir}")
        if aside.exists():  # left by a pipeline killed during this step: the last finished run is the one aside
            if RunDir(run_dir).is_complete():
                shutil.rmtree(aside)  # killed after the new run finished: the one aside is superseded
            else:
                shutil.rmtree(run_dir)  # the killed attempt; the finished run goes back in place first
                aside.rename(run_dir)
        run_dir.rename(aside)  # stale checkpoints or caches (eval completions) must not leak into the new run
    try:
        metrics = run_recipe(recipe, step.recipe)
    except BaseException:
        if aside.exists():
            if run_dir.exists():
                shutil.rmtree(run_dir)
            aside.rename(run_dir)
        raise
    if aside.exists():
        shutil.rmtree(aside)
    return metrics


def print_report(section_report: str | None, steps: list[PipelineStep], stages: dict[str, str],
                 out: Path) -> Path | None:
    """Print the chosen (default: last) eval step's report.md; return its path."""
    name = section_report or next((s.name for s in reversed(steps) if stages.get(s.name) == "eval"), None)
    report = out / name / "report.md" if name else None
    if report is None or not report.is_file():
        return None
    print(f"\n== win rates ({name}: {report}) ==\n")
    print(report.read_text())
    return report


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str, force: list[str] | None = None) -> dict[str, Any]:
    """Run (or skip) every step in order, keep the manifest current, print the eval report at the end."""
    section, out = recipe.pipeline, run_dir.path
    declared = _declared_stages(section.steps)
    if section.report and declared.get(section.report, "eval") != "eval":
        raise AlignkitError(f"step {section.report} is stage {declared[section.report]}; name an eval step, whose "
                            "win-rate table is printed at the end", where="pipeline.report")
    check_pipeline_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    saved = {name: (out / name).read_text() for name in (MANIFEST, "recipe.yaml", "run.json")
             if (out / name).is_file()}  # restored when the first step that runs fails
    run_dir.save_recipe(recipe.dump())
    manifest = read_manifest(manifest_path)
    previous = manifest["steps"]
    manifest.update(pipeline=str(recipe_path), started_at=time.strftime("%Y-%m-%dT%H:%M:%S"), steps={})
    cache: dict[str, str] = manifest["hash_cache"]
    stages = {n: e.get("stage", "") for n, e in previous.items()}
    forced = check_force(force or [], section.steps, {**stages, **declared})
    outputs: dict[str, dict[str, str]] = {}
    ran, skipped = [], []
    for i, step in enumerate(section.steps):
        step_dir = out / step.name
        step_cfg = step_recipe(step, i, step_dir, outputs)
        stages[step.name] = step_cfg.stage
        dump = step_cfg.dump()
        inputs = {p: path_sha256(Path(p), cache) for p in input_paths(dump, skip={"output_dir"})}
        entry: dict[str, Any] = {
            "name": step.name, "stage": step_cfg.stage, "recipe": step.recipe,
            "recipe_sha256": file_sha256(Path(step.recipe), cache), "overrides": step.overrides,
            "inputs": inputs, "fingerprint": fingerprint(dump, inputs), "resolved_recipe": dump,
            "run_dir": str(step_dir),
        }
        old = previous.get(step.name, {})
        if (step.name not in forced and old.get("fingerprint") == entry["fingerprint"]
                and RunDir(step_dir).is_complete()):
            log.info("step %s (%s): inputs unchanged and run complete, skipped", step.name, step_cfg.stage)
            entry.update(status="skipped", metrics=RunDir(step_dir).read_summary().get("metrics", {}),
                         started_at=old.get("started_at"), finished_at=old.get("finished_at"),
                         seconds=old.get("seconds"))
            skipped.append(step.name)
        else:
            log.info("step %s (%s): running %s", step.name, step_cfg.stage, step.recipe)
            entry["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            start = time.time()
            (out / "run.json").unlink(missing_ok=True)  # the pipeline is unfinished until its last step is
            try:
                entry["metrics"] = run_step(step_cfg, step, step_dir, ours=step.name in previous)
            except BaseException as exc:
                if not ran:  # nothing changed yet: the folder stays exactly as it was
                    for name, text in saved.items():
                        atomic_write_text(out / name, text)
                    raise
                # Its finished predecessor, if any, is back in step_dir: that step keeps its earlier entry.
                failure = {"error": str(exc)[:500], "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                manifest["steps"][step.name] = ({**old, "failed": failure} if old
                                                else {**entry, "status": "failed", "error": failure["error"]})
                atomic_write_json(manifest_path, manifest)
                raise
            entry.update(status="ran", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                         seconds=round(time.time() - start, 1))
            ran.append(step.name)
        outputs[step.name] = step_outputs(step_dir)
        entry["outputs"] = outputs[step.name]
        manifest["steps"][step.name] = entry
        atomic_write_json(manifest_path, manifest)
    manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(manifest_path, manifest)
    report = print_report(section.report, section.steps, stages, out)
    metrics = {"steps_run": ran, "steps_skipped": skipped, "report": str(report) if report else None}
    run_dir.finish(metrics, stage="pipeline", recipe=str(recipe_path))
    return metrics


def _declared_stages(steps: list[PipelineStep]) -> dict[str, str]:
    """Each step's stage as its recipe file declares it (so --force accepts stage names before a first run)."""
    out = {}
    for step in steps:
        stage = load_yaml(step.recipe).get("stage")
        if isinstance(stage, str):
            out[step.name] = stage
    return out
