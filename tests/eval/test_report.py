"""Reports: JSON round trip, Markdown tables, and the HTML page as headless Chromium renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from alignkit.errors import AlignkitError
from alignkit.eval.report import render_html, render_markdown, write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def synthetic_report() -> dict:
    """A report as the harness would build it: three models, PPO checkpoints, training curves."""
    return {
        "meta": {"judge": "oracle", "prompt_set": "eval/world_prompts.jsonl", "n_prompts": 200,
                 "generation": {"max_new_tokens": 64, "temperature": 0.7, "top_p": 1.0},
                 "seeds": {"generation": 0, "bootstrap": 0}, "date": "2026-11-23T08:00:00", "reference": "base"},
        "models": [
            {"name": "ppo", "path": "runs/ppo/model", "prompting": "chat", "mean_length": 31.2,
             "mean_length_ci": [29.8, 32.7], "eos_rate": 0.98, "judge_score": 0.81, "reward_mean": 1.42,
             "reward_ci": [1.30, 1.55], "kl_to_ref": 4.1, "distinct_1": 0.21, "distinct_2": 0.44,
             "sample_entropy": 0.62},
            {"name": "sft", "path": "runs/sft/model", "prompting": "chat", "mean_length": 28.0,
             "mean_length_ci": [26.9, 29.1], "eos_rate": 0.95, "judge_score": 0.66, "reward_mean": 0.35,
             "reward_ci": [0.25, 0.46], "kl_to_ref": 0.0, "distinct_1": 0.25, "distinct_2": 0.52,
             "sample_entropy": 1.10},
            {"name": "base", "path": "data/models/tiny-base", "prompting": "fewshot", "mean_length": 45.5,
             "mean_length_ci": [41.0, 50.2], "eos_rate": 0.40, "judge_score": 0.22, "reward_mean": None,
             "reward_ci": None, "kl_to_ref": None, "distinct_1": 0.33, "distinct_2": 0.71,
             "sample_entropy": 1.35},
        ],
        "pairs": [
            {"model_a": "ppo", "model_b": "sft", "n": 200, "wins": 120, "ties": 30, "losses": 50,
             "win_rate": 0.675, "ci_low": 0.61, "ci_high": 0.738},
            {"model_a": "sft", "model_b": "base", "n": 200, "wins": 150, "ties": 20, "losses": 30,
             "win_rate": 0.8, "ci_low": 0.75, "ci_high": 0.85, "lc_win_rate": 0.83, "lc_ci_low": 0.78,
             "lc_ci_high": 0.88},
        ],
        "ratings": [
            {"model": "ppo", "rating": 1180.4, "ci_low": 1150.2, "ci_high": 1210.9, "n": 400},
            {"model": "sft", "rating": 1040.0, "ci_low": 1015.5, "ci_high": 1066.1, "n": 400},
            {"model": "base", "rating": 779.6, "ci_low": 740.0, "ci_high": 812.3, "n": 400},
        ],
        "breakdown": {"by": "meta.task", "rows": [
            {"group": "fact", "model_a": "ppo", "model_b": "sft", "n": 120, "wins": 80, "ties": 10, "losses": 30,
             "win_rate": 0.708, "ci_low": 0.63, "ci_high": 0.78},
            {"group": "list", "model_a": "ppo", "model_b": "sft", "n": 80, "wins": 40, "ties": 20, "losses": 20,
             "win_rate": 0.625, "ci_low": 0.53, "ci_high": 0.72},
            {"group": "fact", "model_a": "sft", "model_b": "base", "n": 120, "wins": 90, "ties": 10, "losses": 20,
             "win_rate": 0.792, "ci_low": 0.72, "ci_high": 0.86},
            {"group": "list", "model_a": "sft", "model_b": "base", "n": 80, "wins": 60, "ties": 10, "losses": 10,
             "win_rate": 0.812, "ci_low": 0.73, "ci_high": 0.89},
        ]},
        "kl_curve": [
            {"checkpoint": "checkpoint-100", "kl": 1.0, "win_rate": 0.58, "ci_low": 0.52, "ci_high": 0.64},
            {"checkpoint": "checkpoint-200", "kl": 4.1, "win_rate": 0.675, "ci_low": 0.61, "ci_high": 0.738},
            {"checkpoint": "checkpoint-300", "kl": 12.0, "win_rate": 0.55, "ci_low": 0.48, "ci_high": 0.62},
        ],
        "training_curves": {"ppo": {
            "objective/scores": [(s, 0.1 * s ** 0.5) for s in range(0, 300, 20)],
            "objective/kl": [(s, 0.015 * s) for s in range(0, 300, 20)],
        }},
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    report = synthetic_report()
    return report, write_report(tmp_path_factory.mktemp("eval_run"), report)


def test_writes_three_files_and_no_temp_files(written):
    _, paths = written
    assert set(paths) == {"json", "markdown", "html"}
    folder = paths["json"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json", "report.md"]


def test_json_round_trips(written):
    report, paths = written
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(report))


def test_json_writes_nan_as_null(tmp_path):
    report = synthetic_report()
    report["pairs"][0]["ci_low"] = float("nan")
    paths = write_report(tmp_path, report)
    assert json.loads(paths["json"].read_text())["pairs"][0]["ci_low"] is None
    assert "67.5%" in paths["markdown"].read_text()  # the rate is still shown, without an interval


def test_markdown_has_the_table_rows(written):
    report, paths = written
    md = paths["markdown"].read_text()
    assert md == render_markdown(report)
    assert "| pair | W / T / L | win rate [95% CI] | LC win rate [95% CI] |" in md
    assert "| ppo vs sft | 120 / 30 / 50 | 67.5% [61.0, 73.8] | — |" in md
    assert "| sft vs base | 150 / 20 / 30 | 80.0% [75.0, 85.0] | 83.0% [78.0, 88.0] |" in md
    assert "| 1 | ppo | 1180 | [1150, 1211] | 400 |" in md
    assert re.search(r"^\| base \| 45\.5 \[41\.0, 50\.2\] \| 40\.0% \| 0\.220 \| — \| — \|", md, re.MULTILINE)
    assert "| checkpoint-300 | 12.000 | 55.0% [48.0, 62.0] |" in md
    assert "## Win rates by meta.task" in md and "| list | ppo vs sft | 40 / 20 / 20 | 62.5% [53.0, 72.0] |" in md
    assert "judge: oracle" in md


def test_html_is_self_contained(written):
    html = written[1]["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html
    assert len(re.findall(r'<img id="plot-[a-z]+" alt="[^"]+" src="data:image/png;base64,', html)) == 5


def test_missing_section_is_a_user_error(tmp_path):
    report = synthetic_report()
    del report["ratings"]
    with pytest.raises(AlignkitError, match="ratings"):
        write_report(tmp_path, report)


def test_optional_sections_may_be_absent():
    report = synthetic_report()
    del report["kl_curve"], report["training_curves"], report["breakdown"]
    html = render_html(report)
    assert 'id="kl-table"' not in html and "plot-kl" not in html
    assert 'id="breakdown-table"' not in html and "plot-breakdown" not in html
    assert html.count("<img ") == 2


def chromium() -> str:
    """The headless browser, or a clear failure (a skip when ALIGNKIT_SKIP_BROWSER=1)."""
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found:
        return found
    if os.environ.get("ALIGNKIT_SKIP_BROWSER") == "1":
        pytest.skip("no chromium and ALIGNKIT_SKIP_BROWSER=1")
    pytest.fail("headless chromium is needed to check report.html: `apt-get install -y chromium` "
                "(or set ALIGNKIT_SKIP_BROWSER=1 to skip this check)")


def run_browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120, check=True)


def test_chromium_renders_tables_and_plots(written, tmp_path):
    page = written[1]["html"].resolve().as_uri()
    dom = run_browser(tmp_path, "--dump-dom", page).stdout
    for table in ("winrate-table", "ratings-table", "models-table", "kl-table", "breakdown-table"):
        assert f'<table id="{table}">' in dom
    assert "<td>ppo vs sft</td>" in dom
    assert len(re.findall(r"<img [^>]*alt=\"[^\"]+\"", dom)) == 5

    shot = tmp_path / "report.png"
    run_browser(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", page)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert float(np.std(pixels[..., :3])) > 0.05  # text, tables and plots, not a blank page
