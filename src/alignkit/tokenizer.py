"""Train a byte-level BPE tokenizer with special tokens and a chat template (from-scratch models)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, PAD, "<|system|>", "<|user|>", "<|assistant|>"]

# One turn per role tag. An assistant turn ends with EOS, so a chat model stops where its turn ends;
# the {% generation %} markers let TRL build the assistant-only loss mask from the template itself.
# A turn's text follows its tag after one space, inside the generated part for the assistant: with a
# byte-level BPE the first word of an answer is then the same token as in running text (" Zakkos",
# as after "Assistant:" in the corpus). v1 started answers on a new line, a spelling the corpus rarely
# has, and the tiny SFT model could not start them (docs/winrate_embedded_world.md, history).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ ' ' + message['content'] + '<|endoftext|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """A PreTrainedTokenizerFast (byte-level BPE) trained on `texts`, with EOS, PAD and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=SPECIAL_TOKENS[2:])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1_000_000
    return fast
