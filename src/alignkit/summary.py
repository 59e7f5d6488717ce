"""`alignkit report RUN_DIR`: reprint a finished run's summary, and the win-rate table where there is one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.modelcard import find_report
from alignkit.runio import COMPLETE_MARKER, RunDir


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metric_lines(metrics: dict[str, Any]) -> list[str]:
    """One aligned `name  value` line per scalar metric (lists and tables are left to the reports)."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    width = max((len(k) for k in scalars), default=0)
    return [f"  {k:<{width}}  {_fmt(v)}" for k, v in scalars.items()]


def step_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per pipeline step: name, stage, ran/skipped/failed, seconds, run folder."""
    rows = [(s.get("name", n), s.get("stage", "?"), s.get("status", "?"), _fmt(s.get("seconds") or "-"),
             s.get("run_dir", "")) for n, s in manifest.get("steps", {}).items()]
    header = ("step", "stage", "status", "seconds", "run folder")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    return ["  " + "  ".join(f"{c!s:<{w}}" for c, w in zip(r[:4], widths, strict=True)) + f"  {r[4]}" for r in [header, *rows]]


def format_summary(run_dir: str | Path) -> str:
    """The summary text of a run folder: stage, status, metrics, pipeline steps, win-rate table."""
    rd = RunDir(run_dir)
    manifest_path = rd.path / "manifest.json"
    if not rd.is_complete() and not manifest_path.is_file():
        raise AlignkitError(f"not a finished alignkit run (no {COMPLETE_MARKER})", where=str(rd.path))
    # A pipeline that stopped part-way has a manifest but no run.json: still worth reporting.
    summary = rd.read_summary() if rd.is_complete() else {"status": "incomplete", "stage": "pipeline"}
    finished = f" ({summary['finished_at']})" if summary.get("finished_at") else ""
    lines = [f"run:      {rd.path}", f"stage:    {summary.get('stage', '?')}",
             f"status:   {summary.get('status', '?')}{finished}"]
    if summary.get("model_kind"):  # what model/ holds: full weights or a LoRA adapter
        lines.append(f"model:    {rd.model_dir} ({summary['model_kind']})")
    if manifest_path.is_file():
        lines += ["steps:", *step_lines(json.loads(manifest_path.read_text()))]
    metrics = summary.get("metrics") or {}
    if metrics:
        lines += ["metrics:", *metric_lines(metrics)]
    report = find_report(rd)
    if report is not None:
        lines += ["", f"win rates ({report}):", "", report.read_text().rstrip()]
    return "\n".join(lines)


def print_summary(run_dir: str | Path) -> None:
    """Print a run's summary (the `alignkit report` command)."""
    print(format_summary(run_dir))
