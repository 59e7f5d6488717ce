"""The model card (README.md) of a run: Hub YAML metadata, the redacted recipe, metrics and win rates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from alignkit.config.base import looks_local
from alignkit.config.registry import REGISTRY
from alignkit.runio import BIAS_KEY, LM_FOLDER, NORMALIZATION_FILE, SCALE_KEY, RunDir, redact


def stage_tags(stage: str) -> list[str]:
    """The Hub tags of a stage (from the stage registry; none for an unknown name)."""
    spec = REGISTRY.get(stage)
    return list(spec.tags) if spec else []


def stage_text(stage: str) -> str:
    """How the model card names what a stage did."""
    spec = REGISTRY.get(stage)
    return spec.description if spec else stage


def read_recipe(run_dir: RunDir) -> dict[str, Any]:
    """The run's resolved recipe as saved (already redacted) in recipe.yaml."""
    path = run_dir.path / "recipe.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def find_report(run_dir: RunDir) -> Path | None:
    """The win-rate report.md of this eval run, or of the eval step of the pipeline this run belongs to."""
    own = run_dir.path / "report.md"
    if own.is_file():
        return own
    for manifest in (run_dir.path / "manifest.json", run_dir.path.parent / "manifest.json"):
        if manifest.is_file():
            steps = json.loads(manifest.read_text()).get("steps", {}).values()
            for step in reversed(list(steps)):
                report = Path(step.get("run_dir", "")) / "report.md"
                if step.get("stage") == "eval" and report.is_file():
                    return report
    return None


def metadata(recipe: dict[str, Any], stage: str, is_adapter: bool, license_id: str) -> dict[str, Any]:
    """Hub card metadata: base_model and datasets only when they are Hub ids (local paths mean nothing there)."""
    model = (recipe.get("model") or {}).get("name_or_path")
    datasets = [d["path"] for d in (recipe.get("data") or {}).get("datasets", []) if not looks_local(d["path"])]
    meta: dict[str, Any] = {
        "library_name": "peft" if is_adapter else "transformers",
        "license": license_id,
        "tags": ["alignkit", stage, *stage_tags(stage), *(["lora"] if is_adapter else [])],
        "pipeline_tag": "text-classification" if stage == "reward" else "text-generation",
    }
    if model and not looks_local(model):
        meta["base_model"] = model
    if datasets:
        meta["datasets"] = datasets
    return meta


def metrics_table(metrics: dict[str, Any]) -> str:
    """Scalar metrics of run.json as a Markdown table."""
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "_no metrics recorded_"


def subset_table(metrics: dict[str, Any]) -> str:
    """Held-out reward accuracy per subset (reward.accuracy_by) as a Markdown table, or "" without one."""
    subsets = metrics.get("heldout_accuracy_by")
    if not isinstance(subsets, dict) or not subsets:
        return ""
    rows = [f"| {k} | {v['accuracy']:.1%} | {v['pairs']} |" for k, v in subsets.items()]
    return "\n".join(["\n## Held-out accuracy by subset\n", "| subset | accuracy | pairs |", "|---|---|---|", *rows])


def scoring_note(stage: str, metrics: dict[str, Any]) -> str:
    """How a reward model's score is read: its normalisation, and the LM term that plain transformers leaves out."""
    if stage != "reward":
        return ""
    note = ("\n## Scoring\n\nThe score is the classification head's output at the last token, shifted by "
            f"`{BIAS_KEY}` and divided by `{SCALE_KEY}` (config.json, or {NORMALIZATION_FILE} "
            "beside an adapter); with reward.normalize the policy's own samples score about 0.")
    weight = metrics.get("lm_surprise_weight") or 0.0
    if weight:
        floor = metrics.get("lm_surprise_floor")
        note += (f" It adds {weight:g} x the surprise of the language model in `{LM_FOLDER}/` at the response's least likely "
                 "token, min_t (log p(y_t) - max_v log p(v))" + (f", clamped at {floor:g} nats" if floor else "") + ". Loaded with plain transformers the model gives the "
                 "head alone; `alignkit.reward_model.RewardScorer.from_pretrained(path).score(prompts, responses)` "
                 "gives the whole score.")
    return note


def render_card(run_dir: str | Path, repo_id: str, is_adapter: bool = False, license_id: str = "apache-2.0") -> str:
    """README.md for the Hub: YAML front matter + description, recipe (redacted), metrics, win rates."""
    rd = RunDir(run_dir)
    summary = rd.read_summary()
    recipe = redact(read_recipe(rd))
    stage = summary.get("stage") or recipe.get("stage", "")
    model = (recipe.get("model") or {}).get("name_or_path", "")
    data = [d.get("path") for d in (recipe.get("data") or {}).get("datasets", [])]
    head = yaml.safe_dump(metadata(recipe, stage, is_adapter, license_id), sort_keys=False).strip()
    parts = [
        f"---\n{head}\n---\n",
        f"# {repo_id.split('/')[-1]}\n",
        f"Trained with [alignkit](https://github.com/alignkit/alignkit): {stage_text(stage)}"
        + (f" of `{model}`" if model else "") + (f" on {', '.join(f'`{d}`' for d in data)}" if data else "") + ".",
        "This repository holds a PEFT LoRA adapter; load it on its base model." if is_adapter else "",
        f"\n## Training metrics\n\nFinished {summary.get('finished_at', '?')}.\n\n{metrics_table(summary.get('metrics', {}))}",
        subset_table(summary.get("metrics", {})),
        scoring_note(stage, summary.get("metrics", {})),
    ]
    report = find_report(rd)
    if report is not None:
        parts.append(f"\n## Evaluation: win rates\n\n{report.read_text().strip()}")
    recipe_text = yaml.safe_dump(recipe, sort_keys=False).strip()
    parts.append(f"\n## Recipe\n\nThe fully resolved recipe (secrets redacted):\n\n```yaml\n{recipe_text}\n```\n")
    return "\n".join(p for p in parts if p) + "\n"
