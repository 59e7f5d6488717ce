"""Online-RL checkpoint discovery for the eval harness: each complete checkpoint's loadable policy and its KL."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import AlignkitError
from alignkit.rl.checkpoint import KL_KEY, checkpoint_policies


def write_checkpoint(run, step, kl=None, policy=True, state=True):
    ckpt = run / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    if policy:
        (ckpt / "policy").mkdir()
        (ckpt / "policy" / "model.safetensors").write_bytes(b"")
    if state:
        (ckpt / "trainer_state.json").write_text(json.dumps({"rollout": step, **({KL_KEY: kl} if kl is not None else {})}))
    return ckpt


def test_checkpoint_policies_are_the_complete_ones_in_rollout_order_with_their_kl(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run, 100, kl=0.9)
    write_checkpoint(run, 20, kl=0.25)  # numeric, not string, order: 20 before 100
    write_checkpoint(run, 30, kl=0.5, state=False)  # interrupted: trainer_state.json is written last
    write_checkpoint(run, 40, kl=0.7, policy=False)  # no policy to load
    write_checkpoint(run, 50)  # an older format without the KL: kept, its KL unknown
    found = checkpoint_policies(run)
    assert [(c.checkpoint, c.path, c.kl) for c in found] == [
        ("checkpoint-20", run / "checkpoints" / "checkpoint-20" / "policy", 0.25),
        ("checkpoint-50", run / "checkpoints" / "checkpoint-50" / "policy", None),
        ("checkpoint-100", run / "checkpoints" / "checkpoint-100" / "policy", 0.9)]


def test_a_run_without_checkpoints_is_one_error_naming_the_key(tmp_path):
    write_checkpoint(tmp_path / "run", 10, kl=0.1, state=False)
    with pytest.raises(AlignkitError, match="no checkpoints/checkpoint-<n>/policy") as err:
        checkpoint_policies(tmp_path / "run", where="eval.ppo_run: x")
    assert err.value.where == "eval.ppo_run: x"
