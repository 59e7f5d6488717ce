"""A user's reward function named `module.path:function` in a recipe, found and checked before any model loads."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

REWARD_ARGS = ("prompts_text", "responses_text", "prompt_ids", "response_ids")


def load_callable(spec: str) -> Callable[..., Any]:
    """Import `module.path:function` and check it takes the four reward arguments; ValueError says what is wrong."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name} ({exc}); is it on PYTHONPATH?") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no function {name}")
    try:
        inspect.signature(fn).bind(*REWARD_ARGS)
    except TypeError:
        raise ValueError(f"{spec} must take ({', '.join(REWARD_ARGS)}) and return one float per response") from None
    except ValueError:
        pass  # a builtin without a signature: checked when called
    return fn
