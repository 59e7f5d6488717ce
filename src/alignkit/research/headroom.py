"""Where a policy wins and loses against another, per task and rubric part, with the sampling noise averaged out.

    python -m alignkit.research.headroom data/models/tiny-sft data/models/tiny-ppo data/models/tiny-ppo@0.5 \
        data/models/tiny-base@fewshot [--prompts data/world/validation_prompts.jsonl] [--samples 8] \
        [--out headroom.json] [--best-of 16 --reward-model data/models/tiny-rm]

Samples `--samples` responses per prompt from each model (MODEL@T samples at temperature T, default 1.0, the
eval recipes' setting; MODEL@fewshot prompts it with `--fewshot-template` as the eval's few-shot base is,
MODEL@raw with the bare question; both combine with a temperature, MODEL@fewshot@0.7), scores them with the world's oracle and reports, per task: the mean of each rubric
part and the share of perfect answers. Every model after the first is compared with the first by its
expected win rate: over all sample pairs of a prompt, a win counts 1 and a tie half, averaged over prompts.
One sampled answer per prompt (what the eval report judges) is a noisy draw of that number; this is the
number itself. Use it on the validation prompts, never to tune on the eval set.

The entry `ideal` is no model: it answers every prompt with the world's reference (the ideal answer), so
`ideal MODEL` reports how often the best possible policy would beat MODEL: the most any RLHF could win
against it on these prompts.

`--best-of N --reward-model RM` adds the reward model's best-of-N of the first model (each of its `--samples`
answers per prompt is the RM's pick among N fresh samples; entry "<first>#best-of-N"), and compares every
model with it too: the baseline a policy trained on that reward model should match at a lower KL.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError
from alignkit.eval.stats import SCORE
from alignkit.world import oracle
from alignkit.world.generator import write_atomic

FEWSHOT_TEMPLATE = "eval/fewshot_template.txt"
PARTS = ("total", "correct", "format", "concise", "harmless", "ends")


PROMPTING = ("chat", "fewshot", "raw")
IDEAL = "ideal"  # the reference answers, not a model folder (a folder named so: ./ideal)


def parse_model(spec: str) -> tuple[str, float, str]:
    """"path[@T][@prompting]" (either order) -> (path, T, prompting); by default T 1.0 and the chat template.
    A trailing "@..." that is neither a number nor a prompting style belongs to the path."""
    path, temperature, prompting = spec, None, None
    for _ in range(2):  # at most one temperature and one prompting style
        head, _, tail = path.rpartition("@")
        if head and prompting is None and tail in PROMPTING:
            prompting = tail
        elif head and temperature is None and _is_number(tail):
            temperature = float(tail)
        else:
            break
        path = head
    return path, 1.0 if temperature is None else temperature, prompting or "chat"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def task_table(rows: Sequence[dict], scores: Sequence[Sequence[oracle.OracleScore]]) -> dict[str, dict[str, float]]:
    """Per task: each rubric part's mean and the share of perfect answers; scores[sample][prompt]."""
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in scores:
        for row, sc in zip(rows, sample, strict=True):
            cell = parts[row["meta"]["task"]]
            for p in PARTS:
                cell[p].append(getattr(sc, p))
            cell["perfect"].append(float(sc.total >= 1.0 - oracle.TIE_EPS))
    return {t: {p: round(statistics.fmean(v), 3) for p, v in cell.items()} for t, cell in sorted(parts.items())}


def expected_win_rate(rows: Sequence[dict], a: Sequence[Sequence[oracle.OracleScore]],
                      b: Sequence[Sequence[oracle.OracleScore]]) -> dict[str, float]:
    """Expected win rate of a over b, overall and per task: every sample of a against every sample of b."""
    per_task: dict[str, list[float]] = defaultdict(list)
    for j, row in enumerate(rows):
        wins = [SCORE[oracle.verdict(sa[j].total, sb[j].total)] for sa in a for sb in b]
        per_task[row["meta"]["task"]].append(statistics.fmean(wins))
    every = [w for ws in per_task.values() for w in ws]
    return {"all": round(statistics.fmean(every), 3), **{t: round(statistics.fmean(v), 3)
                                                        for t, v in sorted(per_task.items())}}


def sample_answers(spec: str, rows: Sequence[dict], seeds: Sequence[int], max_new_tokens: int = 48,
                   fewshot_template: str = FEWSHOT_TEMPLATE) -> list[list[dict[str, Any]]]:
    """One sampled answer per prompt for each seed from the model `spec` (parse_model): [seed][prompt]
    dicts with "text" and "ended"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.eval.generate import Sampling, generate, render_prompt

    path, temperature, prompting = parse_model(spec)
    template = Path(fewshot_template).read_text() if prompting == "fewshot" else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a config.json that is not an object
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise AlignkitError(f"not a loadable model folder ({reason})", where=f"model {spec!r}") from None
    texts = [render_prompt(tokenizer, r["prompt"], prompting, template) for r in rows]
    return [generate(model, tokenizer, texts, Sampling(max_new_tokens=max_new_tokens, temperature=temperature,
                                                       batch_size=100, seed=seed),
                     desc=f"{spec} {i + 1}/{len(seeds)}", fewshot=prompting == "fewshot")
            for i, seed in enumerate(seeds)]


def sample_scores(spec: str, rows: Sequence[dict], samples: int, seed: int = 1000, max_new_tokens: int = 48,
                  fewshot_template: str = FEWSHOT_TEMPLATE) -> list[list[oracle.OracleScore]]:
    """Oracle scores of `samples` sampled answers per prompt from the model `spec` (parse_model); for
    `ideal`, one sample: the reference answers."""
    if spec == IDEAL:
        return [[oracle.score(r["meta"], r["meta"]["reference"]) for r in rows]]
    answers = sample_answers(spec, rows, [seed + s for s in range(samples)], max_new_tokens, fewshot_template)
    return [[oracle.score(r["meta"], d["text"], d["ended"]) for r, d in zip(rows, done, strict=True)]
            for done in answers]


def pick_best(candidates: Sequence[Sequence[dict[str, Any]]], rewards: Sequence[Sequence[float]]) -> list[dict]:
    """Per prompt, the candidate with the highest reward (the first on ties): candidates[k][prompt]."""
    return [candidates[max(range(len(candidates)), key=lambda k: (rewards[k][j], -k))][j]
            for j in range(len(candidates[0]))]


def best_of_n_scores(spec: str, rows: Sequence[dict], samples: int, n: int, reward_model: str, seed: int = 1000,
                     max_new_tokens: int = 48, fewshot_template: str = FEWSHOT_TEMPLATE) -> list[list[oracle.OracleScore]]:
    """Oracle scores of `samples` best-of-n answers per prompt: each the reward model's pick among n samples
    of `spec`, drawn with seeds apart from sample_scores' (seed + 100,000 on)."""
    from alignkit.reward_model import RewardScorer

    scorer = RewardScorer.from_pretrained(reward_model)
    drawn = sample_answers(spec, rows, [seed + 100_000 + i for i in range(samples * n)], max_new_tokens,
                           fewshot_template)
    out = []
    for s in range(samples):
        group = drawn[s * n:(s + 1) * n]
        rewards = [scorer.score([r["prompt"] for r in rows], [d["text"] for d in done],
                                [d["ended"] for d in done]).tolist() for done in group]
        out.append([oracle.score(r["meta"], d["text"], d["ended"])
                    for r, d in zip(rows, pick_best(group, rewards), strict=True)])
    return out


def read_rows(prompts: str) -> list[dict[str, Any]]:
    """The world's prompt rows ({"prompt": [messages], "meta": {...}}); a row that is not one names file:line."""
    rows = []
    for n, line in enumerate(Path(prompts).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AlignkitError(f"not JSON ({exc.msg})", where=f"{prompts}:{n}") from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), list) and isinstance(row.get("meta"), dict)
                and "task" in row["meta"]):
            raise AlignkitError("needs the world's prompt row: 'prompt' (a list of messages) and its 'meta' "
                                "(the oracle scores by it; data/world/validation_prompts.jsonl has them)",
                                where=f"{prompts}:{n}")
        rows.append(row)
    if not rows:
        raise AlignkitError("no prompt rows", where=prompts)
    return rows


def headroom(specs: Sequence[str], prompts: str, samples: int = 8, seed: int = 1000, best_of: int = 0,
             reward_model: str | None = None, fewshot_template: str = FEWSHOT_TEMPLATE) -> dict[str, Any]:
    """The report described in the module docstring."""
    if best_of and not reward_model:
        raise ValueError("--best-of needs --reward-model")
    if best_of and specs[0] == IDEAL:
        raise ValueError("--best-of needs a model first, not ideal")
    rows = read_rows(prompts)
    scores = {spec: sample_scores(spec, rows, samples, seed, fewshot_template=fewshot_template) for spec in specs}
    first = specs[0]
    report = {"prompts": prompts, "n_prompts": len(rows), "samples": samples,
              "tasks": {spec: task_table(rows, s) for spec, s in scores.items()},
              "expected_win_rate_vs": first,
              "expected_win_rate": {spec: expected_win_rate(rows, scores[spec], scores[first]) for spec in specs[1:]}}
    if best_of:
        bon = f"{first}#best-of-{best_of}"
        scores[bon] = best_of_n_scores(first, rows, samples, best_of, reward_model, seed,
                                       fewshot_template=fewshot_template)
        report["tasks"][bon] = task_table(rows, scores[bon])
        report["expected_win_rate"][bon] = expected_win_rate(rows, scores[bon], scores[first])
        report["reward_model"] = reward_model
        report["expected_win_rate_vs_best_of"] = {spec: expected_win_rate(rows, scores[spec], scores[bon])
                                                  for spec in specs[1:]}
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model folders, each optionally @temperature and/or @fewshot or @raw, "
                                              "or ideal (the reference answers); the first is the baseline")
    ap.add_argument("--prompts", default="data/world/validation_prompts.jsonl")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--best-of", type=int, default=0, help="add the reward model's best-of-N of the first model")
    ap.add_argument("--reward-model", default=None, help="the reward model that picks the best of N")
    ap.add_argument("--fewshot-template", default=FEWSHOT_TEMPLATE, help="the prompt of MODEL@fewshot ({prompt} "
                                                                         "marks the question)")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.best_of < 0:
        ap.error("--samples must be at least 1 and --best-of at least 0")
    if args.out and Path(args.out).is_dir():
        ap.error(f"--out: {args.out} is a folder; name the report file")
    if args.best_of and not args.reward_model:
        ap.error("--best-of needs --reward-model")
    if args.best_of and args.models[0] == IDEAL:
        ap.error("--best-of samples the first model: put a model folder first, not ideal")
    for spec in args.models:
        if spec == IDEAL:
            continue
        path, _, prompting = parse_model(spec)
        if not Path(path).is_dir():
            ap.error(f"model {spec!r}: no folder {path}")
        if prompting == "fewshot" and not Path(args.fewshot_template).is_file():
            ap.error(f"model {spec!r}: no few-shot template {args.fewshot_template} (--fewshot-template)")
    for name, path in (("--prompts", args.prompts), ("--reward-model", args.reward_model)):
        if path and not Path(path).exists():
            ap.error(f"{name}: no such file or folder {path}")
    try:
        text = json.dumps(headroom(args.models, args.prompts, args.samples, args.seed, args.best_of,
                                   args.reward_model, args.fewshot_template), indent=2)
    except AlignkitError as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    if args.out:
        write_atomic(Path(args.out), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
