"""Shared fixture: one generated world (seed 0, noise 0.25) per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.world.generator import generate_world


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """A freshly generated world; eval files land in <dir>/eval/."""
    root = tmp_path_factory.mktemp("world0")
    generate_world(root / "world", root / "eval" / "world_prompts.jsonl", seed=0, noise=0.25)
    return root


@pytest.fixture(scope="session")
def splits(world_dir: Path) -> dict[str, list[dict]]:
    """All generated files, parsed."""
    names = ["corpus", "sft", "preferences", "preferences_heldout", "rl_prompts", "validation_prompts"]
    data = {n: read_jsonl(world_dir / "world" / f"{n}.jsonl") for n in names}
    data["eval"] = read_jsonl(world_dir / "eval" / "world_prompts.jsonl")
    data["unseen"] = read_jsonl(world_dir / "eval" / "world_prompts_unseen.jsonl")
    return data
