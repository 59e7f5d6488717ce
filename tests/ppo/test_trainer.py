"""The PPO loop on tiny random Llamas with a rule-based reward: learning, reference modes, checkpoints, resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from alignkit.reference import FROZEN_ADAPTER, REF_ADAPTER
from alignkit.rl.checkpoint import KL_KEY
from alignkit.rl.modules import response_logits
from alignkit.rl.trainer import RLConfig as PPOConfig
from alignkit.rl.trainer import RLTrainer as PPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
METRICS = ["objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
           "objective/non_score_reward", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg",
           "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/num_eos_tokens", "lr",
           "episode", "eps", "timing/generate_s", "timing/train_s", "timing/generate_share"]


def small_config(**overrides: Any) -> PPOConfig:
    kwargs = dict(learning_rate=3e-3, critic_learning_rate=3e-3, num_rollouts=2, rollout_batch_size=16,
                  mini_batch_size=8, ppo_epochs=2, max_new_tokens=6, kl_coef=0.01, missing_eos_penalty=None)
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def lora(policy: Any, random_b: bool = False) -> Any:
    """Wrap in LoRA; random_b=True makes a non-identity adapter, like an unmerged SFT adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                     init_lora_weights=not random_b)
    return get_peft_model(policy, cfg)


def test_ppo_raises_the_score_and_logs_every_metric(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    policy = tiny.make_policy(tok)
    logger = tiny.ListLogger()
    cfg = small_config(num_rollouts=5, rollout_batch_size=32, mini_batch_size=16, max_new_tokens=8)
    before = tiny.target_mass(policy, tok)
    trainer = PPOTrainer(cfg, policy, copy.deepcopy(policy), tiny.make_critic(tok), tiny.target_reward(tok), tok,
                         tiny.make_prompts(tok), metrics_logger=logger)
    history = trainer.train()
    after = tiny.target_mass(trainer.accelerator.unwrap_model(trainer.policy), tok)
    assert [step for step, _ in logger.rows] == [1, 2, 3, 4, 5]
    for _, row in logger.rows:
        assert set(METRICS) <= set(row), set(METRICS) - set(row)
    first = history[0]
    # policy == ref at the first rollout: KL exactly 0, and the first PPO ratio is 1 before any update.
    assert abs(first["objective/kl"]) < 1e-5
    assert first["objective/non_score_reward"] == pytest.approx(0.0, abs=1e-6)
    assert first["objective/rlhf_reward"] == pytest.approx(first["objective/scores"], abs=1e-5)
    assert first["episode"] == 32 and history[-1]["episode"] == 160
    assert 0.0 < first["timing/generate_share"] < 1.0
    assert all(0.8 < h["val/ratio"] < 1.2 for h in history)
    assert after > 1.5 * before, (before, after)
    late = sum(h["objective/scores"] for h in history[-2:]) / 2
    assert late > first["objective/scores"], [h["objective/scores"] for h in history]


def test_lora_reference_is_the_disabled_adapter(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    policy = lora(tiny.make_policy(tok))
    base_before = {k: v.clone() for k, v in policy.named_parameters() if "lora_" not in k}
    trainer = PPOTrainer(small_config(), policy, None, tiny.make_critic(tok), tiny.target_reward(tok), tok, tiny.make_prompts(tok))
    history = trainer.train()
    assert trainer.reference.mode == "adapter_disabled"
    assert abs(history[0]["objective/kl"]) < 1e-5  # a fresh LoRA (B = 0) is the identity
    trained = trainer.accelerator.unwrap_model(trainer.policy)
    for name, p in trained.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_before[name]), name  # the reference (base) never moved
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in trained.named_parameters() if "lora_B" in n)


def test_lora_reference_is_a_frozen_copy_of_the_starting_adapter(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    policy = lora(tiny.make_policy(tok), random_b=True)  # an unmerged "SFT" adapter: disabling it gives the base
    x = torch.tensor([tiny.make_prompts(tok)[3]["input_ids"]])
    with torch.no_grad():
        sft_logits = policy(input_ids=x).logits
        with policy.disable_adapter():
            assert not torch.allclose(policy(input_ids=x).logits, sft_logits, atol=1e-4)
    start = {k: v.clone() for k, v in policy.named_parameters() if ".default." in k}
    trainer = PPOTrainer(small_config(), policy, FROZEN_ADAPTER, tiny.make_critic(tok), tiny.target_reward(tok), tok,
                         tiny.make_prompts(tok))
    history = trainer.train()
    assert abs(history[0]["objective/kl"]) < 1e-5  # the reference is the SFT adapter, not the base
    trained = trainer.accelerator.unwrap_model(trainer.policy)
    assert trained.active_adapter == "default"
    ref = {k: p for k, p in trained.named_parameters() if f".{REF_ADAPTER}." in k}
    assert ref and not any(p.requires_grad for p in ref.values())
    for name, p in ref.items():
        assert torch.equal(p, start[name.replace(f".{REF_ADAPTER}.", ".default.")]), name
    assert any(not torch.equal(p, start[k]) for k, p in trained.named_parameters() if ".default." in k)
    with torch.no_grad(), trainer.reference.active(trained) as ref_model:
        am = torch.ones_like(x)
        ref_logits = response_logits(ref_model, x, am, 1)
    assert torch.allclose(ref_logits, sft_logits[:, :-1], atol=1e-5)


def test_checkpoint_and_resume_continue_exactly(tiny, ppo_tokenizer, tmp_path: Path):
    tok = ppo_tokenizer
    cfg = small_config(num_rollouts=3, save_every=2)

    def fresh(checkpoint_dir: Path) -> PPOTrainer:
        policy = tiny.make_policy(tok)
        return PPOTrainer(cfg, policy, copy.deepcopy(policy), tiny.make_critic(tok), tiny.target_reward(tok), tok,
                          tiny.make_prompts(tok), checkpoint_dir=checkpoint_dir)

    full = fresh(tmp_path / "a")
    full_history = full.train()
    ckpt = tmp_path / "a" / "checkpoint-2"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint-2", "checkpoint-3", "metrics.jsonl"]
    assert (ckpt / "policy" / "model.safetensors").is_file() and (ckpt / "critic" / "model.safetensors").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["rollout"] == 2 and state["episode"] == 32 and state["kl_coef"] == cfg.kl_coef
    assert state["metrics"]["kl"] == pytest.approx(sum(h["objective/kl"] for h in full_history[:2]) / 2)
    # The eval harness plots win rate against this KL (tests/eval/test_harness.py reads the same key).
    assert state[KL_KEY] == pytest.approx(full_history[1]["objective/kl"]) and state[KL_KEY] > 0
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 3  # the default JSONL logger

    resumed = fresh(tmp_path / "b")
    resumed.resume_from_checkpoint(ckpt)
    assert resumed.rollout_idx == 2 and resumed.episode == 32
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    live = resumed.optimizer.state_dict()["state"]
    assert saved.keys() == live.keys() and all(torch.equal(saved[k]["exp_avg"], live[k]["exp_avg"]) for k in saved)
    history = resumed.train()
    assert len(history) == 3 and resumed.rollout_idx == 3
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert history[-1][key] == pytest.approx(full_history[-1][key], rel=1e-4, abs=1e-6), key


def test_save_total_limit_keeps_the_newest_complete_checkpoints(tiny, ppo_tokenizer, tmp_path: Path, monkeypatch):
    """train.save_total_limit: older checkpoints go only once the new one is complete; others are left alone."""
    from alignkit.rl import trainer as trainer_module
    from alignkit.rl.checkpoint import complete_checkpoints

    tok = ppo_tokenizer
    (tmp_path / "checkpoint-0").mkdir(parents=True)  # an incomplete folder (no trainer_state.json): not ours
    seen: list[list[str]] = []
    real_prune = trainer_module.prune_checkpoints

    def watched_prune(folder: Path, keep: int | None) -> list[Path]:
        seen.append([p.name for p in complete_checkpoints(folder)])
        return real_prune(folder, keep)

    monkeypatch.setattr(trainer_module, "prune_checkpoints", watched_prune)
    policy = tiny.make_policy(tok)
    cfg = small_config(num_rollouts=4, save_every=1, save_total_limit=2, ppo_epochs=1, rollout_batch_size=8)
    PPOTrainer(cfg, policy, copy.deepcopy(policy), tiny.make_critic(tok), tiny.target_reward(tok), tok,
               tiny.make_prompts(tok, 8), checkpoint_dir=tmp_path).train()
    # Each prune sees the new checkpoint complete beside the two kept before it.
    assert seen == [["checkpoint-1"], ["checkpoint-1", "checkpoint-2"], ["checkpoint-1", "checkpoint-2", "checkpoint-3"],
                    ["checkpoint-2", "checkpoint-3", "checkpoint-4"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0", "checkpoint-3", "checkpoint-4",
                                                          "metrics.jsonl"]


def test_resume_refuses_what_would_silently_skip(tiny, ppo_tokenizer, tmp_path: Path):
    tok = ppo_tokenizer
    policy = tiny.make_policy(tok)
    trainer = PPOTrainer(small_config(num_rollouts=1), policy, copy.deepcopy(policy), tiny.make_critic(tok),
                         tiny.target_reward(tok), tok, tiny.make_prompts(tok), checkpoint_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        trainer.train(resume_from_checkpoint=True)
    trainer.train()
    other = PPOTrainer(small_config(num_rollouts=1, rollout_batch_size=8), policy, copy.deepcopy(policy),
                       tiny.make_critic(tok), tiny.target_reward(tok), tok, tiny.make_prompts(tok), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="rollout_batch_size"):
        other.resume_from_checkpoint(True)


def test_config_and_reference_errors(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    with pytest.raises(ValueError, match="multiple"):
        small_config(rollout_batch_size=12, mini_batch_size=8).local_sizes(1)
    with pytest.raises(ValueError, match="PEFT"):
        PPOTrainer(small_config(), tiny.make_policy(tok), None, tiny.make_critic(tok), tiny.target_reward(tok), tok,
                   tiny.make_prompts(tok))
