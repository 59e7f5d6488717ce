"""The grpo and rloo stages end to end on the embedded world, from the shipped SFT model, with the oracle reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import train
from alignkit.rl.checkpoint import KL_KEY
from alignkit.runio import read_metrics

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "data" / "world" / "rl_prompts.jsonl"
SHARED = ["objective/kl", "objective/scores", "objective/rlhf_reward", "objective/non_score_reward",
          "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "val/ratio", "val/eos_rate"]


def few_prompts(tmp_path: Path, n: int) -> Path:
    """The world's first n RL prompts (with their meta, for the oracle)."""
    out = tmp_path / "prompts.jsonl"
    out.write_text("".join(PROMPTS.read_text().splitlines(keepends=True)[:n]))
    return out


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_stage_writes_a_loadable_policy_and_checkpoints_with_kl(stage, tmp_path):
    out = tmp_path / "run"
    metrics = train(str(REPO / "recipes" / f"{stage}.yaml"), [
        f"output_dir={out}", f"data.datasets.0.path={few_prompts(tmp_path, 4)}", f"{stage}.reward=oracle",
        f"{stage}.total_episodes=16", f"{stage}.rollout_batch_size=8", f"{stage}.mini_batch_size=8",
        f"{stage}.max_new_tokens=8", f"{stage}.save_every=1", "train.report_to=[]"])
    assert metrics["rollouts"] == 2 and metrics["reference"] == "adapter_disabled"
    assert metrics["peak_memory_mb"] > 100  # resident set of a process that loaded torch and the models
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 2 and all(set(SHARED) <= set(r) for r in rows)
    assert all(0.0 <= r["objective/scores"] <= 1.0 for r in rows)  # the oracle's rubric score
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state[KL_KEY] == pytest.approx(rows[-1]["objective/kl"])
    assert state["config"]["advantage_estimator"] == stage and state["config"]["num_generations"] == 4
    assert (out / "model" / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert (out / f"{stage}_curves.png").is_file()
    assert json.loads((out / "run.json").read_text())["stage"] == stage


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_stage_raises_the_oracle_score_of_the_sft_model(stage, tmp_path):
    """8 prompts x 8 samples per rollout, 6 rollouts: the last three's mean oracle score beats the first's."""
    out = tmp_path / "run"
    train(str(REPO / "recipes" / f"{stage}.yaml"), [
        f"output_dir={out}", f"data.datasets.0.path={few_prompts(tmp_path, 8)}", f"{stage}.reward=oracle",
        f"{stage}.num_generations=8", f"{stage}.total_episodes=384", f"{stage}.rollout_batch_size=64",
        f"{stage}.mini_batch_size=32", f"{stage}.ppo_epochs=2", f"{stage}.learning_rate=3e-3", f"{stage}.kl_coef=0.0",
        f"{stage}.max_new_tokens=24", "train.report_to=[]"])
    scores = [r["objective/scores"] for r in read_metrics(out / "metrics.jsonl")]
    # The last half's mean: at this learning rate one rollout can dip on a KL spike (GRPO, seed 0: 0.61 at
    # rollout 5 between 0.73 and 0.74), which a two-rollout mean did not absorb.
    assert sum(scores[3:]) / 3 > scores[0], scores
