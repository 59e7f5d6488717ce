"""SFT LoRA throughput: alignkit's sft stage vs a plain TRL SFTTrainer script, same model, data and settings.

Real (non-pad) tokens per second of train_runtime, as TRL counts them (`num_tokens`: the attention
mask's sum). Both train tiny-base with LoRA r=16/alpha=32 on every linear layer plus trainable input
embeddings, batch 16, max_length 256, assistant-only loss, the recipe's learning rate and schedule.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common

MODEL, DATA = "data/models/tiny-base", "data/world/sft.jsonl"
BATCH, MAX_LENGTH = 16, 256


def alignkit_tokens_per_s(work: Path, steps: int) -> float:
    """recipes/sft_lora.yaml through alignkit.cli.train; tokens/s from its metrics.jsonl."""
    from alignkit.cli import train

    out = work / f"alignkit-{len(list(work.iterdir()))}"
    train("recipes/sft_lora.yaml", [
        f"output_dir={out}", f"train.max_steps={steps}", f"train.logging_steps={steps}",
        f"train.per_device_train_batch_size={BATCH}", f"model.max_length={MAX_LENGTH}",
        "data.eval_split_size=0", "train.eval_steps=null", "train.save_steps=1000000", "train.report_to=[]",
    ])
    rows = common.read_jsonl(out / "metrics.jsonl")
    return common.last_log(rows, "num_tokens") / common.last_log(rows, "train_runtime")


def trl_tokens_per_s(work: Path, steps: int) -> float:
    """What a TRL user writes: load model, tokenizer and dataset, LoraConfig, SFTConfig, SFTTrainer."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    dataset = load_dataset("json", data_files=DATA, split="train").select_columns(["messages"])
    args = SFTConfig(
        output_dir=str(work / f"trl-{len(list(work.iterdir()))}"), max_steps=steps, logging_steps=steps,
        per_device_train_batch_size=BATCH, max_length=MAX_LENGTH, learning_rate=3e-3, lr_scheduler_type="cosine",
        warmup_steps=0.05, assistant_only_loss=True, save_strategy="no", report_to="none", seed=0,
        bf16=False, disable_tqdm=True,  # SFTConfig defaults to bf16, which a CPU refuses
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                             modules_to_save=["embed_tokens"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    trainer.train()
    history = trainer.state.log_history
    return common.last_log(history, "num_tokens") / common.last_log(history, "train_runtime")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    common.setup()
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    values = common.interleave({"alignkit": lambda _: alignkit_tokens_per_s(work, args.steps),
                                "trl": lambda _: trl_tokens_per_s(work, args.steps)}, args.reps)
    alignkit, trl = common.median(values["alignkit"]), common.median(values["trl"])
    common.write_comparison(
        "sft_throughput", "tokens/s (non-pad)", alignkit, trl, "TRL SFTTrainer script", goal=1.0, runs=values,
        settings={"model": MODEL, "data": DATA, "batch": BATCH, "max_length": MAX_LENGTH, "steps": args.steps,
                  "reps": args.reps, "lora": "r16 a32 all-linear + embed_tokens"},
    )


if __name__ == "__main__":
    main()
