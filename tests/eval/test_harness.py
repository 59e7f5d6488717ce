"""The eval stage end to end on two tiny models, plus prompt loading, pair choice and recipe checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from alignkit.cli import train
from alignkit.config.recipe import validate_recipe
from alignkit.errors import AlignkitError
from alignkit.eval.harness import breakdown, load_prompts, require_groups, resolve_pairs
from alignkit.rl.checkpoint import KL_KEY

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "data" / "models" / "tiny-base")
PROMPTS = str(ROOT / "eval" / "world_prompts.jsonl")
FEWSHOT = str(ROOT / "eval" / "fewshot_template.txt")


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory) -> str:
    """A tiny random Llama with the shipped tokenizer: a contestant that knows nothing."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("random-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def eval_recipe(out: Path, models: list[dict], **eval_extra) -> dict:
    return {"stage": "eval", "output_dir": str(out), "seed": 0, "eval": {
        "prompts": PROMPTS, "prompt_limit": 8, "fewshot_template": FEWSHOT, "models": models,
        "generation": {"max_new_tokens": 12, "temperature": 0.7, "batch_size": 8, "diversity_samples": 2,
                       "diversity_prompts": 3},
        "judge": {"type": "oracle"}, "n_bootstrap": 50, **eval_extra}}


def write(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_end_to_end_two_models_oracle_then_another_judge_without_regenerating(tmp_path, random_llama, capsys):
    out = tmp_path / "run"
    models = [{"name": "random", "path": random_llama}, {"name": "base", "path": TINY, "prompting": "fewshot"},
              {"name": "base-chat", "path": TINY, "ref": "base"}]
    recipe = eval_recipe(out, models, reference="random", breakdown_by="meta.task")
    metrics = train(write(tmp_path / "eval.yaml", recipe), [])

    assert {"json", "md", "html"} <= {p.suffix.lstrip(".") for p in out.glob("report.*")}
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"meta", "models", "pairs", "ratings"}
    assert report["meta"]["n_prompts"] == 8 and report["meta"]["judge"] == "oracle"
    assert [p["model_a"] + ">" + p["model_b"] for p in report["pairs"]] == \
        ["base>random", "base-chat>random", "base-chat>base"]
    for pair in report["pairs"]:
        assert {"wins", "ties", "losses", "win_rate", "ci_low", "ci_high", "lc_win_rate"} <= set(pair)
        assert pair["n"] == 8
    assert {r["model"] for r in report["ratings"]} == {"random", "base", "base-chat"}
    rows = {m["name"]: m for m in report["models"]}
    assert set(rows["base"]) >= {"mean_length", "mean_length_ci", "eos_rate", "judge_score", "kl_to_ref",
                                 "distinct_1", "distinct_2", "sample_entropy", "reward_mean"}
    assert rows["base-chat"]["kl_to_ref"] is not None and rows["base"]["kl_to_ref"] is None
    assert rows["base"]["sample_entropy"] is not None
    # 4 of the first 8 world prompts ask about unknown names: the eval stage's rubric gives each model's rate
    assert all(0.0 <= r["hallucination_rate"] <= 1.0 for r in rows.values())
    assert "win_rate/base_vs_random" in metrics and "rating/base" in metrics
    assert rows["random"]["mean_length"] <= 12 and len(rows["random"]["mean_length_ci"]) == 2
    assert "## Win rates" in capsys.readouterr().out
    assert 'id="winrate-table"' in (out / "report.html").read_text()
    by_task = report["breakdown"]
    assert by_task["by"] == "meta.task" and {r["group"] for r in by_task["rows"]} >= {"unknown"}
    for pair in report["pairs"]:  # the groups split each pair's prompts
        mine = [r for r in by_task["rows"] if (r["model_a"], r["model_b"]) == (pair["model_a"], pair["model_b"])]
        assert sum(r["n"] for r in mine) == 8 and sum(r["wins"] for r in mine) == pair["wins"]
    assert "## Win rates by meta.task" in (out / "report.md").read_text()
    assert 'id="breakdown-table"' in (out / "report.html").read_text()
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 3 * 8 and {"verdict_ab", "verdict_ba", "winner"} <= set(judgments[0])

    # A different judge on the same run folder: every completion comes from the cache.
    before = {p.name: p.read_text() for p in (out / "completions").iterdir()}
    recipe["eval"]["judge"] = {"type": "local_lm", "path": TINY}
    recipe["eval"]["pairs"] = "reference"
    recipe["train"] = {"overwrite_output_dir": True}
    train(write(tmp_path / "eval2.yaml", recipe), [])
    assert {p.name: p.read_text() for p in (out / "completions").iterdir()} == before
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["judge"].startswith("local_lm")
    assert [(p["model_a"], p["model_b"]) for p in report["pairs"]] == [("base", "random"), ("base-chat", "random")]


def test_prompts_from_a_csv_with_a_prompt_column(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("question,idx\nWhat is 2+2?,q1\nName a colour.,q2\nSay hi.,q3\n")
    recipe = validate_recipe({"stage": "eval", "output_dir": str(tmp_path / "o"), "eval": {
        "prompts": str(path), "prompt_column": "question", "id_column": "idx", "prompt_limit": 2,
        "models": [{"name": "a", "path": TINY}, {"name": "b", "path": TINY}]}})
    rows = load_prompts(recipe.eval)
    assert rows == [{"id": "q1", "prompt": [{"role": "user", "content": "What is 2+2?"}], "meta": None},
                    {"id": "q2", "prompt": [{"role": "user", "content": "Name a colour."}], "meta": None}]
    bad = recipe.eval.model_copy(update={"prompt_column": "nope"})
    with pytest.raises(AlignkitError, match="prompt_column"):
        load_prompts(bad)
    assert [r["group"] for r in load_prompts(recipe.eval.model_copy(update={"breakdown_by": "idx"}))] == ["q1", "q2"]
    by_category = recipe.eval.model_copy(update={"breakdown_by": "category"})
    with pytest.raises(AlignkitError, match=r"prompts.csv:1 \(eval.breakdown_by\).*no column 'category'.*null"):
        require_groups(load_prompts(by_category), by_category)


def test_breakdown_gives_each_groups_win_rate():
    rows = [{"id": "1", "group": "fact"}, {"id": "2", "group": "fact"}, {"id": "3", "group": "list"}]
    judgments = [{"prompt_id": "1", "model_a": "ppo", "model_b": "sft", "winner": "a"},
                 {"prompt_id": "2", "model_a": "ppo", "model_b": "sft", "winner": "tie"},
                 {"prompt_id": "3", "model_a": "ppo", "model_b": "sft", "winner": "b"}]
    out = breakdown("meta.task", rows, judgments, [("ppo", "sft")], n_boot=20, seed=0)
    assert out["by"] == "meta.task"
    assert [(r["group"], r["n"], r["win_rate"]) for r in out["rows"]] == [("fact", 2, 0.75), ("list", 1, 0.0)]


def section(**extra):
    models = [{"name": n, "path": TINY, **({"ref": "sft"} if n == "ppo" else {})} for n in ("base", "sft", "ppo")]
    return validate_recipe({"stage": "eval", "output_dir": "x",
                            "eval": {"prompts": PROMPTS, "models": models, **extra}}).eval


def test_pairs_all_reference_and_explicit():
    assert resolve_pairs(section()) == [("sft", "base"), ("ppo", "base"), ("ppo", "sft")]
    assert resolve_pairs(section(pairs="reference", reference="sft")) == [("base", "sft"), ("ppo", "sft")]
    assert resolve_pairs(section(pairs=[["ppo", "base"]])) == [("ppo", "base")]


@pytest.mark.parametrize(("extra", "message"), [
    ({"pairs": [["ppo", "nobody"]]}, "unknown model 'nobody'"),
    ({"reference": "gpt"}, "unknown model 'gpt'"),
    ({"pairs": "reference"}, "needs eval.reference"),
    ({"judge": {"type": "http"}}, "base_url"),
    ({"judge": {"type": "reward_model"}}, "judge.path or eval.reward_model"),
    ({"judge": {"type": "oracle", "temprature": 1}}, "unknown key; did you mean template"),
])
def test_recipe_errors_are_one_line(extra, message):
    with pytest.raises(AlignkitError, match=message):
        section(**extra)


def test_duplicate_model_names_are_rejected():
    with pytest.raises(AlignkitError, match="used twice"):
        validate_recipe({"stage": "eval", "output_dir": "x", "eval": {
            "prompts": PROMPTS, "models": [{"name": "a", "path": TINY}, {"name": "a", "path": TINY}]}})


def test_ppo_checkpoints_give_a_win_rate_against_kl_curve(tmp_path, random_llama):
    import shutil

    ppo = tmp_path / "ppo"
    for step, kl in ((20, 0.5), (10, 0.1)):
        ckpt = ppo / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(random_llama, ckpt / "policy")
        (ckpt / "trainer_state.json").write_text(json.dumps({"rollout": step, KL_KEY: kl}))  # as PPOTrainer writes
    (ppo / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "objective/kl": 0.01 * s,
                                                           "objective/scores": 0.1}) + "\n" for s in (10, 20)))
    out = tmp_path / "run"
    recipe = eval_recipe(out, [{"name": "base", "path": TINY, "prompting": "fewshot"},
                               {"name": "random", "path": random_llama}], ppo_run=str(ppo), ppo_against="base")
    recipe["eval"]["prompt_limit"] = 4
    train(write(tmp_path / "eval.yaml", recipe), [])
    report = json.loads((out / "report.json").read_text())
    assert [(r["checkpoint"], r["kl"]) for r in report["kl_curve"]] == [("checkpoint-10", 0.1), ("checkpoint-20", 0.5)]
    assert all(0 <= r["win_rate"] <= 1 and r["against"] == "base" for r in report["kl_curve"])
    assert report["training_curves"]["ppo"]["objective/kl"] == [[10, 0.1], [20, 0.2]]
    assert 'id="kl-table"' in (out / "report.html").read_text()


def test_best_of_n_by_oracle_keeps_each_prompts_top_oracle_score(tmp_path, random_llama):
    from alignkit.world import oracle

    out = tmp_path / "run"
    recipe = eval_recipe(out, [{"name": "random", "path": random_llama},
                               {"name": "random-oracle-best-of-3", "path": random_llama, "best_of_n": 3,
                                "best_of_n_by": "oracle"}], judge={"type": "oracle"})
    recipe["eval"]["prompt_limit"] = 6
    train(write(tmp_path / "eval.yaml", recipe), [])
    report = json.loads((out / "report.json").read_text())
    rows = {m["name"]: m for m in report["models"]}
    metas = {r["id"]: r["meta"] for r in map(json.loads, Path(PROMPTS).read_text().splitlines()[:6])}
    cands = [json.loads(line) for line in
             (out / "completions" / "random-oracle-best-of-3.jsonl").read_text().splitlines()]
    assert len(cands) == 6 * 3
    best: dict[str, float] = {}
    for c in cands:
        best[c["prompt_id"]] = max(best.get(c["prompt_id"], -1.0),
                                   oracle.score(metas[c["prompt_id"]], c["text"], c["ended"]).total)
    assert rows["random-oracle-best-of-3"]["judge_score"] == pytest.approx(sum(best.values()) / 6, abs=1e-6)


def test_reward_model_scores_and_best_of_n(tmp_path, random_llama):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    rm = tmp_path / "rm"
    LlamaForSequenceClassification(config).save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    out = tmp_path / "run"
    recipe = eval_recipe(out, [{"name": "random", "path": random_llama},
                               {"name": "random-best-of-3", "path": random_llama, "best_of_n": 3}],
                         reward_model=str(rm), judge={"type": "reward_model"})
    recipe["eval"]["prompt_limit"] = 4
    train(write(tmp_path / "eval.yaml", recipe), [])
    report = json.loads((out / "report.json").read_text())
    rows = {m["name"]: m for m in report["models"]}
    assert rows["random"]["judge_score"] == pytest.approx(rows["random"]["reward_mean"], abs=1e-4)
    # Best-of-3 keeps the reward model's favourite: its mean score is the mean of per-prompt maxima.
    from alignkit.reward_model import RewardScorer

    cands = [json.loads(line) for line in (out / "completions" / "random-best-of-3.jsonl").read_text().splitlines()]
    assert len(cands) == 4 * 3
    prompts = {r["id"]: r["prompt"] for r in json.loads("[" + ",".join(
        Path(PROMPTS).read_text().splitlines()[:4]) + "]")}
    scores = RewardScorer.from_pretrained(str(rm)).score([prompts[c["prompt_id"]] for c in cands],
                                                         [c["text"] for c in cands], [c["ended"] for c in cands])
    best: dict[str, float] = {}
    for c, v in zip(cands, scores.tolist(), strict=True):
        best[c["prompt_id"]] = max(best.get(c["prompt_id"], -1e9), v)
    assert rows["random-best-of-3"]["reward_mean"] == pytest.approx(sum(best.values()) / 4, abs=1e-4)
    assert report["meta"]["judge"].startswith("reward_model")


# ---- caches keyed by content, prompts that do not fit, KL across tokenizers ----------------------------

def save_llama(path: Path, seed: int, tokenizer=None, **overrides) -> str:
    """A 1-layer random Llama (hidden 32) with the shipped tokenizer, saved at `path` (replacing what is there)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(TINY)
    torch.manual_seed(seed)
    config = LlamaConfig(**{"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                            "max_position_embeddings": 512, "eos_token_id": tokenizer.eos_token_id,
                            "pad_token_id": tokenizer.pad_token_id, **overrides})
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def greedy_section(tmp_path: Path, models: list[dict], **generation):
    recipe = eval_recipe(tmp_path / "run", models)
    recipe["eval"]["prompt_limit"] = 3
    recipe["eval"]["generation"].update({"temperature": 0.0, "diversity_samples": 0, **generation})
    return validate_recipe(recipe).eval


def test_a_model_replaced_at_the_same_path_is_generated_again(tmp_path, monkeypatch):
    from alignkit.eval import harness
    from alignkit.runio import RunDir

    path = tmp_path / "model"
    save_llama(path, seed=0)
    spec = {"name": "m", "path": str(path)}
    section = greedy_section(tmp_path, [spec, {"name": "other", "path": TINY}])
    rows, run_dir = load_prompts(section), RunDir(tmp_path / "run")
    first = harness.generate_for_model(section.models[0], rows, section, run_dir, None, need_logprobs=False)

    save_llama(path, seed=1)  # retrained in place: same path, same size, other weights
    second = harness.generate_for_model(section.models[0], rows, section, run_dir, None, need_logprobs=False)
    assert [r["token_ids"] for r in second.main] != [r["token_ids"] for r in first.main]
    lines = (run_dir.path / "completions" / "m.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(rows)  # regenerated, not read back

    # The same weights copied elsewhere are the same model: the cache answers, no model is loaded.
    import shutil

    shutil.copytree(path, tmp_path / "copy")
    monkeypatch.setattr(harness, "load_for_generation", lambda *a, **k: pytest.fail("the completions cache should answer"))
    moved = section.models[0].model_copy(update={"path": str(tmp_path / "copy")})
    third = harness.generate_for_model(moved, rows, section, run_dir, None, need_logprobs=False)
    assert [r["token_ids"] for r in third.main] == [r["token_ids"] for r in second.main]


def test_prompts_longer_than_the_context_are_cut_from_the_left_and_counted(tmp_path, capsys):
    from transformers import AutoTokenizer

    small = save_llama(tmp_path / "small", seed=0, max_position_embeddings=64)
    out = tmp_path / "run"
    recipe = eval_recipe(out, [{"name": "small", "path": small, "prompting": "fewshot"},
                               {"name": "wide", "path": TINY}])  # few-shot prompts ~140 tokens, chat ~13
    recipe["eval"]["prompt_limit"] = 3
    recipe["eval"]["generation"].update({"max_new_tokens": 8, "diversity_samples": 0})
    train(write(tmp_path / "eval.yaml", recipe), [])
    report = json.loads((out / "report.json").read_text())
    models = {m["name"]: m for m in report["models"]}
    assert (models["small"]["truncated_prompts"], models["small"]["context"]) == (3, 64)
    assert models["wide"]["truncated_prompts"] == 0
    assert report["meta"]["warnings"] == ["3 of 3 prompts of small were cut from the left to fit its context "
                                          "of 64 tokens"]
    assert "warning: 3 of 3 prompts of small were cut" in (out / "report.md").read_text()
    capsys.readouterr()

    from alignkit.eval.harness import fit_prompts

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    long = Path(FEWSHOT).read_text().replace("{prompt}", "In which region is Bresbis?")
    (cut,), n = fit_prompts(tokenizer, [long], 56)
    assert n == 1 and cut.endswith("User: In which region is Bresbis?\nAssistant:")  # the end is kept
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 56
    assert fit_prompts(tokenizer, [long], 1000) == ([long], 0)

    # max_new_tokens that leaves no room for any prompt: refused before anything is generated.
    recipe["output_dir"] = str(tmp_path / "refused")
    recipe["eval"]["generation"]["max_new_tokens"] = 64
    with pytest.raises(AlignkitError, match="max_new_tokens 64 leaves no room .* 'small'") as err:
        train(write(tmp_path / "eval2.yaml", recipe), [])
    assert err.value.where == "eval.generation.max_new_tokens"
    assert not (tmp_path / "refused" / "completions").exists()


def test_kl_against_a_reference_with_another_tokenizer_is_refused_before_generating(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    tokenizer.add_tokens(["<extra-token>"])  # another vocabulary: ids no longer mean the same tokens
    other = save_llama(tmp_path / "other-vocab", seed=0, tokenizer=tokenizer)
    out = tmp_path / "run"
    recipe = eval_recipe(out, [{"name": "ref", "path": other}, {"name": "policy", "path": TINY, "ref": "ref"}])
    with pytest.raises(AlignkitError, match="'policy' and its KL reference 'ref' have different tokenizers") as err:
        train(write(tmp_path / "eval.yaml", recipe), [])
    assert err.value.where == "eval.models[1].ref"
    assert not (out / "completions").exists()


# ---- a QLoRA adapter is evaluated on the NF4 base it was trained on ----------------------------------

def test_a_qlora_sft_adapter_is_evaluated_as_the_trained_4bit_model(tmp_path, tiny_model_dir):
    """The eval loader rebuilds the adapter's recorded NF4 base: same logits and greedy text as trained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignkit.config.base import ModelSection, QuantizationSection
    from alignkit.eval.generate import Sampling, generate
    from alignkit.models import load_causal_lm, load_for_generation
    from alignkit.runio import QUANT_FILE

    data = tmp_path / "sft.jsonl"
    with open(ROOT / "data" / "world" / "sft.jsonl") as src:
        data.write_text("".join(src.readline() for _ in range(8)))
    train(str(ROOT / "recipes" / "sft_qlora.yaml"), [
        f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}", f"data.datasets.0.path={data}",
        "model.max_length=128", "data.eval_split_size=0", "sft.merge_adapter=false", "train.max_steps=2",
        "train.per_device_train_batch_size=4", "train.gradient_checkpointing=false", "train.learning_rate=5e-2",
        "train.warmup_ratio=0", "peft.r=4", "peft.modules_to_save=[]", "train.report_to=[]"])
    adapter = tmp_path / "run" / "model"
    record = QuantizationSection(**json.loads((adapter / QUANT_FILE).read_text()))
    # The trained model, built with its quantization asked for explicitly (not read from the record).
    nf4 = load_causal_lm(ModelSection(name_or_path=str(tiny_model_dir)), record)
    evaluated, tokenizer = load_for_generation(str(adapter))
    device = next(evaluated.parameters()).device  # the GPU where there is one: compare on the same kernels
    trained = PeftModel.from_pretrained(nf4, str(adapter)).to(device).eval()
    float_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter))
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]], device=device)
    with torch.no_grad():
        want, got, other = (m(input_ids=ids).logits for m in (trained, evaluated, float_base.to(device).eval()))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (other - want).abs().max().item() > 1e-2  # what the eval scored before: another model
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in ("Who founded Liltum?", "hi")]
    greedy = Sampling(max_new_tokens=8, temperature=0.0)
    assert ([o["token_ids"] for o in generate(evaluated, tokenizer, prompts, greedy, progress=False)]
            == [o["token_ids"] for o in generate(trained, tokenizer, prompts, greedy, progress=False)])


def test_prompts_without_meta_evaluate_and_a_malformed_meta_names_its_row(tmp_path, random_llama):
    """meta is optional: rows without it (or with null) are judged by a non-oracle judge to the end (the
    hallucination column once crashed on them after every model had generated); a meta that is not an object
    stops before generating, naming file:row."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Where is town {i}?", **extra}) + "\n"
                               for i, extra in enumerate([{}, {"meta": None}, {}])))
    recipe = eval_recipe(tmp_path / "run", [{"name": "a", "path": random_llama}, {"name": "b", "path": TINY}],
                         prompts=str(prompts), judge={"type": "reward_model", "path": str(ROOT / "data/models/tiny-rm")})
    train(write(tmp_path / "eval.yaml", recipe), [])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["pairs"][0]["n"] == 3 and all(m["hallucination_rate"] is None for m in report["models"])
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Hi", "meta": "fact"}) + "\n")
    with pytest.raises(AlignkitError, match=r"p.jsonl:1: 'meta' must be an object .* got text"):
        load_prompts(validate_recipe({**recipe, "output_dir": str(tmp_path / "o2")}).eval)
