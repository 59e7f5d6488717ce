"""Reward functions: a user's `module:function` in a run, and a bad one as a one-line error before any model loads."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.rl.rewards import import_reward_fn
from alignkit.rl.trainer import RLConfig, RLTrainer

REPO = Path(__file__).resolve().parents[2]
USER_REWARDS = '''
def count_good(prompts_text, responses_text, prompt_ids, response_ids):
    return [float(text.split().count("good")) for text in responses_text]

def one_arg(responses):
    return [0.0] * len(responses)

def wrong_length(prompts_text, responses_text, prompt_ids, response_ids):
    return [1.0]

def trl_style(completions, **kwargs):
    return [float(len(c)) + len(kwargs["prompts"][i]) / 1000 for i, c in enumerate(completions)]

def trl_named(prompts, completions, completion_ids):
    return [float(len(ids)) for ids in completion_ids]

def four_positional(prompts, completions, prompt_ids, response_ids):
    return [float(len(ids)) for ids in response_ids]

def needs_answer(completions, answer, **kwargs):
    return [0.0] * len(completions)

def not_finite(prompts_text, responses_text, prompt_ids, response_ids):
    return [0.0, float("nan")]

def broken(prompts_text, responses_text, prompt_ids, response_ids):
    return {}["missing"]

def nested(prompts_text, responses_text, prompt_ids, response_ids):
    return [[0.0, 1.0]] * (len(responses_text) // 2)

def column(prompts_text, responses_text, prompt_ids, response_ids):
    return [[float(len(t))] for t in responses_text]
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's reward module on sys.path, as PYTHONPATH=. would put it."""
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


@pytest.mark.usefixtures("one_thread")
def test_a_user_callable_reward_trains_the_policy(user_module, tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    reward_fn = import_reward_fn(f"{user_module}:count_good", "grpo.reward")
    policy = tiny.make_policy(tok)
    cfg = RLConfig(advantage_estimator="grpo", num_generations=4, kl_in_reward=False, learning_rate=3e-3,
                   num_rollouts=2, rollout_batch_size=16, mini_batch_size=8, max_new_tokens=6,
                   missing_eos_penalty=None, whiten_advantages=False)
    trainer = RLTrainer(cfg, policy, copy.deepcopy(policy), None, reward_fn, tok, tiny.make_prompts(tok))
    ro = trainer.rollout()
    texts = tok.batch_decode(ro.responses, skip_special_tokens=True)
    assert ro.scores.tolist() == [float(t.split().count("good")) for t in texts]
    assert len(trainer.train()) == 2


def test_a_bad_user_reward_is_one_line_naming_the_key(user_module):
    for spec, message in [("no_such_module:fn", "cannot import no_such_module"),
                          (f"{user_module}:missing", "has no function missing"),
                          (f"{user_module}:one_arg", "must take (prompts_text, responses_text, prompt_ids"),
                          (f"{user_module}:needs_answer", "also needs answer: alignkit passes completion_ids")]:
        with pytest.raises(AlignkitError, match=message.replace("(", r"\(")) as err:
            import_reward_fn(spec, "rloo.reward")
        assert str(err.value).count("\n") == 0 and "rloo.reward" in str(err.value)
    wrong = import_reward_fn(f"{user_module}:wrong_length", "rloo.reward")
    with pytest.raises(AlignkitError, match="not one float per response"):
        wrong(["p", "p"], ["a", "b"], [[1], [1]], [[2], [2]])
    with pytest.raises(AlignkitError, match=r"returned nan for response 1 \('bb'\); rewards must be finite"):
        import_reward_fn(f"{user_module}:not_finite", "rloo.reward")(["p", "p"], ["a", "bb"], [[1], [1]], [[2], [2]])
    with pytest.raises(AlignkitError, match=r"broken raised KeyError: 'missing' \(.*my_rewards.py:\d+\)") as err:
        import_reward_fn(f"{user_module}:broken", "rloo.reward")(["p"], ["a"], [[1]], [[2]])
    assert str(err.value).count("\n") == 0
    # (4, 2) scores for 8 responses were flattened: rewards went to the wrong answers
    with pytest.raises(AlignkitError, match=r"returned list of shape \(2, 2\), not one float per response \(4\)"):
        import_reward_fn(f"{user_module}:nested", "grpo.reward")(["p"] * 4, ["a"] * 4, [[1]] * 4, [[2]] * 4)
    assert import_reward_fn(f"{user_module}:column", "grpo.reward")(["p"] * 2, ["a", "bb"], [[1]] * 2,
                                                                      [[2]] * 2).tolist() == [1.0, 2.0]


def test_a_reward_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "rew_syntax.py").write_text("def fn(:\n")
    (tmp_path / "rew_name.py").write_text("x = undefined_name\n")
    for spec, message in [("rew_syntax:fn", r"importing rew_syntax raised SyntaxError: .*rew_syntax.py:1\)"),
                          ("rew_name:fn", r"importing rew_name raised NameError: .*rew_name.py:1\)")]:
        with pytest.raises(AlignkitError, match=message) as err:
            import_reward_fn(spec, "grpo.reward")
        assert err.value.where == "grpo.reward" and "\n" not in str(err.value)


def test_a_reward_written_for_trl_runs_unchanged(user_module):
    """TRL's reward_funcs convention: keyword arguments prompts / completions / completion_ids (+ **kwargs)."""
    trl = import_reward_fn(f"{user_module}:trl_style", "grpo.reward")
    assert trl(["ab", "abcd"], ["x", "yyy"], [[1], [1]], [[2], [2, 3, 4]]).tolist() == pytest.approx([1.002, 3.004])
    named = import_reward_fn(f"{user_module}:trl_named", "grpo.reward")
    assert named(["p"], ["x"], [[1]], [[2, 3]]).tolist() == [2.0]
    # four positional parameters are alignkit's convention, whatever they are called
    four = import_reward_fn(f"{user_module}:four_positional", "grpo.reward")
    assert four(["p"], ["x"], [[1]], [[2, 3, 4]]).tolist() == [3.0]


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_cli_refuses_a_reward_callable_it_cannot_import_before_any_model_loads(stage, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(REPO / "recipes" / f"{stage}.yaml"), f"output_dir={out}",
               f"{stage}.reward=not_installed_pkg.rewards:score"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{stage}.reward" in err and "cannot import not_installed_pkg.rewards" in err
    assert not out.exists()  # refused at validation: no run folder
