"""The stages' runtime side: importing a stage's run function (its declaration: alignkit.config.registry)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from alignkit.config.registry import stage_spec
from alignkit.errors import AlignkitError

__all__ = ["run_function"]


def run_function(stage: str) -> Callable[..., dict[str, Any]]:
    """Import a stage's run function (only now: its module loads torch)."""
    module_name, _, func = stage_spec(stage).run.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise AlignkitError(f"stage '{stage}' is not available in this version", where="stage") from None
        raise
    return getattr(module, func)
