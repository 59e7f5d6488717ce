"""Pretraining from scratch on the world corpus: loss falls, output loads with plain transformers."""

import itertools
import json
import subprocess
import sys

import pytest

from alignkit.cli import train
from alignkit.runio import read_metrics


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open("data/world/corpus.jsonl") as src:
        path.write_text("".join(itertools.islice(src, 400)))
    return path


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    metrics = train("recipes/pretrain_tiny.yaml", [
        f"data.datasets.0.path={small_corpus}", f"output_dir={out}", "train.max_steps=40",
        "train.logging_steps=5", "train.report_to=[]", "pretrain.eval_holdout_documents=20",
        "pretrain.tokenizer_training.vocab_size=512", "pretrain.architecture.hidden_size=64",
        "pretrain.architecture.intermediate_size=128", "pretrain.architecture.num_hidden_layers=2",
        "train.per_device_train_batch_size=8", "pretrain.block_size=128",
    ])
    return out, metrics


def test_loss_falls_and_run_is_complete(scratch_run):
    out, metrics = scratch_run
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) >= 4
    assert losses[-1] < losses[0] - 0.5  # at least half a nat lower after 40 steps
    assert metrics["eval_perplexity"] > 1
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "complete" and summary["stage"] == "pretrain"
    assert (out / "recipe.yaml").is_file()


def test_saved_model_loads_with_plain_transformers(scratch_run):
    out, _ = scratch_run
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer;"
        f"m = AutoModelForCausalLM.from_pretrained('{out}/model');"
        f"t = AutoTokenizer.from_pretrained('{out}/model');"
        "assert t.eos_token == '<|endoftext|>' and t.pad_token_id != t.eos_token_id;"
        "s = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False, add_generation_prompt=True);"
        "assert s.endswith('<|assistant|>'), s;"
        "assert m.generation_config.eos_token_id == t.eos_token_id;"
        "print('ok')"
    )
    assert (out / "model" / "model.safetensors").is_file()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_continued_pretraining_from_checkpoint_on_a_mixture(scratch_run, small_corpus, tmp_path):
    out, _ = scratch_run
    second = tmp_path / "other.jsonl"
    second.write_text("".join(json.dumps({"body": f"Extra document {i} about rivers."}) + "\n" for i in range(50)))
    recipe = tmp_path / "cpt.yaml"
    recipe.write_text(f"""
stage: pretrain
output_dir: {tmp_path / 'cpt'}
model: {{name_or_path: {out}/model}}
data:
  datasets:
    - {{path: {small_corpus}, weight: 3}}
    - {{path: {second}, weight: 1, columns: {{text: body}}}}
pretrain: {{block_size: 128, eval_holdout_documents: 10}}
train: {{max_steps: 5, per_device_train_batch_size: 4, report_to: [], learning_rate: 1.0e-4}}
""")
    metrics = train(str(recipe), [])
    assert metrics["global_step"] == 5
    assert (tmp_path / "cpt" / "model" / "model.safetensors").is_file()
