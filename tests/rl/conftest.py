"""The tiny PPO fixtures (tests/ppo/conftest.py) for the online-RL library's tests: one definition, loaded by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("ppo_conftest", Path(__file__).parents[1] / "ppo" / "conftest.py")
ppo_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ppo_conftest)

# The same fixture functions, registered here too (importlib mode cannot import another conftest).
ppo_tokenizer, one_thread, tiny = ppo_conftest.ppo_tokenizer, ppo_conftest.one_thread, ppo_conftest.tiny
