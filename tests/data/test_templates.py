"""Built-in chat templates against the templates the model families ship, masks token by token, PAD choice."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import pytest

from alignkit.chat_templates import BUILTIN_TEMPLATES
from alignkit.config.base import ModelSection
from alignkit.config.recipe import validate_recipe
from alignkit.data.templates import (
    assistant_spans,
    require_chat_template,
    tokenize_with_assistant_masks,
)
from alignkit.errors import AlignkitError
from alignkit.models import ADDED_PAD, load_tokenizer
from tests.conftest import CHAT_ROWS, SHIPPED_BASE

# Templates as the model families ship them in tokenizer_config.json. ChatML: teknium/OpenHermes-2.5-Mistral-7B;
# Mistral: mistralai/Mistral-7B-Instruct-v0.2 (= Mixtral-8x7B-Instruct-v0.1); Zephyr: HuggingFaceH4/zephyr-7b-beta.
# Llama-3, Gemma(-2) and Phi-3 are the copies TRL keeps of Meta-Llama-3-8B-Instruct, gemma-2-*-it, Phi-3-mini.
SHIPPED = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
              "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
              "{% endif %}",
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 "
               "== 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
               "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
               "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
              "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + "
              "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  "
              "+ message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
              "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    **{name: (files("trl") / "chat_templates" / f"{trl_name}.jinja").read_text()
       for name, trl_name in (("llama3", "llama3"), ("gemma", "gemma"), ("phi3", "phi3"))},
}
NO_SYSTEM = {"mistral", "gemma"}  # the shipped templates raise on a system message
TURN_END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "phi3": "<|end|>",
            "mistral": "<|endoftext|>", "zephyr": "<|endoftext|>"}
MARKERS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def builtin_tokenizer(name: str) -> Any:
    """The shipped tiny tokenizer with a built-in template (and a BOS, which Llama-3/Gemma/Mistral render)."""
    tok = load_tokenizer(ModelSection(name_or_path=str(SHIPPED_BASE), chat_template=name))
    tok.bos_token = "<|system|>"  # any existing token: the test checks where BOS lands, not what it is
    return tok


def conversations(name: str) -> list[list[dict[str, str]]]:
    rows = [r["messages"] for r in CHAT_ROWS]
    return [m for m in rows if m[0]["role"] != "system"] if name in NO_SYSTEM else rows


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_renders_like_the_shipped_template(name):
    tok = builtin_tokenizer(name)
    for messages in conversations(name):
        for prompt in (True, False):
            convo = messages[:-1] if prompt else messages
            ours = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=prompt)
            shipped = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=prompt,
                                              chat_template=SHIPPED[name])
            if name == "phi3" and not prompt:
                shipped = shipped.removesuffix(tok.eos_token)  # the one deliberate difference (module docstring)
            assert ours == shipped
            # Without the markers the built-in is a plain template: the markers add no text.
            assert tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=prompt,
                                           chat_template=MARKERS.sub("", tok.chat_template)) == ours


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_mask_is_assistant_content_and_turn_end_token_by_token(name):
    tok = builtin_tokenizer(name)
    assert tok.eos_token == TURN_END[name] and tok.pad_token != tok.eos_token
    messages = CHAT_ROWS[3]["messages"]  # two assistant turns
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    end = TURN_END[name]
    assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == f"Red.{end}RED.{end}"
    assert sum(1 for t in ids if t == tok.eos_token_id) >= 2
    # The prefix-rendering mask (used for templates without markers) agrees token by token.
    assert tokenize_with_assistant_masks(tok, messages) == {"input_ids": ids, "assistant_masks": mask}


def test_prefix_masks_of_a_shipped_template_without_markers():
    tok = builtin_tokenizer("chatml")
    tok.chat_template = SHIPPED["chatml"]
    messages = CHAT_ROWS[0]["messages"]
    text, spans = assistant_spans(tok, messages)
    assert [text[a:b] for a, b in spans] == ["Eastvale.<|im_end|>", "The Ilsa.<|im_end|>"]
    enc = tokenize_with_assistant_masks(tok, messages)
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(trained) == "Eastvale.<|im_end|>The Ilsa.<|im_end|>"
    # Only the turns of the completion when the conversation continues a prompt.
    enc = tokenize_with_assistant_masks(tok, messages, first=3)
    assert tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]) == (
        "The Ilsa.<|im_end|>")


def test_template_that_rewrites_earlier_turns_is_refused_with_the_key():
    tok = builtin_tokenizer("chatml")
    # Earlier assistant turns lose their text once a later one follows (as reasoning templates do).
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ 'A:...\n' }}"
                         "{% else %}{{ m['role'] + ':' + m['content'] + '\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    with pytest.raises(AlignkitError) as err:
        tokenize_with_assistant_masks(tok, CHAT_ROWS[0]["messages"])
    assert err.value.where == "model.chat_template"


def test_missing_template_and_unknown_name_are_user_errors():
    tok = builtin_tokenizer("chatml")
    tok.chat_template = None
    with pytest.raises(AlignkitError) as err:
        require_chat_template(tok)
    assert err.value.where == "model.chat_template" and "chatml" in str(err.value)
    with pytest.raises(Exception, match="unknown built-in chat template 'chatm'"):
        validate_recipe({"stage": "sft", "output_dir": "out", "model": {"name_or_path": str(SHIPPED_BASE),
                                                                         "chat_template": "chatm"},
                         "data": {"datasets": [{"path": str(SHIPPED_BASE / "config.json")}]}})


def bpe_tokenizer(special: list[str], **roles: str) -> Any:
    """A tiny byte-level BPE tokenizer whose only special tokens are `special` (roles name eos/bos/unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    texts = [m["content"] for r in CHAT_ROWS for m in r["messages"]]
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, **roles)


def saved(tok: Any, tmp_path: Any) -> ModelSection:
    tok.save_pretrained(str(tmp_path))
    return ModelSection(name_or_path=str(tmp_path))


def test_pad_reuses_a_spare_token_before_adding_one(tmp_path):
    # GPT-2: <|endoftext|> is BOS, EOS and UNK, nothing to spare -> <|pad|> is added (one new row).
    gpt2 = bpe_tokenizer(["<|endoftext|>"], eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                         unk_token="<|endoftext|>")
    tok = load_tokenizer(saved(gpt2, tmp_path / "gpt2"))
    assert tok.pad_token == ADDED_PAD and len(tok) == len(gpt2) + 1
    # Llama-3 base: no PAD, EOS <|end_of_text|>; a reserved special token serves without a new row.
    llama3 = bpe_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                            "<|reserved_special_token_1|>"], eos_token="<|end_of_text|>", bos_token="<|begin_of_text|>")
    tok = load_tokenizer(saved(llama3, tmp_path / "llama3"))
    assert tok.pad_token == "<|reserved_special_token_0|>" and len(tok) == len(llama3)
    # Qwen base with PAD == EOS == <|endoftext|> and the ChatML built-in: EOS becomes <|im_end|>, PAD <|endoftext|>.
    qwen = bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    section = saved(qwen, tmp_path / "qwen").model_copy(update={"chat_template": "chatml"})
    tok = load_tokenizer(section)
    assert (tok.eos_token, tok.pad_token, len(tok)) == ("<|im_end|>", "<|endoftext|>", len(qwen))
    # Mistral: UNK differs from EOS.
    mistral = bpe_tokenizer(["<unk>", "<s>", "</s>"], eos_token="</s>", bos_token="<s>", unk_token="<unk>")
    assert load_tokenizer(saved(mistral, tmp_path / "mistral")).pad_token == "<unk>"
