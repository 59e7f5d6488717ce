"""The command line: every shipped recipe validates; user errors are one line, exit 2, no traceback."""

import subprocess
import sys

RUN = [sys.executable, "-m", "alignkit.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=120)


def test_every_shipped_recipe_validates():
    done = cli("validate", "recipes/")
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 invalid" in done.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: sft\noutput_dir: x\nmodel: {name_or_path: data/models/tiny-base}\n"
                   "data: {datasets: [{path: data/world/sft.jsonl}]}\ntrain: {learnin_rate: 1}\n")
    done = cli("train", str(bad))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"alignkit: error: {bad}: train.learnin_rate: unknown key; did you mean learning_rate?")


def test_run_py_entry_point_takes_overrides(tmp_path):
    done = subprocess.run([sys.executable, "alignkit/run.py", "recipes/pretrain_tiny.yaml", "train.bogus=1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "train.bogus: unknown key" in done.stderr

