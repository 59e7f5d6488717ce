"""The headroom probe: its pickers, win rates and fact counts, and one end-to-end run on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.research import probe

META = {"task": "fact", "entity": "Bresbis", "expected": ["Eastvale"], "conflicts": [["Northmoor"]],
        "reference": "Bresbis is in Eastvale.", "harmful": False, "forbidden": []}


def test_win_rate_counts_ties_half():
    assert probe.win_rate([1.0, 0.5, 0.2, 0.6], [0.5, 0.5, 0.4, 0.6 + 1e-9]) == pytest.approx(50.0)


def test_best_of_takes_the_keys_favourite_among_the_first_k():
    cands = [[{"oracle": 0.1, "r": 3.0}, {"oracle": 0.9, "r": 1.0}, {"oracle": 0.5, "r": 9.0}]]
    assert probe.best_of(cands, lambda c: c["r"], 2) == [0.1]
    assert probe.best_of(cands, lambda c: c["r"], 3) == [0.5]
    assert probe.best_of(cands, lambda c: c["oracle"], 3) == [0.9]


def test_fact_stats_split_by_whether_the_entity_is_named():
    rows = [{"meta": META}, {"meta": {**META, "task": "list"}}]
    cands = [[{"text": "Bresbis is in Eastvale.", "ended": True}, {"text": "Dilgath is in Eastvale.", "ended": True},
              {"text": "Dilgath is in Northmoor.", "ended": True}, {"text": "Bresbis is in Northmoor.", "ended": True}],
             [{"text": "Bresbis is in Eastvale.", "ended": True}]]  # not a fact prompt: not counted
    stats = probe.fact_stats(rows, cands)
    assert stats["samples"] == 4
    assert stats["names_entity"] == 0.5 and stats["value_right"] == 0.5
    assert stats["value_right_when_named"] == 0.5 and stats["value_right_when_not_named"] == 0.5


def test_probe_end_to_end_on_tiny_models(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    rm.config.pad_token_id = tiny_tokenizer.pad_token_id
    rm.save_pretrained(str(rm_dir))
    tiny_tokenizer.save_pretrained(str(rm_dir))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Where is Bresbis {i}?"}],
                                           "meta": META}) + "\n" for i in range(3)))
    demos = tmp_path / "sft.jsonl"
    demos.write_text(json.dumps({"messages": [{"role": "user", "content": "Where is Bresbis?"},
                                              {"role": "assistant", "content": "Eastvale."}],
                                 "meta": {"task": "fact"}}) + "\n")
    report = probe.probe(str(tiny_model_dir), str(rm_dir), str(prompts), str(demos), judge_lm=str(tiny_model_dir),
                         n=2)
    assert set(report["best_of"]) == {"reward", "policy_logprob", "judge_logprob", "oracle"}
    assert set(report["best_of"]["oracle"]) == {"2"}  # k never reaches the comparison sample
    # The oracle's own pick can never lose to the sample it is compared with.
    assert all(v >= 50.0 for v in report["best_of"]["oracle"].values())
    # The same model as policy and judge: the two likelihood pickers agree.
    assert report["best_of"]["judge_logprob"] == report["best_of"]["policy_logprob"]
    assert report["fact_prompts"]["samples"] == 3 * 2
    first = report["first_token_logprob"]["fact"]
    assert first["demos"] == 1 and first["first"] < 0 and first["rest"] < 0


class _Peaked(torch.nn.Module):
    """A fake LM whose next-token log-probs favour some token ids everywhere."""

    def __init__(self, vocab: int, favourites: list[int]):
        super().__init__()
        self.vocab, self.favourites = vocab, favourites

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favourites] = 5.0
        return type("Out", (), {"logits": logits})()


def test_knowledge_picks_the_likeliest_of_six_sentences(tiny_tokenizer):
    """A fact is known when its true value's canonical sentence is the likeliest of the six."""
    rows = [{"meta": {**META, "attributes": ["region"], "conflicts": [["Northmoor", "Southfen", "Westmark",
                                                                      "Highcliff", "Lowmere"]]}},
            {"meta": {**META, "unknown": True, "attributes": ["region"], "expected": [], "conflicts": []}}]
    favourite = tiny_tokenizer(" Eastvale")["input_ids"]
    report = probe.knowledge(_Peaked(len(tiny_tokenizer), favourite), tiny_tokenizer, rows)
    assert report == {"facts": 1, "choices": 6, "known": 1.0}  # the unknown-name row has no fact
    other = tiny_tokenizer(" Lowmere")["input_ids"]
    assert probe.knowledge(_Peaked(len(tiny_tokenizer), other), tiny_tokenizer, rows)["known"] == 0.0


def test_swap_value_keeps_the_form_and_the_capitals():
    assert probe.swap_value(META) == "Bresbis is in Northmoor."
    one_word = {**META, "task": "one_word", "expected": ["potter"], "conflicts": [["baker", "sailor"]],
                "reference": "Potter."}
    assert probe.swap_value(one_word, 1) == "Sailor."
    listed = {**META, "task": "list", "expected": ["Eastvale", "purple"], "conflicts": [["Lowmere"], ["black"]],
              "reference": "- Region: Eastvale\n- Flag colour: purple"}
    assert probe.swap_value(listed) == "- Region: Lowmere\n- Flag colour: purple"
    assert probe.swap_value({**META, "reference": "I don't know."}) is None


def test_contrast_pairs_skip_honesty_and_harmful_rows():
    rows = [{"prompt": "q", "meta": META}, {"prompt": "q", "meta": {**META, "unknown": True}},
            {"prompt": "q", "meta": {**META, "task": "harmful", "harmful": True}}]
    pairs = probe.contrast_pairs(rows)
    assert [(a, b) for _, a, b in pairs] == [("Bresbis is in Eastvale.", "Bresbis is in Northmoor.")] * 2


def test_fact_contrast_reads_an_lm_by_likelihood_and_a_reward_model_by_score(tmp_path, tiny_model_dir,
                                                                              tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    rm_dir = tmp_path / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=1)
    rm.config.pad_token_id = tiny_tokenizer.pad_token_id
    rm.save_pretrained(str(rm_dir))
    tiny_tokenizer.save_pretrained(str(rm_dir))
    rows = [{"prompt": [{"role": "user", "content": "Where is Bresbis?"}], "meta": META}]
    lm = probe.fact_contrast(str(tiny_model_dir), rows)
    scored = probe.fact_contrast(str(rm_dir), rows)
    assert (lm["kind"], scored["kind"]) == ("lm", "reward_model")
    assert lm["pairs"] == scored["pairs"] == 2
    assert 0.0 <= lm["prefers_true_value"] <= 1.0 and set(scored["by_task"]) == {"fact"}


def test_the_shipped_reward_model_reads_facts_through_its_lm_not_its_head(tmp_path):
    """The finding behind the reward model's design (docs/winrate_embedded_world.md): with the form held fixed,
    the SFT language model prefers the true value almost always; the reward model's head built on it is near
    chance, and the shipped reward model reads the fact through its LM's surprise term."""
    import shutil

    from alignkit.runio import LM_WEIGHT_KEY
    from tests.conftest import REPO

    rows = [json.loads(line) for line in (REPO / "data/world/validation_prompts.jsonl").read_text().splitlines()]
    lm = probe.fact_contrast(str(REPO / "data/models/tiny-sft"), rows)
    shipped = probe.fact_contrast(str(REPO / "data/models/tiny-rm"), rows)
    head = tmp_path / "head-only"
    shutil.copytree(REPO / "data/models/tiny-rm", head, ignore=shutil.ignore_patterns("lm"))
    config = json.loads((head / "config.json").read_text())
    assert config[LM_WEIGHT_KEY] > 0
    (head / "config.json").write_text(json.dumps({**config, LM_WEIGHT_KEY: 0.0}))
    head_only = probe.fact_contrast(str(head), rows)
    assert lm["by_task"]["fact"] >= 0.95
    assert head_only["prefers_true_value"] <= 0.65
    assert shipped["prefers_true_value"] >= 0.85
