"""The one data-format detector, and conversion of SFT formats to chat messages.

Formats (column names after the recipe's `columns` mapping):
    messages            {"messages": [{"role", "content"}, ...]}
    sharegpt            {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
    alpaca              {"instruction", "input"?, "output"}
    prompt_completion   {"prompt", "completion"}  (text, or lists of messages)
    text                {"text"}
    preference          {"prompt"?, "chosen", "rejected"}  (explicit or implicit prompt; see data/preferences.py)
    ranking             {"prompt", "responses", "ranking"}
    unpaired            {"prompt", "completion", "label"}  (KTO-style; refused by the pairwise stages)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from alignkit.errors import AlignkitError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "bot": "assistant", "model": "assistant"}
ROLES = {"system", "user", "assistant"}
JSON_TYPES = {type(None): "null", str: "text", list: "a list", dict: "an object", int: "a number", float: "a number", bool: "a boolean"}
SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")


# The columns that name each format, in the order they are tried (the first match wins).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "ranking": ("responses", "ranking"),
    "preference": ("chosen", "rejected"),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "unpaired": ("prompt", "completion", "label"),  # KTO-style; only found when asked for (`among`)
}


def detect_format(row: dict[str, Any], among: tuple[str, ...] | None = None) -> str | None:
    """Name the format of one row from its columns (only formats in `among`, if given), or None."""
    keys = set(row)
    # `among` lets a preference loader see {messages, chosen, rejected} (UltraFeedback) as a preference row.
    return next((fmt for fmt, cols in FORMAT_COLUMNS.items()
                 if (among is None or fmt in among) and set(cols) <= keys), None)


def _text_content(content: Any) -> str | None:
    """A message's text: a string, or OpenAI-style content parts that are all text (joined); else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def json_type(value: Any) -> str:
    """What a JSON value is, in an error message's words ("null", "a number", "a list", ...)."""
    return JSON_TYPES.get(type(value), type(value).__name__)


def text_value(value: Any, column: str, where: str) -> str:
    """A column that must hold text; null, a number or a list names the row (TRL failed on them with a traceback)."""
    if not isinstance(value, str):
        raise AlignkitError(f"'{column}' must be text, got {json_type(value)}", where=where)
    return value


def check_messages(messages: Any, where: str, last_assistant: bool = True) -> list[dict[str, str]]:
    """Chat messages with a known role and non-empty text each; for training, ending with the assistant's turn
    (a prompt, last_assistant=False, ends wherever it ends)."""
    if not isinstance(messages, list) or not messages:
        raise AlignkitError("expected a non-empty list of messages", where=where)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role", m.get("from")) if isinstance(m, dict) else None
            hint = (" (ShareGPT's spelling: rename the roles, or keep the turns in a 'conversations' column with"
                    " format sharegpt)" if role in SHAREGPT_ROLES else "")
            raise AlignkitError(f"message {i} needs a role in {sorted(ROLES)}, got {role!r}{hint}", where=where)
        content = _text_content(m.get("content"))
        if content is None:
            raise AlignkitError(f"message {i} ({m['role']}) needs a text content, got {json_type(m.get('content'))}",
                                where=where)
        if not content.strip():
            raise AlignkitError(f"message {i} ({m['role']}) is empty", where=where)
        out.append({"role": m["role"], "content": content})
    if last_assistant and out[-1]["role"] != "assistant":
        raise AlignkitError("the last message must be the assistant's (nothing to learn otherwise)", where=where)
    return out


def to_messages(row: dict[str, Any], fmt: str, where: str = "row") -> list[dict[str, str]]:
    """Convert a conversational SFT row (messages, sharegpt, alpaca, chat prompt/completion) to messages."""
    if fmt == "messages":
        return check_messages(row["messages"], where)
    if fmt == "sharegpt":
        turns = row["conversations"]
        if not isinstance(turns, list):
            raise AlignkitError("conversations must be a list", where=where)
        try:
            # Some exports use role/content inside `conversations`; accept both spellings.
            msgs = [{"role": SHAREGPT_ROLES[t.get("from", t.get("role"))], "content": t.get("value", t.get("content"))}
                    for t in turns]
        except (KeyError, TypeError, AttributeError):
            raise AlignkitError("sharegpt turns need 'from' (human/gpt/system) and 'value'", where=where) from None
        return check_messages(msgs, where)
    if fmt == "alpaca":
        instruction, extra = row.get("instruction") or "", row.get("input") or ""
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return check_messages([{"role": "user", "content": user},
                                {"role": "assistant", "content": row.get("output") or ""}], where)
    if fmt == "prompt_completion" and isinstance(row["prompt"], list):
        if not isinstance(row["completion"], list):
            raise AlignkitError("a conversational prompt needs a conversational completion", where=where)
        return check_messages([*row["prompt"], *row["completion"]], where)
    raise AlignkitError(f"format '{fmt}' is not conversational", where=where)


def normalize_sft_rows(rows: Iterable[dict[str, Any]], fmt: str, source: str) -> list[dict[str, Any]]:
    """Rows in one TRL SFT format: {"messages"}, or {"prompt","completion"} text, or {"text"}.

    `fmt` is the recipe's format ("auto" detects per row); a row that fits none names file:row.
    """
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows, start=1):
        where = f"{source}:{i}"
        kind = detect_format(row) if fmt == "auto" else fmt
        if kind is None or kind not in SFT_FORMATS:
            cols = sorted(row)
            raise AlignkitError(
                f"row fits no SFT format (columns {cols}); expected messages, conversations, "
                "instruction/output, prompt/completion or text — or map columns in the recipe", where=where)
        missing = _missing_columns(row, kind)
        if missing:
            fits = detect_format(row, SFT_FORMATS)
            hint = f"; its columns {sorted(row)} fit format {fits}" if fits else f"; it has columns {sorted(row)}"
            raise AlignkitError(f"format {kind} needs column '{missing}'{hint}", where=where)
        if kind == "text":
            if not text_value(row["text"], "text", where).strip():
                raise AlignkitError("empty text", where=where)
            out.append({"text": row["text"]})
        elif kind == "prompt_completion" and isinstance(row["prompt"], str):
            if not text_value(row["completion"], "completion", where).strip():
                raise AlignkitError("empty completion", where=where)
            out.append({"prompt": row["prompt"], "completion": row["completion"]})
        elif kind == "prompt_completion" and not isinstance(row["prompt"], list):
            text_value(row["prompt"], "prompt", where)  # raises: neither text nor a list of messages
        elif kind == "prompt_completion":
            # Kept as prompt/completion so the loss stays on the completion even when the prompt holds
            # earlier assistant turns (TRL intersects the completion and assistant masks).
            msgs = to_messages(row, kind, where)
            n = len(row["prompt"])
            out.append({"prompt": msgs[:n], "completion": msgs[n:]})
        else:
            out.append({"messages": to_messages(row, kind, where)})
    if not out:
        raise AlignkitError("dataset is empty", where=source)
    kinds = {_kind(r) for r in out}
    if len(kinds) > 1:
        raise AlignkitError(f"mixes row formats {sorted(kinds)}; one SFT run trains on one format", where=source)
    return out


def _kind(row: dict[str, Any]) -> str:
    """The TRL format of a normalised row; text and conversational prompt/completion differ."""
    if "prompt" in row:
        return "prompt_completion (chat)" if isinstance(row["prompt"], list) else "prompt_completion (text)"
    return next(iter(row))


def _missing_columns(row: dict[str, Any], kind: str) -> str | None:
    return next((c for c in FORMAT_COLUMNS[kind] if c not in row), None)


def row_texts(row: dict[str, Any]) -> list[str]:
    """Every text a normalised SFT row holds (message contents, prompt, completion or text)."""
    texts: list[str] = []
    for key in ("messages", "prompt", "completion", "text"):
        value = row.get(key)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str))
    return texts


def special_token_rows(rows: list[dict[str, Any]], special_tokens: Iterable[str]) -> list[tuple[int, str]]:
    """(index, token) of the rows whose text holds a special token's string, e.g. a literal '<|endoftext|>'.

    The tokenizer reads such text as the token itself: an EOS in the middle of an answer, or a fake turn
    marker, which the model then learns.
    """
    tokens = sorted({t for t in special_tokens if len(t) > 1}, key=len, reverse=True)
    if not tokens:
        return []
    pattern = re.compile("|".join(map(re.escape, tokens)))
    found = []
    for i, row in enumerate(rows):
        match = next((m for text in row_texts(row) if (m := pattern.search(text))), None)
        if match:
            found.append((i, match.group()))
    return found
