"""The eval stage: the win-rate harness, judged (where the recipe asks for the oracle) by the embedded world's rubric.

alignkit.eval imports no world module (the world's research tools import the harness's generation and
statistics): the rubric is handed in here, the one place that knows both.
"""

from __future__ import annotations

from typing import Any

from alignkit.eval import harness
from alignkit.runio import RunDir
from alignkit.world import oracle


def run(recipe: Any, run_dir: RunDir, recipe_path: str) -> dict[str, Any]:
    """Run the eval harness with the world's oracle as its rubric (judge type and best-of-n `oracle`)."""
    return harness.run(recipe, run_dir, recipe_path, rubric=oracle)
