"""The simulated annotator labels a model's own samples (InstructGPT's RM data; AlpacaFarm's noise).

InstructGPT's labelers ranked K samples *of the SFT model*; a reward model trained only on
hand-written variants never sees the policy's real mistakes (wrong town named, garbled words)
and PPO then optimises what the RM cannot judge. This samples K responses per preference prompt
from a model, scores them with the oracle, and ranks them with the same calibrated noise as the
world's programmatic preferences.

    python -m alignkit.research.annotate --model data/models/tiny-sft --out data/world/preferences_sft.jsonl
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.research.headroom import read_rows
from alignkit.world import oracle
from alignkit.world.generator import calibrate_sigma, disagreement_rate, jsonl_text, perturb, write_atomic


def annotate(model_path: str, prompts_path: str, out: str, k: int = 4, n_prompts: int = 600, noise: float = 0.25,
             seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 48) -> dict:
    """Sample k responses per prompt from the model, rank them by noisy oracle score, write ranking rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.eval.generate import Sampling, generate

    rng = random.Random(seed)
    rows = read_rows(prompts_path)
    rows = rng.sample(rows, min(n_prompts, len(rows)))
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    samples = [generate(model, tok, texts, Sampling(max_new_tokens=max_new_tokens, temperature=temperature,
                                                    batch_size=64, seed=seed + i), desc=f"sample {i + 1}/{k}")
               for i in range(k)]
    drafts = []
    for j, row in enumerate(rows):
        seen: dict[str, bool] = {}
        for s in samples:
            text, ended = s[j]["text"], s[j]["ended"]
            if text.strip() and text not in seen:
                seen[text] = ended
        if len(seen) >= 2:
            drafts.append((row, list(seen), list(seen.values())))
    scores = [[oracle.score(r["meta"], t, e).total for t, e in zip(ts, es, strict=True)] for r, ts, es in drafts]
    z = [[rng.gauss(0.0, 1.0) for _ in s] for s in scores]
    sigma = calibrate_sigma(scores, z, noise)
    noisy = perturb(scores, z, sigma)
    out_rows = [{"prompt": r["prompt"], "responses": ts,
                 "ranking": sorted(range(len(ts)), key=lambda i: (-keys[i], i)),
                 "meta": {**r["meta"], "source": model_path}}
                for (r, ts, _), keys in zip(drafts, noisy, strict=True)]
    if not out_rows:  # never replace a rankings file with an empty one
        raise AlignkitError(f"no prompt gave two different answers in {k} samples; {out} left as it was", where=out)
    write_atomic(Path(out), jsonl_text(out_rows))
    return {"rows": len(out_rows), "sigma": sigma, "measured_noise": disagreement_rate(scores, noisy)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/tiny-sft")
    ap.add_argument("--prompts", default="data/world/preferences.jsonl")
    ap.add_argument("--out", default="data/world/preferences_sft.jsonl")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-prompts", type=int, default=600)
    ap.add_argument("--noise", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.k < 2:
        ap.error("--k must be at least 2 (a ranking compares two or more answers)")
    if args.n_prompts < 1:
        ap.error("--n-prompts must be at least 1")
    if not 0.0 <= args.noise < 0.5:
        ap.error("--noise must be in [0, 0.5) (the share of flipped pairs)")
    if not Path(args.model).is_dir():
        ap.error(f"--model: no model folder {args.model}")
    if not Path(args.prompts).is_file():
        ap.error(f"--prompts: no such file {args.prompts}")
    if Path(args.out).is_dir():
        ap.error(f"--out: {args.out} is a folder; name the rankings file")
    try:
        print(annotate(args.model, args.prompts, args.out, args.k, args.n_prompts, args.noise, args.seed))
    except AlignkitError as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
