"""The oracle score of a model on a fixed set of the world's RL prompts: the before/after of an online-RL run.

    python bench/oracle_score.py data/models/tiny-sft runs/grpo/model --prompts 64 --samples 4

Samples `samples` responses per prompt at temperature 1 (as in training, no top-k/top-p filter), scores
each with the world's rubric (alignkit.world.oracle) and prints the mean and its standard error.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import common

PROMPTS = "data/world/rl_prompts.jsonl"


def oracle_score(model_path: str, rows: list[dict], samples: int, new_tokens: int, seed: int = 0) -> dict[str, float]:
    """Mean oracle score (and standard error) of `samples` sampled responses per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from alignkit.world import oracle

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    gen = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    scores = []
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer([text] * samples, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, generation_config=gen)[:, ids["input_ids"].shape[1]:]
        for response in out.tolist():
            ended = tokenizer.eos_token_id in response
            response = response[:response.index(tokenizer.eos_token_id)] if ended else response
            scores.append(oracle.score(row["meta"], tokenizer.decode(response, skip_special_tokens=True), ended).total)
    return {"oracle_score": statistics.mean(scores), "stderr": statistics.stdev(scores) / len(scores) ** 0.5,
            "n": len(scores)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--prompts", type=int, default=64, help="the first N prompts of the world's RL set")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    common.setup()
    rows = [json.loads(line) for line in Path(PROMPTS).read_text().splitlines()[:args.prompts]]
    for path in args.models:
        print(json.dumps({"model": path, **oracle_score(path, rows, args.samples, args.max_new_tokens)}), flush=True)


if __name__ == "__main__":
    main()
