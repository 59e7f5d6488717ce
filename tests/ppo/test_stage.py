"""The stage's glue: rewards, prompts, the saved policy and the trainer config from a recipe."""

from __future__ import annotations

import pytest
import torch

from alignkit.reward_model import RewardScorer
from alignkit.rl.rewards import scorer_reward_fn


def test_scorer_reward_fn_scores_prompt_plus_response_at_its_last_token(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    scorer = RewardScorer(tiny.make_critic(tok), tok)
    reward_fn = scorer_reward_fn(scorer, tok.pad_token_id)
    prompt_ids = [[3, 5, 9], [3, 5, 10, 11, 12]]
    response_ids = [[20, 21, tok.eos_token_id], [22, tok.eos_token_id]]
    scores = reward_fn(["a", "b"], ["c", "d"], prompt_ids, response_ids)
    alone = [scorer.score_ids(torch.tensor([p + r]), torch.ones(1, len(p + r), dtype=torch.long)).item()
             for p, r in zip(prompt_ids, response_ids, strict=True)]
    assert torch.allclose(scores, torch.tensor(alone), atol=1e-5)


def test_oracle_reward_fn_scores_each_response_against_its_prompts_meta(ppo_tokenizer):
    from alignkit.rl.rewards import oracle_reward_fn
    from alignkit.world import oracle

    tok = ppo_tokenizer
    meta = {"task": "fact", "entity": "Bresbis", "expected": ["Eastvale"], "conflicts": [["Northmoor"]],
            "reference": "Bresbis is in Eastvale.", "harmful": False, "forbidden": []}
    other = {**meta, "expected": ["Northmoor"], "conflicts": [["Eastvale"]]}
    prompt_ids = [[3, 5, 9], [3, 5, 10]]
    reward_fn = oracle_reward_fn(prompt_ids, [meta, other], tok.eos_token_id, oracle)
    texts = ["Bresbis is in Eastvale.", "Bresbis is in Eastvale."]
    # The same text: right for the first prompt, wrong for the second; the second never emitted EOS.
    scores = reward_fn(["a", "b"], texts, prompt_ids, [[20, tok.eos_token_id], [20, 21]])
    assert scores.tolist() == pytest.approx([oracle.score(meta, texts[0], True).total,
                                             oracle.score(other, texts[1], False).total])
    assert scores[0] > scores[1]


def test_oracle_reward_needs_prompt_rows_with_meta(tmp_path, ppo_tokenizer):
    from alignkit.config.recipe import validate_recipe
    from alignkit.errors import AlignkitError
    from alignkit.rl.prompts import load_prompts

    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Where is Bresbis?"}\n')
    recipe = validate_recipe({"stage": "ppo", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "x"},
                              "data": {"datasets": [{"path": str(data)}]},
                              "ppo": {"reward_model": "x", "reward": "oracle"}})
    with pytest.raises(AlignkitError, match="needs a 'meta' column") as err:
        load_prompts(recipe.data.datasets, ppo_tokenizer, 200, "limit", with_meta=True)
    assert "data.datasets.0" in str(err.value)


def _perturb_adapter(policy, seed: int) -> None:
    """Random LoRA B matrices of the active adapter, so the adapter changes the model (as after training)."""
    torch.manual_seed(seed)
    name = policy.active_adapter
    with torch.no_grad():
        for pname, p in policy.named_parameters():
            if f"lora_B.{name}." in pname:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("mode", ["adapter_disabled", "frozen_adapter"])
def test_4bit_policy_is_saved_as_the_trained_policy(mode, tmp_path, tiny_model_dir, tiny_tokenizer):
    """model/ from a 4-bit LoRA policy: dequantized then merged, so its logits are the trained policy's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignkit.config.recipe import validate_recipe
    from alignkit.online_stage import build_policy, save_policy
    from alignkit.reference import add_frozen_adapter_copy
    from alignkit.runio import RunDir

    start = str(tiny_model_dir)
    if mode == "frozen_adapter":  # the policy continues an SFT adapter trained on the full-precision base
        sft = get_peft_model(AutoModelForCausalLM.from_pretrained(start),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        _perturb_adapter(sft, 1)
        sft.save_pretrained(str(tmp_path / "sft"))
        start = str(tmp_path / "sft")
    recipe = validate_recipe({"stage": "ppo", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": start},
                              "quantization": {"load_in_4bit": True},
                              "peft": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
                              "data": {"datasets": [{"path": "data/world/rl_prompts.jsonl"}]}, "ppo": {"reward_model": "x"}})
    policy, _ = build_policy(recipe, mode)
    if mode == "frozen_adapter":
        add_frozen_adapter_copy(policy)  # what PPOTrainer adds; save_policy must drop it
    _perturb_adapter(policy, 2)
    ids = torch.tensor([tiny_tokenizer("<|user|>\nWhere is Bresbis?\n<|assistant|>\nIn Eastvale.")["input_ids"]])
    with torch.no_grad():
        trained = policy(input_ids=ids).logits
    save_policy(policy, tiny_tokenizer, RunDir(tmp_path / "run"), mode)
    model_dir = tmp_path / "run" / "model"
    assert not hasattr(AutoConfig.from_pretrained(model_dir), "quantization_config")
    with torch.no_grad():
        saved = AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=ids).logits
    # Merged into the 4-bit weights (re-quantized), the logits were up to 0.15 apart.
    assert (saved - trained).abs().max().item() < 1e-4


def test_ppo_config_takes_save_total_limit_from_train(tmp_path):
    from alignkit.config.recipe import validate_recipe
    from alignkit.online_stage import trainer_config as ppo_config

    raw = {"stage": "ppo", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "x"},
           "data": {"datasets": [{"path": "data/world/rl_prompts.jsonl"}]}, "ppo": {"reward_model": "x"}}
    assert ppo_config(validate_recipe(raw)).save_total_limit == 2  # train's default, as the Trainer stages
    raw["train"] = {"save_total_limit": None}
    assert ppo_config(validate_recipe(raw)).save_total_limit is None


def test_8bit_lora_ppo_step_prepares_the_base_for_kbit_training(tmp_path, tiny, ppo_tokenizer):
    """An 8-bit LoRA policy goes through prepare_model_for_kbit_training (not only 4-bit), then trains a step."""
    from alignkit.config.recipe import validate_recipe
    from alignkit.online_stage import build_policy
    from alignkit.rl.trainer import RLConfig, RLTrainer

    tok = ppo_tokenizer
    tiny.make_policy(tok).save_pretrained(str(tmp_path / "sft"))
    recipe = validate_recipe({"stage": "ppo", "output_dir": str(tmp_path / "run"),
                              "model": {"name_or_path": str(tmp_path / "sft"), "torch_dtype": "float16"},
                              "quantization": {"load_in_8bit": True},
                              "peft": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
                              "data": {"datasets": [{"path": "data/world/rl_prompts.jsonl"}]},
                              "ppo": {"reward_model": "x"}})
    policy, reference = build_policy(recipe, "adapter_disabled")
    base = policy.get_base_model()
    assert base.is_loaded_in_8bit
    # prepare_model_for_kbit_training casts the float16 norms to float32; skipped, they stay float16.
    assert base.model.norm.weight.dtype == torch.float32
    lora_b = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
    int8 = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    cfg = RLConfig(learning_rate=3e-3, critic_learning_rate=3e-3, num_rollouts=1, rollout_batch_size=4,
                   mini_batch_size=4, ppo_epochs=1, max_new_tokens=4, missing_eos_penalty=None)
    trainer = RLTrainer(cfg, policy, reference, tiny.make_critic(tok), tiny.target_reward(tok), tok,
                        tiny.make_prompts(tok, n=4))
    history = trainer.train()
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss/policy_avg"]))
    trained = trainer.accelerator.unwrap_model(trainer.policy)
    moved = [n for n, p in trained.named_parameters() if n in lora_b and not torch.equal(p.detach(), lora_b[n])]
    assert moved  # the adapter learned
    assert torch.equal(trained.get_base_model().model.layers[0].self_attn.q_proj.weight, int8)  # the base did not


def test_a_language_model_as_value_model_gets_a_fresh_value_head_and_a_log_line(tmp_path, tiny_model_dir, caplog):
    from alignkit.config.ppo import PPOSection
    from alignkit.online_stage import load_critic

    with caplog.at_level("INFO", logger="alignkit.rl"):
        critic = load_critic(PPOSection(reward_model="x", value_model=str(tiny_model_dir)))
    assert type(critic).__name__.endswith("ForSequenceClassification") and critic.config.num_labels == 1
    assert "is a language model: the critic starts from its weights with a fresh value head" in caplog.text
