"""Two processes of DDP over gloo on CPU: gradients stay in sync, metrics are gathered, and a run
matches one process given the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CPU_ENV, launch_command

SCRIPT = '''
import copy, importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("ppo_conftest", sys.argv[1])
c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
from alignkit.rl.trainer import RLConfig as PPOConfig, RLTrainer as PPOTrainer
torch.set_num_threads(1)
tok = c.make_tokenizer()
cfg = PPOConfig(learning_rate=3e-3, critic_learning_rate=3e-3, num_rollouts=2, rollout_batch_size=16,
                mini_batch_size=8, gradient_accumulation_steps=2, ppo_epochs=2, max_new_tokens=6,
                missing_eos_penalty=None)
policy = c.make_policy(tok)
t = PPOTrainer(cfg, policy, copy.deepcopy(policy), c.make_critic(tok), c.target_reward(tok), tok, c.make_prompts(tok),
               checkpoint_dir=sys.argv[2])
h = t.train()
total = sum(p.double().sum().item() for p in t.accelerator.unwrap_model(t.policy).parameters())
print("RESULT", t.accelerator.process_index, t.accelerator.num_processes, repr(total), repr(h[-1]["objective/scores"]))
'''


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path):
    script = tmp_path / "run_ppo.py"
    script.write_text(SCRIPT)
    out = subprocess.run(launch_command(script, str(Path(__file__).with_name("conftest.py")), str(tmp_path / "ckpt"),
                                        processes=2),
                         capture_output=True, text=True, timeout=300, env={**os.environ, **CPU_ENV})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = sorted(line.split()[1:] for line in out.stdout.splitlines() if line.startswith("RESULT"))
    assert [r[:2] for r in rows] == [["0", "2"], ["1", "2"]]
    assert rows[0][2] == rows[1][2]  # identical weights after DDP updates
    assert rows[0][3] == rows[1][3]  # metrics are reduced across processes
    assert (tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json").is_file()


PARITY = '''
import copy, importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("ppo_conftest", sys.argv[1])
c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
from accelerate import Accelerator, PartialState
PartialState(cpu=True)
from alignkit.rl.trainer import RLConfig as PPOConfig, RLTrainer as PPOTrainer
torch.set_num_threads(1)
n = PartialState().num_processes
tok = c.make_tokenizer()
# top_k=1 makes sampling deterministic, so both runs see the same responses; one mini-batch of the whole
# rollout in per-sample micro-batches makes the gradient the same sum however ranks split the batch.
cfg = PPOConfig(learning_rate=3e-3, critic_learning_rate=3e-3, num_rollouts=3, rollout_batch_size=8, mini_batch_size=8,
                gradient_accumulation_steps=8 // n, ppo_epochs=1, max_new_tokens=6, top_k=1,
                critic_warmup_rollouts=0, missing_eos_penalty=None)
policy = c.make_policy(tok)
t = PPOTrainer(cfg, policy, copy.deepcopy(policy), c.make_critic(tok), c.target_reward(tok), tok, c.make_prompts(tok),
               accelerator=Accelerator(gradient_accumulation_steps=8 // n, cpu=True))
h = t.train()
if t.accelerator.is_main_process:
    total = sum(p.double().sum().item() for p in t.accelerator.unwrap_model(t.policy).parameters())
    keys = ["objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "policy/approxkl_avg"]
    print("RESULT " + json.dumps({"n": n, "weights": total, "history": [{k: r[k] for k in keys} for r in h]}))
'''


def _run(cmd: list[str], tmp_path: Path) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, **CPU_ENV})
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def assert_same_run(one: dict, two: dict) -> None:
    """A 1-process and a 2-process result ({n, weights, history}) logged the same 3 rollouts and trained the same."""
    assert (one["n"], two["n"]) == (1, 2)
    assert len(one["history"]) == len(two["history"]) == 3
    for step, (a, b) in enumerate(zip(one["history"], two["history"], strict=True)):
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"rollout {step + 1} {key}"
    assert one["history"][-1]["objective/kl"] != 0.0  # the policy moved
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-6)


@pytest.mark.slow
def test_two_process_ppo_matches_one_process(tmp_path: Path):
    script = tmp_path / "parity.py"
    script.write_text(PARITY)
    conftest = str(Path(__file__).with_name("conftest.py"))
    one = _run(launch_command(script, conftest), tmp_path)
    two = _run(launch_command(script, conftest, processes=2), tmp_path)
    assert_same_run(one, two)
