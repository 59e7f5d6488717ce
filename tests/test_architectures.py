"""Other architectures than the shipped Llama: tokenizers without PAD or template, module-name aliases, attention.

Tiny from-config models of Llama, Qwen2, Mistral, Gemma-2 and GPT-2 (hidden 32, one layer). GPT-2 gets a
GPT-2-like tokenizer (<|endoftext|> is BOS, EOS and UNK; no PAD, no chat template) and the built-in template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from alignkit.cli import train
from alignkit.config.base import ModelSection, PeftSection
from alignkit.errors import AlignkitError
from alignkit.merge import merge_adapter
from alignkit.models import ADDED_PAD, apply_lora, load_causal_lm, load_tokenizer
from tests.conftest import CHAT_ROWS, SHIPPED_BASE, write_jsonl
from tests.data.test_templates import bpe_tokenizer

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256)
CONFIGS = {
    "llama": dict(SMALL, tie_word_embeddings=True),
    "qwen2": dict(SMALL, tie_word_embeddings=True),
    "mistral": dict(SMALL, head_dim=16),
    "gemma2": dict(SMALL, head_dim=16),
    "gpt2": dict(n_embd=32, n_layer=1, n_head=2, n_positions=256),
}


def gpt2_tokenizer() -> Any:
    """GPT-2's special-token layout: <|endoftext|> is BOS, EOS and UNK; no PAD, no chat template."""
    return bpe_tokenizer(["<|endoftext|>"], eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                         unk_token="<|endoftext|>")


def save_arch(path: Path, arch: str, seed: int = 0) -> Path:
    """A random tiny model of `arch` with its tokenizer (the shipped one, or GPT-2-like for gpt2)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = gpt2_tokenizer() if arch == "gpt2" else AutoTokenizer.from_pretrained(str(SHIPPED_BASE))
    config = AutoConfig.for_model(arch, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                  bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, **CONFIGS[arch])
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    return {arch: save_arch(root / arch, arch) for arch in CONFIGS}


def test_gpt2_without_pad_or_template_trains_merges_and_reloads_with_the_same_rows(arch_dirs, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    base = arch_dirs["gpt2"]
    # No template and none set: one line naming the key, before any model loads.
    with pytest.raises(AlignkitError) as err:
        train("recipes/sft_lora.yaml", [f"output_dir={tmp_path / 'none'}", f"model.name_or_path={base}",
                                        f"data.datasets.0.path={data}", "train.max_steps=1"])
    assert err.value.where == "model.chat_template"
    train("recipes/sft_lora.yaml", [
        f"output_dir={tmp_path / 'sft'}", f"model.name_or_path={base}", "model.chat_template=zephyr",
        f"data.datasets.0.path={data}", "data.eval_datasets=[]", "data.eval_split_size=0", "train.max_steps=1",
        "train.per_device_train_batch_size=2", "train.report_to=[]", "peft.modules_to_save=[embed_tokens]"])
    adapter = tmp_path / "sft" / "model"
    tok = load_tokenizer(ModelSection(name_or_path=str(adapter)))
    assert tok.pad_token == ADDED_PAD and tok.pad_token_id == len(gpt2_tokenizer())  # the one added row
    merge_adapter(str(adapter), str(tmp_path / "merged"))
    merged = load_causal_lm(ModelSection(name_or_path=str(tmp_path / "merged"))).eval()
    trained = load_causal_lm(ModelSection(name_or_path=str(adapter))).eval()
    assert merged.get_input_embeddings().weight.shape[0] == len(tok)
    ids = torch.tensor([[5, 6, 7, tok.pad_token_id, tok.eos_token_id]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    # modules_to_save: [embed_tokens] is GPT-2's wte: trained and saved, not silently dropped.
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert any("wte" in k for k in f.keys())


def test_peft_module_names_resolve_aliases_or_name_what_exists(arch_dirs):
    gpt2 = load_causal_lm(ModelSection(name_or_path=str(arch_dirs["gpt2"])))
    model = apply_lora(gpt2, PeftSection(r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]))
    lora = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert lora == {"c_attn"}
    with pytest.raises(AlignkitError) as err:
        apply_lora(load_causal_lm(ModelSection(name_or_path=str(arch_dirs["gpt2"]))),
                   PeftSection(r=2, modules_to_save=["embeddings_typo"]))
    assert err.value.where == "peft.modules_to_save" and "wte" in str(err.value) and "c_attn" in str(err.value)
    llama = load_causal_lm(ModelSection(name_or_path=str(arch_dirs["llama"])))
    model = apply_lora(llama, PeftSection(r=2, target_modules=["c_attn"], modules_to_save=["wte"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n for n in trainable) and any("q_proj.lora_A" in n for n in trainable)


@pytest.mark.parametrize("impl, message", [("sdpa", "does not support"), ("bogus", "not supported"),
                                           ("flash_attention_2", "FlashAttention2")])
def test_unusable_attention_names_the_key(arch_dirs, impl, message):
    with pytest.raises(AlignkitError) as err:
        load_causal_lm(ModelSection(name_or_path=str(arch_dirs["gemma2"]), attn_implementation=impl))
    assert err.value.where == "model.attn_implementation" and message in str(err.value)
    assert "not a loadable" not in str(err.value)
