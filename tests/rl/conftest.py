"""The tiny PPO fixtures (tests/ppo/conftest.py) for the online-RL library's tests: one definition, loaded by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

_spec = importlib.util.spec_from_file_location("ppo_conftest", Path(__file__).parents[1] / "ppo" / "conftest.py")
ppo_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ppo_conftest)


@pytest.fixture(scope="session")
def ppo_tokenizer() -> Any:
    return ppo_conftest.make_tokenizer()


@pytest.fixture
def one_thread() -> Any:
    """Tiny models run fastest on one thread (2-core machines thrash with more); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny() -> type:
    return ppo_conftest.Tiny
