"""Reward stage: losses against hand computations, a short training run, normalisation, saved models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from alignkit import reward
from alignkit.config.recipe import validate_recipe
from alignkit.errors import AlignkitError
from alignkit.reward_model import (
    RewardScorer,
    centering_term,
    pairwise_loss,
    prompt_input_text,
    ranking_loss,
    reward_input_ids,
    reward_input_text,
    sequence_scores,
)
from alignkit.runio import QUANT_FILE, RunDir
from tests.conftest import write_jsonl


def nll(d: float) -> float:
    """-log sigmoid(d), written out."""
    return math.log(1 + math.exp(-d))


# ---- losses ----------------------------------------------------------------------------------------

def test_k3_ranking_loss_equals_hand_computation():
    # One prompt, K=3, scores best first: pairs (0,1), (0,2), (1,2) have differences 1.5, 3.0, 1.5.
    rewards = torch.tensor([2.0, 0.5, -1.0])
    want = (nll(1.5) + nll(3.0) + nll(1.5)) / 3
    assert ranking_loss(rewards, [3]).item() == pytest.approx(want, rel=1e-6)


def test_ranking_loss_averages_prompts_not_pairs():
    # K=3 (3 pairs) and K=2 (1 pair): each prompt weighs the same, as InstructGPT's 1/C(K,2) scaling.
    rewards = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0])
    k3 = (nll(1.5) + nll(3.0) + nll(1.5)) / 3
    want = (k3 + nll(-1.0)) / 2
    assert ranking_loss(rewards, [3, 2]).item() == pytest.approx(want, rel=1e-6)


def test_pairwise_loss_with_margin():
    r_chosen, r_rejected = torch.tensor([1.0, 0.2]), torch.tensor([0.5, 0.4])
    margin = torch.tensor([0.25, 1.0])
    want = (nll(1.0 - 0.5 - 0.25) + nll(0.2 - 0.4 - 1.0)) / 2
    assert pairwise_loss(r_chosen, r_rejected, margin).item() == pytest.approx(want, rel=1e-6)
    # A K=3 group's margin applies to each of its pairs.
    group = ranking_loss(torch.tensor([2.0, 0.5, -1.0]), [3], margins=torch.tensor([0.5]))
    assert group.item() == pytest.approx((nll(1.0) + nll(2.5) + nll(1.0)) / 3, rel=1e-6)


def test_k2_ranking_loss_is_the_pairwise_loss():
    rewards = torch.tensor([0.3, -0.2, 1.5, 2.0])
    pairs = pairwise_loss(rewards[0::2], rewards[1::2], torch.tensor([0.1, 0.0]))
    assert ranking_loss(rewards, [2, 2], torch.tensor([0.1, 0.0])).item() == pytest.approx(pairs.item())


def test_centering_term():
    # Eisenstein et al. / TRL: c * mean over pairs of (r_better + r_worse)^2.
    assert centering_term(torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])).item() == pytest.approx(8.0)
    rewards, c = torch.tensor([2.0, 0.5, -1.0]), 0.1
    pair_sums = [2.5, 1.0, -0.5]
    want = (nll(1.5) + nll(3.0) + nll(1.5)) / 3 + c * sum(s * s for s in pair_sums) / 3
    assert ranking_loss(rewards, [3], center_coef=c).item() == pytest.approx(want, rel=1e-6)
    # Shifting all rewards leaves the ranking term unchanged and the centering term minimal at mean 0.
    base = ranking_loss(rewards - rewards.mean(), [3], center_coef=c)
    assert ranking_loss(rewards - rewards.mean() + 1.0, [3], center_coef=c) > base


def test_collator_runs_one_forward_row_per_response(tiny_tokenizer):
    rows = [{"prompt": [{"role": "user", "content": "Hi?"}], "responses": ["A.", "Bb.", "C"], "margin": 0.0},
            {"prompt": [{"role": "user", "content": "Yo?"}], "responses": ["D.", "E."], "margin": 1.0}]
    batch = reward.RankingCollator(tiny_tokenizer.pad_token_id)(reward.encode_rankings(rows, tiny_tokenizer, 64))
    assert batch["input_ids"].shape[0] == 5  # 3 + 2 responses, not C(3,2) + C(2,2) pairs
    assert batch["group_sizes"].tolist() == [3, 2]
    assert batch["margins"].tolist() == [0.0, 1.0]
    first = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert tiny_tokenizer.decode(first) == reward_input_text(tiny_tokenizer, rows[0]["prompt"], "A.")
    assert first[-1] == tiny_tokenizer.eos_token_id  # scored where the policy stops


# ---- a short training run on clear-cut data ----------------------------------------------------------

PLACES = ["Eastvale", "Northmoor", "Southfen", "Westmark", "Highcliff", "Lowmere", "Tavira", "Meluna"]
TOWNS = ["Bresbis", "Brirsin", "Liltum", "Braktrer", "Mutrula", "Osko", "Seren", "Quorn", "Vadra", "Ilsa"]
GOOD, MID, BAD = "{town} is in {place}.", "Maybe {place}, maybe not.", "I'm sorry, but I can't help with that."


def _ranking_row(i: int) -> dict[str, Any]:
    town, place = TOWNS[i % len(TOWNS)], PLACES[i % len(PLACES)]
    responses = [BAD, GOOD.format(town=town, place=place), MID.format(place=place)]
    return {"prompt": [{"role": "user", "content": f"In which region is {town}?"}],
            "responses": responses, "ranking": [1, 2, 0]}


def _pair_row(i: int) -> dict[str, Any]:
    r = _ranking_row(i)
    return {"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["responses"][1]}],
            "rejected": [{"role": "assistant", "content": BAD}]}


def reward_recipe(model: Path, data: Path, heldout: Path, out: Path, **sections: Any) -> Any:
    """A small reward recipe; top-level sections given here replace or extend the defaults."""
    raw: dict[str, Any] = {
        "stage": "reward", "output_dir": str(out), "seed": 0,
        "model": {"name_or_path": str(model), "max_length": 64},
        "data": {"datasets": [{"path": str(data)}], "eval_datasets": [{"path": str(heldout)}]},
        "reward": {"loss": "ranking", "center_rewards_coefficient": 0.01, "reference_responses": "dataset",
                   "normalize_std": True, "reference_samples": 1000},
        "train": {"learning_rate": 3e-3, "max_steps": 30, "per_device_train_batch_size": 8,
                  "lr_scheduler_type": "constant", "logging_steps": 10, "save_steps": 1000, "report_to": []},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_recipe(raw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rmdata")
    return {"train": write_jsonl(root / "train.jsonl", [_ranking_row(i) for i in range(40)]),
            "heldout": write_jsonl(root / "heldout.jsonl", [_pair_row(i) for i in range(40, 48)])}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, world: dict) -> tuple[Any, dict]:
    out = tmp_path_factory.mktemp("rm") / "run"
    recipe = reward_recipe(tiny_model_dir, world["train"], world["heldout"], out)
    metrics = reward.run(recipe, RunDir(out), "reward.yaml")
    return recipe, metrics


def test_trained_rm_ranks_the_clearly_better_response_higher(full_run):
    recipe, metrics = full_run
    assert metrics["heldout_accuracy"] == 1.0 and metrics["heldout_pairs"] == 8
    assert metrics["train_accuracy"] == 1.0 and metrics["train_pairs"] == 3 * 40
    assert metrics["heldout_chosen_mean"] > metrics["heldout_rejected_mean"]
    scorer = RewardScorer.from_pretrained(str(Path(recipe.output_dir) / "model"))
    prompt = [{"role": "user", "content": "In which region is Kelmar?"}]
    good, bad = scorer.score([prompt, prompt], ["Kelmar is in Southfen.", BAD]).tolist()
    assert good > bad


def test_saved_rm_loads_with_plain_transformers(full_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe, metrics = full_run
    path = str(Path(recipe.output_dir) / "model")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_labels == 1
    assert model.config.alignkit_reward_bias == pytest.approx(metrics["reward_bias"])
    prompt = [{"role": "user", "content": "In which region is Osko?"}]
    enc = tok(reward_input_text(tok, prompt, "Osko is in Westmark."), return_tensors="pt", add_special_tokens=False)
    raw = model(**enc).logits[0, 0].item()
    scorer = RewardScorer.from_pretrained(path)
    want = (raw + metrics["reward_bias"]) / metrics["reward_scale"]
    assert scorer.score([prompt], ["Osko is in Westmark."]).item() == pytest.approx(want, abs=1e-4)
    run_json = json.loads((Path(recipe.output_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    assert run_json["heldout_accuracy"] == metrics["heldout_accuracy"]


def test_normalisation_centres_reference_responses(full_run, world):
    from alignkit.data.preferences import load_preference_datasets

    recipe, metrics = full_run
    scorer = RewardScorer.from_pretrained(str(Path(recipe.output_dir) / "model"))
    rows = load_preference_datasets(recipe.data.datasets)
    # reference_responses: dataset -> the reference set is every row's best response (samples >= rows).
    scores = scorer.score([r["prompt"] for r in rows], [r["responses"][0] for r in rows])
    assert abs(metrics["reference_raw_mean"]) > 0.05  # there was something to correct
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-3)


def test_score_ids_reads_the_last_real_token_with_either_padding(full_run, tiny_tokenizer):
    recipe, _ = full_run
    scorer = RewardScorer.from_pretrained(str(Path(recipe.output_dir) / "model"))
    prompt = [{"role": "user", "content": "In which region is Liltum?"}]
    texts = [reward_input_text(tiny_tokenizer, prompt, r) for r in ["Liltum is in Lowmere.", BAD]]
    single = [scorer.score_ids(*_encode(tiny_tokenizer, [t], "right")).item() for t in texts]
    for side in ("left", "right"):
        batch = scorer.score_ids(*_encode(tiny_tokenizer, texts, side)).tolist()
        assert batch == pytest.approx(single, abs=1e-4)
    # PPO may leave arbitrary ids after EOS under a zero mask: still scored at the last real token.
    ids, mask = _encode(tiny_tokenizer, texts, "right")
    noisy = ids.masked_fill(mask == 0, 5)
    assert scorer.score_ids(noisy, mask).tolist() == pytest.approx(single, abs=1e-4)


def _encode(tok: Any, texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    tok.padding_side = side
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def test_lora_pairwise_run_with_trl_saves_adapter_and_merged_model(tmp_path, tiny_model_dir, world):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [_pair_row(i) for i in range(40)])
    out = tmp_path / "run"
    recipe = reward_recipe(
        tiny_model_dir, pairs, world["heldout"], out,
        reward={"loss": "pairwise", "reference_responses": "generate", "reference_samples": 8,
                "reference_max_new_tokens": 8, "normalize_std": False},
        peft={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        train={"learning_rate": 1e-2, "max_steps": 20},
    )
    metrics = reward.run(recipe, RunDir(out), "reward.yaml")
    assert metrics["heldout_accuracy"] == 1.0
    assert metrics["reward_scale"] == 1.0 and "reference_raw_std" in metrics
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged, adapter = RewardScorer.from_pretrained(str(out / "model")), RewardScorer.from_pretrained(str(out / "adapter"))
    assert adapter.bias == pytest.approx(merged.bias)
    prompt = [{"role": "user", "content": "In which region is Seren?"}]
    responses = ["Seren is in Tavira.", BAD]
    assert adapter.score([prompt] * 2, responses).tolist() == pytest.approx(
        merged.score([prompt] * 2, responses).tolist(), abs=1e-4)


def test_sequence_scores_match_transformers_pooling_on_unpadded_rows(tiny_model_dir, tiny_tokenizer):
    from alignkit.models import load_reward_model

    model = load_reward_model(str(tiny_model_dir)).eval()
    enc = tiny_tokenizer(["<|user|>\nHi\n<|assistant|>\nHello<|endoftext|>"], return_tensors="pt",
                         add_special_tokens=False)
    with torch.no_grad():
        assert sequence_scores(model, enc["input_ids"], enc["attention_mask"]).item() == pytest.approx(
            model(**enc).logits[0, 0].item(), abs=1e-5)


# ---- GRM: the LM loss beside the ranking loss (reward.lm_loss_coef) --------------------------------------

def test_lm_term_is_the_causal_lm_loss_on_each_best_response(tiny_model_dir, tiny_tokenizer):
    """Hidden states of the reward forward through the init LM head = the causal LM's own response loss."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    rows = [_ranking_row(i) for i in range(3)]
    for r in rows:  # best first, as load_preference_datasets orders them
        r["responses"] = [r["responses"][i] for i in r["ranking"]]
        r["margin"] = 0.0
    batch = reward.RankingCollator(tiny_tokenizer.pad_token_id)(reward.encode_rankings(rows, tiny_tokenizer, 64))
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1).eval()
    with reward.final_hidden_states(rm) as captured:
        rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    head = reward.init_lm_head(str(tiny_model_dir), rm, len(tiny_tokenizer))
    got = reward.best_response_lm_loss(captured["h"], head, batch)

    lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    total, count = 0.0, 0
    for r in rows:
        prompt = tiny_tokenizer(prompt_input_text(tiny_tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([reward_input_ids(tiny_tokenizer, r["prompt"], r["responses"][0])])
        logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        total -= logp[len(prompt) - 1:].sum().item()  # the response's tokens and its EOS
        count += ids.shape[1] - len(prompt)
    assert got.item() == pytest.approx(total / count, rel=1e-5)


def test_lm_loss_coef_keeps_the_backbone_a_language_model(tmp_path, tiny_model_dir, tiny_tokenizer, world):
    """Same run with and without the term: with it the LM loss is logged and ends lower."""
    from transformers import AutoModelForSequenceClassification

    rows = [_ranking_row(i) for i in range(8)]
    for r in rows:
        r["responses"] = [r["responses"][i] for i in r["ranking"]]
        r["margin"] = 0.0
    batch = reward.RankingCollator(tiny_tokenizer.pad_token_id)(reward.encode_rankings(rows, tiny_tokenizer, 64))
    losses = {}
    for coef in (0.0, 1.0):
        out = tmp_path / f"grm{coef}"
        recipe = reward_recipe(tiny_model_dir, world["train"], world["heldout"], out,
                               reward={"lm_loss_coef": coef}, train={"learning_rate": 1e-2})
        metrics = reward.run(recipe, RunDir(out), "reward.yaml")
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any("lm_loss" in row for row in logged) == bool(coef)
        assert metrics["heldout_accuracy"] >= 0.75  # the ranking is still learnt
        rm = AutoModelForSequenceClassification.from_pretrained(str(out / "model")).eval()
        with torch.no_grad(), reward.final_hidden_states(rm) as captured:
            rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        head = reward.init_lm_head(str(tiny_model_dir), rm, len(tiny_tokenizer))
        losses[coef] = reward.best_response_lm_loss(captured["h"], head, batch).item()
    assert losses[1.0] < losses[0.0]


def test_reward_options_that_need_another_are_refused_alone(tiny_model_dir, world, tmp_path):
    with pytest.raises(Exception, match="lm_loss_coef needs loss: ranking"):
        reward_recipe(tiny_model_dir, world["train"], world["heldout"], tmp_path / "x",
                      reward={"loss": "pairwise", "lm_loss_coef": 0.5})
    with pytest.raises(Exception, match="lm_surprise_weight needs lm_surprise: true"):
        reward_recipe(tiny_model_dir, world["train"], world["heldout"], tmp_path / "x",
                      reward={"lm_surprise_weight": 0.1})
    with pytest.raises(Exception, match="lm_surprise_floor needs lm_surprise: true"):
        reward_recipe(tiny_model_dir, world["train"], world["heldout"], tmp_path / "x",
                      reward={"lm_surprise_floor": -6})


# ---- QLoRA: model/ is the model that was trained and evaluated (dequantized, then merged) -------------

def test_qlora_reward_model_is_saved_as_the_trained_model(tmp_path, tiny_model_dir, world):
    """Held-out scores of the saved model/ equal those the run measured on its in-memory 4-bit model."""
    from transformers import AutoConfig

    from alignkit.data.preferences import load_preference_datasets

    out = tmp_path / "run"
    recipe = reward_recipe(tiny_model_dir, world["train"], world["heldout"], out,
                           quantization={"load_in_4bit": True}, peft={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
                           train={"learning_rate": 1e-2, "max_steps": 6})
    metrics = reward.run(recipe, RunDir(out), "reward.yaml")
    assert not hasattr(AutoConfig.from_pretrained(out / "model"), "quantization_config")
    saved = reward.pairwise_metrics(RewardScorer.from_pretrained(str(out / "model")),
                                    load_preference_datasets(recipe.data.eval_datasets))
    for key in ("chosen_mean", "rejected_mean", "chosen_std", "rejected_std", "margin"):
        # Merged into the 4-bit weights (re-quantized), chosen_mean was 0.45 against 0.35 measured.
        # On an AVX512-BF16 CPU bitsandbytes computed the in-memory 4-bit model in bfloat16 (3e-4 apart in
        # raw scores) until models.keep_4bit_arithmetic switched that path off.
        assert saved[key] == pytest.approx(metrics[f"heldout_{key}"], abs=2e-5), key
    # adapter/ records its 4-bit base, so loading it rebuilds that base (not the float one) and scores the same.
    assert json.loads((out / "adapter" / QUANT_FILE).read_text())["load_in_4bit"] is True
    adapter = reward.pairwise_metrics(RewardScorer.from_pretrained(str(out / "adapter")),
                                      load_preference_datasets(recipe.data.eval_datasets))
    for key in ("chosen_mean", "rejected_mean", "margin"):
        assert adapter[key] == pytest.approx(metrics[f"heldout_{key}"], abs=2e-5), key


def test_reward_text_spells_the_answer_as_the_chat_template_does(tiny_tokenizer):
    """A template's space before the answer is kept, so the RM scores what a policy rollout holds."""
    from alignkit.reward_model import response_lead, reward_input_text

    messages = [{"role": "user", "content": "Where is Bresbis?"}]
    full = tiny_tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "In Eastvale."}],
                                              tokenize=False)
    text = reward_input_text(tiny_tokenizer, messages, "In Eastvale.")
    assert full.startswith(text) and text.endswith("In Eastvale." + tiny_tokenizer.eos_token)
    prompt = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert response_lead(tiny_tokenizer, messages, prompt) == " "


class _LengthScorer:
    """Scores a response by its length: enough to check how pair accuracy is grouped."""

    def score(self, prompts, responses, ended=None):
        return torch.tensor([float(len(r)) for r in responses])


def test_heldout_accuracy_is_also_reported_per_subset(tmp_path):
    """reward.accuracy_by tags each held-out row with a (dotted) column's value; accuracy is split by it."""
    from alignkit.config.base import DatasetSpec
    from alignkit.data.preferences import load_preference_datasets

    rows = [{"prompt": "q", "chosen": "a long good answer", "rejected": "short", "meta": {"kind": "long"}},
            {"prompt": "q", "chosen": "a long good answer too", "rejected": "tiny", "meta": {"kind": "long"}},
            {"prompt": "q", "chosen": "ok", "rejected": "a long wrong answer", "meta": {"kind": "short"}}]
    path = write_jsonl(tmp_path / "heldout.jsonl", rows)
    rankings = load_preference_datasets([DatasetSpec(path=str(path))], "data.eval_datasets", None, "meta.kind")
    metrics = reward.pairwise_metrics(_LengthScorer(), rankings)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy_by"] == {"long": {"accuracy": 1.0, "pairs": 2}, "short": {"accuracy": 0.0, "pairs": 1}}
    assert "accuracy_by" not in reward.pairwise_metrics(_LengthScorer(), load_preference_datasets(
        [DatasetSpec(path=str(path))]))
    with pytest.raises(AlignkitError, match=r"heldout\.jsonl:1 \(reward\.accuracy_by\): no column 'meta\.task'"):
        load_preference_datasets([DatasetSpec(path=str(path))], "data.eval_datasets", None, "meta.task")


def test_model_card_shows_the_per_subset_accuracy():
    from alignkit.modelcard import subset_table

    table = subset_table({"heldout_accuracy_by": {"wrong_fact": {"accuracy": 0.125, "pairs": 8}}})
    assert "| wrong_fact | 12.5% | 8 |" in table
    assert subset_table({"heldout_accuracy": 0.9}) == ""


class _FavouriteLM(torch.nn.Module):
    """A fake LM: every position predicts token `favourite` (logit 5), all others 0."""

    def __init__(self, vocab: int, favourite: int):
        super().__init__()
        self.vocab, self.favourite = vocab, favourite

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favourite] = 5.0
        return type("Out", (), {"logits": logits})()


def test_lm_surprise_is_the_least_likely_response_token_below_the_top_one():
    from alignkit.reward_model import lm_surprise

    lm = _FavouriteLM(8, favourite=3)
    ids = torch.tensor([[1, 2, 3, 3, 0], [1, 2, 3, 5, 0]])       # prompt [1, 2], response [3, 3] / [3, 5], pad
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    response = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 0]])
    gap = math.log(math.exp(5) + 7) - math.log(math.exp(5) + 7) + (0.0 - 5.0)  # log p(other) - log p(favourite)
    out = lm_surprise(lm, ids, mask, response)
    assert out[0].item() == pytest.approx(0.0, abs=1e-6)        # every response token is the LM's top choice
    assert out[1].item() == pytest.approx(gap, abs=1e-5)        # token 5 sits 5 nats below the top one
    # prompt tokens do not count: token 2 (not the favourite) is in both prompts
    assert lm_surprise(lm, ids, mask, torch.zeros_like(response))[1].item() == 0.0


class _FixedFeatures:
    def __init__(self, heads, surprise):
        self.heads, self.surprise = torch.tensor(heads), torch.tensor(surprise)

    def features(self, prompts, responses, ended=None, batch_size=32, with_lm=True):
        return self.heads[:len(responses)], self.surprise[:len(responses)]


def test_fit_lm_weight_is_positive_only_when_the_surprise_explains_the_comparisons():
    rows = [{"prompt": "q", "responses": ["a", "b"]}] * 4       # best first
    # the head cannot tell the pairs apart; the better answer is the less surprising one
    helpful = _FixedFeatures([0.0] * 8, [0.0, -3.0] * 4)
    assert reward.fit_lm_weight(helpful, rows, seed=0, n=4) > 1.0
    misleading = _FixedFeatures([1.0, 0.0] * 4, [-3.0, 0.0] * 4)  # the better answer is the more surprising one
    assert reward.fit_lm_weight(misleading, rows, seed=0, n=4) == 0.0


@pytest.mark.parametrize(("fixed", "floor"), [(None, None), (0.25, None), (0.25, -0.01)])
def test_lm_surprise_reward_model_saves_its_lm_and_scores_alike_in_every_path(tmp_path, tiny_model_dir, world, fixed,
                                                                              floor):
    """reward.lm_surprise: the weight (fitted, or reward.lm_surprise_weight), the floor and model/lm/ are saved; the scorer
    that loads them scores (prompt, response) texts as PPO's id-based reward does; a folder without lm/ is
    refused in one line."""
    import shutil

    from alignkit.reward_model import RewardScorer, lm_surprise, sequence_scores
    from alignkit.rl.rewards import scorer_reward_fn
    from alignkit.runio import LM_FLOOR_KEY, LM_WEIGHT_KEY

    out = tmp_path / "run"
    recipe = reward_recipe(tiny_model_dir, world["train"], world["heldout"], out,
                           reward={"lm_surprise": True, "lm_surprise_weight": fixed, "lm_surprise_floor": floor})
    metrics = reward.run(recipe, RunDir(out), "reward.yaml")
    weight = metrics["lm_surprise_weight"]
    assert weight == (metrics["lm_surprise_weight_fitted"] if fixed is None else fixed)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config[LM_WEIGHT_KEY] == weight and weight >= 0.0
    assert config[LM_FLOOR_KEY] == (floor if weight else None) and metrics.get("lm_surprise_floor") == floor
    scorer = RewardScorer.from_pretrained(str(out / "model"))
    assert scorer.lm_weight == weight and scorer.lm is not None and scorer.lm_floor == (floor if weight else None)
    prompts = [[{"role": "user", "content": "In which region is Kelmar?"}]] * 2
    answers = ["Kelmar is in Southfen.", "Maybe Southfen, maybe not."]
    by_text = scorer.score(prompts, answers)
    tok = scorer.tokenizer
    prompt_ids = [tok(prompt_input_text(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    response_ids = [reward_input_ids(tok, p, a)[len(q):] for p, a, q in zip(prompts, answers, prompt_ids, strict=True)]
    by_ids = scorer_reward_fn(scorer, tok.pad_token_id)(None, answers, prompt_ids, response_ids)
    assert torch.allclose(by_text, by_ids, atol=1e-5)
    # and each is head + weight * surprise, normalised
    ids = torch.tensor([prompt_ids[0] + response_ids[0]])
    mask, response = torch.ones_like(ids), torch.tensor([[0] * len(prompt_ids[0]) + [1] * len(response_ids[0])])
    surprise = lm_surprise(scorer.lm, ids, mask, response)
    if floor is not None:
        assert surprise.item() < floor  # the floor is in force for this answer
        surprise = surprise.clamp(min=floor)
    manual = scorer.normalize(sequence_scores(scorer.model, ids, mask) + weight * surprise)
    assert by_text[0].item() == pytest.approx(manual.item(), abs=1e-5)
    if weight:
        shutil.rmtree(out / "model" / "lm")
        with pytest.raises(AlignkitError, match=r"adds its language model's surprise .*/lm is missing"):
            RewardScorer.from_pretrained(str(out / "model"))
