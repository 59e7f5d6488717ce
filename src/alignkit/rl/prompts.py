"""Prompt rows for the online loop: chat-templated token ids, and the world's `meta` for the oracle reward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignkit.config.base import DatasetSpec
from alignkit.data.formats import check_messages, json_type
from alignkit.data.loading import load_spec
from alignkit.errors import AlignkitError


def prompt_messages(prompt: Any, where: str) -> list[dict[str, str]]:
    """A row's prompt as chat messages: non-empty text (one user turn) or a list of role/content messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise AlignkitError("empty prompt", where=where)
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise AlignkitError(f"'prompt' must be text or a list of messages, got {json_type(prompt)}", where=where)
    return check_messages(prompt, where, last_assistant=False)


def load_prompts(specs: Sequence[DatasetSpec], tokenizer: Any, limit: int, limit_key: str,
                 with_meta: bool = False, meta_key: str = "reward") -> tuple[list[list[int]], list[dict]]:
    """Prompt ids of every row of `specs` (a 'prompt' column: text or messages) and, with_meta, each row's meta.

    A prompt over `limit` tokens (the room left for the response, `limit_key`) is an error naming its row.
    """
    out: list[list[int]] = []
    metas: list[dict] = []
    for i, spec in enumerate(specs):
        ds = load_spec(spec, where=f"data.datasets.{i}")
        columns = ds.column_names or []
        if "prompt" not in columns:
            raise AlignkitError(f"needs a 'prompt' column (has {ds.column_names}); map one with columns:",
                                where=f"data.datasets.{i}: {spec.path}")
        if with_meta and "meta" not in columns:
            raise AlignkitError(f"{meta_key}: oracle needs a 'meta' column (the world's prompt rows carry one)",
                                where=f"data.datasets.{i}: {spec.path}")
        for row_no, row in enumerate(ds, start=1):
            messages = prompt_messages(row["prompt"], f"{spec.path}:{row_no}")
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                raise AlignkitError(f"prompt is {len(ids)} tokens; {limit_key} is {limit}",
                                    where=f"{spec.path}:{row_no}")
            out.append(ids)
            if with_meta:
                if not isinstance(row["meta"], dict):
                    raise AlignkitError(f"{meta_key}: oracle needs 'meta' to be an object, got "
                                        f"{json_type(row['meta'])}", where=f"{spec.path}:{row_no}")
                metas.append(row["meta"])
    return out, metas
