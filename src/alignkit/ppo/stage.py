"""Stage 4: PPO RLHF from a recipe: the online-RL loop with a critic (started from the reward model) and GAE."""

from __future__ import annotations

from alignkit.online_stage import run

__all__ = ["run"]
