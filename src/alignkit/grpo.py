"""Stage 4c: GRPO from a recipe: num_generations responses per prompt, group-relative advantages, no critic."""

from __future__ import annotations

from alignkit.online_stage import run

__all__ = ["run"]
