"""Typed recipe sections (pydantic), one module per stage over a shared base."""

from __future__ import annotations

from typing import Any

__all__ = ["Recipe", "load_recipe"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, not on import: the stage registry imports the section modules of this package,
    # and config.recipe builds the Recipe schema from that registry.
    if name in __all__:
        from alignkit.config import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'alignkit.config' has no attribute {name!r}")
