"""A user's reward function named `module.path:function` in a recipe, found and checked before any model loads.

Two calling conventions are accepted:
- alignkit's: `fn(prompts_text, responses_text, prompt_ids, response_ids)` -> one float per response;
- TRL's (GRPOTrainer's `reward_funcs`): keyword arguments `prompts`, `completions`, `completion_ids`, with
  `**kwargs` for anything else, so a reward written for TRL runs here unchanged. A function that cannot
  take four positional arguments but names a `completions` parameter is called that way; `kwargs` then also carries `prompt_ids`. Prompts and
  completions are texts (the chat-templated prompt, the decoded response), as TRL passes them for a
  standard dataset, not message lists.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable
from typing import Any

REWARD_ARGS = ("prompts_text", "responses_text", "prompt_ids", "response_ids")
TRL_ARGS = ("prompts", "completions", "completion_ids")


def _trl_style(fn: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any] | None:
    """fn wrapped into alignkit's convention if it follows TRL's (a `completions` keyword), else None."""
    params = signature.parameters
    if "completions" not in params or params["completions"].kind is inspect.Parameter.POSITIONAL_ONLY:
        return None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted = set(TRL_ARGS) | {"prompt_ids"}
    passed = wanted if takes_any else wanted & set(params)
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    missing = [n for n in required if n not in passed]
    if missing:
        raise ValueError(f"takes TRL's reward arguments but also needs {', '.join(missing)}: alignkit passes "
                         f"{', '.join(sorted(wanted))}, not dataset columns")

    def reward_fn(prompts_text, responses_text, prompt_ids, response_ids):
        values = {"prompts": prompts_text, "completions": responses_text, "completion_ids": response_ids,
                  "prompt_ids": prompt_ids}
        return fn(**{k: v for k, v in values.items() if k in passed})

    return reward_fn


def load_callable(spec: str) -> Callable[..., Any]:
    """Import `module.path:function` as a reward taking the four reward arguments; ValueError says what is wrong."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name} ({exc}); is it on PYTHONPATH?") from None
    except Exception as exc:  # the user's module failed while importing (SyntaxError, NameError, ...)
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" ({exc.filename}:{exc.lineno})" if isinstance(exc, SyntaxError) else (
            f" ({frame.filename}:{frame.lineno})" if frame else "")
        raise ValueError(f"importing {module_name} raised {type(exc).__name__}: {exc}{at}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no function {name}")
    try:
        signature = inspect.signature(fn)
    except ValueError:
        return fn  # a builtin without a signature: checked when called
    try:
        signature.bind(*REWARD_ARGS)
        return fn  # alignkit's convention: four positional arguments, whatever their names
    except TypeError:
        pass
    try:
        trl = _trl_style(fn, signature)
    except ValueError as exc:
        raise ValueError(f"{spec} {exc}") from None
    if trl is None:
        raise ValueError(f"{spec} must take ({', '.join(REWARD_ARGS)}), or TRL's keyword arguments "
                         f"({', '.join(TRL_ARGS)}, **kwargs), and return one float per response")
    return trl
