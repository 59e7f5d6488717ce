"""GRPO and RLOO episodes/s: alignkit's stages (one online-RL loop) vs TRL's GRPOTrainer and RLOOTrainer.

Same policy (tiny-sft with a fresh LoRA r=16/alpha=32 on all linear layers; the reference is the
policy with its adapter disabled), same reward model (tiny-rm), 32 responses per generation batch
(8 prompts x 4 samples), 8 per optimizer step, one pass over each batch (ppo_epochs = num_iterations
= 1), 48 new tokens at temperature 1 with no top-k/top-p filter. GRPO: KL as a loss term, beta 0.04,
k3, rewards scaled by the group's std, token-level loss (TRL's default "dapo"). RLOO: KL in the reward,
0.05. Wall time of `.train()` (no checkpoints), interleaved repetitions, median.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import common

POLICY, RM, PROMPTS = "data/models/tiny-sft", "data/models/tiny-rm", "data/world/rl_prompts.jsonl"
BATCH, GROUP, MINI, NEW_TOKENS, LR = 32, 4, 8, 48, 5e-4
BETA = {"grpo": 0.04, "rloo": 0.05}


def alignkit_run(method: str, rollouts: int) -> dict[str, float]:
    """recipes/<method>.yaml's models built by alignkit's stage functions; times RLTrainer.train."""
    from alignkit import online_stage
    from alignkit.config import load_recipe
    from alignkit.models import load_tokenizer
    from alignkit.rl.prompts import load_prompts
    from alignkit.rl.trainer import RLTrainer

    recipe = load_recipe(f"recipes/{method}.yaml", [
        f"{method}.rollout_batch_size={BATCH}", f"{method}.num_generations={GROUP}", f"{method}.mini_batch_size={MINI}",
        f"{method}.ppo_epochs=1", f"{method}.max_new_tokens={NEW_TOKENS}", f"{method}.learning_rate={LR}",
        f"{method}.kl_coef={BETA[method]}", f"{method}.missing_eos_penalty=null", "train.report_to=[]",
    ])
    tokenizer = load_tokenizer(recipe.model, padding_side="left", chat=True)
    prompts, _ = load_prompts(recipe.data.datasets, tokenizer, recipe.model.max_length - NEW_TOKENS, "max_length")
    policy, reference = online_stage.build_policy(recipe, online_stage.reference_mode(recipe))
    reward_fn = online_stage.build_reward_fn(recipe, tokenizer, prompts, [], "cpu")
    config = online_stage.trainer_config(recipe)
    config.num_rollouts = rollouts
    trainer = RLTrainer(config, policy, reference, None, reward_fn, tokenizer, prompts)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    return {"episodes_per_s": rollouts * BATCH / seconds, "seconds": seconds,
            "generate_s": sum(r["timing/generate_s"] for r in history),
            "response_length": sum(r["val/response_length"] for r in history) / len(history)}


def trl_run(method: str, work: Path, rollouts: int) -> dict[str, float]:
    """What a TRL user writes: <Method>Config + <Method>Trainer with a reward-model path and a LoraConfig."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    rows = [json.loads(line) for line in Path(PROMPTS).read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(POLICY)
    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if method == "grpo" else (RLOOConfig, RLOOTrainer)
    steps_per_generation = BATCH // MINI
    extra = {"loss_type": "dapo", "scale_rewards": "group"} if method == "grpo" else {}
    args = config_cls(
        output_dir=str(work / f"{method}-{len(list(work.iterdir()))}"), per_device_train_batch_size=MINI,
        steps_per_generation=steps_per_generation, num_generations=GROUP, num_iterations=1,
        max_steps=rollouts * steps_per_generation, max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0,
        top_p=1.0, beta=BETA[method], learning_rate=LR, bf16=False, logging_steps=1000, save_strategy="no",
        report_to="none", seed=0, disable_tqdm=True, **extra,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = trainer_cls(model=POLICY, reward_funcs=RM, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)
    return common.time_trl_train(trainer, rollouts * BATCH)


def compare(method: str, work: Path, rollouts: int, reps: int) -> None:
    """Interleaved alignkit / TRL runs of one method; bench/results/<method>_vs_trl.json."""
    details: dict[str, list[dict[str, float]]] = {"alignkit": [], "trl": []}

    def measure(name: str, fn) -> float:  # type: ignore[no-untyped-def]
        details[name].append(fn())
        return details[name][-1]["episodes_per_s"]

    values = common.interleave({"alignkit": lambda _: measure("alignkit", lambda: alignkit_run(method, rollouts)),
                                "trl": lambda _: measure("trl", lambda: trl_run(method, work, rollouts))}, reps)
    trainer_name = "GRPOTrainer" if method == "grpo" else "RLOOTrainer"
    common.write_comparison(
        f"{method}_vs_trl", "episodes/s", common.median(values["alignkit"]), common.median(values["trl"]),
        f"TRL {trainer_name}", goal=1.0, runs=values, details=details,
        settings={"policy": POLICY, "reward_model": RM, "responses_per_generation_batch": BATCH,
                  "num_generations": GROUP, "mini_batch": MINI, "max_new_tokens": NEW_TOKENS, "passes_per_batch": 1,
                  "beta": BETA[method], "rollouts_per_run": rollouts, "reps": reps, "lora": "r16 a32 all-linear"},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=3, help="generation batches of 32 responses per run")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--methods", default="grpo,rloo")
    args = ap.parse_args()
    common.setup()
    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    for method in args.methods.split(","):
        compare(method, work, args.rollouts, args.reps)


if __name__ == "__main__":
    main()
