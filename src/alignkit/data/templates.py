"""Chat templates on tokenizers: reading `model.chat_template` (built-ins: alignkit.chat_templates), assistant masks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.chat_templates import (
    BUILTIN_TEMPLATES,
    TEMPLATE_FILE_SUFFIXES,
    BuiltinTemplate,
    check_template_setting,
)
from alignkit.errors import AlignkitError

KEY = "model.chat_template"
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def read_chat_template(value: str) -> tuple[str, BuiltinTemplate | None]:
    """The template text for `model.chat_template` (a built-in name, a .jinja path or inline text)."""
    if value in BUILTIN_TEMPLATES:
        builtin = BUILTIN_TEMPLATES[value]
        return builtin.template, builtin
    if value.endswith(TEMPLATE_FILE_SUFFIXES):
        path = Path(value)
        if not path.is_file():
            raise AlignkitError("chat template file not found", where=f"{KEY}: {value}")
        return path.read_text(), None
    check_template_setting(value)  # recipes are validated already; this catches direct callers
    return value, None


def set_chat_template(tokenizer: Any, value: str) -> None:
    """Give the tokenizer the recipe's template; a built-in also gets its special tokens and its turn end as EOS.

    The turn end becomes EOS because everything downstream stops at EOS (generation_config, PPO's
    missing-EOS penalty, the eval's "ended" count). Tokens the vocabulary lacks are added; the model
    loader grows the embeddings to the tokenizer, and the saved tokenizer records it for later loads.
    """
    template, builtin = read_chat_template(value)
    tokenizer.chat_template = template
    if builtin is None:
        return
    vocab = tokenizer.get_vocab()
    missing = [t for t in builtin.special_tokens if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing},
                                     replace_extra_special_tokens=False)
    if builtin.turn_end is not None:
        tokenizer.eos_token = builtin.turn_end


def require_chat_template(tokenizer: Any) -> None:
    """Stop before any model loads when the stage renders chats and the tokenizer has no template."""
    if not getattr(tokenizer, "chat_template", None):
        raise AlignkitError(
            "the tokenizer has no chat template; set one: a built-in name "
            f"({' | '.join(BUILTIN_TEMPLATES)}), a .jinja file, or Jinja text", where=KEY)


def has_generation_markers(template: str | None) -> bool:
    """Whether a template marks assistant output with {% generation %} (TRL builds the loss mask from them)."""
    return bool(template) and GENERATION_MARKER.search(template) is not None


def needs_prefix_masks(tokenizer: Any) -> bool:
    """True when neither the template nor TRL's training variant of it has generation markers."""
    from trl.chat_template_utils import get_training_chat_template

    if has_generation_markers(tokenizer.chat_template):
        return False
    try:
        return get_training_chat_template(tokenizer) is None  # None: TRL sees markers (cannot happen here)
    except ValueError:  # a template TRL does not know: derive the mask from prefixes
        return True


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]], first: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn from message `first` on.

    A turn starts where the prefix rendered with the generation prompt ends (so the header is not
    trained) and ends where the conversation up to that turn stops agreeing with the whole one (a
    template may append text only after the last message), less trailing whitespace after the turn end.
    """
    full = _render(tokenizer, messages, False)
    spans = []
    for i in range(first, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], True)
        if not full.startswith(prefix):
            raise AlignkitError(
                "the chat template renders earlier turns differently once later ones follow, so the assistant "
                "tokens cannot be found by rendering prefixes; add {% generation %} markers to the template, use "
                "a built-in one, or set sft.assistant_only_loss: false", where=KEY)
        end = _common_prefix(_render(tokenizer, messages[: i + 1], False), full)
        start = len(prefix)
        end = start + len(full[start:end].rstrip())
        spans.append((start, end))
    return full, spans


def tokenize_with_assistant_masks(tokenizer: Any, messages: Sequence[dict[str, str]],
                                  first: int = 0) -> dict[str, list[int]]:
    """input_ids and assistant_masks (1 on tokens of assistant turns from message `first` on) for any template."""
    if not getattr(tokenizer, "is_fast", False):
        raise AlignkitError("assistant-only loss without {% generation %} markers needs a fast tokenizer "
                            "(character offsets); add the markers or set sft.assistant_only_loss: false", where=KEY)
    text, spans = assistant_spans(tokenizer, messages, first)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s < e_tok and b_tok < e for s, e in spans) and b_tok < e_tok)
            for b_tok, e_tok in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}
