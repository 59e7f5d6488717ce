"""Adapter merge: merged logits equal adapter logits (LoRA, and QLoRA after dequantizing), plain loading."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from alignkit.config.base import ModelSection, QuantizationSection
from alignkit.errors import AlignkitError
from alignkit.merge import MERGE_MARKER, QUANT_FILE, merge_adapter
from alignkit.models import load_causal_lm

IDS = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17], [20, 21, 22, 23, 24, 25, 26, 27]])


def make_adapter(base_dir: Path, out: Path, tokenizer: Any, quant: QuantizationSection | None = None,
                 modules_to_save: list[str] | None = None) -> Any:
    """A LoRA adapter with random non-zero B matrices (as if trained), saved like the SFT stage saves it."""
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(ModelSection(name_or_path=str(base_dir)), quant)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            modules_to_save=modules_to_save))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # LoRA B starts at zero: move it so the adapter changes the model
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if quant is not None:
        (out / QUANT_FILE).write_text(json.dumps(quant.model_dump()))
    return model.eval()


def _plain(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


@torch.no_grad()
def _logits(model: Any) -> torch.Tensor:
    return model(input_ids=IDS).logits.float()


def test_lora_merge_matches_adapter_and_loads_plainly(tiny_model_dir, tiny_tokenizer, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", tiny_tokenizer, modules_to_save=["embed_tokens"])
    merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    merged = _plain(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), _logits(adapter), atol=1e-4, rtol=1e-4)
    assert merged.generation_config.eos_token_id == tiny_tokenizer.eos_token_id
    assert merged.generation_config.pad_token_id == tiny_tokenizer.pad_token_id
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "merged" / "chat_template.jinja").is_file()


def test_qlora_merge_dequantizes_the_4bit_base_first(tiny_model_dir, tiny_tokenizer, tmp_path):
    quant = QuantizationSection(load_in_4bit=True)
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", tiny_tokenizer, quant=quant)
    trained = _logits(adapter)  # what the QLoRA model computes: NF4 base + adapter
    merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    merged = _plain(tmp_path / "merged")
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    dequantized_error = (_logits(merged) - trained).abs().max().item()
    assert dequantized_error < 1e-3

    # The naive merge into the original full-precision weights is a different model (peft #1080).
    from peft import PeftModel

    naive = PeftModel.from_pretrained(_plain(tiny_model_dir), str(tmp_path / "adapter")).merge_and_unload()
    assert (_logits(naive) - trained).abs().max().item() > 10 * dequantized_error


def test_merge_to_bfloat16(tiny_model_dir, tiny_tokenizer, tmp_path):
    make_adapter(tiny_model_dir, tmp_path / "adapter", tiny_tokenizer)
    merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"), dtype="bfloat16")
    merged = _plain(tmp_path / "merged")
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}


def test_merge_of_a_non_adapter_is_a_user_error(tiny_model_dir, tmp_path):
    with pytest.raises(AlignkitError, match="adapter"):
        merge_adapter(str(tiny_model_dir), str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_merge_never_replaces_a_folder_it_did_not_write(tiny_model_dir, tiny_tokenizer, tmp_path):
    """Regression: `merge RUN/model --out RUN` (or a folder of runs) used to delete the whole folder, exit 0."""
    runs = tmp_path / "runs"
    run = runs / "sft"
    make_adapter(tiny_model_dir, run / "model", tiny_tokenizer)
    (run / "run.json").write_text('{"status": "complete"}\n')
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}\n")
    (runs / "notes.txt").write_text("a sibling file\n")
    before = _tree(runs)
    for out, message in [(run, "contains the adapter folder"), (runs, "contains the adapter folder"),
                         (run / "model", "is the adapter folder"), (run / "model" / "merged", "is inside the adapter"),
                         (tiny_model_dir, "is the adapter's base model"), (runs / "other", "is not empty")]:
        if out.name == "other":
            (out / "model").mkdir(parents=True, exist_ok=True)
            (out / "model" / "weights.bin").write_bytes(b"someone else's")
            before = _tree(runs)
        with pytest.raises(AlignkitError, match=message):
            merge_adapter(str(run / "model"), str(out))
        assert _tree(runs) == before
    assert not list(runs.rglob(".tmp-*"))


def test_merge_replaces_its_own_earlier_output(tiny_model_dir, tiny_tokenizer, tmp_path):
    make_adapter(tiny_model_dir, tmp_path / "adapter", tiny_tokenizer)
    (tmp_path / "merged").mkdir()  # an empty folder holds nothing to lose
    merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert json.loads((tmp_path / "merged" / MERGE_MARKER).read_text())["dtype"] == "float32"
    merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"), dtype="bfloat16")
    assert {p.dtype for p in _plain(tmp_path / "merged").parameters()} == {torch.bfloat16}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]  # no temp folders left behind


def test_4bit_layers_keep_their_arithmetic_on_every_cpu(tiny_model_dir):
    """bitsandbytes on an AVX512-BF16 CPU repacks a 4-bit weight in place at its first no-grad eval forward
    and computes it in bfloat16 (its absmax too, so the packing loses precision for good). keep_4bit_arithmetic,
    run at load, switches that off: the layer computes x @ dequantized(W).T in its compute dtype on any CPU.
    A weight packed before it ran is put back in the NF4 layout that dequantize and merge read."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from alignkit.models import keep_4bit_arithmetic

    model = load_causal_lm(ModelSection(name_or_path=str(tiny_model_dir)), QuantizationSection(load_in_4bit=True))
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.support_avx512bf16_for_cpu is False  # switched off at load
    weight = layer.weight
    shape = weight.data.shape
    reference = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    x = torch.randn(3, reference.shape[1])
    with torch.no_grad():
        assert torch.allclose(model.eval().get_submodule(_name(model, layer))(x).float(), x @ reference.t(), atol=1e-5)
    assert not getattr(weight.quant_state, "packing_format_for_cpu", False) and weight.data.shape == shape
    # As bitsandbytes leaves a weight after an eval forward on such a CPU (the repacking itself runs anywhere):
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, weight.quant_state)
    layer.support_avx512bf16_for_cpu = True
    keep_4bit_arithmetic(model)
    assert not getattr(weight.quant_state, "packing_format_for_cpu", False) and layer.support_avx512bf16_for_cpu is False
    assert weight.data.shape == shape
    unpacked = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    assert torch.allclose(unpacked, reference, atol=0.01 * reference.abs().max().item())  # bf16 absmax


def _name(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def test_an_adapter_saved_without_its_tokenizer_merges_with_the_bases(tiny_model_dir, tiny_tokenizer, tmp_path):
    """PEFT and TRL save adapters without a tokenizer: the base's is used (it was a Hub-id traceback)."""
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", tiny_tokenizer)
    for f in (tmp_path / "adapter").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    torch.testing.assert_close(_logits(_plain(tmp_path / "merged")), _logits(adapter), atol=1e-4, rtol=1e-4)
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("files, message", [
    ({"adapter_config.json": "{bad"}, "adapter_config.json: not valid JSON"),
    ({"adapter_config.json": json.dumps({"base_model_name_or_path": "/nonexistent/base", "peft_type": "LORA"})},
     "its base model /nonexistent/base (base_model_name_or_path in adapter_config.json) is not found"),
    ({"adapter_config.json": json.dumps({"base_model_name_or_path": "data/models/tiny-base", "peft_type": "LORA"})},
     "no adapter_model.safetensors"),
])
def test_a_broken_adapter_folder_is_named_before_loading(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / "adapter").mkdir(exist_ok=True)
        (tmp_path / "adapter" / name).write_text(text)
    with pytest.raises(AlignkitError, match=re.escape(message)) as err:
        merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert err.value.where == str(tmp_path / "adapter") and not (tmp_path / "merged").exists()
