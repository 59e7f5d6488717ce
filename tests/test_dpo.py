"""DPO: rankings become pairs, a short run raises the implicit reward margin (measured independently
with plain transformers/PEFT on the saved output), and LoRA runs save a loadable adapter."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from alignkit.cli import main, train
from alignkit.config.base import ModelSection, QuantizationSection
from alignkit.dpo import pair_ids, ranking_to_pairs, tokenize_pairs
from alignkit.errors import AlignkitError
from alignkit.models import load_causal_lm
from alignkit.runio import QUANT_FILE

RANKING = {"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b", "c"], "margin": 0.0}


def test_ranking_to_pairs() -> None:
    best = ranking_to_pairs([RANKING], "best_vs_others")
    assert [p["responses"] for p in best] == [["a", "b"], ["a", "c"]]
    assert [p["responses"] for p in ranking_to_pairs([RANKING], "all")] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert all(p["prompt"] == RANKING["prompt"] for p in best)


def test_completions_end_at_eos_token_by_token(tiny_tokenizer: Any) -> None:
    """The scored completion is the response + EOS: not the template's newline after EOS (never generated)."""
    tok = tiny_tokenizer
    prompt = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is Bresbis?"}]
    ids = pair_ids(tok, prompt, "In Eastvale.", "I can't say.")
    assert tok.decode(ids["prompt_ids"]) == "<|system|> Answer briefly.\n<|user|> Where is Bresbis?\n<|assistant|>"
    for key, response in (("chosen_ids", "In Eastvale."), ("rejected_ids", "I can't say.")):
        # the template's space before the answer belongs to the completion, spelt as in running text
        assert ids[key] == tok(" " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # What TRL would score from the conversational row: the rendered assistant turn, which ends "<eos>\n".
    rendered = tok.apply_chat_template([*prompt, {"role": "assistant", "content": "In Eastvale."}], tokenize=False)
    assert rendered.endswith(tok.eos_token + "\n")
    full = tok(rendered, add_special_tokens=False)["input_ids"]
    assert full[: len(ids["prompt_ids"])] == ids["prompt_ids"]
    assert full[len(ids["prompt_ids"]):] == [*ids["chosen_ids"], *tok("\n", add_special_tokens=False)["input_ids"]]


def test_too_long_pairs_are_dropped_with_a_count_and_none_left_is_an_error(tiny_tokenizer: Any, caplog) -> None:
    tok = tiny_tokenizer
    short = {"prompt": [{"role": "user", "content": "Hi?"}], "responses": ["Yes.", "No."]}
    long = {"prompt": [{"role": "user", "content": "Where is Bresbis? " * 20}], "responses": ["Yes.", "No."]}
    fits = len(pair_ids(tok, short["prompt"], "Yes.", "No.")["prompt_ids"]) + 4
    with caplog.at_level("WARNING", logger="alignkit.dpo"):
        kept = tokenize_pairs([short, long, long], tok, 24, None, "data.datasets")
    assert kept == [pair_ids(tok, short["prompt"], "Yes.", "No.")] and fits <= 24
    assert "dropped 2 of 3 pairs of data.datasets longer than model.max_length=24 tokens" in caplog.text
    with pytest.raises(AlignkitError, match="no pair of data.datasets fits in 24 tokens") as err:
        tokenize_pairs([long], tok, 24, None, "data.datasets")
    assert err.value.where == "model.max_length"
    with pytest.raises(AlignkitError, match="every prompt of data.datasets is longer than 5 tokens"):
        tokenize_pairs([short], tok, 24, 5, "data.datasets")


@pytest.fixture(scope="module")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 6 K=4 rankings of the world's preference data (18 best-vs-other pairs)."""
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    with open("data/world/preferences.jsonl") as src:
        path.write_text("".join(itertools.islice(src, 6)))
    return path


def _dpo(out: Path, model: Path, prefs: Path, *extra: str) -> dict[str, Any]:
    return train("recipes/dpo.yaml", [
        f"output_dir={out}", f"model.name_or_path={model}", f"data.datasets.0.path={prefs}",
        "data.eval_datasets=[]", "train.max_steps=8", "train.per_device_train_batch_size=6",
        "train.learning_rate=2e-3", "train.logging_steps=2", "train.warmup_ratio=0", "dpo.beta=0.5", *extra,
    ])


def _completion_logps(model: Any, tok: Any, prompt: list[dict], response: str) -> torch.Tensor:
    """Sum of log-probs of response + EOS after the templated prompt (what DPO's implicit reward uses)."""
    text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    full = tok(text + response + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids
    ids = torch.tensor([full])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return logps.gather(-1, targets[:, None])[len(prompt_ids) - 1:, 0].sum()


def implicit_margins(policy: Any, ref: Any, tok: Any, prefs: Path, beta: float) -> torch.Tensor:
    """beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)] for every best-vs-other pair."""
    out = []
    for line in prefs.read_text().splitlines():
        row = json.loads(line)
        ranked = [row["responses"][i] for i in row["ranking"]]
        for worse in ranked[1:]:
            c = _completion_logps(policy, tok, row["prompt"], ranked[0]) - _completion_logps(
                ref, tok, row["prompt"], ranked[0])
            r = _completion_logps(policy, tok, row["prompt"], worse) - _completion_logps(
                ref, tok, row["prompt"], worse)
            out.append(beta * (c - r))
    return torch.stack(out)


def test_full_dpo_raises_margin(tmp_path: Path, tiny_model_dir: Path, prefs: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = _dpo(tmp_path / "run", tiny_model_dir, prefs)
    assert {"rewards/accuracies", "rewards/margins", "train_loss", "train_seconds", "peak_memory_mb"} <= set(metrics)
    assert metrics["global_step"] > 0 and metrics["train_seconds"] >= 0 and metrics["peak_memory_mb"] > 0
    model_dir = tmp_path / "run" / "model"
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    margins = implicit_margins(policy, ref, tok, prefs, beta=0.5)
    # Before training policy == ref, so every margin is exactly 0; after, chosen must beat rejected.
    assert margins.mean() > 0.5
    assert (margins > 0).float().mean() > 0.7
    assert json.loads((tmp_path / "run" / "run.json").read_text())["stage"] == "dpo"


def test_lora_dpo_saves_adapter_with_disabled_base_reference(tmp_path: Path, tiny_model_dir: Path,
                                                             prefs: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _dpo(tmp_path / "run", tiny_model_dir, prefs, "peft.r=8", "peft.lora_alpha=16", "peft.lora_dropout=0",
         "train.learning_rate=1e-2")
    adapter = tmp_path / "run" / "model"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "ref").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    assert implicit_margins(policy, base, tok, prefs, beta=0.5).mean() > 0.1


def test_qlora_dpo_adapter_records_its_4bit_base_and_merges_to_the_trained_model(
        tmp_path: Path, tiny_model_dir: Path, prefs: Path) -> None:
    """model/ carries the quantization record, so `alignkit merge` dequantizes the NF4 base it was trained on."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    metrics = _dpo(tmp_path / "run", tiny_model_dir, prefs, "quantization.load_in_4bit=true", "peft.r=8",
                   "peft.lora_dropout=0", "train.max_steps=2", "train.learning_rate=5e-2")
    assert metrics["global_step"] == 2
    adapter = tmp_path / "run" / "model"
    record = json.loads((adapter / QUANT_FILE).read_text())
    assert record["load_in_4bit"] is True and record["bnb_4bit_quant_type"] == "nf4"
    # The trained model: the same NF4 base (asked for explicitly, not read from the record) + the adapter.
    nf4 = load_causal_lm(ModelSection(name_or_path=str(tiny_model_dir)), QuantizationSection(**record))
    trained = PeftModel.from_pretrained(nf4, adapter).eval()
    assert main(["merge", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    with torch.no_grad():
        want, got = trained(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)(
            input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-3
    assert (plain - want).abs().max().item() > 1e-2  # a float base under the adapter is another model


def test_trainer_scores_each_completion_up_to_its_eos(tmp_path: Path, tiny_model_dir: Path, prefs: Path) -> None:
    """The rows DPOTrainer batches: prompt ids then response + EOS, nothing of the template after EOS."""
    from alignkit.config.recipe import load_recipe
    from alignkit.dpo import build_trainer
    from alignkit.runio import RunDir

    recipe = load_recipe("recipes/dpo.yaml", [f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}",
                                              f"data.datasets.0.path={prefs}", "data.eval_datasets=[]"])
    trainer = build_trainer(recipe, recipe.dpo, RunDir(tmp_path / "run"))
    tok = trainer.processing_class
    first = json.loads(prefs.read_text().splitlines()[0])
    ranked = [first["responses"][i] for i in first["ranking"]]
    row = trainer.train_dataset[0]
    prompt_text = tok.apply_chat_template(first["prompt"], add_generation_prompt=True, tokenize=False)
    assert row["prompt_ids"] == tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert row["chosen_ids"] == tok(" " + ranked[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["rejected_ids"] == tok(" " + ranked[1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = trainer.data_collator([row])
    scored = batch["input_ids"][batch["completion_mask"].bool()].tolist()
    assert scored == row["chosen_ids"] + row["rejected_ids"]  # the loss's tokens, each completion ending at EOS
    assert len(trainer.train_dataset) == 3 * 6


def test_dpo_of_a_qlora_sft_adapter_trains_it_on_its_recorded_4bit_base(tmp_path: Path, tiny_model_dir: Path,
                                                                       prefs: Path, tiny_tokenizer: Any) -> None:
    """No quantization section: the SFT adapter's record says NF4, so DPO trains (and model/ records) that base."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignkit.runio import write_quantization_record

    nf4 = QuantizationSection(load_in_4bit=True)
    sft = tmp_path / "sft-adapter"
    get_peft_model(load_causal_lm(ModelSection(name_or_path=str(tiny_model_dir)), nf4),
                   LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")).save_pretrained(sft)
    tiny_tokenizer.save_pretrained(sft)
    write_quantization_record(sft, nf4.model_dump())
    _dpo(tmp_path / "run", sft, prefs, "train.max_steps=2", "train.learning_rate=5e-2")
    adapter = tmp_path / "run" / "model"
    assert json.loads((adapter / QUANT_FILE).read_text()) == nf4.model_dump()
    trained = PeftModel.from_pretrained(load_causal_lm(ModelSection(name_or_path=str(tiny_model_dir)), nf4), adapter)
    float_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    with torch.no_grad():
        want = trained.eval()(input_ids=ids).logits
        got = load_causal_lm(ModelSection(name_or_path=str(adapter))).eval()(input_ids=ids).logits
        other = float_base.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (other - want).abs().max().item() > 1e-2


def test_sft_loss_weight_adds_trl_sft_loss() -> None:
    from alignkit.config.dpo import DPOSection
    from alignkit.dpo import dpo_losses

    assert dpo_losses(DPOSection(sft_loss_weight=0)) == {"loss_type": ["sigmoid"]}
    assert dpo_losses(DPOSection(loss_type="ipo", sft_loss_weight=0.5)) == {
        "loss_type": ["ipo", "sft"], "loss_weights": [1.0, 0.5]}


def test_sft_loss_keeps_the_chosen_answers_likely(tmp_path: Path, tiny_model_dir: Path, prefs: Path) -> None:
    """RPO's NLL term: after the same steps, the chosen answers are likelier than under DPO alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    chosen_logp = {}
    for weight in (0.0, 2.0):
        _dpo(tmp_path / f"w{weight}", tiny_model_dir, prefs, f"dpo.sft_loss_weight={weight}")
        policy = AutoModelForCausalLM.from_pretrained(tmp_path / f"w{weight}" / "model").eval()
        chosen_logp[weight] = sum(float(_completion_logps(policy, tok, r["prompt"], r["responses"][r["ranking"][0]]))
                                  for r in rows)
    assert chosen_logp[2.0] > chosen_logp[0.0] + 1.0
