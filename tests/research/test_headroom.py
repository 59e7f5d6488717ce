"""The headroom decomposition: model specs, per-task rubric tables and expected win rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.research import headroom
from alignkit.world import oracle

META = {"task": "fact", "entity": "Bresbis", "expected": ["Eastvale"], "conflicts": [["Northmoor"]],
        "reference": "Bresbis is in Eastvale.", "harmful": False, "forbidden": []}
MODELS = Path(__file__).resolve().parents[2] / "data" / "models"
RIGHT = oracle.score(META, "Bresbis is in Eastvale.")
WRONG = oracle.score(META, "Bresbis is in Northmoor.")


def test_parse_model_reads_an_optional_temperature_and_prompting():
    assert headroom.parse_model("runs/ppo/model") == ("runs/ppo/model", 1.0, "chat")
    assert headroom.parse_model("runs/ppo/model@0.5") == ("runs/ppo/model", 0.5, "chat")
    assert headroom.parse_model("odd@name") == ("odd@name", 1.0, "chat")
    assert headroom.parse_model("base@fewshot") == ("base", 1.0, "fewshot")
    assert headroom.parse_model("base@fewshot@0.7") == ("base", 0.7, "fewshot")
    assert headroom.parse_model("base@0.7@raw") == ("base", 0.7, "raw")
    assert headroom.parse_model("a@0.5@0.7") == ("a@0.5", 0.7, "chat")   # one temperature: the rest is the path


def test_fewshot_entry_uses_the_template_and_cuts_at_the_next_turn(tmp_path):
    rows = [json.loads(line) for line in
            (MODELS.parent / "world" / "validation_prompts.jsonl").read_text().splitlines()[:3]]
    template = tmp_path / "fewshot.txt"
    template.write_text("User: Where is Bresbis?\nAssistant: Bresbis is in Eastvale.\n\nUser: {prompt}\nAssistant:")
    answers = headroom.sample_answers(f"{MODELS / 'tiny-base'}@fewshot", rows, [0], fewshot_template=str(template))
    assert len(answers[0]) == 3
    assert all("User:" not in a["text"] for a in answers[0])   # the few-shot continuation is cut at the next turn


def test_expected_win_rate_averages_every_sample_pair_ties_half():
    rows = [{"meta": META}, {"meta": {**META, "task": "list"}}]
    a = [[RIGHT, RIGHT], [WRONG, RIGHT]]          # samples x prompts
    b = [[WRONG, RIGHT], [WRONG, RIGHT]]
    # prompt 0: (R,W) win, (R,W) win, (W,W) tie, (W,W) tie -> 0.75; prompt 1: all ties -> 0.5
    assert headroom.expected_win_rate(rows, a, b) == {"all": pytest.approx(0.625), "fact": 0.75, "list": 0.5}


def test_task_table_means_and_perfect_share():
    table = headroom.task_table([{"meta": META}], [[RIGHT], [WRONG]])
    assert table["fact"]["perfect"] == 0.5 and table["fact"]["correct"] == 0.5
    assert table["fact"]["total"] == pytest.approx(round((RIGHT.total + WRONG.total) / 2, 3))


def test_headroom_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Where is Bresbis {i}?"}],
                                           "meta": META}) + "\n" for i in range(3)))
    report = headroom.headroom([str(tiny_model_dir), f"{tiny_model_dir}@0.5"], str(prompts), samples=2)
    assert report["n_prompts"] == 3 and set(report["tasks"]) == {str(tiny_model_dir), f"{tiny_model_dir}@0.5"}
    win = report["expected_win_rate"][f"{tiny_model_dir}@0.5"]
    assert 0.0 <= win["all"] <= 1.0 and set(win) == {"all", "fact"}


def test_pick_best_takes_each_prompts_highest_reward_first_on_ties():
    a, b = [{"text": "a0"}, {"text": "a1"}], [{"text": "b0"}, {"text": "b1"}]
    assert headroom.pick_best([a, b], [[1.0, 0.0], [0.5, 2.0]]) == [a[0], b[1]]
    assert headroom.pick_best([a, b], [[1.0, 1.0], [1.0, 1.0]]) == a


def test_best_of_n_entry_is_compared_with_every_model(tmp_path):
    rows = [json.loads(line) for line in
            (MODELS.parent / "world" / "validation_prompts.jsonl").read_text().splitlines()[:4]]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = str(MODELS / "tiny-sft")
    report = headroom.headroom([sft, f"{sft}@0.5"], str(prompts), samples=2, best_of=3,
                               reward_model=str(MODELS / "tiny-rm"))
    bon = f"{sft}#best-of-3"
    assert set(report["tasks"]) == {sft, f"{sft}@0.5", bon}
    assert set(report["expected_win_rate"]) == {f"{sft}@0.5", bon}
    assert set(report["expected_win_rate_vs_best_of"]) == {f"{sft}@0.5"}
    assert 0.0 <= report["expected_win_rate_vs_best_of"][f"{sft}@0.5"]["all"] <= 1.0
    with pytest.raises(ValueError, match="reward-model"):
        headroom.headroom([sft], str(prompts), samples=1, best_of=2)


def test_cli_names_a_missing_model_template_or_prompt_file(tmp_path, capsys):
    sft = str(MODELS / "tiny-sft")
    no_meta = tmp_path / "no_meta.jsonl"
    no_meta.write_text(json.dumps({"id": "p0", "prompt": "Where is Bresbis?"}) + "\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("[1, 2]\n")
    cases = [([str(tmp_path / "nope")], "no folder"),
             ([f"{sft}@fewshot", "--fewshot-template", str(tmp_path / "none.txt")], "no few-shot template"),
             ([sft, "--prompts", str(tmp_path / "p.jsonl")], "--prompts"),
             ([sft, "--best-of", "2", "--reward-model", str(tmp_path / "rm")], "--reward-model"),
             (["ideal", "--best-of", "2", "--reward-model", str(MODELS / "tiny-rm")], "not ideal"),
             ([sft, "--samples", "0"], "--samples must be at least 1"),
             ([sft, "--out", str(tmp_path)], "is a folder"),
             ([sft, "--prompts", str(no_meta)], "no_meta.jsonl:1: needs the world's prompt row"),
             ([str(broken)], "not a loadable model folder")]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as done:
            headroom.main(argv)
        assert done.value.code == 2
        assert needle in capsys.readouterr().err


def test_ideal_entry_is_the_reference_and_beats_or_ties_any_model(tmp_path):
    """`ideal` answers with the references: perfect on every task, never below a model's samples."""
    rows = [json.loads(line) for line in
            (MODELS.parent / "world" / "validation_prompts.jsonl").read_text().splitlines()[:20]]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = headroom.headroom(["ideal", str(MODELS / "tiny-base")], str(prompts), samples=2)
    assert all(t["perfect"] == 1.0 for t in report["tasks"]["ideal"].values())
    base_wins = report["expected_win_rate"][str(MODELS / "tiny-base")]["all"]
    assert base_wins < 0.5   # the base loses to (or ties) the ideal answers, never wins overall
    with pytest.raises(ValueError, match="ideal"):
        headroom.headroom(["ideal"], str(prompts), best_of=2, reward_model=str(MODELS / "tiny-rm"))


def test_annotate_and_probe_clis_refuse_bad_arguments_before_loading_a_model(tmp_path, capsys):
    """annotate --k 1 replaced the user's rankings file with an empty one; probe --n 0 failed after a minute."""
    from alignkit.research import annotate, probe

    keep = tmp_path / "mine.jsonl"
    keep.write_text('{"row": 1}\n')
    for main, argv, needle in [
        (annotate.main, ["--k", "1", "--out", str(keep)], "--k must be at least 2"),
        (annotate.main, ["--noise", "-1", "--out", str(keep)], "--noise must be in [0, 0.5)"),
        (annotate.main, ["--prompts", str(tmp_path / "none.jsonl"), "--out", str(keep)], "--prompts: no such file"),
        (probe.main, ["--n", "0"], "--n must be at least 1"),
        (probe.main, ["--knowledge", str(tmp_path / "none")], "--knowledge: no model folder"),
    ]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2 and needle in capsys.readouterr().err
    assert keep.read_text() == '{"row": 1}\n'
