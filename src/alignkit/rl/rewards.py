"""Reward functions for the online loop: a reward model, the embedded world's oracle, or a user callable.

Every reward is one callable `(prompts_text, responses_text, prompt_ids, response_ids) -> scores [B]`;
response ids end with EOS when the response did, and texts have special tokens removed.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch

from alignkit.errors import AlignkitError
from alignkit.user_reward import load_callable

RewardFn = Callable[[list[str], list[str], list[list[int]], list[list[int]]], Any]


def oracle_reward_fn(prompt_ids: list[list[int]], metas: list[dict], eos_token_id: int, rubric: Any) -> RewardFn:
    """A rubric as a reward: each response scored against its prompt's meta (`rubric.score(meta, text, ended).total`).

    The online stage hands in the embedded world's oracle (alignkit.world.oracle); rl imports no world module.
    """
    by_prompt = {tuple(ids): meta for ids, meta in zip(prompt_ids, metas, strict=True)}

    def reward_fn(prompts_text: list[str], responses_text: list[str], prompt_ids: list[list[int]],
                  response_ids: list[list[int]]) -> torch.Tensor:
        return torch.tensor([
            rubric.score(by_prompt[tuple(p)], text, bool(r) and r[-1] == eos_token_id).total
            for p, text, r in zip(prompt_ids, responses_text, response_ids, strict=True)])

    return reward_fn


def scorer_reward_fn(scorer: Any, pad_token_id: int) -> RewardFn:
    """A RewardScorer as a reward: prompt ids + response ids (EOS kept), right-padded."""

    def reward_fn(prompts_text: list[str], responses_text: list[str], prompt_ids: list[list[int]],
                  response_ids: list[list[int]]) -> torch.Tensor:
        rows = [p + r for p, r in zip(prompt_ids, response_ids, strict=True)]
        width = max(map(len, rows))
        device = next(scorer.model.parameters()).device
        ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        response = torch.tensor([[0] * len(p) + [1] * len(r) + [0] * (width - len(p) - len(r))
                                 for p, r in zip(prompt_ids, response_ids, strict=True)], device=device)
        return scorer.score_ids(ids, mask, response)

    return reward_fn


def import_reward_fn(spec: str, where: str) -> RewardFn:
    """The user callable named `module.path:function`; a one-line error if it is missing or takes other arguments."""
    try:
        fn = load_callable(spec)
    except ValueError as exc:
        raise AlignkitError(str(exc), where=where) from None
    return checked_reward_fn(fn, spec, where)


def checked_reward_fn(fn: RewardFn, spec: str, where: str) -> RewardFn:
    """Wrap a user reward so a wrong return (shape or type) is one line naming the recipe key."""

    def reward_fn(prompts_text: list[str], responses_text: list[str], prompt_ids: list[list[int]],
                  response_ids: list[list[int]]) -> torch.Tensor:
        try:
            out = fn(prompts_text, responses_text, prompt_ids, response_ids)
        except Exception as exc:  # the user's code: say where it failed, in one line
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            raise AlignkitError(f"{spec} raised {type(exc).__name__}: {exc} ({frame.filename}:{frame.lineno})",
                                where=where) from None
        try:
            scores = torch.as_tensor(out, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            scores = None
        # One score per response, (N,) or (N, 1): a (4, 2) list for 8 responses, flattened, would score the wrong
        # answers.
        flat = scores.squeeze(-1) if scores is not None and scores.dim() == 2 else scores
        if flat is None or flat.dim() > 1 or flat.numel() != len(responses_text):
            shape = f" of shape {tuple(scores.shape)}" if scores is not None else ""
            raise AlignkitError(f"{spec} returned {type(out).__name__}{shape}, not one float per response "
                                f"({len(responses_text)})", where=where)
        scores = flat.reshape(-1)
        if not torch.isfinite(scores).all():  # one NaN would turn every advantage and the policy's weights to NaN
            bad = int((~torch.isfinite(scores)).nonzero()[0])
            raise AlignkitError(f"{spec} returned {float(scores[bad])} for response {bad} "
                                f"({responses_text[bad][:60]!r}); rewards must be finite", where=where)
        return scores

    return reward_fn
