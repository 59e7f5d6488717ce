"""Preference data: explicit pairs, implicit-prompt pairs, the public shapes, and K-way rankings.

Every row becomes one ranking {"prompt": messages, "responses": [str, ...] best first, "margin": float};
a pair is a ranking of two. Invalid rows raise AlignkitError naming file:row.

Accepted rows (column names after the recipe's `columns` mapping):
    {"prompt", "chosen", "rejected"}      explicit prompt; text or messages (chosen/rejected: one assistant
                                          message, or whole conversations that repeat the prompt, as in
                                          UltraFeedback-binarized: the prompt is taken from them once)
    {"chosen", "rejected"}                implicit prompt: two full conversations split at their
                                          longest common message prefix; raw Anthropic HH strings
                                          ("\n\nHuman: ...\n\nAssistant: ...") become user/assistant messages
    {"conversations", "chosen", "rejected"}  ShareGPT preference rows (LLaMA-Factory): the conversation is the
                                          prompt, chosen/rejected one {"from": "gpt", "value"} turn each
    {"prompt", "responses", "ranking"}    K >= 2 responses; ranking lists their indices best first
KTO-style unpaired rows {"prompt", "completion", "label"} are refused: the stages compare two responses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from trl.data_utils import extract_prompt

from alignkit.config.base import DatasetSpec
from alignkit.data.formats import SHAREGPT_ROLES, detect_format
from alignkit.data.loading import load_spec
from alignkit.errors import AlignkitError

PREFERENCE_FORMATS = ("preference", "ranking")
# A turn marker of the Anthropic HH-RLHF transcripts; the text before the first one must be empty.
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh(text: str) -> list[dict[str, str]] | None:
    """An Anthropic HH transcript as user/assistant messages, or None when `text` is not one."""
    parts = HH_TURN.split("\n\n" + text.lstrip())  # ["", "Human", " q", "Assistant", " a", ...]
    if len(parts) < 3 or parts[0] or "Assistant" not in parts[1::2]:
        return None
    turns = zip(parts[1::2], parts[2::2], strict=True)
    return [{"role": HH_ROLES[name], "content": body.strip()} for name, body in turns]


def _message(value: Any, where: str) -> dict[str, str]:
    """One {role, content} message; ShareGPT's {from, value} spelling is accepted."""
    if isinstance(value, dict):
        role = value.get("role", value.get("from"))
        content = value.get("content", value.get("value"))
        if isinstance(role, str) and isinstance(content, str):
            return {"role": SHAREGPT_ROLES.get(role, role), "content": content}
    raise AlignkitError(f"expected a {{role, content}} message, got {value!r:.60}", where=where)


def _as_messages(value: Any, role: str, where: str) -> list[dict[str, str]]:
    """Text (an HH transcript, or one message of `role`), one message, or a list of messages, as messages."""
    if isinstance(value, str):
        return parse_hh(value) or [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [_message(value, where)]
    if isinstance(value, list) and value:
        return [_message(m, where) for m in value]
    raise AlignkitError(f"expected text or a non-empty list of {{role, content}} messages, got {value!r:.60}",
                        where=where)


def _response(value: Any, where: str) -> str:
    """A response given as text or as exactly one assistant message."""
    return value if isinstance(value, str) else _response_text(_as_messages(value, "assistant", where), where)


def _response_text(messages: list[dict[str, str]], where: str) -> str:
    """The text of a response given as exactly one assistant message."""
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise AlignkitError("a response must be text or exactly one assistant message", where=where)
    return messages[0]["content"]


def split_implicit(chosen: list[dict], rejected: list[dict], where: str) -> tuple[list[dict], str, str]:
    """Split two full conversations at their longest common message prefix (TRL's extract_prompt)."""
    if chosen == rejected:
        raise AlignkitError("chosen and rejected are identical", where=where)
    split = extract_prompt({"chosen": chosen, "rejected": rejected})
    prompt, rest_c, rest_r = split["prompt"], split["chosen"], split["rejected"]
    if not prompt:
        raise AlignkitError("chosen and rejected share no prompt prefix", where=where)
    if len(rest_c) != 1 or len(rest_r) != 1 or {rest_c[0]["role"], rest_r[0]["role"]} != {"assistant"}:
        raise AlignkitError(
            f"chosen and rejected must be one conversation that differs only in its final assistant reply; "
            f"they share {len(prompt)} of {len(chosen)}/{len(rejected)} turns", where=where)
    return prompt, rest_c[0]["content"], rest_r[0]["content"]


def _explicit_prompt(row: dict[str, Any], where: str) -> list[dict[str, str]] | None:
    """The prompt a row states (prompt column, or ShareGPT conversations + system), or None when implicit."""
    if "conversations" in row:
        turns = _as_messages(row["conversations"], "user", f"{where} conversations")
        system = row.get("system")
        return [{"role": "system", "content": system}, *turns] if isinstance(system, str) and system else turns
    if not row.get("prompt"):
        return None
    prompt = _as_messages(row["prompt"], "user", f"{where} prompt")
    # An HH-style prompt ends with an empty "Assistant:" turn: the cue the response follows.
    if len(prompt) > 1 and prompt[-1] == {"role": "assistant", "content": ""}:
        prompt = prompt[:-1]
    return prompt


def _paired(row: dict[str, Any], where: str) -> tuple[list[dict], list[str]]:
    """Prompt and [chosen, rejected] from an explicit- or implicit-prompt pair."""
    prompt = _explicit_prompt(row, where)
    if prompt is None and (isinstance(row["chosen"], str) or isinstance(row["rejected"], str)) and not (
        parse_hh(str(row["chosen"])) and parse_hh(str(row["rejected"]))
    ):
        raise AlignkitError("without a prompt column, chosen and rejected must be full conversations (lists "
                            "of messages, or HH-RLHF '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts) so the "
                            "shared prompt can be split off", where=where)
    chosen = _as_messages(row["chosen"], "assistant", f"{where} chosen")
    rejected = _as_messages(row["rejected"], "assistant", f"{where} rejected")
    if prompt is None or len(chosen) > 1 or len(rejected) > 1:
        # Implicit prompt, or whole conversations that repeat the prompt (UltraFeedback-binarized).
        shared, c, r = split_implicit(chosen, rejected, where)
        if prompt is not None and not _ends_with(shared, prompt):
            raise AlignkitError("chosen and rejected repeat a conversation that does not end with the prompt "
                                "column's turns", where=where)
        return shared, [c, r]
    return prompt, [_response_text(chosen, f"{where} chosen"), _response_text(rejected, f"{where} rejected")]


def _ends_with(conversation: list[dict[str, str]], prompt: list[dict[str, str]]) -> bool:
    """True when the conversation's last turns are the prompt's (whitespace aside)."""
    tail = conversation[-len(prompt):]
    return len(tail) == len(prompt) and all(
        a["role"] == b["role"] and a["content"].strip() == b["content"].strip() for a, b in zip(tail, prompt, strict=True))


def _ranked(row: dict[str, Any], where: str) -> tuple[list[dict], list[str]]:
    """Prompt and responses best first from a {prompt, responses, ranking} row."""
    prompt = _as_messages(row["prompt"], "user", where)
    responses, ranking = row["responses"], row["ranking"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise AlignkitError("a ranking needs a list of at least two responses (K >= 2)", where=where)
    texts = [_response(r, f"{where} responses[{i}]") for i, r in enumerate(responses)]
    k = len(texts)
    if not isinstance(ranking, list) or not all(type(i) is int for i in ranking) or sorted(ranking) != list(
        range(k)
    ):
        raise AlignkitError(f"ranking {ranking} is not a permutation of 0..{k - 1}", where=where)
    return prompt, [texts[i] for i in ranking]


def _margin(row: dict[str, Any], column: str | None, where: str) -> float:
    if column is None:
        return 0.0
    if column not in row:
        raise AlignkitError(f"no margin column '{column}' (reward.margin_column)", where=where)
    try:
        return float(row[column] or 0.0)
    except (TypeError, ValueError):
        raise AlignkitError(f"margin {row[column]!r} is not a number", where=where) from None


def column_value(row: dict[str, Any], column: str, where: str) -> Any:
    """The value of `column` in a row; a dotted name reads nested objects ("meta.task")."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise AlignkitError(f"no column '{column}'", where=where)
        value = value[part]
    return value


def to_ranking(row: dict[str, Any], where: str, margin_column: str | None = None,
               fmt: str = "auto", subset_column: str | None = None) -> dict[str, Any]:
    """One preference row as a ranking {prompt, responses (best first), margin}."""
    kind = detect_format(row, among=(*PREFERENCE_FORMATS, "unpaired"))  # the one format detector
    if kind == "unpaired":
        raise AlignkitError("KTO-style unpaired rows (prompt, completion, label) cannot train reward or DPO, which "
                            "compare two responses to one prompt: pair a preferred and a dispreferred completion "
                            "of each prompt into {prompt, chosen, rejected} rows", where=where)
    if kind not in PREFERENCE_FORMATS or (fmt != "auto" and kind != fmt):
        expected = fmt if fmt != "auto" else "prompt/chosen/rejected, chosen/rejected or prompt/responses/ranking"
        raise AlignkitError(f"not a preference row (columns {sorted(row)}); expected {expected}", where=where)
    prompt, ordered = _ranked(row, where) if kind == "ranking" else _paired(row, where)
    if any(not r.strip() for r in ordered):
        raise AlignkitError("empty response", where=where)
    if len(set(ordered)) < len(ordered):
        what = "chosen and rejected are identical" if len(ordered) == 2 else "two ranked responses are identical"
        raise AlignkitError(what, where=where)
    if len({" ".join(r.split()) for r in ordered}) < len(ordered):  # a preference between two spacings of one answer
        what = "chosen and rejected" if len(ordered) == 2 else "two ranked responses"
        raise AlignkitError(f"{what} differ only in whitespace", where=where)
    out = {"prompt": prompt, "responses": ordered, "margin": _margin(row, margin_column, where)}
    if subset_column is not None:
        out["subset"] = str(column_value(row, subset_column, f"{where} (reward.accuracy_by)"))
    return out


def load_rankings(rows: Iterable[dict[str, Any]], source: str, margin_column: str | None = None,
                  fmt: str = "auto", subset_column: str | None = None) -> list[dict[str, Any]]:
    """All rows of a preference dataset as rankings; errors name source:row (rows count from 1)."""
    out = [to_ranking(row, f"{source}:{i}", margin_column, fmt, subset_column) for i, row in enumerate(rows, start=1)]
    if not out:
        raise AlignkitError("dataset is empty", where=source)
    return out


def load_preference_datasets(specs: list[DatasetSpec], where: str = "data.datasets",
                             margin_column: str | None = None, subset_column: str | None = None) -> list[dict[str, Any]]:
    """Every dataset of a recipe list as rankings, concatenated; `subset_column` tags each with a "subset"."""
    out: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        if spec.format not in ("auto", *PREFERENCE_FORMATS):
            raise AlignkitError(f"format '{spec.format}' is not a preference format", where=f"{where}.{i}.format")
        out.extend(load_rankings(load_spec(spec, where=f"{where}.{i}"), spec.path, margin_column, spec.format,
                                 subset_column))
    return out


def ranking_pairs(ranking: dict[str, Any]) -> list[tuple[str, str]]:
    """All C(K,2) (better, worse) pairs of a ranking."""
    r = ranking["responses"]
    return [(r[i], r[j]) for i in range(len(r)) for j in range(i + 1, len(r))]


def to_pairs(rankings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rankings unrolled into independent two-response rankings, one per (better, worse) pair."""
    return [{**r, "responses": [b, w]} for r in rankings for b, w in ranking_pairs(r)]
