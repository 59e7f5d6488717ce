"""The tiny PPO fixtures (tests/ppo/conftest.py) for the online-RL library's tests: one definition, loaded by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location("ppo_conftest", Path(__file__).parents[1] / "ppo" / "conftest.py")
ppo_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ppo_conftest)


@pytest.fixture(scope="session")
def ppo_tokenizer() -> Any:
    return ppo_conftest.make_tokenizer()


@pytest.fixture
def one_thread() -> Any:
    yield from ppo_conftest.one_thread.__wrapped__()


@pytest.fixture
def tiny() -> type:
    return ppo_conftest.Tiny
