"""Typed recipe sections (pydantic), one module per stage over a shared base; the stage registry; the recipe."""

from __future__ import annotations

from alignkit.config.recipe import Recipe, load_recipe

__all__ = ["Recipe", "load_recipe"]
