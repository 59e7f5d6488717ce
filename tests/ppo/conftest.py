"""Tiny PPO fixtures: a WordLevel tokenizer, random Llamas built from config, a rule-based reward."""

from __future__ import annotations

from typing import Any

import pytest
import torch

WORDS = [f"w{i}" for i in range(56)]
TARGET = "good"
TARGETS = (TARGET, *WORDS[:5])  # 6 of 64 tokens: a random policy scores ~0.1 per token


def make_tokenizer() -> Any:
    """A 64-token word-level tokenizer with PAD (0) distinct from EOS (1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", "user", "assistant", ":", "?", TARGET,
                                             *WORDS])}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def llama_config(tokenizer: Any, **overrides: Any) -> Any:
    """hidden 32, 2 layers: a few tens of thousands of parameters."""
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def make_policy(tokenizer: Any, seed: int = 0) -> Any:
    """A random tiny causal LM (the "SFT model")."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(tokenizer))


def make_critic(tokenizer: Any, seed: int = 1) -> Any:
    """A random tiny sequence-classification model with one label (the "reward model" the critic starts from)."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(tokenizer, num_labels=1))


def make_prompts(tokenizer: Any, n: int = 16) -> list[dict[str, Any]]:
    """Prompts of varied lengths (so left padding is exercised) as {input_ids, text}."""
    rows = []
    for i in range(n):
        text = "user : " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 4)) + " ? assistant :"
        rows.append({"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"], "text": text})
    return rows


def target_reward(tokenizer: Any, targets: tuple[str, ...] = TARGETS) -> Any:
    """Rule-based reward: +1 per occurrence of a target token in the response."""
    target_ids = set(tokenizer.convert_tokens_to_ids(list(targets)))

    def reward_fn(prompts_text: list[str], responses_text: list[str], prompt_ids: list[list[int]],
                  response_ids: list[list[int]]) -> torch.Tensor:
        return torch.tensor([float(sum(t in target_ids for t in r)) for r in response_ids])

    return reward_fn


@torch.no_grad()
def target_mass(policy: Any, tokenizer: Any) -> float:
    """Mean next-token probability of the target tokens after every prompt: a noise-free learning signal."""
    ids = tokenizer.convert_tokens_to_ids(list(TARGETS))
    probs = [policy(input_ids=torch.tensor([p["input_ids"]])).logits[0, -1].softmax(-1)[ids].sum().item()
             for p in make_prompts(tokenizer)]
    return sum(probs) / len(probs)


class ListLogger:
    """A metrics logger that keeps rows in memory."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


@pytest.fixture(scope="session")
def ppo_tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture
def one_thread() -> Any:
    """Tiny models run fastest on one thread (2-core machines thrash with more); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Tiny:
    """The builders above, handed to tests as one fixture (importlib mode cannot import conftest)."""

    TARGETS = TARGETS
    ListLogger = ListLogger
    make_policy = staticmethod(make_policy)
    make_critic = staticmethod(make_critic)
    make_prompts = staticmethod(make_prompts)
    target_reward = staticmethod(target_reward)
    target_mass = staticmethod(target_mass)


@pytest.fixture
def tiny() -> type[Tiny]:
    return Tiny
