"""RLOO on two DDP processes (gloo on CPU) logs what one process logs for the same global batch, with real sampling."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CPU_ENV, launch_command
from tests.ppo.test_multiprocess import assert_same_run

ROOT = Path(__file__).parents[2]
KEYS = ["objective/scores", "objective/kl", "objective/rlhf_reward", "val/response_length", "loss/policy_avg",
        "policy/approxkl_avg"]
# The two-process half: the same function as the in-process half, imported from this file.
SCRIPT = '''
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from accelerate import PartialState
PartialState(cpu=True)
from tests.rl.test_multiprocess import rloo_run
torch.set_num_threads(1)
result = rloo_run()
if PartialState().is_main_process:
    print("RESULT " + json.dumps(result))
'''


def tiny_builders() -> Any:
    """tests/ppo/conftest.py's builders, loaded by path (importlib mode cannot import a conftest)."""
    spec = importlib.util.spec_from_file_location("ppo_conftest", ROOT / "tests" / "ppo" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rloo_run() -> dict[str, Any]:
    """Three RLOO rollouts of 8 responses (2 prompts x 4) on however many processes are running."""
    from accelerate import Accelerator, PartialState

    from alignkit.rl.trainer import RLConfig, RLTrainer

    tiny = tiny_builders()
    n = PartialState().num_processes
    tok = tiny.make_tokenizer()
    # Full sampling (top_k=0): each response row has its own seeded stream, so both runs sample the same
    # responses. One mini-batch of the whole rollout in per-sample micro-batches makes the gradient the
    # same sum however ranks split the batch; a group (the 4 samples of a prompt) never spans processes.
    cfg = RLConfig(advantage_estimator="rloo", num_generations=4, kl_in_reward=True, learning_rate=3e-3,
                   num_rollouts=3, rollout_batch_size=8, mini_batch_size=8, gradient_accumulation_steps=8 // n,
                   ppo_epochs=1, max_new_tokens=6, kl_coef=0.05, missing_eos_penalty=1.0)
    policy = tiny.make_policy(tok)
    t = RLTrainer(cfg, policy, copy.deepcopy(policy), None, tiny.target_reward(tok), tok, tiny.make_prompts(tok),
                  accelerator=Accelerator(gradient_accumulation_steps=8 // n, cpu=True))
    history = t.train()
    total = sum(p.double().sum().item() for p in t.accelerator.unwrap_model(t.policy).parameters())
    return {"n": n, "weights": total, "history": [{k: r[k] for k in KEYS} for r in history]}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_process_rloo_matches_one_process(tmp_path: Path):
    script = tmp_path / "parity.py"
    script.write_text(SCRIPT)
    out = subprocess.run(launch_command(script, str(ROOT), processes=2), capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env={**os.environ, **CPU_ENV})
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    one = rloo_run()
    assert_same_run(one, two)
