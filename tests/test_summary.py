"""`alignkit report`: stage, status and metrics of a finished run; pipeline steps and the win-rate table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.runio import RunDir
from alignkit.summary import format_summary

REPORT = "| model A | model B | win rate |\n|---|---|---|\n| ppo | sft | 0.71 |\n"


def test_stage_run_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rd = RunDir(tmp_path / "dpo")
    rd.path.mkdir()
    rd.finish({"rewards/accuracies": 0.6875, "train_loss": 0.41234567, "global_step": 120}, stage="dpo")
    assert main(["report", str(rd.path)]) == 0
    out = capsys.readouterr().out
    assert "stage:    dpo" in out and "status:   complete" in out
    assert "rewards/accuracies  0.6875" in out and "0.4123" in out and "120" in out
    assert "win rates" not in out
    assert "model:" not in out  # no model/ recorded in run.json


def test_summary_states_what_model_holds(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "sft")
    (rd.model_dir).mkdir(parents=True)
    (rd.model_dir / "adapter_config.json").write_text("{}")
    rd.finish({"train_loss": 1.0}, stage="sft", **rd.model_record())
    assert f"model:    {rd.model_dir} (adapter)" in format_summary(rd.path).splitlines()


def test_pipeline_summary_prints_steps_and_win_rates(tmp_path: Path) -> None:
    pipe = RunDir(tmp_path / "pipe")
    (pipe.path / "eval").mkdir(parents=True)
    (pipe.path / "eval" / "report.md").write_text(REPORT)
    steps = {"sft": {"name": "sft", "stage": "sft", "status": "skipped", "seconds": 12.5,
                     "run_dir": str(pipe.path / "sft")},
             "eval": {"name": "eval", "stage": "eval", "status": "ran", "seconds": 3.0,
                      "run_dir": str(pipe.path / "eval")}}
    (pipe.path / "manifest.json").write_text(json.dumps({"steps": steps}))
    pipe.finish({"steps_run": ["eval"], "steps_skipped": ["sft"]}, stage="pipeline")
    text = format_summary(pipe.path)
    assert "stage:    pipeline" in text
    assert any(line.split()[:3] == ["sft", "sft", "skipped"] for line in text.splitlines())
    assert "| ppo | sft | 0.71 |" in text


def test_eval_run_shows_its_report(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "eval")
    rd.path.mkdir()
    (rd.path / "report.md").write_text(REPORT)
    rd.finish({"win_rate/ppo_vs_sft": 0.71}, stage="eval")
    assert "| ppo | sft | 0.71 |" in format_summary(rd.path)


def test_unfinished_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(AlignkitError, match="not a finished"):
        format_summary(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished" in capsys.readouterr().err
