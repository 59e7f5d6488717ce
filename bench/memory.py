"""Peak memory of full fine-tuning vs LoRA vs QLoRA on a ~100M-parameter Llama, through alignkit's sft stage.

The model is built from LlamaConfig (random init, float32 safetensors, the tiny tokenizer) in a temp
folder; each mode trains a few steps in its own subprocess with the shipped recipe (sft_full,
sft_lora, sft_qlora: NF4 + double quantization, float32 compute; gradient checkpointing for all) and
reports raw peak RSS (VmHWM, the process's own high-water mark; ru_maxrss would carry over the
driver's): the sft stage's own reading taken right after training, and the whole process's at exit
(model saving included). The
goal is judged on raw peaks, the Python + library baseline included; the RSS after imports is
recorded too, so that the part each mode adds shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common

RECIPES = {"full": "recipes/sft_full.yaml", "lora": "recipes/sft_lora.yaml", "qlora": "recipes/sft_qlora.yaml"}
# run name -> (recipe, extra environment). On CPU a quantized load fixes glibc's mmap threshold
# (memory.return_freed_memory_to_os); the last run gives full fine-tuning the same allocator setting,
# so that the ratio can be read both ways.
RUNS = {"full": ("full", {}), "lora": ("lora", {}), "qlora": ("qlora", {}),
        "full_same_allocator": ("full", {"MALLOC_MMAP_THRESHOLD_": "131072"})}


def build_model(out: Path) -> int:
    """A ~100M-parameter Llama from config with the tiny tokenizer; returns the parameter count."""
    return common.build_llama(out, hidden_size=768, intermediate_size=2304, num_hidden_layers=14,
                              num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024,
                              tie_word_embeddings=False)


def child(mode: str, model_dir: str, out: str, steps: int) -> None:
    """One training run in this (fresh) process; prints a JSON line with its memory readings."""
    common.setup()
    import importlib

    from alignkit.cli import train
    from alignkit.trainer_utils import peak_rss_mb

    for name in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets"):
        importlib.import_module(name)

    # What every mode pays before touching a model: Python + the libraries (the same for all three).
    baseline = peak_rss_mb()
    metrics = train(RECIPES[mode], [
        f"model.name_or_path={model_dir}", f"output_dir={out}", "model.max_length=128", f"train.max_steps={steps}",
        "train.per_device_train_batch_size=4", f"train.logging_steps={steps}", "data.eval_split_size=0",
        "train.eval_steps=null", "train.save_steps=1000000", "train.report_to=[]",
        # The same for every mode (sft_qlora.yaml turns it on anyway): only the method differs.
        "train.gradient_checkpointing=true",
        *(["sft.merge_adapter=false"] if mode == "qlora" else []),
    ])
    print("RESULT " + json.dumps({
        "mode": mode, "peak_rss_after_training_mb": metrics["peak_memory_mb"], "rss_after_imports_mb": baseline,
        "peak_rss_process_mb": peak_rss_mb(),
        "trainable_parameters": metrics["trainable_parameters"], "train_seconds": metrics["train_seconds"],
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.steps)
        return
    common.setup()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    n_params = build_model(work / "model")
    print(f"built a {n_params / 1e6:.1f}M-parameter Llama", flush=True)
    runs = {}
    for name, (mode, env) in RUNS.items():
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", mode,
                               str(work / "model"), str(work / name)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
        runs[name] = {**json.loads(line[len("RESULT "):]), "environment": env}
        print(f"  {name}: {runs[name]}", flush=True)
    key = "peak_rss_after_training_mb"
    for mode in runs:
        runs[mode]["ratio_to_full"] = runs[mode][key] / runs["full"][key]
        above = {m: runs[m][key] - runs[m]["rss_after_imports_mb"] for m in (mode, "full")}
        runs[mode]["above_imports_ratio_to_full"] = above[mode] / above["full"]
    runs["qlora"]["ratio_to_full_same_allocator"] = runs["qlora"][key] / runs["full_same_allocator"][key]
    qlora, full = runs["qlora"][key], runs["full"][key]
    common.write_comparison(
        "memory", "peak RSS MB (after training)", qlora, full, "full fine-tuning", goal=0.4, goal_direction="<=",
        runs=runs,
        settings={"params": n_params, "layers": 14, "hidden": 768, "dtype": "float32", "batch": 4,
                  "max_length": 128, "steps": args.steps, "gradient_checkpointing": True, "lora": "recipes' r16 a32 all-linear + embed_tokens",
                  "qlora": "nf4, double quant, float32 compute",
                  "allocator": "quantized CPU loads fix glibc's mmap threshold at 128 KiB (see RUNS)"},
    )


if __name__ == "__main__":
    main()
