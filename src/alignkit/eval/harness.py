"""The eval stage: generate with every model, judge pairs in both orders, compute statistics, write reports.

Run folder (besides the CLI's recipe.yaml and run.json):
    completions/<model>.jsonl   every completion, keyed by the model's content fingerprint, prompt, sample
                                and settings (resumable cache)
    judgments/verdicts.jsonl    every verdict, keyed by the judge's content, prompt and presentation (cache)
    fingerprints.json           per-file digests of the model folders, so a rerun rehashes only changed files
    judgments.jsonl             the reconciled judgments table the statistics are computed from
    human/                      pairs for annotators (judge type human)
    report.json / report.md / report.html
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit.config.base import DatasetSpec, ModelSection
from alignkit.config.eval import EvalModel, EvalSection
from alignkit.data.formats import json_type
from alignkit.data.loading import load_spec
from alignkit.data.preferences import column_value
from alignkit.errors import AlignkitError
from alignkit.eval import stats
from alignkit.eval.fingerprint import Fingerprints
from alignkit.eval.generate import (
    COMPLETION_FORMAT,
    Job,
    JsonlCache,
    Sampling,
    generate_cached,
    render_prompt,
    response_logprobs,
    settings_hash,
)
from alignkit.eval.judges import Judge, Rubric, build_judge, judge_both_orders, require_rubric, world_meta
from alignkit.eval.report import render_markdown, write_report
from alignkit.models import adapter_base, load_for_generation, load_tokenizer, same_vocabulary
from alignkit.reward_model import RewardScorer
from alignkit.rl.checkpoint import checkpoint_policies
from alignkit.runio import RunDir, atomic_write_text, read_metrics

log = logging.getLogger("alignkit.eval")
FINGERPRINTS = "fingerprints.json"


@dataclass
class ModelOutputs:
    """One contestant's completions: the judged one per prompt, extra samples, and KL bookkeeping."""

    spec: EvalModel
    main: list[dict[str, Any]]
    prompt_texts: list[str]
    extra: dict[str, list[str]] = field(default_factory=dict)  # prompt id -> texts of the diversity samples
    candidates: list[list[dict[str, Any]]] = field(default_factory=list)  # best-of-n: n per prompt
    logprobs: list[float] | None = None  # policy log-probs of `main` (when the model names a ref)
    seconds: float = 0.0
    truncated_prompts: int = 0  # prompts cut from the left to fit the model's context
    context: int | None = None  # the model's max_position_embeddings


# ---- prompts ------------------------------------------------------------------------------------------

def load_prompts(section: EvalSection) -> list[dict[str, Any]]:
    """Prompt rows {id, prompt: [messages], meta} from a JSONL/JSON file, any data file or a Hub dataset."""
    path = Path(section.prompts)
    rows = _read_json_rows(path) if path.suffix in (".jsonl", ".json") and path.is_file() else _read_dataset(section)
    out, seen = [], set()
    for i, row in enumerate(rows[: section.prompt_limit]):
        where = f"{section.prompts}:{i + 1}"
        out.append(_prompt_row(row, i, section, where))
        if out[-1]["id"] in seen:
            raise AlignkitError(f"duplicate prompt id {out[-1]['id']!r}", where=where)
        seen.add(out[-1]["id"])
    if not out:
        raise AlignkitError("no prompts", where=f"eval.prompts: {section.prompts}")
    return out


def require_world_meta(rows: Sequence[dict[str, Any]], section: EvalSection) -> None:
    """Where the oracle judges or picks best-of-n, every prompt row needs the world's `meta` (checked before
    any model generates, not when the first pair is judged)."""
    if section.judge.type != "oracle" and not any(m.best_of_n_by == "oracle" for m in section.models):
        return
    for i, row in enumerate(rows):
        if not isinstance(row["meta"], dict):
            raise AlignkitError("the oracle needs the embedded world's `meta` on every prompt row "
                                "(eval/world_prompts.jsonl); use another judge for other prompt sets",
                                where=f"{section.prompts}:{i + 1}")


def require_groups(rows: Sequence[dict[str, Any]], section: EvalSection) -> None:
    """With eval.breakdown_by, every prompt row must have that column."""
    if not section.breakdown_by:
        return
    for i, row in enumerate(rows):
        if row["group"] is None:
            raise AlignkitError(f"no column {section.breakdown_by!r} to break the win rates down by; name a column "
                                "every prompt row has, or set eval.breakdown_by: null",
                                where=f"{section.prompts}:{i + 1} (eval.breakdown_by)")


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else list(data.values())[0]
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise AlignkitError("not valid JSON", where=f"{path}:{n}") from None
    return rows


def _read_dataset(section: EvalSection) -> list[dict[str, Any]]:
    limit = section.prompt_limit
    spec = DatasetSpec(path=section.prompts, split=section.prompt_split, max_samples=limit)
    return list(load_spec(spec, where="eval.prompts"))


def _prompt_row(row: dict[str, Any], index: int, section: EvalSection, where: str) -> dict[str, Any]:
    prompt = row.get(section.prompt_column)
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        messages = [{"role": m.get("role", "user"), "content": m["content"]} for m in prompt]
    else:
        raise AlignkitError(f"column {section.prompt_column!r} must be a string or a list of messages "
                            f"(set eval.prompt_column)", where=where)
    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise AlignkitError(f"'meta' must be an object (the world's prompt metadata) or absent, got {json_type(meta)}",
                            where=where)
    out = {"id": str(row.get(section.id_column, index)), "prompt": messages, "meta": meta}
    if section.breakdown_by:  # None where the row lacks the column: require_groups says so after the meta check
        try:
            out["group"] = str(column_value(row, section.breakdown_by, where))
        except AlignkitError:
            out["group"] = None
    return out


# ---- generation ---------------------------------------------------------------------------------------

def sampling_of(section: EvalSection) -> Sampling:
    """The recipe's sampling settings."""
    g = section.generation
    return Sampling(g.max_new_tokens, g.temperature, g.top_p, g.top_k, g.batch_size, g.seed)


def free(model: Any) -> None:
    """Release a model's memory before the next one loads."""
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_jobs(spec: EvalModel, rows: Sequence[dict[str, Any]], texts: Sequence[str], sampling: Sampling,
               diversity: tuple[int, int], fingerprint: str) -> list[Job]:
    """Every completion one model needs: n candidates (best-of-n) or 1, plus diversity samples.

    Keys hold the model's content `fingerprint`, not its path: a model replaced at the same path
    generates afresh. The rendered prompt text (chat template included) is part of every key.
    """
    n_main = spec.best_of_n or 1
    extra_samples, extra_prompts = (0, 0) if spec.best_of_n else diversity
    jobs = []
    for k, (row, text) in enumerate(zip(rows, texts, strict=True)):
        count = n_main + (extra_samples if k < extra_prompts else 0)
        for s in range(count):
            key = settings_hash(COMPLETION_FORMAT, fingerprint, spec.prompting, sampling.settings(), row["id"],
                                text, s)
            jobs.append(Job(row["id"], s, text, key))
    return jobs


def generate_for_model(spec: EvalModel, rows: Sequence[dict[str, Any]], section: EvalSection,
                       run_dir: RunDir, fewshot_template: str | None, need_logprobs: bool) -> ModelOutputs:
    """Produce (or read back) one model's completions; the model is loaded only when it has work, then freed."""
    start = time.time()
    sampling = sampling_of(section)
    tokenizer = load_tokenizer(ModelSection(name_or_path=spec.path), padding_side="left")
    texts = [render_prompt(tokenizer, r["prompt"], spec.prompting, fewshot_template) for r in rows]
    g = section.generation
    context = context_length(spec.path)
    texts, n_cut = fit_prompts(tokenizer, texts, prompt_budget(context, g.max_new_tokens, spec.name))
    if n_cut:
        log.warning("%s: %d of %d prompts cut from the left to fit its context of %d tokens", spec.name, n_cut,
                    len(texts), context)
    fingerprint = Fingerprints(run_dir.path / FINGERPRINTS)(spec.path)
    jobs = model_jobs(spec, rows, texts, sampling, (g.diversity_samples, g.diversity_prompts), fingerprint)
    cache = JsonlCache(run_dir.path / "completions" / f"{spec.name}.jsonl")
    if all(cache.get(j.key) for j in jobs) and not need_logprobs:
        out = _collect(spec, [cache.get(j.key) for j in jobs], jobs, texts)
        out.seconds, out.truncated_prompts, out.context = time.time() - start, n_cut, context
        return out
    model, tokenizer = load_for_generation(spec.path, tokenizer)
    records = generate_cached(model, tokenizer, jobs, sampling, cache, fewshot=spec.prompting == "fewshot",
                              desc=f"generating ({spec.name})")
    out = _collect(spec, records, jobs, texts)
    out.truncated_prompts, out.context = n_cut, context
    if need_logprobs:
        out.logprobs = response_logprobs(model, tokenizer, texts, [r["token_ids"] for r in out.main],
                                         sampling.temperature, g.batch_size)
    free(model)
    out.seconds = time.time() - start
    return out


def context_length(path: str) -> int | None:
    """A model's context (max_position_embeddings, n_positions for GPT-2) from its config; None when unknown."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(adapter_base(path) or path)
    except (OSError, ValueError):
        return None  # the model loader reports a folder it cannot load, with its own message
    return getattr(config, "max_position_embeddings", None)


def prompt_budget(context: int | None, max_new_tokens: int, name: str) -> int | None:
    """How many prompt tokens fit beside max_new_tokens in the context; a one-line error when none do."""
    if context is None:
        return None
    if max_new_tokens >= context:
        raise AlignkitError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in model {name!r}'s "
                            f"context of {context} tokens (max_position_embeddings)",
                            where="eval.generation.max_new_tokens")
    return context - max_new_tokens


def fit_prompts(tokenizer: Any, texts: Sequence[str], budget: int | None) -> tuple[list[str], int]:
    """Prompts longer than `budget` tokens cut from the left (the question and the generation prompt are at
    the end, so the end is kept), and how many were cut."""
    if budget is None:
        return list(texts), 0
    out, cut = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            out.append(text)
            continue
        cut += 1
        keep = budget
        while True:  # decoding then re-encoding may merge tokens differently: shorten until it fits
            tail = tokenizer.decode(ids[-keep:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if keep <= 1 or len(tokenizer(tail, add_special_tokens=False)["input_ids"]) <= budget:
                break
            keep -= 1
        out.append(tail)
    return out, cut


def preflight(section: EvalSection) -> None:
    """What can be refused from configs and tokenizers alone, before any model generates."""
    for i, m in enumerate(section.models):
        prompt_budget(context_length(m.path), section.generation.max_new_tokens, m.name)
        if m.prompting == "chat" and not load_tokenizer(ModelSection(name_or_path=m.path)).chat_template:
            raise AlignkitError(f"model {m.name!r} has no chat template (a base model?); ask it with prompting: "
                                f"fewshot or raw, or evaluate a folder that has one (an SFT run's model)",
                                where=f"eval.models[{i}].prompting")
    paths = {m.name: m.path for m in section.models}
    for i, m in enumerate(section.models):
        if not m.ref:
            continue
        policy, ref = (load_tokenizer(ModelSection(name_or_path=paths[n])) for n in (m.name, m.ref))
        if not same_vocabulary(policy, ref):
            raise AlignkitError(f"model {m.name!r} and its KL reference {m.ref!r} have different tokenizers; "
                                f"KL compares the log-probs of the same tokens, so the reference needs the same "
                                f"vocabulary", where=f"eval.models[{i}].ref")


def _collect(spec: EvalModel, records: list[dict[str, Any]], jobs: list[Job], texts: list[str]) -> ModelOutputs:
    """Group a model's records: main (sample 0), best-of-n candidates, diversity extras."""
    n_main = spec.best_of_n or 1
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for job, rec in zip(jobs, records, strict=True):
        by_prompt.setdefault(job.prompt_id, []).append(rec)
    groups = list(by_prompt.values())
    out = ModelOutputs(spec, [g[0] for g in groups], texts)
    if spec.best_of_n:
        out.candidates = [g[:n_main] for g in groups]
    else:
        out.extra = {pid: [r["text"] for r in g[1:]] for pid, g in by_prompt.items() if len(g) > 1}
    return out


def pick_best_of_n(outputs: ModelOutputs, scores: torch.Tensor) -> None:
    """Best-of-n: keep each prompt's highest-scoring candidate (`scores` is [prompts, n])."""
    outputs.main = [group[int(k)] for group, k in zip(outputs.candidates, scores.argmax(-1), strict=True)]
    outputs.candidates = []


def oracle_best_of_n(outputs: dict[str, ModelOutputs], rows: Sequence[dict[str, Any]],
                     rubric: Rubric | None) -> None:
    """Best-of-n ranked by the world's oracle (`rubric`): the gold reward's best-of-n, an upper bound for an RM."""
    for out in outputs.values():
        if out.candidates and out.spec.best_of_n_by == "oracle":
            oracle = require_rubric(rubric, f"eval.models.{out.spec.name}.best_of_n_by")
            metas = [world_meta(row) for row in rows]
            pick_best_of_n(out, torch.tensor([[oracle.score(meta, c["text"], c["ended"]).total for c in group]
                                              for group, meta in zip(out.candidates, metas, strict=True)],
                                             dtype=torch.float64))


def reward_scores(outputs: dict[str, ModelOutputs], rows: Sequence[dict[str, Any]], path: str) -> dict[str, list]:
    """Reward-model scores of every model's judged completions (best-of-n picks made first)."""
    scorer = RewardScorer.from_pretrained(path, device="cuda" if torch.cuda.is_available() else None)
    for out in outputs.values():
        if out.candidates:  # best-of-n by the reward model
            n = len(out.candidates[0])
            flat = [c for group in out.candidates for c in group]
            pick_best_of_n(out, scorer.score([r["prompt"] for r in rows for _ in range(n)], [c["text"] for c in flat],
                                             [c["ended"] for c in flat]).view(len(rows), n))
    prompts = [r["prompt"] for r in rows]
    scores = {name: scorer.score(prompts, [c["text"] for c in out.main], [c["ended"] for c in out.main]).tolist()
              for name, out in outputs.items()}
    free(scorer.model)
    return scores


def kl_to_ref(outputs: dict[str, ModelOutputs], section: EvalSection) -> dict[str, float]:
    """Mean over responses of sum_t (logp_policy - logp_ref) on the policy's own sampled tokens."""
    temperature = section.generation.temperature
    kls: dict[str, float] = {}
    dependents: dict[str, list[str]] = {}
    for name, out in outputs.items():
        if out.spec.ref:
            dependents.setdefault(out.spec.ref, []).append(name)
    for ref_name, names in dependents.items():
        model, tokenizer = load_for_generation(outputs[ref_name].spec.path)
        for name in names:
            out = outputs[name]
            ref = response_logprobs(model, tokenizer, out.prompt_texts, [r["token_ids"] for r in out.main],
                                    temperature, section.generation.batch_size)
            kls[name] = float(np.mean(np.array(out.logprobs) - np.array(ref)))
        free(model)
    return kls


# ---- judging ------------------------------------------------------------------------------------------

def resolve_pairs(section: EvalSection) -> list[tuple[str, str]]:
    """Which pairs are judged, each read as "first against second"."""
    names = [m.name for m in section.models]
    if isinstance(section.pairs, list):
        return [(a, b) for a, b in section.pairs]
    if section.pairs == "reference":
        return [(n, section.reference) for n in names if n != section.reference]
    # Later-listed models are the newer stages (base, sft, ppo): report them against the earlier ones.
    return [(names[j], names[i]) for i, j in itertools.combinations(range(len(names)), 2)]


def judge_pairs(judge: Judge, rows: Sequence[dict[str, Any]], outputs: dict[str, ModelOutputs],
                pairs: Sequence[tuple[str, str]], run_dir: RunDir) -> list[dict[str, Any]]:
    """The reconciled judgments table for every pair on every prompt (both orders, cached)."""
    jobs = [(row, a, b, outputs[a].main[k], outputs[b].main[k]) for a, b in pairs for k, row in enumerate(rows)]
    return judge_both_orders(judge, jobs, JsonlCache(run_dir.path / "judgments" / "verdicts.jsonl"),
                             export_dir=run_dir.path / "human")


# ---- statistics and report ----------------------------------------------------------------------------

def model_row(out: ModelOutputs, rows: Sequence[dict[str, Any]], judge: Judge, rewards: list[float] | None,
              kl: float | None, n_boot: int, seed: int, rubric: Rubric | None) -> dict[str, Any]:
    """One model's line in the report: length, EOS rate, judge and reward scores, KL, diversity."""
    lengths = [r["n_tokens"] for r in out.main]
    judged = [judge.score(row, rec) for row, rec in zip(rows, out.main, strict=True)]
    texts = [r["text"] for r in out.main]
    groups = [[rec["text"], *out.extra[row["id"]]] for row, rec in zip(rows, out.main, strict=True)
              if row["id"] in out.extra]
    return {
        "name": out.spec.name, "path": out.spec.path, "prompting": out.spec.prompting,
        "best_of_n": out.spec.best_of_n,
        "mean_length": float(np.mean(lengths)), "mean_length_ci": list(stats.bootstrap_ci(lengths, n_boot=n_boot,
                                                                                            seed=seed)),
        "eos_rate": float(np.mean([r["ended"] for r in out.main])),
        # answers to the world's unknown-name prompts that state a value; None for other prompt sets
        "hallucination_rate": rubric.hallucination_rate(rows, out.main) if rubric else None,
        "judge_score": float(np.mean(judged)) if None not in judged else None,
        "reward_mean": float(np.mean(rewards)) if rewards else None,
        "reward_ci": list(stats.bootstrap_ci(rewards, n_boot=n_boot, seed=seed)) if rewards else None,
        "kl_to_ref": kl, "ref": out.spec.ref,
        "distinct_1": stats.distinct_n(texts, 1), "distinct_2": stats.distinct_n(texts, 2),
        "sample_entropy": stats.sample_entropy(groups) if groups else None,
        "generation_seconds": round(out.seconds, 2),
        "truncated_prompts": out.truncated_prompts, "context": out.context,
    }


def pair_rows(judgments: list[dict[str, Any]], pairs: Sequence[tuple[str, str]], n_boot: int,
              seed: int) -> list[dict[str, Any]]:
    """pair_summary rows with the AlpacaEval 2 length-controlled win rate of each pair added."""
    rows = stats.pair_summary(judgments, n_boot=n_boot, seed=seed, pairs=pairs)
    for row in rows:
        lc = stats.length_controlled_win_rate(judgments, row["model_a"], row["model_b"],
                                              n_boot=min(n_boot, 200), seed=seed)
        row.update({k: lc[k] for k in ("lc_win_rate", "lc_ci_low", "lc_ci_high", "length_coef")})
    return rows


def build_report(section: EvalSection, rows: list[dict[str, Any]], outputs: dict[str, ModelOutputs],
                 judgments: list[dict[str, Any]], pairs: list[tuple[str, str]], judge: Judge,
                 rewards: dict[str, list], kls: dict[str, float], seed: int, rubric: Rubric | None) -> dict[str, Any]:
    """The report dict in `alignkit.eval.report`'s schema."""
    n_boot = section.n_bootstrap
    return {
        "meta": {"title": "Win-rate report", "judge": judge.describe(), "prompt_set": section.prompts,
                 "n_prompts": len(rows), "generation": section.generation.model_dump(),
                 "seeds": {"generation": section.generation.seed, "bootstrap": seed},
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "reference": section.reference,
                 "unparsed_verdicts": getattr(judge, "unparsed", 0),
                 "warnings": [f"{o.truncated_prompts} of {len(rows)} prompts of {name} were cut from the left "
                              f"to fit its context of {o.context} tokens"
                              for name, o in outputs.items() if o.truncated_prompts]},
        "models": [model_row(out, rows, judge, rewards.get(name), kls.get(name), n_boot, seed, rubric)
                   for name, out in outputs.items()],
        "pairs": pair_rows(judgments, pairs, n_boot, seed),
        "ratings": stats.bradley_terry(judgments, n_boot=n_boot, seed=seed),
        **({"breakdown": breakdown(section.breakdown_by, rows, judgments, pairs, n_boot, seed)}
           if section.breakdown_by else {}),
    }


def breakdown(column: str, rows: Sequence[dict[str, Any]], judgments: Sequence[dict[str, Any]],
              pairs: Sequence[tuple[str, str]], n_boot: int, seed: int) -> dict[str, Any]:
    """Each pair's win rate (prompt-bootstrap interval within the group) per value of the prompts' `column`."""
    group_of = {row["id"]: row["group"] for row in rows}
    out = []
    for group in sorted(set(group_of.values())):
        subset = [j for j in judgments if group_of.get(j["prompt_id"]) == group]
        out += [{"group": group, **row} for row in stats.pair_summary(subset, n_boot=n_boot, seed=seed, pairs=pairs)]
    return {"by": column, "rows": out}


def compact_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The run's headline numbers: win rate per pair and rating per model."""
    out: dict[str, Any] = {f"win_rate/{p['model_a']}_vs_{p['model_b']}": p["win_rate"] for p in report["pairs"]}
    out.update({f"rating/{r['model']}": r["rating"] for r in report["ratings"]})
    out["n_prompts"] = report["meta"]["n_prompts"]
    return out


# ---- PPO checkpoints: win rate against KL -----------------------------------------------------------

def kl_curve(section: EvalSection, rows: list[dict[str, Any]], outputs: dict[str, ModelOutputs], judge: Judge,
             run_dir: RunDir, seed: int) -> list[dict[str, Any]]:
    """Judge win rate of each PPO checkpoint against `ppo_against` (default: the reference), by its KL."""
    against = section.ppo_against or section.reference or section.models[0].name
    curve = []
    for checkpoint, policy, kl in checkpoint_policies(section.ppo_run, where=f"eval.ppo_run: {section.ppo_run}"):
        name = f"ppo-{checkpoint}"
        spec = EvalModel(name=name, path=str(policy))
        out = generate_for_model(spec, rows, section.model_copy(update={"generation": section.generation.model_copy(
            update={"diversity_samples": 0})}), run_dir, None, need_logprobs=False)
        judgments = judge_pairs(judge, rows, {name: out, against: outputs[against]}, [(name, against)], run_dir)
        summary = stats.pair_summary(judgments, n_boot=section.n_bootstrap, seed=seed)[0]
        curve.append({"checkpoint": checkpoint, "kl": kl, "win_rate": summary["win_rate"],
                      "ci_low": summary["ci_low"], "ci_high": summary["ci_high"], "against": against})
    return curve


def training_curves(ppo_run: str) -> dict[str, Any]:
    """The PPO run's reward and KL curves from its metrics.jsonl."""
    rows = read_metrics(Path(ppo_run) / "metrics.jsonl")
    keys = ("objective/scores", "objective/kl", "objective/rlhf_reward")
    return {"ppo": {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys if any(k in r for r in rows)}}


# ---- the stage --------------------------------------------------------------------------------------

def run(recipe: Any, run_dir: RunDir, recipe_path: str, rubric: Rubric | None = None) -> dict[str, Any]:
    """Generate, judge, compute statistics, write report.json/md/html, print the Markdown, return metrics.

    `rubric`: the oracle's (alignkit.stages.evaluate hands in the embedded world's; the harness imports no world).
    """
    section: EvalSection = recipe.eval
    timing: dict[str, float] = {}
    start = time.time()
    rows = load_prompts(section)
    require_world_meta(rows, section)
    require_groups(rows, section)
    preflight(section)
    needs_fewshot = any(m.prompting == "fewshot" for m in section.models)
    template = Path(section.fewshot_template).read_text() if needs_fewshot else None
    refs = {m.name for m in section.models if m.ref}
    outputs = {m.name: generate_for_model(m, rows, section, run_dir, template, m.name in refs)
               for m in section.models}
    timing["generation_s"] = time.time() - start
    t = time.time()
    oracle_best_of_n(outputs, rows, rubric)
    rewards = reward_scores(outputs, rows, section.reward_model) if section.reward_model else {}
    kls = kl_to_ref(outputs, section)
    timing["reward_kl_s"] = time.time() - t
    t = time.time()
    judge = build_judge(section.judge, section.reward_model, seed=recipe.seed,
                        fingerprint=Fingerprints(run_dir.path / FINGERPRINTS), rubric=rubric)
    pairs = resolve_pairs(section)
    judgments = judge_pairs(judge, rows, outputs, pairs, run_dir)
    atomic_write_text(run_dir.path / "judgments.jsonl", "".join(json.dumps(j) + "\n" for j in judgments))
    timing["judging_s"] = time.time() - t
    t = time.time()
    report = build_report(section, rows, outputs, judgments, pairs, judge, rewards, kls, recipe.seed, rubric)
    timing["statistics_s"] = time.time() - t
    if section.ppo_run:
        t = time.time()
        report["kl_curve"] = kl_curve(section, rows, outputs, judge, run_dir, recipe.seed)
        report["training_curves"] = training_curves(section.ppo_run)
        timing["kl_curve_s"] = time.time() - t
    judge.close()
    timing["total_s"] = time.time() - start
    report["meta"]["timing"] = {k: round(v, 2) for k, v in timing.items()}
    write_report(run_dir.path, report)
    print(render_markdown(report))
    return {**compact_metrics(report), "seconds": round(timing["total_s"], 2)}
