"""Built-in chat templates by name, and the recipe check that a bare word names one.

Recipe validation (config) and the data layer (data.templates applies them to tokenizers) both read this
table, so it sits below both.

The built-ins are the templates the model families ship (ChatML as in OpenHermes/Qwen, Llama-3-Instruct,
Mistral-Instruct v0.2, Gemma/Gemma-2-it, Phi-3-mini-instruct, Zephyr) with `{% generation %}` markers
around each assistant turn's content and its end-of-turn token, so the assistant-only loss trains the
model to stop. They differ from the shipped ones in two places only: Mistral and Gemma fold a leading
system message into the first user turn (as their later templates do) instead of raising, and Phi-3 drops
the trailing `eos_token` it appends to whole conversations (the turn end `<|end|>` is the stop token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_FILE_SUFFIXES = (".jinja", ".j2", ".txt")


@dataclass(frozen=True)
class BuiltinTemplate:
    """A named chat template, the special tokens it needs, and the token that ends an assistant turn."""

    template: str
    special_tokens: tuple[str, ...] = ()
    turn_end: str | None = None  # None: the tokenizer's own EOS ends a turn


ALTERNATE = ("{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
             "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}")
# Mistral and Gemma have no system role: a leading system message joins the first user turn.
SPLIT_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] | trim %}"
                "{% set loop_messages = messages[1:] %}{% else %}{% set system = none %}"
                "{% set loop_messages = messages %}{% endif %}")

BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "chatml": BuiltinTemplate(
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama3": BuiltinTemplate(
        "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
        "{% if message['role'] == 'assistant' %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    "mistral": BuiltinTemplate(
        "{{ bos_token }}" + SPLIT_SYSTEM + "{% for message in loop_messages %}" + ALTERNATE +
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system is not none %}{{ '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    "gemma": BuiltinTemplate(
        "{{ bos_token }}" + SPLIT_SYSTEM + "{% for message in loop_messages %}" + ALTERNATE +
        "{% if message['role'] == 'assistant' %}{{ '<start_of_turn>model\n' }}"
        "{% generation %}{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{% set content = message['content'] | trim %}"
        "{% if loop.first and system is not none %}{% set content = system + '\n\n' + content %}{% endif %}"
        "{{ '<start_of_turn>' + message['role'] + '\n' + content + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
        ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "phi3": BuiltinTemplate(
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
        "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
        ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|end|>"),
    "zephyr": BuiltinTemplate(
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
        "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
        "{% elif message['role'] in ['user', 'system'] %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"),
}


def looks_like_name(value: str) -> bool:
    """True when a `model.chat_template` value is a bare word (a built-in name), not Jinja text or a file."""
    return re.fullmatch(r"[A-Za-z0-9_.-]+", value) is not None and not value.endswith(TEMPLATE_FILE_SUFFIXES)


def check_template_setting(value: str | None) -> str | None:
    """Recipe validation: a bare word must name a built-in template (a typo would otherwise become the template)."""
    if value is not None and looks_like_name(value) and value not in BUILTIN_TEMPLATES:
        raise ValueError(f"unknown built-in chat template {value!r}; choose one of "
                         f"{', '.join(BUILTIN_TEMPLATES)}, or give Jinja text or a .jinja file")
    if value is not None and value not in BUILTIN_TEMPLATES:
        file = Path(value).expanduser() if "\n" not in value and "{" not in value else None
        text = file.read_text(errors="replace") if file is not None and file.is_file() else value
        check_jinja(text, str(file) if file is not None and file.is_file() else "the template text")
    return value


def check_jinja(text: str, what: str) -> None:
    """A Jinja syntax error in a chat template, found when the recipe is read (it was a jinja2 traceback at the
    first rendered row); compiled as transformers compiles chat templates ({% generation %} included)."""
    try:
        from jinja2 import TemplateSyntaxError
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # another transformers: the tokenizer reports it when it renders
        return
    try:
        _compile_jinja_template(text)
    except TemplateSyntaxError as exc:
        raise ValueError(f"{what} is not valid Jinja: {exc.message} (line {exc.lineno})") from None
