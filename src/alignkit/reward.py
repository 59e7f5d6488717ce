"""Stage 3: reward modeling on pairwise or K-way ranked preferences.

Two losses (`reward.loss`):
- pairwise: every (better, worse) pair is an independent row for TRL's RewardTrainer (Bradley-Terry,
  margin and centering built in);
- ranking (InstructGPT): all C(K,2) pairs of one prompt form ONE batch element, with one forward pass
  per response. TRL's RewardTrainer only knows (chosen, rejected) rows, which would run 2*C(K,2)
  forwards per prompt and spread one prompt's correlated pairs over many steps (InstructGPT saw that
  overfit), so this path is a small transformers Trainer with its own `compute_loss`.
Both paths tokenize with `reward_input_ids`, the same text the scorer and a policy rollout produce.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit.config import Recipe
from alignkit.config.reward import RewardSection
from alignkit.data.preferences import load_preference_datasets, to_pairs
from alignkit.errors import AlignkitError
from alignkit.models import (
    adapter_base,
    apply_lora,
    is_quantized_config,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    merge_dequantized,
    quantization_record,
)
from alignkit.reward_model import (
    RewardScorer,
    prompt_input_text,
    ranking_loss,
    reward_input_ids,
)
from alignkit.runio import (
    BIAS_KEY,
    LM_FLOOR_KEY,
    LM_FOLDER,
    LM_WEIGHT_KEY,
    NORMALIZATION_FILE,
    SCALE_KEY,
    MetricsLogger,
    RunDir,
    save_model,
)
from alignkit.trainer_utils import (
    make_config,
    metrics_callback,
    train_with_metrics,
    with_global_length_groups,
)

log = logging.getLogger("alignkit.reward")


def encode_rankings(rankings: list[dict], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Token ids of every response (prompt + response + EOS); rankings with a response over max_length are dropped."""
    out = []
    for r in rankings:
        ids = [reward_input_ids(tokenizer, r["prompt"], resp) for resp in r["responses"]]
        if max(len(x) for x in ids) <= max_length:
            # `length` lets the Trainer batch rankings of similar length (train_sampling_strategy);
            # `response_start` is where the responses begin (the LM loss of reward.lm_loss_coef).
            # (the prompt alone: a template's space before the answer belongs to the answer's first token)
            start = len(tokenizer(prompt_input_text(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"])
            out.append({"input_ids": ids, "margin": r["margin"], "length": max(len(x) for x in ids),
                        "response_start": start})
    dropped = len(rankings) - len(out)
    if not out:
        raise AlignkitError(f"every preference row is longer than {max_length} tokens", where="model.max_length")
    if dropped:
        # Truncating would cut off the response end, where the score is read: drop instead, and say so.
        log.warning("dropped %d of %d preference rows longer than model.max_length=%d tokens",
                    dropped, len(rankings), max_length)
    return out


@dataclass
class RankingCollator:
    """Right-pad every response of every ranking into one flat batch; keep group sizes and margins."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [ids for r in rows for ids in r["input_ids"]]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention_mask[i, : len(s)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "group_sizes": torch.tensor([len(r["input_ids"]) for r in rows]),
            "margins": torch.tensor([r["margin"] for r in rows], dtype=torch.float),
            "response_starts": torch.tensor([r.get("response_start", 0) for r in rows]),
        }


def init_lm_head(path: str, model: Any, vocab_size: int) -> torch.nn.Linear:
    """The init model's LM head, frozen: read from its safetensors (or its tied input embeddings)."""
    from safetensors import safe_open

    folder, name = Path(path), "lm_head.weight"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shard = json.loads(index.read_text())["weight_map"].get(name)
        files = [folder / shard] if shard else []
    else:
        files = [folder / "model.safetensors"]
    weight = None
    for file in files:
        if file.is_file():
            with safe_open(str(file), framework="pt") as st:
                if name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    weight = st.get_tensor(name)
    if weight is None and getattr(model.config, "tie_word_embeddings", False):
        weight = model.get_input_embeddings().weight.detach().clone()
    if weight is None or weight.shape[0] < vocab_size:
        raise AlignkitError(f"needs the init model's LM head ({name}, one row per token); {path} has none "
                            "that covers the tokenizer", where="reward.lm_loss_coef")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight.data.copy_(weight.float())
    return head.requires_grad_(False)


def best_response_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Linear, inputs: dict) -> torch.Tensor:
    """Mean next-token loss over the response tokens (EOS included) of each ranking's first, best response."""
    sizes = inputs["group_sizes"]
    first = torch.cumsum(sizes, 0) - sizes
    ids, mask = inputs["input_ids"][first], inputs["attention_mask"][first]
    positions = torch.arange(ids.shape[1], device=ids.device)
    in_response = (positions[None, :] >= inputs["response_starts"][:, None]) & mask.bool()
    logits = lm_head(hidden[first, :-1].to(lm_head.weight.dtype)).float()
    targets = ids[:, 1:].masked_fill(~in_response[:, 1:], -100)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100)


@contextlib.contextmanager
def final_hidden_states(model: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward of the reward model leaves its final hidden states (after the
    last norm: what the score head reads) in the yielded dict under "h"; PEFT-wrapped models too."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    captured: dict[str, torch.Tensor] = {}
    hook = inner.base_model.register_forward_hook(lambda _m, _i, out: captured.update(h=out[0]))  # returns None
    try:
        yield captured
    finally:
        hook.remove()


def ranking_trainer_class(center_coef: float | None, lm_head: torch.nn.Linear | None = None,
                          lm_coef: float = 0.0) -> Any:
    """A transformers Trainer whose loss is the K-way ranking loss over one flat batch of responses.

    With `lm_coef`, GRM's regulariser (Yang et al. 2024, "Regularizing Hidden States Enables Learning
    Generalizable Reward Model for LLMs") is added: the next-token loss of each ranking's best
    response, read through the init model's frozen LM head from the same forward pass's final hidden
    states, so the ranking loss cannot erase what the backbone knew. TRL's RewardTrainer has no such term.
    """
    from transformers import Trainer

    class RankingTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._lm_head = lm_head
            self._lm_sum, self._lm_n = 0.0, 0

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, **kw: Any) -> Any:
            groups = inputs["group_sizes"].tolist()
            with_lm = bool(lm_coef) and self._lm_head is not None
            with (final_hidden_states(self.accelerator.unwrap_model(model)) if with_lm
                  else contextlib.nullcontext({})) as captured:
                rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                use_cache=False).logits.squeeze(-1)
            loss = ranking_loss(rewards, groups, inputs["margins"], center_coef)
            if with_lm:
                self._lm_head = self._lm_head.to(rewards.device)
                lm_loss = best_response_lm_loss(captured["h"], self._lm_head, inputs)
                loss = loss + lm_coef * lm_loss
                if model.training:
                    self._lm_sum, self._lm_n = self._lm_sum + lm_loss.item(), self._lm_n + 1
            return (loss, {"rewards": rewards}) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if self._lm_n and "loss" in logs:  # the LM term's own mean since the last log line
                logs = {**logs, "lm_loss": round(self._lm_sum / self._lm_n, 4)}
                self._lm_sum, self._lm_n = 0.0, 0
            super().log(logs, *args, **kwargs)

        def prediction_step(self, model: Any, inputs: dict, prediction_loss_only: bool,
                            ignore_keys: list[str] | None = None) -> tuple:
            # The default step would call model(**inputs) with group_sizes; only the loss is needed.
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return RankingTrainer


def build_reward_model(recipe: Recipe, tokenizer: Any) -> Any:
    """A one-score sequence classifier initialised from the (SFT) model, LoRA-wrapped when asked."""
    path = recipe.model.name_or_path
    if adapter_base(path) is not None:
        raise AlignkitError("initialise the reward model from a full (merged) SFT model; "
                            f"run `alignkit merge {path} --out DIR` first", where="model.name_or_path")
    torch.manual_seed(recipe.seed)  # the score head is freshly initialised
    model = load_reward_model(path, recipe.model, recipe.quantization)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if recipe.peft is not None:
        # The score head is new: it must train in full beside the adapter (PEFT's modules_to_save).
        extra = [m for m in ["score"] if m not in (recipe.peft.modules_to_save or [])]
        peft = recipe.peft.model_copy(update={"modules_to_save": [*(recipe.peft.modules_to_save or []), *extra]})
        model = apply_lora(model, peft, task_type="SEQ_CLS", quantized=is_quantized_config(recipe.quantization),
                           gradient_checkpointing=recipe.train.gradient_checkpointing)
    return model


def build_trainer(recipe: Recipe, model: Any, tokenizer: Any, train_rows: list[dict], run_dir: RunDir) -> Any:
    """TRL's RewardTrainer (pairwise) or alignkit's RankingTrainer (K-way) over tokenized rows."""
    import datasets

    section = recipe.reward
    encoded = encode_rankings(train_rows, tokenizer, recipe.model.max_length)
    callbacks = [metrics_callback(run_dir)]
    # Padding dominates the cost of short preference rows; group rows of similar length unless told otherwise.
    sampling = {"train_sampling_strategy": recipe.train.trainer_kwargs.get("train_sampling_strategy",
                                                                             "group_by_length")}
    if section.loss == "pairwise":
        from trl import RewardConfig, RewardTrainer

        rows = [{"chosen_ids": e["input_ids"][0], "rejected_ids": e["input_ids"][1], "margin": e["margin"],
                 "length": e["length"]} for e in encoded]
        config = make_config(RewardConfig, recipe, run_dir, max_length=recipe.model.max_length,
                             center_rewards_coefficient=section.center_rewards_coefficient, **sampling)
        trainer_cls = with_global_length_groups(RewardTrainer)
        return trainer_cls(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                           processing_class=tokenizer, callbacks=callbacks)
    from transformers import TrainingArguments
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(model)  # as TRL's RewardTrainer does: dropout only adds noise to score differences
    config = make_config(TrainingArguments, recipe, run_dir, **sampling)
    lm_head = init_lm_head(recipe.model.name_or_path, model, len(tokenizer)) if section.lm_loss_coef else None
    trainer_cls = with_global_length_groups(
        ranking_trainer_class(section.center_rewards_coefficient, lm_head, section.lm_loss_coef))
    return trainer_cls(model=model, args=config, train_dataset=datasets.Dataset.from_list(encoded),
                       data_collator=RankingCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                       callbacks=callbacks)


def _stats(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), (x.std().item() if len(x) > 1 else 0.0)


def ranking_pair_scores(flat: torch.Tensor, rankings: list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per ranking, the scores of the better and of the worse response of each of its C(K,2) pairs.

    `flat` holds one score per response, rankings after one another, each best first."""
    better_scores, worse_scores = [], []
    for scores in flat.split([len(r["responses"]) for r in rankings]):
        better, worse = torch.triu_indices(len(scores), len(scores), offset=1)
        better_scores.append(scores[better])
        worse_scores.append(scores[worse])
    return better_scores, worse_scores


def pairwise_metrics(scorer: RewardScorer, rankings: list[dict]) -> dict[str, Any]:
    """Accuracy (better scored above worse) over all C(K,2) pairs, mean margin, chosen/rejected score spread."""
    prompts = [r["prompt"] for r in rankings for _ in r["responses"]]
    flat = scorer.score(prompts, [resp for r in rankings for resp in r["responses"]])  # each response once
    chosen, rejected = ranking_pair_scores(flat, rankings)
    c, r = torch.cat(chosen), torch.cat(rejected)
    (c_mean, c_std), (r_mean, r_std) = _stats(c), _stats(r)
    metrics: dict[str, Any] = {
        "accuracy": (c > r).float().mean().item(), "margin": (c - r).mean().item(),
        "chosen_mean": c_mean, "chosen_std": c_std, "rejected_mean": r_mean, "rejected_std": r_std, "pairs": len(c)}
    if any("subset" in row for row in rankings):  # reward.accuracy_by: per-subset accuracy and pair count
        hits: dict[str, list[bool]] = {}
        for row, better, worse in zip(rankings, chosen, rejected, strict=True):
            hits.setdefault(row["subset"], []).extend((better > worse).tolist())
        metrics["accuracy_by"] = {k: {"accuracy": round(sum(v) / len(v), 4), "pairs": len(v)}
                                  for k, v in sorted(hits.items())}
    return metrics


def reference_responses(recipe: Recipe, tokenizer: Any, sample: list[dict]) -> tuple[list[str], list[bool]]:
    """The reference (SFT) model's own sampled responses to `sample`'s prompts, batched with left padding."""
    from alignkit.eval.generate import Sampling, generate

    section = recipe.reward
    policy = load_causal_lm(recipe.model)
    prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
               for r in sample]
    sampling = Sampling(max_new_tokens=section.reference_max_new_tokens,
                        temperature=section.reference_temperature, seed=recipe.seed)
    outs = generate(policy, tokenizer, prompts, sampling, desc="reference responses")
    del policy
    tokenizer.padding_side = "right"
    return [o["text"] for o in outs], [o["ended"] for o in outs]


def normalization(recipe: Recipe, scorer: RewardScorer, tokenizer: Any,
                  train_rows: list[dict]) -> tuple[float, float]:
    """Raw mean and std of the reference responses' scores on a sample of training prompts."""
    section = recipe.reward
    sample = random.Random(recipe.seed).sample(train_rows, min(section.reference_samples, len(train_rows)))
    if section.reference_responses == "generate":
        texts, ended = reference_responses(recipe, tokenizer, sample)
    else:  # the dataset's best responses stand in for what the SFT model would say
        texts, ended = [r["responses"][0] for r in sample], [True] * len(sample)
    raw = scorer.score([r["prompt"] for r in sample], texts, ended)
    return _stats(raw)


def save_reward_model(model: Any, tokenizer: Any, run_dir: RunDir, bias: float, scale: float,
                      quantization: dict[str, Any] | None = None, lm: Any = None, lm_weight: float = 0.0,
                      lm_floor: float | None = None) -> Any:
    """adapter/ (LoRA runs) then model/: a full model that loads with AutoModelForSequenceClassification.

    `quantization`: the 4/8-bit base's record, saved with the adapter so that loading or merging it
    rebuilds the base it was trained on. `lm` (reward.lm_surprise): the language model whose surprise the
    score adds with `lm_weight` (clamped at `lm_floor` nats when set), saved as lm/ inside each folder.
    """
    stored = {BIAS_KEY: bias, SCALE_KEY: scale, LM_WEIGHT_KEY: lm_weight, LM_FLOOR_KEY: lm_floor}
    if hasattr(model, "merge_and_unload"):
        save_model(model, tokenizer, run_dir.adapter_dir, quantization=quantization,
                   extra_json={NORMALIZATION_FILE: stored})
        if lm is not None:
            save_model(lm, tokenizer, run_dir.adapter_dir / LM_FOLDER)
        model = merge_dequantized(model)  # a QLoRA base is dequantized first: model/ is the model evaluated
    for key, value in stored.items():  # the same values in config.json, where plain transformers keeps them
        setattr(model.config, key, value)
    model.config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, run_dir.model_dir)
    if lm is not None:
        save_model(lm, tokenizer, run_dir.model_dir / LM_FOLDER)
    return model


def fit_lm_weight(scorer: RewardScorer, rankings: list[dict], seed: int, n: int) -> float:
    """The weight w >= 0 of the LM surprise that, beside the trained head, best explains the training comparisons.

    One-dimensional logistic regression on up to n rankings: w minimises the mean over their (better, worse)
    pairs of softplus(-(head_b - head_w + w (surprise_b - surprise_w))). Convex in w, so a ternary search;
    0 when the surprise does not help (it then stays out of the score).
    """
    sample = random.Random(seed + 2).sample(rankings, min(n, len(rankings)))
    heads, surprise = scorer.features([r["prompt"] for r in sample for _ in r["responses"]],
                                      [x for r in sample for x in r["responses"]])
    (head_b, head_w), (surprise_b, surprise_w) = (ranking_pair_scores(x, sample) for x in (heads, surprise))
    dh = (torch.cat(head_b) - torch.cat(head_w)).double()
    ds = (torch.cat(surprise_b) - torch.cat(surprise_w)).double()

    def loss(w: float) -> float:
        return torch.nn.functional.softplus(-(dh + w * ds)).mean().item()

    lo, hi = 0.0, 10.0
    for _ in range(100):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (lo, b) if loss(a) <= loss(b) else (a, hi)
    w = (lo + hi) / 2
    return round(w, 6) if loss(w) < loss(0.0) else 0.0


def evaluate(recipe: Recipe, scorer: RewardScorer, train_rows: list[dict], heldout: list[dict]) -> dict[str, Any]:
    """Pairwise metrics on a sample of the (noisy) training pairs and on the held-out pairs."""
    n = recipe.reward.accuracy_samples
    sample = random.Random(recipe.seed + 1).sample(train_rows, min(n, len(train_rows)))
    metrics = {f"train_{k}": v for k, v in pairwise_metrics(scorer, sample).items()}
    if heldout:
        metrics.update({f"heldout_{k}": v for k, v in pairwise_metrics(scorer, heldout).items()})
    return metrics


def run(recipe: Recipe, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Train the reward model, normalise it, measure accuracy, save run_dir/model (and adapter/)."""
    if recipe.reward is None:
        recipe = recipe.model_copy(update={"reward": RewardSection()})
    section = recipe.reward
    train_rows = load_preference_datasets(recipe.data.datasets, "data.datasets", section.margin_column)
    heldout = load_preference_datasets(recipe.data.eval_datasets, "data.eval_datasets", section.margin_column,
                                       section.accuracy_by)
    tokenizer = load_tokenizer(recipe.model, chat=True)
    model = build_reward_model(recipe, tokenizer)
    trainer = build_trainer(recipe, model, tokenizer, to_pairs(train_rows) if section.loss == "pairwise"
                            else train_rows, run_dir)
    result, metrics = train_with_metrics(trainer, recipe, run_dir)
    if not trainer.is_world_process_zero():
        return metrics
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    scorer = RewardScorer(model, tokenizer, bias=0.0, scale=1.0)
    bias, scale, lm = 0.0, 1.0, None
    if section.lm_surprise:
        lm = load_causal_lm(recipe.model).eval()
        scorer.lm, scorer.lm_floor = lm, section.lm_surprise_floor
        fitted = fit_lm_weight(scorer, train_rows, recipe.seed, section.accuracy_samples)
        scorer.lm_weight = fitted if section.lm_surprise_weight is None else section.lm_surprise_weight
        metrics.update(lm_surprise_weight=scorer.lm_weight, lm_surprise_weight_fitted=fitted)
        if scorer.lm_floor is not None:
            metrics["lm_surprise_floor"] = scorer.lm_floor
        log.info("LM surprise weight %.4g (fitted on the training comparisons: %.4g)", scorer.lm_weight, fitted)
    if section.normalize:
        mean, std = normalization(recipe, scorer, tokenizer, train_rows)
        bias, scale = -mean, (std if section.normalize_std and std > 0 else 1.0)
        metrics.update(reference_raw_mean=mean, reference_raw_std=std, reward_bias=bias, reward_scale=scale)
    scorer.bias, scorer.scale = bias, scale
    metrics.update(evaluate(recipe, scorer, train_rows, heldout))
    save_reward_model(model, tokenizer, run_dir, bias, scale, quantization_record(recipe.quantization),
                      lm=lm if scorer.lm_weight else None, lm_weight=scorer.lm_weight,
                      lm_floor=scorer.lm_floor if scorer.lm_weight else None)
    MetricsLogger(run_dir.path / "metrics.jsonl").log(
        {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, result.global_step)
    log.info("reward model: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics
