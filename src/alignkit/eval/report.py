"""Win-rate reports: JSON (machines), Markdown (terminal, model card) and a self-contained HTML page.

    write_report(run_dir, report) -> {"json": Path, "markdown": Path, "html": Path}
    render_markdown(report) -> str          (the harness prints it)
    render_html(report) -> str              (tables + base64 PNG plots, inline CSS, no external URLs)

The report dict. Rates are fractions in [0, 1] (rendered as percent); intervals are 95% bootstrap
intervals; a number that is unknown is None (NaN is written as null).

    meta:     {judge: str, prompt_set: str, n_prompts: int,
               generation: {max_new_tokens, temperature, top_p, ...}, seeds: {name: int},
               date: str (ISO 8601), reference: str | None (the LC baseline), title: str (optional),
               warnings: [str] (optional, e.g. prompts cut to fit a model's context)}
    models:   [{name, path, prompting (optional: chat/fewshot/raw),
                mean_length, mean_length_ci: [low, high], eos_rate,
                judge_score: float | None      (mean absolute score where the judge gives one, e.g. the oracle),
                reward_mean: float | None, reward_ci: [low, high] | None,
                kl_to_ref: float | None,
                distinct_1, distinct_2, sample_entropy (nats),
                truncated_prompts: int (prompts cut from the left to fit the context), context: int | None }]
    pairs:    [stats.pair_summary rows: {model_a, model_b, n, wins, ties, losses, win_rate, ci_low, ci_high}
               + optional lc_win_rate, lc_ci_low, lc_ci_high (stats.length_controlled_win_rate)]
    ratings:  [stats.bradley_terry rows: {model, rating, ci_low, ci_high, n}], best first
    kl_curve (optional):        [{checkpoint, kl, win_rate, ci_low, ci_high}]
                                judge win rate vs KL for PPO checkpoints (Gao et al. 2022 over-optimisation)
    training_curves (optional): {run_name: {metric_name: [(step, value), ...]}}
                                e.g. {"ppo": {"objective/scores": [...], "objective/kl": [...]}}
    breakdown (optional):       {by: column, rows: [{group, + a pairs row}]}  each pair's win rate per value of
                                the prompts' column (eval.breakdown_by), intervals within the group

Markdown and HTML render the same tables (built once by `report_tables`); the HTML tables carry the
ids winrate-table, ratings-table, models-table, kl-table and breakdown-table, and the plots the ids plot-winrate,
plot-ratings, plot-kl, plot-breakdown and plot-training.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.eval import report_plots
from alignkit.eval.report_plots import num
from alignkit.runio import atomic_write_json, atomic_write_text, redact

REQUIRED = ("meta", "models", "pairs", "ratings")


@dataclass
class Table:
    """One report table: an HTML id, a title and rows of already formatted cells."""

    id: str
    title: str
    header: list[str]
    rows: list[list[str]]


def check_report(report: Mapping[str, Any]) -> None:
    """Raise AlignkitError when a required section is missing or has the wrong type."""
    for key in REQUIRED:
        if key not in report:
            raise AlignkitError(f"missing section {key!r} (needs {', '.join(REQUIRED)})", where="report")
    if not isinstance(report["meta"], Mapping):
        raise AlignkitError("must be a mapping", where="report.meta")
    for key in ("models", "pairs", "ratings", "kl_curve"):
        if report.get(key) is not None and not isinstance(report[key], Sequence):
            raise AlignkitError("must be a list of rows", where=f"report.{key}")


def _fmt(value: Any, spec: str = ".3f") -> str:
    """A number formatted by `spec`, or an em dash when unknown."""
    v = num(value) if not isinstance(value, str) else math.nan
    return "—" if math.isnan(v) else format(v, spec)


def _pct(value: Any) -> str:
    return "—" if math.isnan(num(value)) else f"{100 * num(value):.1f}%"


def _rate_ci(row: Mapping[str, Any], key: str, low: str, high: str) -> str:
    """'67.5% [61.0, 73.8]' (percent), or the rate alone when the interval is unknown."""
    if row.get(key) is None or math.isnan(num(row.get(key))):
        return "—"
    lo, hi = num(row.get(low)), num(row.get(high))
    ci = "" if math.isnan(lo) or math.isnan(hi) else f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{_pct(row[key])}{ci}"


def _value_ci(value: Any, ci: Sequence[Any] | None, spec: str) -> str:
    """'12.3 [11.0, 13.5]', or the value alone when the interval is unknown."""
    if ci is None or len(ci) != 2 or any(math.isnan(num(c)) for c in ci):
        return _fmt(value, spec)
    return f"{_fmt(value, spec)} [{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]"


def report_tables(report: Mapping[str, Any]) -> list[Table]:
    """The report's tables as formatted cells (shared by the Markdown and HTML renderers)."""
    pairs = [[f"{p['model_a']} vs {p['model_b']}", f"{p['wins']} / {p['ties']} / {p['losses']}",
              _rate_ci(p, "win_rate", "ci_low", "ci_high"), _rate_ci(p, "lc_win_rate", "lc_ci_low", "lc_ci_high")]
             for p in report.get("pairs") or []]
    ratings = [[str(k + 1), str(r["model"]), _fmt(r["rating"], ".0f"),
                f"[{_fmt(r.get('ci_low'), '.0f')}, {_fmt(r.get('ci_high'), '.0f')}]", str(r.get("n", "—"))]
               for k, r in enumerate(report.get("ratings") or [])]
    models = [[str(m["name"]), _value_ci(m.get("mean_length"), m.get("mean_length_ci"), ".1f"),
               _pct(m.get("eos_rate")), _fmt(m.get("judge_score")), _pct(m.get("hallucination_rate")),
               _value_ci(m.get("reward_mean"), m.get("reward_ci"), ".3f"), _fmt(m.get("kl_to_ref")),
               _fmt(m.get("distinct_1")), _fmt(m.get("distinct_2")), _fmt(m.get("sample_entropy")),
               str(m.get("path") or "—")]
              for m in report.get("models") or []]
    tables = [
        Table("winrate-table", "Win rates", ["pair", "W / T / L", "win rate [95% CI]", "LC win rate [95% CI]"], pairs),
        Table("ratings-table", "Ratings (Bradley-Terry, Elo scale)", ["rank", "model", "rating", "95% CI", "n"],
              ratings),
        Table("models-table", "Models", ["model", "mean length [95% CI]", "EOS rate", "judge score", "hallucination",
                                         "reward [95% CI]", "KL to ref", "distinct-1", "distinct-2",
                                         "sample entropy (nats)", "path"], models),
    ]
    if report.get("breakdown"):
        by = report["breakdown"]
        rows = [[str(r["group"]), f"{r['model_a']} vs {r['model_b']}", f"{r['wins']} / {r['ties']} / {r['losses']}",
                 _rate_ci(r, "win_rate", "ci_low", "ci_high")] for r in by.get("rows") or []]
        tables.append(Table("breakdown-table", f"Win rates by {by.get('by')}",
                            [str(by.get("by")), "pair", "W / T / L", "win rate [95% CI]"], rows))
    if report.get("kl_curve"):
        kl = [[str(r["checkpoint"]), _fmt(r["kl"]), _rate_ci(r, "win_rate", "ci_low", "ci_high")]
              for r in report["kl_curve"]]
        tables.append(Table("kl-table", "Win rate vs KL (PPO checkpoints)", ["checkpoint", "KL", "win rate [95% CI]"],
                            kl))
    return tables


def _meta_lines(meta: Mapping[str, Any]) -> list[str]:
    """'key: value' lines describing how the report was made."""
    lines = [f"judge: {meta.get('judge', '—')}",
             f"prompts: {meta.get('prompt_set', '—')} ({meta.get('n_prompts', '—')} prompts)"]
    if meta.get("reference"):
        lines.append(f"reference (LC win rate): {meta['reference']}")
    for key in ("generation", "seeds"):
        if meta.get(key):
            lines.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in meta[key].items()))
    if meta.get("date"):
        lines.append(f"date: {meta['date']}")
    lines += [f"warning: {w}" for w in meta.get("warnings") or []]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: how it was made, then the win-rate, ratings and models tables."""
    meta = report.get("meta") or {}
    out = [f"# {meta.get('title', 'Win-rate report')}", ""]
    out += [f"- {line}" for line in _meta_lines(meta)] + [""]
    out.append("Win rates count ties as half; intervals are 95% bootstrap percentile intervals.")
    for table in report_tables(report):
        out += ["", f"## {table.title}", "", "| " + " | ".join(table.header) + " |",
                "|" + "---|" * len(table.header)]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    return "\n".join(out) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f0f2f5; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #eee; }
.meta { color: #555; font-size: 14px; }
"""

# (id, alt text, plot function, report section)
PLOTS: list[tuple[str, str, Callable[[Any], bytes | None], str]] = [
    ("plot-winrate", "Win rate per model pair with 95% bootstrap intervals; dashed line at 50%",
     report_plots.winrate_plot, "pairs"),
    ("plot-ratings", "Bradley-Terry rating ladder (Elo scale) with 95% bootstrap intervals",
     report_plots.ratings_plot, "ratings"),
    ("plot-kl", "Judge win rate against KL to the reference for PPO checkpoints", report_plots.kl_plot, "kl_curve"),
    ("plot-breakdown", "Win rate per group of prompts (eval.breakdown_by) with 95% bootstrap intervals",
     report_plots.breakdown_plot, "breakdown"),
    ("plot-training", "Training curves, one panel per metric", report_plots.training_plots, "training_curves"),
]


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return (f"<h2>{html.escape(table.title)}</h2>\n<table id=\"{table.id}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page: the tables and the plots as embedded PNGs."""
    meta = report.get("meta") or {}
    title = html.escape(str(meta.get("title", "Win-rate report")))
    parts = [f"<h1>{title}</h1>", "<ul class=\"meta\">"]
    parts += [f"<li>{html.escape(line)}</li>" for line in _meta_lines(meta)]
    parts += ["</ul>", "<p>Win rates count ties as half; intervals are 95% bootstrap percentile intervals.</p>"]
    parts += [_html_table(t) for t in report_tables(report)]
    for plot_id, alt, plot, section in PLOTS:
        png = plot(report[section]) if report.get(section) else None
        if png:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img id=\"{plot_id}\" alt=\"{html.escape(alt)}\" "
                         f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(alt)}</figcaption></figure>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(run_dir: str | Path, report: Mapping[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `run_dir`, each atomically; return their paths."""
    check_report(report)
    report = redact(dict(report))  # generation settings may carry an endpoint's key; none reaches disk
    run_dir = Path(run_dir)
    return {
        "json": atomic_write_json(run_dir / "report.json", report),
        "markdown": atomic_write_text(run_dir / "report.md", render_markdown(report)),
        "html": atomic_write_text(run_dir / "report.html", render_html(report)),
    }
