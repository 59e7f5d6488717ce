"""PPO episodes/s: alignkit's PPOTrainer vs TRL's RLOOTrainer, same policy, reward model, batch and lengths.

Both train a LoRA adapter (r=16, alpha=32, all linear layers) on tiny-sft with the reference being the
policy with its adapter disabled, sample 48 new tokens at temperature 1 with no top-k/top-p filter, and
see 32 episodes (prompt + response) per generation batch, 8 per optimizer step, one pass over each
batch (ppo_epochs = num_iterations = 1), KL coefficient 0.05. The reward model is a one-score
AutoModelForSequenceClassification built from tiny-sft (data/models/tiny-rm when it exists).
alignkit also trains a critic (initialised from the reward model); RLOO has none and uses 2 samples
per prompt as its baseline, so it does less work per episode.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common

POLICY, PROMPTS = "data/models/tiny-sft", "data/world/rl_prompts.jsonl"
EPISODES_PER_BATCH, MINI_BATCH, NEW_TOKENS, LR, KL = 32, 8, 48, 5e-4, 0.05


def reward_model_path(work: Path) -> str:
    """data/models/tiny-rm if shipped, else tiny-sft with a fresh one-score head (what matters here is cost)."""
    if Path("data/models/tiny-rm/config.json").is_file():
        return "data/models/tiny-rm"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(POLICY)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(POLICY, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    out = work / "tiny-rm"
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def alignkit_run(rm: str, rollouts: int) -> dict[str, float]:
    """recipes/ppo.yaml's models built by alignkit's ppo stage; times PPOTrainer.train (no checkpoints)."""
    from alignkit import online_stage
    from alignkit.config import load_recipe
    from alignkit.config.base import ModelSection
    from alignkit.models import load_reward_model, load_tokenizer
    from alignkit.reward_model import RewardScorer
    from alignkit.rl.prompts import load_prompts
    from alignkit.rl.rewards import scorer_reward_fn
    from alignkit.rl.trainer import RLTrainer

    recipe = load_recipe("recipes/ppo.yaml", [
        f"model.name_or_path={POLICY}", f"ppo.reward_model={rm}", f"ppo.rollout_batch_size={EPISODES_PER_BATCH}",
        f"ppo.mini_batch_size={MINI_BATCH}", "ppo.ppo_epochs=1", f"ppo.max_new_tokens={NEW_TOKENS}",
        f"ppo.learning_rate={LR}", f"ppo.critic_learning_rate={LR}", f"ppo.kl_coef={KL}",
        "ppo.critic_warmup_rollouts=0", "train.report_to=[]",
    ])
    tokenizer = load_tokenizer(recipe.model, padding_side="left")
    prompts, _ = load_prompts(recipe.data.datasets, tokenizer, recipe.model.max_length - NEW_TOKENS, "max_length")
    mode = online_stage.reference_mode(recipe)
    policy, ref_policy = online_stage.build_policy(recipe, mode)
    scorer = RewardScorer.from_pretrained(rm)
    scorer.model.requires_grad_(False)
    value_model = load_reward_model(rm, ModelSection(name_or_path=rm))
    config = online_stage.trainer_config(recipe)
    config.num_rollouts = rollouts
    trainer = RLTrainer(config, policy, ref_policy, value_model, scorer_reward_fn(scorer, tokenizer.pad_token_id),
                        tokenizer, prompts)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    total = lambda key: sum(row[key] for row in history)  # noqa: E731
    return {"episodes_per_s": rollouts * EPISODES_PER_BATCH / seconds, "seconds": seconds,
            "generate_s": total("timing/generate_s"), "rollout_s": total("timing/rollout_s"),
            "train_s": total("timing/train_s"), "response_length": total("val/response_length") / len(history)}


def rloo_run(rm: str, work: Path, rollouts: int) -> dict[str, float]:
    """What a TRL user writes: RLOOConfig + RLOOTrainer with a reward-model path and a LoraConfig."""
    import json

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    rows = [json.loads(line) for line in Path(PROMPTS).read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(POLICY)
    steps_per_generation = EPISODES_PER_BATCH // MINI_BATCH
    args = RLOOConfig(
        output_dir=str(work / f"rloo-{len(list(work.iterdir()))}"), per_device_train_batch_size=MINI_BATCH,
        steps_per_generation=steps_per_generation, num_generations=2, num_iterations=1,
        max_steps=rollouts * steps_per_generation, max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0,
        top_p=1.0, beta=KL, learning_rate=LR, bf16=False, logging_steps=1000, save_strategy="no", report_to="none",
        seed=0, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = RLOOTrainer(model=POLICY, reward_funcs=rm, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)
    return common.time_trl_train(trainer, rollouts * EPISODES_PER_BATCH)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=3, help="generation batches of 32 episodes per run")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    common.setup()
    work = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    rm = reward_model_path(work)
    details: dict[str, list[dict[str, float]]] = {"alignkit": [], "rloo": []}

    def measure(name: str, fn) -> float:  # type: ignore[no-untyped-def]
        details[name].append(fn())
        return details[name][-1]["episodes_per_s"]

    values = common.interleave({"alignkit": lambda _: measure("alignkit", lambda: alignkit_run(rm, args.rollouts)),
                                "rloo": lambda _: measure("rloo", lambda: rloo_run(rm, work, args.rollouts))},
                               args.reps)
    alignkit, rloo = common.median(values["alignkit"]), common.median(values["rloo"])
    runs = details["alignkit"]
    breakdown = {k: common.median([r[k] / r["seconds"] for r in runs]) for k in ("generate_s", "rollout_s", "train_s")}
    common.write_comparison(
        "ppo_vs_rloo", "episodes/s", alignkit, rloo, "TRL RLOOTrainer", goal=1.0, runs=values, details=details,
        alignkit_time_share={"generate": breakdown["generate_s"],
                             "rollout_other": breakdown["rollout_s"] - breakdown["generate_s"],
                             "train": breakdown["train_s"]},
        settings={"policy": POLICY, "reward_model": rm, "episodes_per_generation_batch": EPISODES_PER_BATCH,
                  "mini_batch": MINI_BATCH, "max_new_tokens": NEW_TOKENS, "passes_per_batch": 1,
                  "rollouts_per_run": args.rollouts, "reps": args.reps, "lora": "r16 a32 all-linear",
                  "rloo_num_generations": 2},
    )


if __name__ == "__main__":
    main()
