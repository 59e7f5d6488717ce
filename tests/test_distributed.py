"""Scale out and hold up: DDP loss parity with a single process, and a SIGKILLed run that resumes.

Both run the real CLI in subprocesses (`accelerate launch --multi_gpu --num_processes 2` is DDP over
gloo on CPU), on a tiny random Llama so each run takes seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from alignkit.cli import unsupported_launch
from tests.conftest import CHAT_ROWS, CPU_ENV, REPO, launch_command, write_jsonl

pytestmark = pytest.mark.slow

TRAIN = {"learning_rate": 3.0e-3, "max_steps": 6, "per_device_train_batch_size": 4, "lr_scheduler_type": "constant",
         "logging_steps": 1, "save_steps": 100, "report_to": []}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddpdata")
    prefs = root / "prefs.jsonl"
    with open(REPO / "data" / "world" / "preferences.jsonl") as src:
        prefs.write_text("".join(itertools.islice(src, 32)))
    return {"chat": write_jsonl(root / "chat.jsonl", CHAT_ROWS * 8), "prefs": prefs}


def stage_recipe(stage: str, model: Path, data: dict[str, Path]) -> dict[str, Any]:
    """A 6-step recipe of `stage` (reward_pairwise: reward with the pairwise loss); a global batch of 4 rows."""
    loss = "pairwise" if stage == "reward_pairwise" else "ranking"
    stage = stage.removesuffix("_pairwise")
    raw: dict[str, Any] = {"stage": stage, "seed": 0, "model": {"name_or_path": str(model), "max_length": 128},
                           "train": dict(TRAIN)}
    if stage == "sft":
        raw["data"] = {"datasets": [{"path": str(data["chat"]), "format": "messages"}]}
        raw["peft"] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}  # the adapter's init must match too
    else:
        raw["data"] = {"datasets": [{"path": str(data["prefs"]), "format": "ranking"}]}
    if stage == "reward":
        # The default group_by_length order: length groups are formed over the global batch.
        raw["reward"] = {"loss": loss, "center_rewards_coefficient": 0.01, "normalize": False}
    if stage == "dpo":
        raw["dpo"] = {"beta": 0.5}
    return raw


def cli(args: list[str], *, processes: int = 1, **popen: Any) -> subprocess.Popen:
    """Start the CLI (alignkit/run.py) in one process or under `accelerate launch` with N CPU processes."""
    return subprocess.Popen(launch_command(REPO / "alignkit" / "run.py", *args, processes=processes), cwd=REPO,
                            env={**os.environ, **CPU_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("stage", ["sft", "reward", "reward_pairwise", "dpo"])
def test_two_process_ddp_matches_one_process(stage, tiny_model_dir, data, tmp_path):
    recipe = tmp_path / f"{stage}.yaml"
    recipe.write_text(yaml.safe_dump(stage_recipe(stage, tiny_model_dir, data)))
    single_out = finish(cli([str(recipe), f"output_dir={tmp_path / 'one'}"]))
    # The same global batch of 4: 2 rows on each of 2 ranks.
    ddp = cli([str(recipe), f"output_dir={tmp_path / 'two'}", "train.per_device_train_batch_size=2"], processes=2)
    out = finish(ddp)

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _, _ in one] == [s for s, _, _ in two] == [1, 2, 3, 4, 5, 6]  # one row per step, not per rank
    for (step, loss_1, grad_1), (_, loss_2, grad_2) in zip(one, two, strict=True):
        assert loss_2 == pytest.approx(loss_1, rel=1e-4, abs=1e-5), f"{stage} step {step}"
        assert grad_2 == pytest.approx(grad_1, rel=1e-3, abs=1e-5), f"{stage} step {step} grad norm"
    assert sum(loss_1 != pytest.approx(one[0][1]) for _, loss_1, _ in one) > 0  # the runs did train
    # Rank 1 does not repeat rank 0's progress lines.
    logger = f"INFO alignkit.{stage.removesuffix('_pairwise')}:"
    assert out.count(logger) == single_out.count(logger) > 0
    assert (tmp_path / "two" / "run.json").is_file()


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_model_dir, data, tmp_path):
    raw = stage_recipe("sft", tiny_model_dir, data)
    raw["train"].update(max_steps=24, save_steps=4, lr_scheduler_type="cosine", num_train_epochs=1)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    finish(cli([str(recipe), f"output_dir={tmp_path / 'whole'}"]))

    crashed = tmp_path / "crashed"
    proc = cli([str(recipe), f"output_dir={crashed}"], start_new_session=True)
    deadline = time.time() + 240
    while not (crashed / "checkpoints" / "checkpoint-8" / "trainer_state.json").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint-8 within 4 minutes"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # A killed run does not look finished: no completion marker, no final model.
    assert not (crashed / "run.json").exists() and not (crashed / "model").exists()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (crashed / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and max(checkpoints) < 24

    # Rerunning without asking to resume refuses (the folder holds a run), asking resumes.
    refused = cli([str(recipe), f"output_dir={crashed}"])
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "Traceback" not in out
    out = finish(cli([str(recipe), f"output_dir={crashed}", "train.resume_from_checkpoint=true"]))
    assert "resuming from" in out

    whole, resumed = losses(tmp_path / "whole"), losses(crashed)
    final = {r["global_step"] for r in (json.loads((d / "run.json").read_text())["metrics"] for d in
                                        (tmp_path / "whole", crashed))}
    assert final == {24}
    # The steps after the resume point repeat the uninterrupted run's losses.
    after = {s: (loss, grad) for s, loss, grad in resumed if s > max(checkpoints)}
    assert sorted(after) == list(range(max(checkpoints) + 1, 25))
    for step, loss, grad in whole:
        if step in after:
            assert after[step][0] == pytest.approx(loss, rel=1e-5), f"step {step}"
            assert after[step][1] == pytest.approx(grad, rel=1e-4), f"step {step} grad norm"
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "model" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-5, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA these launches run as asked")
@pytest.mark.parametrize("config, flags, unsupported", [
    ("fsdp.yaml", ["--num_processes", "2"], "FSDP needs CUDA GPUs"),
    ("ddp.yaml", ["--cpu"], "--cpu starts a single process"),
])
def test_launch_that_accelerate_would_silently_change_is_refused(config, flags, unsupported, tiny_model_dir, data,
                                                                  tmp_path):
    # On CPU accelerate runs FSDP as plain DDP, and --cpu as one process whatever num_processes says.
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump(stage_recipe("sft", tiny_model_dir, data)))
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(REPO / "recipes" / "accelerate" / config),
                           *flags, str(REPO / "alignkit" / "run.py"), str(recipe), f"output_dir={tmp_path / 'run'}"],
                          cwd=REPO, env={**os.environ, **CPU_ENV}, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("alignkit: error:")]
    assert errors and all(unsupported in line and "ddp.yaml" in line for line in errors), out[-2000:]
    assert f'File "{REPO / "src"}' not in out  # the launcher's own traceback only, none from alignkit
    assert not (tmp_path / "run").exists()  # stopped before the run folder or a model


def test_deepspeed_without_it_or_without_cuda_is_refused(monkeypatch):
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    import importlib.util

    real_find_spec = importlib.util.find_spec
    for installed in (False, True):
        def find_spec(name: str, *args: Any, installed: bool = installed) -> Any:
            if name == "deepspeed":
                return object() if installed else None
            return real_find_spec(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        reason = unsupported_launch(env, lambda: False)
        assert reason and ("not installed" in reason) != installed and "ddp.yaml" in reason
    assert unsupported_launch(env, lambda: True) is None  # installed, with GPUs: DeepSpeed runs as asked
    # The launches alignkit supports on CPU pass: torchrun's DDP (gloo) and one plain process.
    assert unsupported_launch({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "ACCELERATE_USE_CPU": "1"},
                              lambda: False) is None
    assert unsupported_launch({"ACCELERATE_USE_CPU": "1"}, lambda: False) is None
