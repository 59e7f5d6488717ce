"""Training through trainer_utils: checkpoints that appear whole or not at all, and resume that always finishes.

The CLI runs in this process (single process, tiny random Llama with a LoRA adapter), so each run takes
seconds; faults are injected where transformers writes a checkpoint or alignkit writes the final model.
"""

from __future__ import annotations

import errno
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import Trainer

from alignkit import sft
from alignkit.cli import main
from tests.conftest import CHAT_ROWS, write_jsonl

ADAPTER = "adapter_model.safetensors"


@pytest.fixture
def recipe(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """An SFT LoRA recipe over 16 rows, 4 per step: 4 steps an epoch, so step 6 ends mid-epoch."""
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS * 4)
    raw = {"stage": "sft", "seed": 0, "output_dir": str(tmp_path / "run"),
           "model": {"name_or_path": str(tiny_model_dir), "max_length": 128},
           "data": {"datasets": [{"path": str(data), "format": "messages"}]},
           "peft": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
           "train": {"learning_rate": 3e-3, "max_steps": 6, "per_device_train_batch_size": 4,
                     "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 3, "report_to": []}}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ADAPTER))


def logged_steps(run: Path) -> list[int]:
    return [row["step"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


def test_crash_after_the_last_checkpoint_then_resume_finishes_the_run(recipe, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def killed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed in the final save")

    monkeypatch.setattr(sft, "save_final_model", killed)
    with pytest.raises(RuntimeError, match="killed"):
        main(["train", str(recipe)])
    monkeypatch.undo()
    last = run / "checkpoints" / "checkpoint-6"
    assert (last / ADAPTER).is_file() and not (run / "model").exists() and not (run / "run.json").exists()

    assert main(["train", str(recipe)]) == 2  # a fresh start would overwrite the crashed run's progress
    capsys.readouterr()
    assert main(["train", str(recipe), "train.resume_from_checkpoint=true"]) == 0
    summary = json.loads((run / "run.json").read_text())
    assert summary["metrics"]["global_step"] == 6 and summary["metrics"]["resumed_from"] == str(last)
    # The saved model is the last checkpoint's: no stray 7th step (transformers trains one mid-epoch).
    assert not (run / "checkpoints" / "checkpoint-7").exists()
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6]
    saved, checkpointed = weights(run / "model"), weights(last)
    assert saved.keys() == checkpointed.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], checkpointed[name], rtol=0, atol=0, msg=name)
    assert any(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n)  # trained, not LoRA's zero init


def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(recipe, tmp_path, monkeypatch,
                                                                                    capsys):
    run = tmp_path / "run"
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def disk_full_at_step_6(self: Any, output_dir: str) -> None:
        if self.state.global_step == 6:  # the weights are written, the optimizer state does not fit
            (Path(output_dir) / "optimizer.pt").write_bytes(b"\0" * 64)
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "optimizer.pt"))
        save_optimizer(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_step_6)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    errors = re.findall(r"alignkit: error: [^\r\n]*", err)  # may follow tqdm's last redraw on its line
    assert len(errors) == 1 and "no space left on device" in errors[0] and "Traceback" not in err, err[-2000:]
    assert str(run / "checkpoints" / "checkpoint-6") in errors[0]
    monkeypatch.undo()
    # Only the complete checkpoint-3 is there: no checkpoint-6, no staging folder holding the partial one.
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-3"]
    assert (run / "checkpoints" / "checkpoint-3" / "optimizer.pt").is_file()

    assert main(["train", str(recipe), "train.resume_from_checkpoint=true"]) == 0
    summary = json.loads((run / "run.json").read_text())
    assert summary["metrics"]["global_step"] == 6 and summary["metrics"]["resumed_from"].endswith("checkpoint-3")
    assert (run / "checkpoints" / "checkpoint-6" / "optimizer.pt").stat().st_size > 64


def test_every_train_key_reaches_training_arguments_under_its_name_or_its_rename(tmp_path):
    import dataclasses

    from transformers import TrainingArguments

    from alignkit.config.base import TrainSection
    from alignkit.config.recipe import validate_recipe
    from alignkit.runio import RunDir
    from alignkit.trainer_utils import NOT_TRAINING_ARGUMENTS, training_arguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert set(TrainSection.model_fields) - NOT_TRAINING_ARGUMENTS <= fields
    train = {"learning_rate": 1e-3, "num_train_epochs": 2.0, "max_steps": 7, "per_device_train_batch_size": 3,
             "per_device_eval_batch_size": 5, "gradient_accumulation_steps": 2, "warmup_ratio": 0.1,
             "lr_scheduler_type": "linear", "weight_decay": 0.01, "max_grad_norm": 0.5, "optim": "adamw_torch",
             "logging_steps": 3, "eval_steps": 4, "save_steps": 6, "save_total_limit": None,
             "gradient_checkpointing": True, "report_to": [], "dataloader_num_workers": 1,
             "trainer_kwargs": {"logging_first_step": True}}
    recipe = validate_recipe({"stage": "sft", "seed": 3, "output_dir": str(tmp_path / "run"),
                              "model": {"name_or_path": "org/model"}, "data": {"datasets": [{"path": "org/data"}]},
                              "train": train})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = training_arguments(recipe, RunDir(tmp_path / "run"), has_eval=True)
    # recipe keys keep their familiar names without tripping transformers' renamed-argument warnings
    assert not [w for w in caught if "checkpointing" in str(w.message)]
    for key, value in train.items():
        if key not in NOT_TRAINING_ARGUMENTS:
            assert getattr(args, key) == value, key
    assert args.warmup_steps == 0.1 and args.report_to == [] and args.logging_first_step is True
    assert args.seed == args.data_seed == 3 and args.eval_strategy == "steps"
    assert args.output_dir == str(tmp_path / "run" / "checkpoints") and not args.remove_unused_columns


def test_reset_peak_memory_starts_the_peak_afresh():
    """A pipeline step reports its own peak: after a reset the peak is back near the current footprint."""
    import os

    from alignkit.trainer_utils import peak_rss_mb, reset_peak_memory

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("no /proc/self/clear_refs here: the peak stays process-wide")
    big = bytearray(300 * 2**20)  # 300 MiB, touched
    big[::4096] = b"x" * len(big[::4096])
    high = peak_rss_mb()
    del big
    reset_peak_memory()
    assert peak_rss_mb() < high - 200
