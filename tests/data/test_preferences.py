"""Preference normalisation: explicit, implicit-prompt and ranked rows; invalid rows name file:row."""

from __future__ import annotations

import math

import pytest

from alignkit.config.base import DatasetSpec
from alignkit.data.preferences import (
    load_preference_datasets,
    load_rankings,
    ranking_pairs,
    to_pairs,
    to_ranking,
)
from alignkit.errors import AlignkitError
from tests.conftest import write_jsonl

USER = [{"role": "user", "content": "In which region is Bresbis?"}]


def test_explicit_conversational_and_text_pairs():
    conv = {"prompt": USER, "chosen": [{"role": "assistant", "content": "Eastvale."}],
            "rejected": [{"role": "assistant", "content": "Northmoor."}]}
    text = {"prompt": "In which region is Bresbis?", "chosen": "Eastvale.", "rejected": "Northmoor."}
    want = {"prompt": USER, "responses": ["Eastvale.", "Northmoor."], "margin": 0.0}
    assert to_ranking(conv, "f:1") == want
    assert to_ranking(text, "f:2") == want


def test_implicit_prompt_splits_at_longest_common_prefix():
    shared = [{"role": "system", "content": "Be brief."}, *USER, {"role": "assistant", "content": "Eastvale."},
              {"role": "user", "content": "And its river?"}]
    row = {"chosen": [*shared, {"role": "assistant", "content": "The Ilsa."}],
           "rejected": [*shared, {"role": "assistant", "content": "I cannot say."}]}
    out = to_ranking(row, "f:1")
    assert out["prompt"] == shared
    assert out["responses"] == ["The Ilsa.", "I cannot say."]


def test_ranking_orders_responses_best_first_and_reads_margin():
    row = {"prompt": USER, "responses": ["b", "d", "a", "c"], "ranking": [2, 0, 3, 1], "gap": 0.5}
    out = to_ranking(row, "f:1", margin_column="gap")
    assert out["responses"] == ["a", "b", "c", "d"]
    assert out["margin"] == 0.5
    assert ranking_pairs(out) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    assert [p["responses"] for p in to_pairs([out])][:2] == [["a", "b"], ["a", "c"]]


@pytest.mark.parametrize("row, message", [
    ({"prompt": USER, "responses": ["a", "b", "c", "d"], "ranking": [0, 0, 2, 3]},
     "ranking [0, 0, 2, 3] is not a permutation of 0..3"),
    ({"prompt": USER, "responses": ["a", "b"], "ranking": [0, 1, 2]}, "ranking [0, 1, 2] is not a permutation"),
    ({"prompt": USER, "responses": ["a"], "ranking": [0]}, "at least two responses (K >= 2)"),
    ({"prompt": USER, "chosen": "same", "rejected": "same"}, "chosen and rejected are identical"),
    ({"prompt": USER, "chosen": "fine", "rejected": "  "}, "empty response"),
    ({"prompt": USER, "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}, "two ranked responses are identical"),
    ({"chosen": USER + [{"role": "assistant", "content": "x"}], "rejected": USER + [{"role": "assistant",
                                                                                    "content": "x"}]},
     "chosen and rejected are identical"),
    ({"chosen": "text a", "rejected": "text b"}, "must be full conversations"),
    ({"prompt": USER, "completion": "x"}, "not a preference row"),
])
def test_invalid_rows_name_file_and_row(row, message):
    good = {"prompt": USER, "chosen": "Eastvale.", "rejected": "Northmoor."}
    with pytest.raises(AlignkitError, match="data/world/preferences.jsonl:3: ") as err:
        load_rankings([good, good, row], "data/world/preferences.jsonl")
    assert message in str(err.value)


def test_missing_margin_column_is_an_error():
    with pytest.raises(AlignkitError, match=r"f\.jsonl:1: no margin column 'gap'"):
        load_rankings([{"prompt": USER, "chosen": "a", "rejected": "b"}], "f.jsonl", margin_column="gap")


def test_loading_files_names_the_file_row(jsonl_file):
    rows = [{"prompt": USER, "responses": ["a", "b", "c"], "ranking": [2, 1, 0], "meta": {"k": 1}},
            {"prompt": USER, "responses": ["a", "b", "c"], "ranking": [2, 1, 1], "meta": {"k": 2}}]
    path = jsonl_file(rows)
    spec = DatasetSpec(path=str(path), format="ranking")
    with pytest.raises(AlignkitError) as err:
        load_preference_datasets([spec])
    assert str(err.value) == f"{path}:2: ranking [2, 1, 1] is not a permutation of 0..2"
    ok = load_preference_datasets([DatasetSpec(path=str(jsonl_file(rows[:1], "ok.jsonl")))])
    assert ok[0]["responses"] == ["c", "b", "a"]


def test_declared_format_must_match_rows(jsonl_file):
    path = jsonl_file([{"prompt": USER, "chosen": "a", "rejected": "b"}])
    with pytest.raises(AlignkitError, match="expected ranking"):
        load_preference_datasets([DatasetSpec(path=str(path), format="ranking")])
    with pytest.raises(AlignkitError, match=r"data\.datasets\.0\.format"):
        load_preference_datasets([DatasetSpec(path=str(path), format="messages")])


# ---- public shapes: Anthropic HH, UltraFeedback-binarized, ShareGPT preference, KTO ------------------

HH_CHOSEN = ("\n\nHuman: In which region is Bresbis?\n\nAssistant: Eastvale.\n\nHuman: And its river?"
             "\n\nAssistant: The Ilsa, which runs\n\nthrough it.")
HH_REJECTED = ("\n\nHuman: In which region is Bresbis?\n\nAssistant: Eastvale.\n\nHuman: And its river?"
               "\n\nAssistant: The Ilsa, I think.")
HH_PROMPT = [{"role": "user", "content": "In which region is Bresbis?"},
             {"role": "assistant", "content": "Eastvale."}, {"role": "user", "content": "And its river?"}]


def uf_row(question: str, good: str, bad: str) -> dict:
    """An UltraFeedback-binarized row: a prompt string, and chosen/rejected conversations that repeat it."""
    user = {"role": "user", "content": question}
    chosen = [user, {"role": "assistant", "content": good}]
    return {"prompt": question, "prompt_id": "x", "chosen": chosen, "messages": chosen,
            "rejected": [user, {"role": "assistant", "content": bad}], "score_chosen": 8.0, "score_rejected": 3.0}


def test_multi_turn_hh_becomes_user_assistant_messages_split_before_the_last_reply():
    out = to_ranking({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "hh.jsonl:1")
    assert out["prompt"] == HH_PROMPT
    assert out["responses"] == ["The Ilsa, which runs\n\nthrough it.", "The Ilsa, I think."]
    # An HH prompt column that ends with the empty "Assistant:" cue, and text responses, read the same.
    row = {"prompt": HH_CHOSEN.rsplit(" The Ilsa", 1)[0], "chosen": " The Ilsa, which runs\n\nthrough it.",
           "rejected": " The Ilsa, I think."}
    assert to_ranking(row, "hh.jsonl:2")["prompt"] == HH_PROMPT


def test_hh_split_token_by_token(tiny_tokenizer):
    from alignkit.reward import encode_rankings

    ranking = load_rankings([{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}], "hh.jsonl")
    eos = tiny_tokenizer.eos_token
    # Written out from the template: the prompt ends where the last "Assistant:" turn starts.
    want_prompt = ("<|user|> In which region is Bresbis?\n<|assistant|> Eastvale." + eos +
                   "\n<|user|> And its river?\n<|assistant|>")
    ids = lambda text: tiny_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    # What the reward stage trains on (and DPO and PPO see): templated prompt, then response + EOS.
    enc = encode_rankings(ranking, tiny_tokenizer, max_length=512)[0]
    start = enc["response_start"]
    assert start == len(ids(want_prompt))
    for seq, reply in zip(enc["input_ids"], ["The Ilsa, which runs\n\nthrough it.", "The Ilsa, I think."],
                          strict=True):
        assert seq[:start] == ids(want_prompt)
        # the completion is only the final reply (+ EOS), after the space the template puts before it
        assert seq[start:] == ids(" " + reply + eos)


def test_ultrafeedback_rows_do_not_duplicate_the_user_turn(tiny_tokenizer):
    from alignkit.reward_model import reward_input_text

    out = to_ranking(uf_row("Name a river.", "The Ilsa.", "A hill."), "uf.jsonl:1")
    assert out == {"prompt": [{"role": "user", "content": "Name a river."}], "responses": ["The Ilsa.", "A hill."],
                   "margin": 0.0}
    assert reward_input_text(tiny_tokenizer, out["prompt"], out["responses"][0]).count("Name a river.") == 1
    # A system turn before the user's stays in the prompt.
    row = uf_row("Name a river.", "The Ilsa.", "A hill.")
    system = {"role": "system", "content": "Be brief."}
    row["chosen"], row["rejected"] = [system, *row["chosen"]], [system, *row["rejected"]]
    assert to_ranking(row, "uf.jsonl:2")["prompt"] == [system, {"role": "user", "content": "Name a river."}]


def test_sharegpt_preference_rows():
    row = {"conversations": [{"from": "human", "value": "Name a river."}], "system": "Be brief.",
           "chosen": {"from": "gpt", "value": "The Ilsa."}, "rejected": {"from": "gpt", "value": "A hill."}}
    assert to_ranking(row, "sg.jsonl:1", fmt="preference") == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}],
        "responses": ["The Ilsa.", "A hill."], "margin": 0.0}
    # ShareGPT role names inside role/content messages are mapped too.
    row = {"conversations": [{"role": "human", "content": "Name a river."}],
           "chosen": {"role": "gpt", "content": "The Ilsa."}, "rejected": "A hill."}
    assert to_ranking(row, "sg.jsonl:2")["prompt"] == [{"role": "user", "content": "Name a river."}]


@pytest.mark.parametrize("row, message", [
    ({"chosen": HH_CHOSEN, "rejected": HH_CHOSEN}, "chosen and rejected are identical"),
    ({"chosen": HH_CHOSEN, "rejected": "\n\nHuman: Where is Liltum?\n\nAssistant: North."},
     "share no prompt prefix"),
    ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("Eastvale.", "Westvale.")},
     "differs only in its final assistant reply; they share 1 of 4/4 turns"),
    ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED + "\n\nHuman: Sure?\n\nAssistant: Yes."},
     "differs only in its final assistant reply"),
    ({**uf_row("Name a river.", "a", "b"), "prompt": "Name a hill."}, "does not end with the prompt column"),
    ({"prompt": "Name a river.", "completion": "The Ilsa.", "label": True},
     "KTO-style unpaired rows (prompt, completion, label) cannot train reward or DPO"),
])
def test_malformed_public_rows_name_file_and_row(row, message):
    good = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}
    with pytest.raises(AlignkitError, match="hh.jsonl:2: ") as err:
        load_rankings([good, row], "hh.jsonl")
    assert message in str(err.value)


@pytest.fixture(scope="module")
def public_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Tiny HH-shaped and UltraFeedback-shaped JSONL files, as the Hub serves them."""
    root = tmp_path_factory.mktemp("public")
    towns = ["Bresbis", "Liltum", "Braktrer", "Seren"]
    hh = [{"chosen": f"\n\nHuman: Where is {t}?\n\nAssistant: In Eastvale.",
           "rejected": f"\n\nHuman: Where is {t}?\n\nAssistant: I do not know."} for t in towns]
    uf = [uf_row(f"Who founded {t}?", f"Grikiro founded {t}.", "No idea.") for t in towns]
    return str(write_jsonl(root / "hh.jsonl", hh)), str(write_jsonl(root / "uf.jsonl", uf))


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_reward_and_dpo_train_on_raw_hh_and_ultrafeedback_files(stage, tmp_path, tiny_model_dir, public_files):
    from alignkit.cli import train

    hh, uf = public_files
    metrics = train(f"recipes/{stage}.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}",
        f"data.datasets=[{{path: {hh}}}, {{path: {uf}}}]", f"data.eval_datasets=[{{path: {hh}}}]",
        "train.max_steps=2", "train.per_device_train_batch_size=4", "train.num_train_epochs=1",
        *(["reward.reference_responses=dataset", "reward.reference_samples=4"] if stage == "reward" else []),
    ])
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "model").is_dir()


@pytest.mark.parametrize("row, message", [
    ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("Eastvale.", "Westvale.")},
     "differs only in its final assistant reply"),
    ({"prompt": "Name a river.", "completion": "The Ilsa.", "label": False}, "KTO-style unpaired rows"),
])
def test_bad_public_rows_stop_the_cli_with_one_line(row, message, tmp_path, capsys):
    from alignkit.cli import main

    # One shape per file (`datasets` gives every row of a file the union of its columns): KTO rows alone.
    rows = [row] if "label" in row else [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, row]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    rc = main(["train", "recipes/dpo.yaml", f"output_dir={tmp_path / 'run'}", f"data.datasets=[{{path: {data}}}]",
               "data.eval_datasets=[]"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith(f"alignkit: error: {data}:{len(rows)}: ") and message in err
