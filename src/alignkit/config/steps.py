"""References between pipeline steps: ${steps.NAME.KIND} in a step's recipe resolves to an earlier step's output.

Used by the pipeline stage to run its steps and by the preflight to check them before anything runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alignkit.config.pipeline import PipelineStep
from alignkit.config.recipe import Recipe, apply_overrides, load_yaml, validate_recipe
from alignkit.errors import AlignkitError
from alignkit.runio import RunDir

REF = re.compile(r"\$\{steps\.([A-Za-z0-9_-]+)\.([a-z_]+)\}")
OUTPUT_KINDS = ("output", "model", "merged", "adapter", "run_dir")


def step_outputs(run_dir: Path) -> dict[str, str]:
    """What later steps may reference: the step's model (merged, else model/, else the run folder) and folders."""
    rd = RunDir(run_dir)
    merged, model = rd.merged_dir, rd.model_dir
    output = merged if merged.is_dir() else model if model.is_dir() else rd.path
    return {"output": str(output), "model": str(model), "merged": str(merged),
            "adapter": str(rd.adapter_dir), "run_dir": str(rd.path)}


def resolve_refs(obj: Any, outputs: dict[str, dict[str, str]], where: str) -> Any:
    """Replace every ${steps.NAME.KIND} in a raw recipe with an earlier step's path."""
    if isinstance(obj, dict):
        return {k: resolve_refs(v, outputs, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve_refs(v, outputs, f"{where}.{i}") for i, v in enumerate(obj)]
    if not isinstance(obj, str):
        return obj

    def sub(match: re.Match) -> str:
        name, kind = match.groups()
        if name not in outputs:
            raise AlignkitError(f"${{steps.{name}.{kind}}} names no earlier step (earlier: "
                                f"{', '.join(outputs) or 'none'})", where=where)
        if kind not in OUTPUT_KINDS:
            raise AlignkitError(f"unknown step output '{kind}' (one of {', '.join(OUTPUT_KINDS)})", where=where)
        return outputs[name][kind]

    return REF.sub(sub, obj)


def step_recipe(step: PipelineStep, index: int, run_dir: Path, outputs: dict[str, dict[str, str]]) -> Recipe:
    """Load a step's recipe, apply its overrides, point it at its run folder, resolve references, validate."""
    where = f"pipeline.steps.{index}"
    raw = load_yaml(step.recipe)
    # The pipeline owns the step folders: a changed step overwrites its own earlier run.
    raw = apply_overrides(raw, [*step.overrides, f"output_dir={run_dir}", "train.overwrite_output_dir=true"])
    raw = resolve_refs(raw, outputs, f"{where} ({step.recipe})")
    recipe = validate_recipe(raw, source=f"{step.recipe} (pipeline step {step.name})")
    if recipe.stage == "pipeline":
        raise AlignkitError("a pipeline step cannot itself be a pipeline", where=f"{where}.recipe")
    return recipe
