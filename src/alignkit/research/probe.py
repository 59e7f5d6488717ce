"""Probe where a reward model's ceiling comes from: pickers of a policy's own samples, judged by the oracle.

    python -m alignkit.research.probe --policy data/models/tiny-sft --reward data/models/tiny-rm \
        [--judge-lm PATH] [--n 8] [--out probe.json]

Samples n + 1 responses per held-out prompt from the policy (temperature 0.7, as recipes/eval_winrate.yaml).
The last sample stands in for "the policy". The report has three parts:
- best-of-k win rates against that sample (k = 4 and n; ties count half). The pick is made by the reward
  model, by the policy's own log-likelihood, by a judge LM's log-likelihood (--judge-lm) and by the oracle.
  The oracle's pick is the headroom. The reward model's pick is what PPO can approach on that reward.
- fact prompts: how often a sample names the entity it was asked about, and how often its value is right.
- on the policy's SFT demonstrations: the mean log-probability of the first response token vs the rest.
  A first token the policy never learnt (a name spelt at the start of a line) shows up here.

    python -m alignkit.research.probe --fact-contrast data/models/tiny-sft data/models/tiny-rm \
        --prompts data/world/validation_prompts.jsonl

asks whether a model knows facts in the chat context when nothing but the fact differs: each fact, list and
one-word prompt's reference answer against the same answer with one value swapped for another of its
attribute. A language model picks by log-likelihood, a reward model by score (chance is 50%).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit.eval.generate import Sampling, generate, response_logprobs
from alignkit.eval.stats import SCORE
from alignkit.world import oracle
from alignkit.world.generator import write_atomic

TEMPERATURE, MAX_NEW_TOKENS = 0.7, 48


def win_rate(picked: Sequence[float], other: Sequence[float]) -> float:
    """Percent of prompts where `picked` scores above `other`, ties (within the oracle's epsilon) half."""
    wins = sum(SCORE[oracle.verdict(a, b)] for a, b in zip(picked, other, strict=True))
    return 100.0 * wins / len(picked)


def best_of(candidates: list[list[dict]], key: Callable[[dict], float], k: int) -> list[float]:
    """Per prompt, the oracle score of the candidate among the first k that `key` ranks highest.

    The probe keeps sample n (the last) out of every pick: it is what the picks are compared with.
    """
    return [max(c[:k], key=key)["oracle"] for c in candidates]


def text_logprobs(model: Any, tokenizer: Any, prompt: str, responses: Sequence[tuple[str, bool]]) -> list[float]:
    """Sum of log p(token) over each response's text, re-tokenized, its EOS included when it ended."""
    ids = [tokenizer(text + (tokenizer.eos_token if ended else ""), add_special_tokens=False)["input_ids"]
           for text, ended in responses]
    return response_logprobs(model, tokenizer, [prompt] * len(ids), ids)


@torch.no_grad()
def first_token_logprobs(model: Any, tokenizer: Any, rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per task, the mean log-prob of the first assistant token vs the later ones, on single-turn demos."""
    first: dict[str, list[float]] = defaultdict(list)
    rest: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        enc = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        logp = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
        positions = [i for i, m in enumerate(enc["assistant_masks"]) if m]
        task = row.get("meta", {}).get("task", "all")
        first[task].append(float(logp[positions[0] - 1]))
        rest[task].extend(float(logp[p - 1]) for p in positions[1:])
    return {t: {"first": statistics.fmean(first[t]), "rest": statistics.fmean(rest[t]) if rest[t] else 0.0,
                "demos": len(first[t])} for t in first}


@torch.no_grad()
def knowledge(model: Any, tokenizer: Any, rows: Sequence[dict], choices: int = 6, seed: int = 0) -> dict[str, Any]:
    """Share of the facts that rows ask about which the model picks out of `choices` values by likelihood.

    Each fact's canonical sentence ("The river of Zakkos is the Tavira.") is scored after an EOS (a
    document start) with the true value and `choices - 1` other values of the attribute; the fact is
    known when the true value's sentence is the likeliest. Chance is 1 / choices.
    """
    import random

    from alignkit.world.entities import fact_sentence

    facts: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for row in rows:
        meta = row["meta"]
        if meta.get("unknown") or meta.get("harmful"):
            continue
        for attribute, expected, conflicts in zip(meta["attributes"], meta["expected"], meta["conflicts"],
                                                  strict=True):
            facts.setdefault((meta["entity"], attribute), (expected, conflicts))
    rng = random.Random(seed)
    known = 0
    for (entity, attribute), (expected, conflicts) in sorted(facts.items()):
        values = [expected, *rng.sample(conflicts, min(choices - 1, len(conflicts)))]
        ids = [[tokenizer.eos_token_id, *tokenizer(fact_sentence(attribute, entity, v))["input_ids"]] for v in values]
        width = max(map(len, ids))
        batch = torch.tensor([x + [tokenizer.eos_token_id] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        logp = torch.log_softmax(model(input_ids=batch, attention_mask=mask).logits[:, :-1].float(), -1)
        token_logp = logp.gather(-1, batch[:, 1:, None]).squeeze(-1) * mask[:, 1:]  # (choices, T-1)
        known += int(token_logp.sum(-1).argmax()) == 0
    return {"facts": len(facts), "choices": choices, "known": known / max(len(facts), 1)}


def fact_stats(rows: Sequence[dict], candidates: list[list[dict]]) -> dict[str, float]:
    """On fact prompts: share of samples naming the asked entity, share with the right value, and both."""
    named = right = both = total = 0
    for row, cands in zip(rows, candidates, strict=True):
        meta = row["meta"]
        if meta["task"] != "fact":
            continue
        for c in cands:
            n = meta["entity"].lower() in c["text"].lower()
            r = oracle.score(meta, c["text"], c["ended"]).correct >= 1.0
            named, right, both, total = named + n, right + r, both + (n and r), total + 1
    return {"samples": total, "names_entity": named / max(total, 1), "value_right": right / max(total, 1),
            "value_right_when_named": both / max(named, 1),
            "value_right_when_not_named": (right - both) / max(total - named, 1)}


def swap_value(meta: dict, index: int = 0) -> str | None:
    """The prompt's reference answer with one expected value replaced by its `index`-th conflicting value.

    Capitalisation follows the replaced word ("Potter." -> "Baker."); None when the reference does not
    spell the value or there is nothing to swap in.
    """
    import re

    reference = meta["reference"]
    for expected, conflicts in zip(meta.get("expected", []), meta.get("conflicts", []), strict=True):
        found = re.search(r"(?<![A-Za-z0-9])" + re.escape(expected) + r"(?![A-Za-z0-9])", reference, re.IGNORECASE)
        if found and conflicts:
            other = conflicts[index % len(conflicts)]
            other = other[:1].upper() + other[1:] if found.group(0)[:1].isupper() else other[:1].lower() + other[1:]
            return reference[:found.start()] + other + reference[found.end():]
    return None


def contrast_pairs(rows: Sequence[dict], per_row: int = 2) -> list[tuple[dict, str, str]]:
    """(row, reference, value-swapped reference) for the fact, list and one-word rows."""
    pairs = []
    for row in rows:
        meta = row["meta"]
        if meta.get("unknown") or meta.get("harmful") or meta["task"] not in ("fact", "list", "one_word"):
            continue
        for i in range(per_row):
            wrong = swap_value(meta, i)
            if wrong is not None and wrong != meta["reference"]:
                pairs.append((row, meta["reference"], wrong))
    return pairs


def fact_contrast(path: str, rows: Sequence[dict]) -> dict[str, Any]:
    """Share of contrast pairs where the model at `path` prefers the true value, per task and overall.

    A reward model (a sequence-classification head) prefers by score; a causal LM by the log-likelihood
    of the whole answer, spelt as the chat template spells it, EOS included.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from alignkit.reward_model import RewardScorer, reward_input_ids

    pairs = contrast_pairs(rows)
    if not pairs:
        return {"pairs": 0}
    is_rm = any(a.endswith("ForSequenceClassification") for a in AutoConfig.from_pretrained(path).architectures or [])
    if is_rm:
        scorer = RewardScorer.from_pretrained(path)
        right = scorer.score([r["prompt"] for r, _, _ in pairs], [a for _, a, _ in pairs]).tolist()
        wrong = scorer.score([r["prompt"] for r, _, _ in pairs], [b for _, _, b in pairs]).tolist()
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()

        def loglik(answers: list[str]) -> list[float]:
            prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                       for r, _, _ in pairs]
            ids = [reward_input_ids(tokenizer, r["prompt"], a)[len(tokenizer(p, add_special_tokens=False)["input_ids"]):]
                   for (r, _, _), p, a in zip(pairs, prompts, answers, strict=True)]
            return response_logprobs(model, tokenizer, prompts, ids)

        right, wrong = loglik([a for _, a, _ in pairs]), loglik([b for _, _, b in pairs])
    by_task: dict[str, list[bool]] = defaultdict(list)
    for (row, _, _), a, b in zip(pairs, right, wrong, strict=True):
        by_task[row["meta"]["task"]].append(a > b)
    hits = [x for v in by_task.values() for x in v]
    return {"model": path, "kind": "reward_model" if is_rm else "lm", "pairs": len(hits),
            "prefers_true_value": round(sum(hits) / len(hits), 3),
            "by_task": {t: round(sum(v) / len(v), 3) for t, v in sorted(by_task.items())}}


def probe(policy: str, reward: str, prompts: str, sft_data: str | None, judge_lm: str | None = None,
          n: int = 8, seed: int = 0, demos: int = 400) -> dict[str, Any]:
    """Sample, score and pick; returns the report described in the module docstring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.reward_model import RewardScorer

    rows = [json.loads(line) for line in Path(prompts).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    samples = [generate(model, tokenizer, texts, Sampling(max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE,
                                                          batch_size=50, seed=seed + 100 + i), desc=f"sample {i + 1}")
               for i in range(n + 1)]
    scorer = RewardScorer.from_pretrained(reward)
    judge = AutoModelForCausalLM.from_pretrained(judge_lm).eval() if judge_lm else None
    candidates: list[list[dict]] = []
    for j, row in enumerate(rows):
        cands = [{"text": s[j]["text"], "ended": s[j]["ended"],
                  "oracle": oracle.score(row["meta"], s[j]["text"], s[j]["ended"]).total} for s in samples]
        pairs = [(c["text"], c["ended"]) for c in cands]
        rm = scorer.score([row["prompt"]] * len(cands), [c["text"] for c in cands], [c["ended"] for c in cands])
        for c, r, lp in zip(cands, rm.tolist(), text_logprobs(model, tokenizer, texts[j], pairs), strict=True):
            c.update(reward=r, policy_logprob=lp)
        if judge is not None:
            for c, lp in zip(cands, text_logprobs(judge, tokenizer, texts[j], pairs), strict=True):
                c["judge_logprob"] = lp
        candidates.append(cands)
    other = [c[n]["oracle"] for c in candidates]
    pickers = ["reward", "policy_logprob", *(["judge_logprob"] if judge else []), "oracle"]
    report: dict[str, Any] = {
        "policy": policy, "reward": reward, "judge_lm": judge_lm, "prompts": len(rows), "n": n,
        "temperature": TEMPERATURE,
        "best_of": {p: {str(k): round(win_rate(best_of(candidates, lambda c, p=p: c[p], k), other), 1)
                        for k in sorted({min(4, n), n})} for p in pickers},
        "fact_prompts": fact_stats(rows, [c[:n] for c in candidates]),
    }
    if sft_data:
        demo_rows = [json.loads(line) for line in Path(sft_data).read_text().splitlines() if line.strip()]
        single = [r for r in demo_rows if len(r.get("messages", [])) == 2][:demos]
        report["first_token_logprob"] = first_token_logprobs(model, tokenizer, single)
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="data/models/tiny-sft")
    ap.add_argument("--reward", default="data/models/tiny-rm")
    ap.add_argument("--judge-lm", default=None, help="a causal LM whose log-likelihood picks too")
    ap.add_argument("--prompts", default="eval/world_prompts.jsonl")
    ap.add_argument("--sft-data", default="data/world/sft.jsonl", help="demos for the first-token probe ('' = skip)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--knowledge", default=None, metavar="MODEL",
                    help="only report the share of held-out facts MODEL knows (6-way likelihood) and exit")
    ap.add_argument("--fact-contrast", nargs="+", default=None, metavar="MODEL",
                    help="only report how often each MODEL (LM or reward model) prefers a true value over a "
                         "swapped one in the same answer, and exit")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")
    if not Path(args.prompts).is_file():
        ap.error(f"--prompts: no such file {args.prompts}")
    models = ([("--knowledge", args.knowledge)] if args.knowledge else
              [("--fact-contrast", m) for m in args.fact_contrast] if args.fact_contrast else
              [("--policy", args.policy), ("--reward", args.reward), ("--judge-lm", args.judge_lm)])
    for flag, path in models:
        if path and not Path(path).is_dir():
            ap.error(f"{flag}: no model folder {path}")
    if args.out and Path(args.out).is_dir():
        ap.error(f"--out: {args.out} is a folder; name the report file")
    if args.fact_contrast:
        rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        print(json.dumps([fact_contrast(m, rows) for m in args.fact_contrast], indent=2))
        return
    if args.knowledge:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        model = AutoModelForCausalLM.from_pretrained(args.knowledge).eval()
        print(json.dumps(knowledge(model, AutoTokenizer.from_pretrained(args.knowledge), rows)))
        return
    report = probe(args.policy, args.reward, args.prompts, args.sft_data or None, args.judge_lm, args.n, args.seed)
    text = json.dumps(report, indent=2)
    if args.out:
        write_atomic(Path(args.out), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
