"""Eval generation: alignkit.eval.generate.generate with batch_size 32 vs 1, generated tokens/s.

64 held-out prompts (eval/world_prompts.jsonl) through tiny-sft's chat template, sampling at
temperature 0.7 up to 64 new tokens. Generated tokens are those kept in each completion (up to and
including EOS), so the tokens a batch computes for rows that already stopped count as cost, not output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common

MODEL, PROMPTS, N_PROMPTS, NEW_TOKENS = "data/models/tiny-sft", "eval/world_prompts.jsonl", 64, 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    common.setup()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.eval.generate import Sampling, generate, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    rows = [json.loads(line) for line in Path(PROMPTS).read_text().splitlines()][:N_PROMPTS]
    prompts = [render_prompt(tokenizer, r["prompt"], "chat") for r in rows]
    generate(model, tokenizer, prompts[:4], Sampling(max_new_tokens=8), progress=False)  # warm-up

    def tokens_per_s(batch_size: int) -> float:
        sampling = Sampling(max_new_tokens=NEW_TOKENS, temperature=0.7, batch_size=batch_size, seed=0)
        start = time.perf_counter()
        out = generate(model, tokenizer, prompts, sampling, progress=False)
        return sum(o["n_tokens"] for o in out) / (time.perf_counter() - start)

    values = common.interleave({"batch32": lambda _: tokens_per_s(32), "batch1": lambda _: tokens_per_s(1)},
                               args.reps)
    batched, single = common.median(values["batch32"]), common.median(values["batch1"])
    common.write_comparison(
        "eval_generation", "generated tokens/s", batched, single, "one prompt at a time (batch_size 1)", goal=4.0,
        runs=values, settings={"model": MODEL, "prompts": N_PROMPTS, "max_new_tokens": NEW_TOKENS,
                               "temperature": 0.7, "reps": args.reps},
    )


if __name__ == "__main__":
    main()
