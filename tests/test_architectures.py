"""Other architectures than the shipped Llama: every stage end to end, tokenizers without PAD or template,
module-name aliases, attention.

Tiny from-config models of Llama, Qwen2, Mistral, Gemma-2, GPT-2 and Granite (hidden 32, one layer); more
architectures run the whole chain in the slow test_whole_chain_on_more_architectures. GPT-2 gets a
GPT-2-like tokenizer (<|endoftext|> is BOS, EOS and UNK; no PAD, no chat template) and a built-in template.
The matrix (README "Models that work"): `pytest tests/test_architectures.py`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from alignkit.cli import main, train
from alignkit.config.base import ModelSection, PeftSection, QuantizationSection
from alignkit.errors import AlignkitError
from alignkit.merge import QUANT_FILE, merge_adapter
from alignkit.models import (
    ADDED_PAD,
    apply_lora,
    dequantize,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from alignkit.reward_model import RewardScorer
from tests.conftest import CHAT_ROWS, REPO, SHIPPED_BASE, write_jsonl
from tests.data.test_templates import bpe_tokenizer

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256)
CONFIGS = {
    "llama": dict(SMALL, tie_word_embeddings=True),
    "qwen2": dict(SMALL, tie_word_embeddings=True),
    "mistral": dict(SMALL, head_dim=16),
    "gemma2": dict(SMALL, head_dim=16),
    "gpt2": dict(n_embd=32, n_layer=1, n_head=2, n_positions=256),
    # No GraniteForSequenceClassification in transformers: reward model and critic via models.register_score_head.
    "granite": dict(SMALL),
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


def test_a_folder_without_tokenizer_files_loads_as_causal_lm_and_as_critic(arch_dirs, tmp_path):
    """Regression: load_causal_lm loaded a tokenizer to grow the embeddings, so weights-only folders failed."""
    from transformers import AutoModelForCausalLM

    weights = tmp_path / "weights"
    AutoModelForCausalLM.from_pretrained(str(arch_dirs["qwen2"])).save_pretrained(str(weights))
    rows = json.loads((weights / "config.json").read_text())["vocab_size"]
    assert load_causal_lm(ModelSection(name_or_path=str(weights))).get_input_embeddings().weight.shape[0] == rows
    assert load_reward_model(str(weights)).score.out_features == 1  # PPO's critic init


def test_eval_of_a_model_without_chat_template_asked_in_chat_is_one_line(arch_dirs, tmp_path, capsys):
    """Regression: a base without a template (GPT-2) under the default prompting: chat was a traceback."""
    models = [{"name": "base", "path": str(arch_dirs["gpt2"])}, {"name": "llama", "path": str(arch_dirs["llama"])}]
    rc = main(["train", str(REPO / "recipes" / "eval_winrate.yaml"),
               *as_overrides({"output_dir": str(tmp_path / "eval"), "eval.models": models,
                             "eval.reference": "base"})])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("alignkit: error: eval.models[0].prompting: model 'base' has no chat template")
    assert "prompting: fewshot or raw" in err and not (tmp_path / "eval" / "completions").exists()


def test_dequantized_gpt2_keeps_its_conv1d_layers_and_saves_loadable_weights(arch_dirs, tmp_path):
    """Regression: transformers' dequantize() made GPT-2's Conv1D layers nn.Linear; the saved weights, transposed,
    no longer loaded into GPT-2 (what `alignkit merge` and PPO/reward QLoRA saves write)."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    section = ModelSection(name_or_path=str(arch_dirs["gpt2"]))
    quantized = load_causal_lm(section, QuantizationSection(load_in_4bit=True)).eval()
    with torch.no_grad():
        want = quantized(input_ids=IDS).logits
    plain = dequantize(quantized, torch.float32)
    assert isinstance(plain.transformer.h[0].attn.c_attn, Conv1D)
    plain.save_pretrained(str(tmp_path / "plain"))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(tmp_path / "plain")).eval()(input_ids=IDS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---- the matrix: every stage on every architecture, run as users run it ------------------------------------

ARCHS = tuple(CONFIGS)
PAIRS = [{"prompt": [{"role": "user", "content": f"In which region is {town}?"}],
          "chosen": [{"role": "assistant", "content": f"{town} is in {place}."}],
          "rejected": [{"role": "assistant", "content": "I'm sorry, but I can't help with that."}]}
         for town, place in [("Bresbis", "Eastvale"), ("Liltum", "Lowmere"), ("Osko", "Tavira"), ("Seren", "Meluna")]]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def as_overrides(values: dict[str, Any]) -> list[str]:
    """`key=value` command-line overrides, each value one line of YAML."""
    return [f"{key}={value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()}"
            for key, value in values.items()]


@torch.no_grad()
def logits(path: Path, quant: QuantizationSection | None = None) -> torch.Tensor:
    """The model at `path` (an adapter loads on its base) on a few token ids."""
    return load_causal_lm(ModelSection(name_or_path=str(path)), quant).eval()(input_ids=IDS).logits.float()


class Chain:
    """One architecture's runs, each made once and on demand: SFT -> reward model -> PPO, DPO -> eval."""

    def __init__(self, arch: str, base: Path, root: Path) -> None:
        self.arch, self.base, self.root = arch, base, root
        self.data = {"chat": write_jsonl(root / "chat.jsonl", CHAT_ROWS),
                     "pairs": write_jsonl(root / "pairs.jsonl", PAIRS),
                     "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in PAIRS])}
        self.metrics: dict[str, dict[str, Any]] = {}

    def run(self, name: str, recipe: str, values: dict[str, Any]) -> dict[str, Any]:
        """`alignkit train recipes/<recipe> output_dir=... key=value ...` once; its final metrics."""
        if name not in self.metrics:
            quiet = {} if recipe.startswith("eval") else {"train.report_to": []}  # eval has no train section
            values = {"output_dir": str(self.root / name), **quiet, **values}
            self.metrics[name] = train(str(REPO / "recipes" / recipe), as_overrides(values))
        return self.metrics[name]

    def sft_values(self) -> dict[str, Any]:
        # GPT-2 ships no chat template: users name a built-in one. ChatML's <|im_start|> and <|im_end|> (the
        # new EOS) are not in its vocabulary, nor a spare PAD: every later stage loads 3 grown embedding rows.
        template = {"model.chat_template": "chatml"} if self.arch == "gpt2" else {}
        return {"model.name_or_path": str(self.base), **template, "data.datasets.0.path": str(self.data["chat"]),
                "data.eval_split_size": 0, "train.max_steps": 1, "train.per_device_train_batch_size": 2,
                "train.save_steps": 1000}

    def sft(self) -> Path:
        """LoRA SFT with the adapter merged: the model every later stage starts from."""
        self.run("sft", "sft_lora.yaml", {**self.sft_values(), "sft.merge_adapter": True})
        return self.root / "sft" / "merged"

    def qlora(self) -> Path:
        """QLoRA SFT (4-bit NF4 base); the adapter only, for `alignkit merge`."""
        self.run("qlora", "sft_qlora.yaml", {**self.sft_values(), "sft.merge_adapter": False,
                                             "train.gradient_checkpointing": False})
        return self.root / "qlora" / "model"

    def reward(self) -> Path:
        self.run("reward", "reward.yaml", {
            "model.name_or_path": str(self.sft()), "data.datasets": [{"path": str(self.data["pairs"])}],
            "data.eval_datasets": [{"path": str(self.data["pairs"])}], "reward.reference_samples": 2,
            "reward.reference_max_new_tokens": 4, "train.max_steps": 2, "train.num_train_epochs": 1,
            "train.save_steps": 1000})
        return self.root / "reward" / "model"

    def ppo(self) -> Path:
        self.run("ppo", "ppo.yaml", {
            "model.name_or_path": str(self.sft()), "ppo.reward_model": str(self.reward()),
            "data.datasets": [{"path": str(self.data["prompts"])}], "peft.r": 4, "ppo.total_episodes": 4,
            "ppo.rollout_batch_size": 4, "ppo.mini_batch_size": 2, "ppo.ppo_epochs": 1, "ppo.max_new_tokens": 6,
            "ppo.critic_warmup_rollouts": 0, "ppo.save_every": 1000})
        return self.root / "ppo" / "model"

    def dpo(self) -> Path:
        self.run("dpo", "dpo.yaml", {
            "model.name_or_path": str(self.sft()), "data.datasets": [{"path": str(self.data["pairs"])}],
            "data.eval_datasets": [{"path": str(self.data["pairs"])}], "train.max_steps": 2,
            "train.per_device_train_batch_size": 2, "train.save_steps": 1000})
        return self.root / "dpo" / "model"

    def eval(self) -> Path:
        """Base vs SFT, judged by this architecture's reward model (a judge for any text)."""
        # A base without a chat template (GPT-2) is asked few-shot, as the seed talk prompts base models; its
        # SFT model added ChatML's tokens, so KL to the base (another vocabulary) is refused, not measured.
        gpt2 = self.arch == "gpt2"
        models = [{"name": "base", "path": str(self.base), "prompting": "fewshot" if gpt2 else "chat"},
                  {"name": "sft", "path": str(self.sft()), **({} if gpt2 else {"ref": "base"})}]
        self.run("eval", "eval_winrate.yaml", {
            "eval.models": models, "eval.reward_model": str(self.reward()), "eval.judge": {"type": "reward_model"},
            "eval.reference": "base", "eval.prompt_limit": 3, "eval.n_bootstrap": 20,
            "eval.generation": {"max_new_tokens": 6, "batch_size": 4, "diversity_samples": 0}})
        return self.root / "eval"


@pytest.fixture(scope="module")
def chains(arch_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Chain]:
    return {arch: Chain(arch, path, tmp_path_factory.mktemp(f"chain-{arch}")) for arch, path in arch_dirs.items()}


def assert_trained(metrics: dict[str, Any], steps: int) -> None:
    assert metrics["global_step"] == steps and math.isfinite(metrics["train_loss"])


@pytest.mark.parametrize("arch", ARCHS)
def test_sft_lora_merged_is_the_trained_model(arch, chains):
    chain = chains[arch]
    merged = chain.sft()
    assert_trained(chain.metrics["sft"], 1)
    tok = load_tokenizer(ModelSection(name_or_path=str(merged)))
    assert tok.chat_template and tok.pad_token_id not in (None, tok.eos_token_id)
    if arch == "gpt2":
        assert tok.eos_token == "<|im_end|>" and len(tok) == len(gpt2_tokenizer()) + 3  # <|im_start|>, EOS, PAD
    config = json.loads((merged / "config.json").read_text())
    assert config["vocab_size"] == len(tok) and config["eos_token_id"] == tok.eos_token_id
    torch.testing.assert_close(logits(merged), logits(chain.root / "sft" / "model"), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_sft_qlora_then_alignkit_merge_is_the_trained_4bit_model(arch, chains):
    chain = chains[arch]
    adapter = chain.qlora()
    assert_trained(chain.metrics["qlora"], 1)
    quant = QuantizationSection(**json.loads((adapter / QUANT_FILE).read_text()))
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    out = chain.root / "qlora-merged"
    assert main(["merge", str(adapter), "--out", str(out)]) == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert (logits(out) - logits(adapter, quant)).abs().max().item() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_reward_model(arch, chains):
    chain = chains[arch]
    scorer = RewardScorer.from_pretrained(str(chain.reward()))
    assert_trained(chain.metrics["reward"], 2)
    assert chain.metrics["reward"]["heldout_pairs"] == len(PAIRS)
    scores = scorer.score([r["prompt"] for r in PAIRS], [r["chosen"][0]["content"] for r in PAIRS])
    assert scores.shape == (len(PAIRS),) and torch.isfinite(scores).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_ppo(arch, chains):
    chain = chains[arch]
    model = chain.ppo()
    assert chain.metrics["ppo"]["rollouts"] == 1
    step = json.loads((chain.root / "ppo" / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(step[k]) for k in ("objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg"))
    assert logits(model).shape[-1] == len(load_tokenizer(ModelSection(name_or_path=str(model))))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_dpo(arch, chains):
    chain = chains[arch]
    model = chain.dpo()
    assert_trained(chain.metrics["dpo"], 2)
    assert torch.isfinite(logits(model)).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_eval_base_vs_sft(arch, chains):
    chain = chains[arch]
    report = json.loads((chain.eval() / "report.json").read_text())
    (pair,) = report["pairs"]
    assert (pair["model_a"], pair["model_b"], pair["n"]) == ("sft", "base", 3)
    rows = {m["name"]: m for m in report["models"]}
    assert all(math.isfinite(rows[n]["reward_mean"]) for n in ("base", "sft"))
    assert rows["sft"]["kl_to_ref"] is None if arch == "gpt2" else math.isfinite(rows["sft"]["kl_to_ref"])


def test_score_head_for_an_architecture_transformers_has_none_for(arch_dirs, tmp_path):
    """Granite has no ...ForSequenceClassification: the registered head loads the trained backbone (not a random
    one) and its saved reward model loads again in a fresh process with the same scores."""
    import subprocess
    import sys

    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    assert "granite" not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    path = str(arch_dirs["granite"])
    rm = load_reward_model(path).eval()
    assert type(rm).__name__ == "GraniteForSequenceClassification" and rm.score.out_features == 1
    lm = load_causal_lm(ModelSection(name_or_path=path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(rm.model(input_ids=IDS).last_hidden_state, lm.model(input_ids=IDS).last_hidden_state)
        want = rm(input_ids=IDS).logits
    rm.save_pretrained(str(tmp_path / "rm"))
    code = ("import sys, torch; from alignkit.models import load_reward_model; "
            "m = load_reward_model(sys.argv[1]).eval(); "
            "print(m(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits.item())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rm")], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()[-1]
    assert float(out) == pytest.approx(want.item(), abs=1e-5)


def test_a_model_that_cannot_score_is_named_in_one_line(tmp_path):
    """An encoder-decoder (Marian) gets no score head: the error names the architecture and the class wanted."""
    from transformers import AutoConfig

    AutoConfig.for_model("marian", d_model=32, vocab_size=64).save_pretrained(str(tmp_path / "marian"))
    with pytest.raises(AlignkitError) as err:
        load_reward_model(str(tmp_path / "marian"))
    assert err.value.where == "reward_model"
    assert "is a Marian model, which transformers cannot load as AutoModelForSequenceClassification" in str(err.value)


def test_lora_all_linear_leaves_moe_routers_alone(tmp_path):
    """Llama-4's router is an nn.Linear that returns (scores, logits): "all-linear" LoRA on it broke every forward."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama4_text", vocab_size=64, **dict(SMALL, num_key_value_heads=2, head_dim=16))
    model = AutoModelForCausalLM.from_config(config)
    lora = apply_lora(model, PeftSection(r=2))
    wrapped = {n for n, _ in lora.named_parameters() if "lora_A" in n}
    assert wrapped and not any("router" in n for n in wrapped)
    with torch.no_grad():
        assert torch.isfinite(lora(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


# Architectures beyond the matrix above, each run once through SFT -> reward -> PPO -> DPO -> eval -> QLoRA (slow):
# extra config keys per architecture; the rest is SMALL. Half have no ...ForSequenceClassification in transformers.
MORE = {
    "gpt_neox": {}, "opt": dict(ffn_dim=64, word_embed_proj_dim=32), "phi": {}, "phi3": {}, "qwen3": {},
    "bloom": dict(n_layer=1, n_head=2), "olmo2": {}, "stablelm": {}, "gemma3_text": {}, "starcoder2": {},
    "gptj": dict(n_embd=32, n_layer=1, n_head=2, rotary_dim=8, n_positions=256), "smollm3": {},
    "mixtral": dict(num_local_experts=2, num_experts_per_tok=1),
    "qwen2_moe": dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    # no sequence-classification class in transformers:
    "cohere": {}, "cohere2": {}, "olmoe": dict(num_experts=2, num_experts_per_tok=1), "exaone": {}, "internlm3": {},
    "lfm2": {}, "codegen": dict(n_embd=32, n_layer=1, n_head=2, rotary_dim=8, n_positions=256, n_ctx=256),
    "xglm": dict(d_model=32, ffn_dim=64, num_layers=1, attention_heads=2), "gemma4_text": {}, "ernie4_5": {},
    "glm4_moe": {}, "bitnet": {}, "vaultgemma": {}, "nanochat": {}, "apertus": {}, "jais2": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(MORE))
def test_whole_chain_on_more_architectures(arch, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SHIPPED_BASE))
    config = AutoConfig.for_model(arch, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                  bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                                  **{**SMALL, "num_key_value_heads": 2, "head_dim": 16, **MORE[arch]})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path / "base"))
    tok.save_pretrained(str(tmp_path / "base"))
    chain = Chain(arch, tmp_path / "base", tmp_path / "chain")
    report = json.loads((chain.eval() / "report.json").read_text())   # SFT and the reward model first
    assert all(math.isfinite(m["reward_mean"]) for m in report["models"])
    chain.ppo(), chain.dpo(), chain.qlora()
    assert chain.metrics["ppo"]["rollouts"] == 1
    assert_trained(chain.metrics["dpo"], 2)
    assert_trained(chain.metrics["qlora"], 1)


def test_weights_that_do_not_fit_their_config_are_one_line(arch_dirs, tmp_path):
    """A config.json from another size (hidden_size doubled) was a RuntimeError traceback from transformers."""
    import shutil

    folder = tmp_path / "wrong"
    shutil.copytree(arch_dirs["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 2 * config["intermediate_size"]}))
    with pytest.raises(AlignkitError, match="its weights do not fit its config.json") as err:
        load_causal_lm(ModelSection(name_or_path=str(folder)))
    assert err.value.where == "model.name_or_path"
