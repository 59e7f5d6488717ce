"""Stage 4d: RLOO from a recipe: num_generations responses per prompt, leave-one-out baseline, no critic."""

from __future__ import annotations

from alignkit.online_stage import run

__all__ = ["run"]
