"""The example recipes (recipes/examples/): each validates and trains one CPU step on a tiny model of its
architecture built from config; train.bf16/fp16 `auto` is decided per machine, an explicit true without the
hardware is one line before any model loads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import transformers.utils
from transformers import AutoConfig, AutoModelForCausalLM

from alignkit.cli import main, train
from alignkit.config.base import TrainSection, resolve_precision
from alignkit.errors import AlignkitError
from alignkit.merge import QUANT_FILE
from tests.conftest import CHAT_ROWS, write_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "recipes" / "examples"
# Example -> (model_type of the Hub model it names, the data format of its dataset).
ARCHITECTURES = {
    "sft_llama3.1-8b_qlora.yaml": ("llama", "messages"),           # meta-llama/Llama-3.1-8B, UltraChat 200k
    "sft_qwen2.5-0.5b_lora.yaml": ("qwen2", "messages"),           # Qwen/Qwen2.5-0.5B-Instruct, UltraChat 200k
    "sft_smollm2-135m_full_alpaca.yaml": ("llama", "alpaca"),      # SmolLM2 is a Llama; alpaca-cleaned
}
WORDS = "one two three four five six seven eight".split()


def tiny_model(path: Path, model_type: str, tokenizer: Any) -> Path:
    """A random 1-layer, 32-wide model of `model_type` with the shipped tokenizer (2048 positions, as the recipes)."""
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def example_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny local files in the examples' formats: UltraChat rows (prompt, prompt_id, messages) and Alpaca rows."""
    root = tmp_path_factory.mktemp("example-data")
    chat = [{"prompt": r["messages"][0]["content"], "prompt_id": str(i), **r} for i, r in enumerate(CHAT_ROWS)]
    alpaca = [{"instruction": f"Say {w}.", "input": "loudly" if i % 2 else "", "output": w.capitalize() + "."}
              for i, w in enumerate(WORDS)]
    return {"messages": write_jsonl(root / "ultrachat.jsonl", chat),
            "alpaca": write_jsonl(root / "alpaca.jsonl", alpaca)}


def test_every_example_validates_and_is_covered_here(capsys):
    assert main(["validate", str(EXAMPLES)]) == 0
    assert "3 valid, 0 invalid" in capsys.readouterr().out
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("example", sorted(ARCHITECTURES))
def test_example_trains_one_cpu_step(example, tmp_path, tiny_tokenizer, example_data):
    model_type, fmt = ARCHITECTURES[example]
    model = tiny_model(tmp_path / model_type, model_type, tiny_tokenizer)
    data = example_data[fmt]
    out = tmp_path / "run"
    # A local file has no splits: the Hub split names go with the Hub ids (a kept one is refused, not ignored).
    overrides = [f"output_dir={out}", f"model.name_or_path={model}", f"data.datasets.0.path={data}",
                 "data.datasets.0.split=train", "train.max_steps=1"]
    if "eval_datasets:" in (EXAMPLES / example).read_text():
        overrides += [f"data.eval_datasets.0.path={data}", "data.eval_datasets.0.split=train"]
    metrics = train(str(EXAMPLES / example), overrides)  # quantization, LoRA, packing... as the example sets them
    assert metrics["global_step"] == 1 and math.isfinite(metrics["train_loss"])
    assert (out / "model").is_dir()
    if "load_in_4bit: true" in (EXAMPLES / example).read_text():
        assert (out / "model" / QUANT_FILE).is_file() and (out / "model" / "adapter_config.json").is_file()


@pytest.mark.skipif(transformers.utils.is_torch_bf16_gpu_available(), reason="this machine can train in bf16")
def test_explicit_bf16_without_support_is_one_line_before_the_model_loads(tmp_path, capsys):
    out = tmp_path / "run"
    example = EXAMPLES / "sft_smollm2-135m_full_alpaca.yaml"
    # The model and data are Hub ids, unreachable here: reaching the loader would give a different error.
    rc = main(["train", str(example), f"output_dir={out}", "train.bf16=true"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("alignkit: error: train.bf16: this machine cannot train in bf16")
    assert not out.exists()


@pytest.mark.parametrize("bf16, fp16, bf16_ok, fp16_ok, want", [
    ("auto", False, True, True, {"bf16": True, "fp16": False}),      # Ampere+ GPU
    ("auto", False, False, False, {"bf16": False, "fp16": False}),   # CPU: float32
    ("auto", "auto", False, True, {"bf16": False, "fp16": True}),    # a GPU without bf16 (T4, V100)
    ("auto", "auto", True, True, {"bf16": True, "fp16": False}),     # bf16 first
    ("auto", True, True, True, {"bf16": False, "fp16": True}),       # an explicit fp16 wins over auto
    (False, False, True, True, {"bf16": False, "fp16": False}),
    (True, False, True, False, {"bf16": True, "fp16": False}),
])
def test_resolve_precision(monkeypatch, bf16, fp16, bf16_ok, fp16_ok, want):
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda: bf16_ok)
    monkeypatch.setattr(transformers.utils, "is_torch_accelerator_available", lambda: fp16_ok)
    assert resolve_precision(TrainSection(bf16=bf16, fp16=fp16)) == want


def test_explicit_fp16_without_an_accelerator_names_train_fp16(monkeypatch):
    monkeypatch.setattr(transformers.utils, "is_torch_accelerator_available", lambda: False)
    with pytest.raises(AlignkitError, match=r"^train\.fp16: this machine cannot train in fp16"):
        resolve_precision(TrainSection(fp16=True))
    with pytest.raises(ValueError, match="bf16 and fp16 are exclusive"):
        TrainSection(bf16=True, fp16=True)
