"""Run folders: atomic writes, no clobbering of finished runs, resume resolution, secret redaction."""

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.runio import (
    QUANT_FILE,
    MetricsLogger,
    RunDir,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    disk_full_as_error,
    latest_checkpoint,
    read_metrics,
    read_quantization_record,
    redact,
    save_model,
)


def test_finished_run_is_not_overwritten(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare()
    run.finish({"loss": 1.0})
    before = (run.path / "run.json").read_text()
    with pytest.raises(AlignkitError, match="already holds a finished run"):
        run.prepare()
    assert (run.path / "run.json").read_text() == before
    run.prepare(overwrite=True)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]


def test_resume_without_checkpoint_is_an_error(tmp_path):
    run = RunDir(tmp_path)
    assert run.resolve_resume(False) is None
    with pytest.raises(AlignkitError, match="no checkpoint"):
        run.resolve_resume(True)
    for step in (5, 40, 10):
        (run.checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (run.checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert run.resolve_resume(True).endswith("checkpoint-40")


def test_incomplete_checkpoints_are_never_picked_up(tmp_path):
    run = RunDir(tmp_path)
    (run.checkpoints / "checkpoint-4").mkdir(parents=True)
    (run.checkpoints / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (run.checkpoints / "checkpoint-8").mkdir()  # cut short before its trainer state (an older writer)
    (run.checkpoints / ".tmp-checkpoint-12" / "checkpoint-12").mkdir(parents=True)  # a staged, unpublished one
    (run.checkpoints / ".tmp-checkpoint-12" / "checkpoint-12" / "trainer_state.json").write_text("{}")
    assert run.latest_checkpoint() == run.checkpoints / "checkpoint-4"
    # With nothing complete, the folder is not an unfinished run: a fresh start may take it.
    RunDir(tmp_path / "b").checkpoints.joinpath("checkpoint-8").mkdir(parents=True)
    RunDir(tmp_path / "b").prepare()


def test_full_disk_is_one_error_naming_the_path_and_leaves_nothing(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(AlignkitError, match="no space left on device") as caught, atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.where == str(final) and list(tmp_path.iterdir()) == []
    # torch and safetensors wrap the OS error in their own exception types: the text still says so.
    with pytest.raises(AlignkitError), atomic_dir(final):
        raise RuntimeError("safetensors: IoError(No space left on device (os error 28))")
    with pytest.raises(RuntimeError, match="other"), atomic_dir(final):
        raise RuntimeError("other")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_text_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"old": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("alignkit.runio.os.replace", full)
    with pytest.raises(AlignkitError, match=str(path)):
        atomic_write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_secrets_are_redacted(tmp_path):
    data = {"hub": {"token": "hf_abcdefghijklmnop"}, "note": "key sk-abcdefghijkl1234 here", "lr": 1.0,
            "train_tokens": 5, "eos_token": "</s>", "HF_TOKEN": "x"}
    assert redact(data) == {"hub": {"token": "***"}, "note": "key *** here", "lr": 1.0,
                            "train_tokens": 5, "eos_token": "</s>", "HF_TOKEN": "***"}
    atomic_write_json(tmp_path / "x.json", data)
    assert "hf_abc" not in (tmp_path / "x.json").read_text()


def test_metrics_logger_writes_jsonl_and_nan_as_null(tmp_path):
    logger = MetricsLogger(tmp_path / "metrics.jsonl", report_to=[])
    logger.log({"loss": 1.5}, step=1)
    logger.log({"loss": float("nan")}, step=2)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 1.5 and rows[1]["loss"] is None
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])


def test_disk_full_anywhere_in_a_stage_names_the_file(tmp_path):
    with pytest.raises(AlignkitError, match="no space left on device") as caught, disk_full_as_error(tmp_path):
        with open(tmp_path / "metrics.jsonl", "a"):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))
    assert caught.value.where == str(tmp_path / "metrics.jsonl")
    with pytest.raises(PermissionError), disk_full_as_error(tmp_path):  # other errors pass through
        raise PermissionError(errno.EACCES, "Permission denied")


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """mkstemp/mkdtemp create 0600/0700; what the run publishes gets 0644/0755 (umask 022), as open/mkdir would."""
    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "folder" / "w.bin").stat().st_mode) == 0o644


def test_atomic_writes_follow_the_umask(tmp_path, umask_027):
    text = atomic_write_json(tmp_path / "run.json", {"a": 1})
    with atomic_dir(tmp_path / "model"):
        pass
    assert stat.S_IMODE(text.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o750


def test_one_checkpoint_discovery_for_run_folders_and_checkpoint_folders(tmp_path):
    rd = RunDir(tmp_path)
    for step, complete in [(5, True), (20, True), (30, False)]:
        folder = rd.checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (rd.checkpoints / ".tmp-checkpoint-40").mkdir()
    assert latest_checkpoint(rd.checkpoints) == rd.checkpoints / "checkpoint-20"
    assert rd.latest_checkpoint() == rd.checkpoints / "checkpoint-20"  # numeric order, not text (5 < 20)
    assert latest_checkpoint(tmp_path / "none") is None


class FakePretrained:
    """Stands in for a model or tokenizer: save_pretrained writes the files transformers/PEFT would."""

    def __init__(self, files):
        self.files = files

    def save_pretrained(self, folder, **kwargs):
        for name, text in self.files.items():
            (Path(folder) / name).write_text(text)


def test_save_model_is_atomic_and_records_the_model_kind_and_quantization(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.model_record() == {}
    tokenizer = FakePretrained({"tokenizer.json": "{}"})
    quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    save_model(FakePretrained({"adapter_config.json": "{}"}), tokenizer, rd.model_dir, quantization=quant)
    assert rd.model_record() == {"model_kind": "adapter"}
    assert read_quantization_record(rd.model_dir) == quant
    assert json.loads((rd.model_dir / QUANT_FILE).read_text()) == quant
    save_model(FakePretrained({"config.json": "{}"}), tokenizer, rd.model_dir)
    assert rd.model_record() == {"model_kind": "full"}
    assert read_quantization_record(rd.model_dir) is None  # replaced as a whole: no stale record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (rd.adapter_dir, rd.merged_dir) == (tmp_path / "adapter", tmp_path / "merged")


def test_save_model_that_fails_keeps_the_previous_model(tmp_path):
    rd = RunDir(tmp_path)
    tokenizer = FakePretrained({"tokenizer.json": "{}"})
    save_model(FakePretrained({"config.json": "old"}), tokenizer, rd.model_dir)

    class Broken(FakePretrained):
        def save_pretrained(self, folder, **kwargs):
            super().save_pretrained(folder)
            raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        save_model(Broken({"config.json": "new"}), tokenizer, rd.model_dir)
    assert (rd.model_dir / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
