"""The command line: every shipped recipe validates; user errors are one line, exit 2, no traceback.

`alignkit.cli.main` runs in this process (conftest's run_cli); tests/test_bad_input.py runs a few
cases as real processes, and the run.py script entry point below is one too.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_recipe_validates(run_cli):
    done = run_cli(["validate", "recipes/"])
    assert done.code == 0, done.out + done.err
    assert " 0 invalid" in done.out


def test_user_error_is_one_line_exit_2(tmp_path, run_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: sft\noutput_dir: x\nmodel: {name_or_path: data/models/tiny-base}\n"
                   "data: {datasets: [{path: data/world/sft.jsonl}]}\ntrain: {learnin_rate: 1}\n")
    done = run_cli(["train", str(bad)])
    assert done.code == 2
    assert "Traceback" not in done.err
    assert done.err.strip().splitlines()[-1] == (
        f"alignkit: error: {bad}: train.learnin_rate: unknown key; did you mean learning_rate?")


def test_run_py_entry_point_takes_overrides(tmp_path):
    done = subprocess.run([sys.executable, "alignkit/run.py", "recipes/pretrain_tiny.yaml", "train.bogus=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "train.bogus: unknown key" in done.stderr


def _main_in_a_fresh_process(args: list[str], modules: list[str]) -> subprocess.CompletedProcess:
    """`alignkit.cli.main(args)` in a new interpreter; stdout: "exit <code>" and, per module, whether it loaded."""
    code = ("import sys\nfrom alignkit.cli import main\n"
            f"try:\n    code = main({args!r})\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            f"print('exit', code, *[m in sys.modules for m in {modules!r}])\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def test_a_recipe_typo_is_reported_before_torch_loads(tmp_path):
    """`alignkit train` validates the recipe before importing the lifecycle (torch, ~10 s): typos answer at once."""
    done = _main_in_a_fresh_process(["train", "recipes/pretrain_tiny.yaml", "train.bogus=1"], ["torch"])
    assert "train.bogus: unknown key" in done.stderr
    assert done.stdout.strip() == "exit 2 False"


def test_a_push_refusal_is_reported_before_torch_loads(tmp_path):
    """`alignkit push` checks the run folder and repo id before torch and transformers load."""
    done = _main_in_a_fresh_process(["push", str(tmp_path), "--repo-id", "someone/tiny"], ["torch", "transformers"])
    assert "not a finished alignkit run" in done.stderr
    assert done.stdout.strip() == "exit 2 False False"


def test_validate_names_the_file_and_the_pipeline_step(tmp_path, run_cli):
    """A pipeline step naming a missing recipe said only 'recipes/dpoo.yaml: recipe file not found'."""
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(f"stage: pipeline\noutput_dir: {tmp_path / 'out'}\npipeline:\n  steps:\n"
                    "    - {name: sft, recipe: recipes/sft_lora.yaml}\n    - {name: dpo, recipe: recipes/dpoo.yaml}\n")
    done = run_cli(["validate", str(pipe), "recipes/sft_lora.yaml"])
    assert done.code == 2
    assert f"FAIL  {pipe}: pipeline.steps.1: recipes/dpoo.yaml: recipe file not found" in done.out
    assert "1 valid, 1 invalid" in done.out
