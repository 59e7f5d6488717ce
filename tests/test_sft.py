"""SFT stage: the assistant-only label mask, packing isolation, saved models that stop, adapters, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from alignkit import sft
from alignkit.config.recipe import validate_recipe
from alignkit.errors import AlignkitError
from alignkit.merge import QUANT_FILE
from alignkit.runio import RunDir
from tests.conftest import CHAT_ROWS, REPO, write_jsonl

EOS = "<|endoftext|>"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def sft_recipe(base: Path, data_file: Path, out: Path, /, **sections: Any) -> Any:
    """A small SFT recipe on a local model and JSONL file; sections deep-merge over the defaults."""
    raw = {
        "stage": "sft", "output_dir": str(out), "seed": 0,
        "model": {"name_or_path": str(base), "max_length": 128},
        "data": {"datasets": [{"path": str(data_file), "format": "messages"}]},
        "train": {"learning_rate": 3e-3, "max_steps": 4, "per_device_train_batch_size": 4,
                  "lr_scheduler_type": "constant", "logging_steps": 1, "save_steps": 100, "report_to": []},
    }
    return validate_recipe(_merge(raw, sections))


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("sftdata") / "chat.jsonl", CHAT_ROWS * 4)


def _assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of each assistant turn's content + EOS in a rendered conversation (found by hand)."""
    spans, pos = [], 0
    while (start := text.find("<|assistant|>", pos)) != -1:
        start += len("<|assistant|>")  # the space before the answer is the answer's (the template's generation part)
        end = text.index(EOS, start) + len(EOS)
        spans.append((start, end))
        pos = end
    return spans


def test_label_mask_is_assistant_content_and_eos_only(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", [CHAT_ROWS[0]])
    trainer = sft.build_trainer(sft_recipe(tiny_model_dir, data, tmp_path / "run"), RunDir(tmp_path / "run"))
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    text = tok.apply_chat_template(CHAT_ROWS[0]["messages"], tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids
    spans = _assistant_spans(text)
    expected = [tid if any(s <= a < e for s, e in spans) else -100
                for tid, (a, _) in zip(ids, enc["offset_mapping"], strict=True)]
    for i, (got, want) in enumerate(zip(labels, expected, strict=True)):
        assert got == want, f"token {i} {tok.decode([ids[i]])!r}: label {got}, expected {want}"
    trained = tok.decode([t for t in labels if t != -100])
    # both turns, EOS included, nothing else; the space before an answer is the answer's first token's
    assert trained == f" Eastvale.{EOS} The Ilsa.{EOS}"


def packed_trainer(base: Path, data_file: Path, tmp_path: Path, **sections: Any) -> Any:
    """The SFT trainer of a packing recipe (sections deep-merge over sft_recipe's defaults)."""
    recipe = sft_recipe(base, data_file, tmp_path / "run", data={"packing": True}, **sections)
    return sft.build_trainer(recipe, RunDir(tmp_path / "run"))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked(tiny_model_dir, chat_file, tmp_path, attn):
    trainer = packed_trainer(tiny_model_dir, chat_file, tmp_path, model={"attn_implementation": attn})
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert "attention_mask" not in batch  # padding-free: boundaries live in position_ids only
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    assert len(starts) > 3, "the first packed row should hold several samples"
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = model(**inputs).logits[0]
        for s, e in zip(starts, starts[1:], strict=False):
            alone = model(input_ids=batch["input_ids"][:, s:e]).logits[0]
            torch.testing.assert_close(packed[s:e], alone, atol=1e-5, rtol=1e-4)
        # Control: the same row as one causal sequence leaks across samples, so the check above has teeth.
        leaky = model(input_ids=batch["input_ids"]).logits[0]
    s, e = starts[1], starts[2]
    assert (leaky[s:e] - packed[s:e]).abs().max() > 1e-3
    assert all(batch["labels"][0, s].item() == -100 for s in starts[:-1])  # no loss across a boundary


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_packed_batch_layouts_keep_samples_apart(tiny_model_dir, chat_file, tmp_path, layout):
    trainer = packed_trainer(tiny_model_dir, chat_file, tmp_path, sft={"packed_layout": layout})
    model = trainer.model.eval()
    examples = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(examples)
    assert "attention_mask" not in batch
    lengths = [len(e["input_ids"]) for e in examples]
    # rows: one row per packed example (cost batch x L^2); flat: all of them in one row (needs varlen kernels).
    assert batch["input_ids"].shape == ((3, max(lengths)) if layout == "rows" else (1, sum(lengths)))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    checked = 0
    for r in range(batch["input_ids"].shape[0]):
        pos, ids, labels = batch["position_ids"][r], batch["input_ids"][r], batch["labels"][r]
        real = ids != trainer.processing_class.pad_token_id
        starts = (pos == 0).nonzero().flatten().tolist() + [int(real.sum())]
        for s, e in zip(starts, starts[1:], strict=False):
            if e - s < 2:
                continue
            with torch.no_grad():
                alone = model(input_ids=ids[None, s:e]).logits[0]
            torch.testing.assert_close(logits[r, s:e], alone, atol=1e-5, rtol=1e-4)
            assert labels[s].item() == -100  # no loss across a boundary
            checked += 1
        assert (labels[~real] == -100).all()
    assert checked >= 6


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_packed_epoch_counts_every_real_token(tiny_model_dir, chat_file, tmp_path, layout):
    trainer = packed_trainer(tiny_model_dir, chat_file, tmp_path, sft={"packed_layout": layout},
                             train={"max_steps": -1, "num_train_epochs": 1, "per_device_train_batch_size": 2})
    real = sum(len(row["input_ids"]) for row in trainer.train_dataset)
    trainer.train()
    logged = [r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r]
    assert logged[-1] == real


def test_neftune_noises_the_embeddings_while_training_and_leaves_no_hook(tiny_model_dir, chat_file, tmp_path):
    losses = {}
    for alpha in (None, 50.0):
        recipe = sft_recipe(tiny_model_dir, chat_file, tmp_path / str(alpha), sft={"neftune_noise_alpha": alpha})
        trainer = sft.build_trainer(recipe, RunDir(tmp_path / str(alpha)))
        assert trainer.args.neftune_noise_alpha == alpha
        trainer.train()
        losses[alpha] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        assert not trainer.model.get_input_embeddings()._forward_hooks  # noise only while training
    assert losses[None][0] == pytest.approx(losses[50.0][0], rel=0.5) and losses[None] != losses[50.0]
    with pytest.raises(Exception, match="neftune_noise_alpha"):
        sft_recipe(tiny_model_dir, chat_file, tmp_path / "bad", sft={"neftune_noise_alpha": 0})


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, chat_file, tmp_path_factory) -> tuple[RunDir, dict]:
    out = tmp_path_factory.mktemp("full") / "run"
    recipe = sft_recipe(tiny_model_dir, chat_file, out, train={"max_steps": 40, "learning_rate": 1e-2})
    return RunDir(out), sft.run(recipe, RunDir(out), "test")


def test_full_run_metrics(full_run):
    _, metrics = full_run
    assert metrics["global_step"] == 40
    assert metrics["train_loss"] < 4.0
    assert metrics["trainable_parameters"] > 0 and metrics["peak_memory_mb"] > 0
    assert metrics["train_seconds"] >= 0


def test_saved_model_stops_with_eos_under_plain_transformers(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = full_run
    tok = AutoTokenizer.from_pretrained(str(run_dir.model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(run_dir.model_dir)).eval()
    assert tok.chat_template and "{% generation %}" in tok.chat_template
    assert model.generation_config.eos_token_id in (tok.eos_token_id, [tok.eos_token_id])
    assert model.generation_config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    prompt = tok.apply_chat_template(CHAT_ROWS[1]["messages"][:1], tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=30, do_sample=False)[0, enc["input_ids"].shape[1]:]
    assert out[-1].item() == tok.eos_token_id and len(out) < 30  # it stopped by itself
    assert tok.decode(out, skip_special_tokens=True).strip() == "A turtle."


def _adapter_run(base: Path, data: Path, out: Path, **sections: Any) -> tuple[RunDir, dict]:
    peft = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    recipe = sft_recipe(base, data, out, peft=peft, **sections)
    return RunDir(out), sft.run(recipe, RunDir(out), "test")


def _all_linear_targets(model: Any) -> set[str]:
    return {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}


def test_lora_adapter_loads_with_peft(tiny_model_dir, chat_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, metrics = _adapter_run(tiny_model_dir, chat_file, tmp_path / "lora")
    assert (run_dir.model_dir / "adapter_config.json").is_file()
    assert not (run_dir.model_dir / "model.safetensors").exists()  # an adapter, not a full copy
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                      str(run_dir.model_dir))
    assert _all_linear_targets(model) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"}
    assert 0 < metrics["trainable_parameters"] < sum(p.numel() for p in model.parameters()) / 4


def test_qlora_trains_on_nf4_and_merges(tiny_model_dir, chat_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, _ = _adapter_run(tiny_model_dir, chat_file, tmp_path / "qlora",
                              quantization={"load_in_4bit": True}, sft={"merge_adapter": True})
    quant = json.loads((run_dir.model_dir / QUANT_FILE).read_text())
    assert quant["bnb_4bit_quant_type"] == "nf4" and quant["bnb_4bit_use_double_quant"] is True
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                      str(run_dir.model_dir))
    assert len(_all_linear_targets(model)) == 7
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir.path / "merged"))
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux /proc/self/maps")
def test_quantized_load_reads_the_checkpoint_without_mapping_it(tiny_model_dir):
    """A 4-bit load keeps no page of the full-precision file mapped: pread, not mmap (bench/memory.py)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from alignkit.memory import read_checkpoints_without_mmap

    weights = tiny_model_dir / "model.safetensors"
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    mapped = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), quantization_config=q)
    assert _mapped(weights)  # transformers' default: unquantized tensors still view the mapped file
    with read_checkpoints_without_mmap():
        read = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), quantization_config=q)
    del mapped
    import gc

    gc.collect()
    assert not _mapped(weights)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), quantization_config=q)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(read(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_quantized_base_without_peft_is_a_user_error(tiny_model_dir, chat_file, tmp_path):
    recipe = sft_recipe(tiny_model_dir, chat_file, tmp_path / "run", quantization={"load_in_4bit": True})
    with pytest.raises(AlignkitError, match="peft"):
        sft.run(recipe, RunDir(tmp_path / "run"), "test")


def _adapter_weights(run_dir: RunDir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir.model_dir / "adapter_model.safetensors"))


def test_resume_continues_at_the_saved_step_with_optimizer_state(tiny_model_dir, chat_file, tmp_path):
    out = tmp_path / "resume"
    sections = {"train": {"max_steps": 6, "save_steps": 3, "lr_scheduler_type": "cosine"}}
    run_dir, first = _adapter_run(tiny_model_dir, chat_file, out, **sections)
    uninterrupted = _adapter_weights(run_dir)
    # Simulate a crash after step 3: only checkpoint-3 survives.
    shutil.rmtree(run_dir.checkpoints / "checkpoint-6")
    shutil.rmtree(run_dir.model_dir)
    assert (run_dir.checkpoints / "checkpoint-3" / "optimizer.pt").is_file()

    resumed_sections = _merge(sections, {"train": {"resume_from_checkpoint": True}})
    _, second = _adapter_run(tiny_model_dir, chat_file, out, **resumed_sections)
    assert second["resumed_from"].endswith("checkpoint-3")
    assert second["global_step"] == first["global_step"] == 6
    state = json.loads((run_dir.checkpoints / "checkpoint-6" / "trainer_state.json").read_text())
    assert [r["step"] for r in state["log_history"] if "loss" in r] == [1, 2, 3, 4, 5, 6]
    # Same weights as the uninterrupted run: Adam moments, schedule and data order were all restored.
    for name, value in _adapter_weights(run_dir).items():
        torch.testing.assert_close(value, uninterrupted[name], atol=1e-6, rtol=1e-5, msg=name)

    # A checkpoint already at the end (a crash after it) is loaded and the run completes: no stray 7th step.
    finished = _adapter_weights(run_dir)
    _, third = _adapter_run(tiny_model_dir, chat_file, out, **resumed_sections)
    assert third["global_step"] == 6 and not (run_dir.checkpoints / "checkpoint-7").exists()
    for name, value in _adapter_weights(run_dir).items():
        torch.testing.assert_close(value, finished[name], atol=0, rtol=0, msg=name)
    # One past the end is another schedule: an error, not a silent skip.
    with pytest.raises(AlignkitError, match="past the end of the schedule"):
        _adapter_run(tiny_model_dir, chat_file, out, **_merge(resumed_sections, {"train": {"max_steps": 5}}))


def test_bad_row_names_file_and_row(tiny_model_dir, tmp_path):
    rows = [CHAT_ROWS[1], {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(AlignkitError, match=r"bad\.jsonl:2"):
        sft.run(sft_recipe(tiny_model_dir, data, tmp_path / "run"), RunDir(tmp_path / "run"), "test")


SFT_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("**/sft_*.yaml"))


@pytest.mark.parametrize("path", SFT_RECIPES, ids=lambda p: p.name)
def test_shipped_sft_recipes_validate_and_their_templates_train_eos(path, tiny_tokenizer):
    from alignkit.config import load_recipe

    recipe = load_recipe(path)
    assert recipe.stage == "sft" and recipe.sft is not None and recipe.sft.assistant_only_loss
    template = recipe.model.chat_template
    if template is None:
        return
    # A recipe's own template must mark assistant turns, their end-of-turn token included.
    out = tiny_tokenizer.apply_chat_template(CHAT_ROWS[0]["messages"], chat_template=template, return_dict=True,
                                             return_assistant_tokens_mask=True)
    trained = tiny_tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    assert trained.startswith("Eastvale.") and trained.endswith("The Ilsa.<|end_of_text|>")


def test_template_without_generation_markers_trains_assistant_turns_only(tiny_model_dir, tmp_path):
    """ChatML as shipped (no {% generation %}): TRL has no training variant, the mask comes from prefixes."""
    from tests.data.test_templates import SHIPPED

    data = write_jsonl(tmp_path / "one.jsonl", [CHAT_ROWS[0]])
    recipe = sft_recipe(tiny_model_dir, data, tmp_path / "run",
                        model={"chat_template": SHIPPED["chatml"], "max_length": 512})  # markers are text here
    trainer = sft.build_trainer(recipe, RunDir(tmp_path / "run"))
    tok = trainer.processing_class
    labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0].tolist()
    # Both assistant turns with their turn end, nothing of the system/user turns or the headers.
    assert tok.decode([t for t in labels if t != -100]) == "Eastvale.<|im_end|>The Ilsa.<|im_end|>"


def test_rows_with_nothing_trained_within_max_length_are_counted_and_none_left_is_an_error(
        tiny_model_dir, tmp_path, caplog):
    long = {"messages": [{"role": "user", "content": "Where is Bresbis? " * 12},
                         {"role": "assistant", "content": "Eastvale."}]}
    data = write_jsonl(tmp_path / "mixed.jsonl", [CHAT_ROWS[1], long, CHAT_ROWS[2]])
    with caplog.at_level("WARNING", logger="alignkit.sft"):
        trainer = sft.build_trainer(sft_recipe(tiny_model_dir, data, tmp_path / "run", model={"max_length": 40}),
                                    RunDir(tmp_path / "run"))
    assert len(trainer.train_dataset) == 2
    assert "dropped 1 of 3 rows of data.datasets with no trained token within model.max_length=40" in caplog.text
    only_long = write_jsonl(tmp_path / "long.jsonl", [long])
    with pytest.raises(AlignkitError, match="no row of data.datasets has a trained token within 40 tokens"):
        sft.build_trainer(sft_recipe(tiny_model_dir, only_long, tmp_path / "run2", model={"max_length": 40}),
                          RunDir(tmp_path / "run2"))


def test_rows_holding_a_special_token_as_text_are_dropped_with_a_count(tiny_tokenizer, tmp_path, caplog):
    """A literal '<|endoftext|>' in an answer would train an EOS mid-answer: such rows are left out, counted."""
    from alignkit.config.base import DatasetSpec
    from alignkit.sft import load_sft_dataset, special_token_strings

    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"},
                          {"role": "assistant", "content": "A <|endoftext|> B" if i == 2 else "A"}]} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    specials = special_token_strings(tiny_tokenizer)
    assert tiny_tokenizer.eos_token in specials
    with caplog.at_level("WARNING"):
        ds = load_sft_dataset([DatasetSpec(path=str(path))], "data.datasets", specials)
    assert [r["messages"][0]["content"] for r in ds] == ["Q0", "Q1", "Q3"]
    assert "dropped 1 of 4 rows" in caplog.text and "at row 3" in caplog.text


def test_a_resume_with_another_setting_is_refused_and_keeps_the_recipe(tiny_model_dir, chat_file, tmp_path):
    """The learning rate came back from the checkpoint (the new one ignored), a new data file or base model was
    mixed into the same adapter, while recipe.yaml recorded the new values as if used."""
    from alignkit.stages.lifecycle import run_recipe

    out = tmp_path / "run"
    recipe = sft_recipe(tiny_model_dir, chat_file, out, train={"resume_from_checkpoint": True, "max_steps": 4})
    RunDir(out).path.mkdir(parents=True)
    RunDir(out).save_recipe(recipe.dump())
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}\n")
    recorded = (out / "recipe.yaml").read_text()
    for change, key in [({"train": {"learning_rate": 0.5}}, "train.learning_rate"),
                        ({"model": {"name_or_path": str(REPO / "data/models/tiny-sft")}}, "model.name_or_path")]:
        changed = sft_recipe(tiny_model_dir, chat_file, out, **_merge({"train": {"resume_from_checkpoint": True,
                                                                                  "max_steps": 4}}, change))
        with pytest.raises(AlignkitError, match="differs from the run being resumed") as err:
            run_recipe(changed, "test")
        assert err.value.where == key and (out / "recipe.yaml").read_text() == recorded
