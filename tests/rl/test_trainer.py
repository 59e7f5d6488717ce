"""GRPO and RLOO as configurations of the online-RL loop, on tiny random Llamas with a rule-based reward."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from alignkit.rl import core
from alignkit.rl.checkpoint import KL_KEY, checkpoint_policies
from alignkit.rl.trainer import RLConfig, RLTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
# The names PPO logs (tests/ppo/test_trainer.py), less the critic's.
METRICS = ["objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
           "objective/non_score_reward", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg",
           "loss/policy_avg", "val/ratio", "val/num_eos_tokens", "val/eos_rate", "lr", "episode", "eps",
           "timing/generate_s", "timing/train_s", "timing/generate_share"]


def group_config(estimator: str, **overrides: Any) -> RLConfig:
    kwargs = dict(advantage_estimator=estimator, num_generations=4, kl_in_reward=estimator != "grpo",
                  kl_estimator="k3" if estimator == "grpo" else "k1", learning_rate=3e-3, num_rollouts=2,
                  rollout_batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=6, kl_coef=0.01,
                  missing_eos_penalty=None, whiten_advantages=False)
    kwargs.update(overrides)
    return RLConfig(**kwargs)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_critic_free_method_raises_the_score_logs_ppos_metrics_and_checkpoints_kl(estimator, tiny, ppo_tokenizer,
                                                                                  tmp_path: Path):
    tok = ppo_tokenizer
    policy = tiny.make_policy(tok)
    logger = tiny.ListLogger()
    cfg = group_config(estimator, num_rollouts=5, rollout_batch_size=32, mini_batch_size=16, max_new_tokens=8,
                       save_every=5)
    before = tiny.target_mass(policy, tok)
    trainer = RLTrainer(cfg, policy, copy.deepcopy(policy), None, tiny.target_reward(tok), tok,
                        tiny.make_prompts(tok), metrics_logger=logger, checkpoint_dir=tmp_path / "checkpoints")
    assert trainer.critic is None and len(trainer.optimizer.param_groups) == 1
    history = trainer.train()
    after = tiny.target_mass(trainer.accelerator.unwrap_model(trainer.policy), tok)
    assert after > 1.5 * before, (before, after)
    for _, row in logger.rows:
        assert set(METRICS) <= set(row), set(METRICS) - set(row)
        assert "loss/value_avg" not in row
        assert ("loss/kl_avg" in row) == (estimator == "grpo")  # GRPO's KL is a loss term
    first = history[0]
    assert abs(first["objective/kl"]) < 1e-5 and first["episode"] == 32 and history[-1]["episode"] == 160
    assert all(0.8 < h["val/ratio"] < 1.2 for h in history)
    # Same checkpoint format as PPO, without a critic: the eval harness reads its KL for the win-rate curve.
    ckpt = tmp_path / "checkpoints" / "checkpoint-5"
    assert (ckpt / "policy" / "model.safetensors").is_file() and not (ckpt / "critic").exists()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state[KL_KEY] == pytest.approx(history[-1]["objective/kl"]) and state[KL_KEY] != 0
    assert checkpoint_policies(tmp_path) == [("checkpoint-5", ckpt / "policy", state[KL_KEY])]


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_rollout_groups_prompts_and_computes_the_estimators_advantages(estimator, tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    policy = tiny.make_policy(tok)
    cfg = group_config(estimator, kl_coef=0.5, missing_eos_penalty=1.0)
    trainer = RLTrainer(cfg, policy, copy.deepcopy(policy), None, tiny.target_reward(tok), tok,
                        tiny.make_prompts(tok))
    batch = trainer.worker.prompt_batch(0)
    assert len(batch) == 16 and len({tuple(ids) for ids, _ in batch}) == 4
    assert all(batch[i] == batch[i - i % 4] for i in range(16))  # each prompt 4 times in a row
    trainer.train()  # the policy moves away from the reference: the KL terms are not zero
    ro = trainer.rollout()
    penalised = ro.scores - torch.where((ro.responses == tok.eos_token_id).any(-1), 0.0, 1.0)
    kl = core.kl_penalty(ro.logprobs, ro.ref_logprobs, cfg.kl_estimator) * ro.mask
    if estimator == "grpo":  # KL is a loss term: the advantage sees the score only
        expected = core.group_relative_advantages(penalised, 4)
    else:  # KL is a reward penalty: reward = score - kl_coef * KL(response)
        expected = core.leave_one_out_advantages(penalised - 0.5 * kl.sum(1), 4)
    assert kl.abs().sum() > 0
    assert torch.allclose(ro.advantages, expected.unsqueeze(1) * ro.mask, atol=1e-5)
    assert ro.stats["objective/rlhf_reward"] == pytest.approx((penalised - 0.5 * kl.sum(1)).mean().item(), abs=1e-5)


def test_critic_free_configuration_errors(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    policy = tiny.make_policy(tok)
    with pytest.raises(ValueError, match="num_generations >= 2"):
        group_config("grpo", num_generations=1).local_sizes(1)
    with pytest.raises(ValueError, match="multiple of num_generations"):
        group_config("rloo", num_generations=3).local_sizes(1)
    with pytest.raises(ValueError, match="needs a value_model"):
        RLTrainer(RLConfig(), policy, copy.deepcopy(policy), None, tiny.target_reward(tok), tok, tiny.make_prompts(tok))
    with pytest.raises(ValueError, match="grpo and rloo take none"):
        RLTrainer(group_config("grpo"), policy, copy.deepcopy(policy), tiny.make_critic(tok), tiny.target_reward(tok),
                  tok, tiny.make_prompts(tok))
