"""The one format detector and the SFT normaliser: every format, column mapping, errors naming file:row."""

from __future__ import annotations

import pytest

from alignkit.config.base import DatasetSpec
from alignkit.data.formats import detect_format, normalize_sft_rows, special_token_rows, to_messages
from alignkit.data.loading import load_spec
from alignkit.errors import AlignkitError

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]

ROWS = {
    "messages": {"messages": CHAT},
    "sharegpt": {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                   {"from": "gpt", "value": "Hello."}]},
    "alpaca": {"instruction": "Translate", "input": "bonjour", "output": "hello"},
    "prompt_completion": {"prompt": "2+2=", "completion": "4"},
    "text": {"text": "Once upon a time."},
    "preference": {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."},
    "ranking": {"prompt": "Hi", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
}


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_each_format_is_detected(fmt):
    assert detect_format(ROWS[fmt]) == fmt


def test_implicit_prompt_preference_and_unknown_rows():
    assert detect_format({"chosen": CHAT, "rejected": CHAT}) == "preference"
    assert detect_format({"question": "?", "answer": "!"}) is None


def test_sharegpt_roles_are_mapped():
    msgs = to_messages(ROWS["sharegpt"], "sharegpt")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[-1]["content"] == "Hello."


def test_alpaca_joins_instruction_and_input():
    assert to_messages(ROWS["alpaca"], "alpaca") == [
        {"role": "user", "content": "Translate\n\nbonjour"}, {"role": "assistant", "content": "hello"}]
    no_input = to_messages({"instruction": "Say hi", "input": "", "output": "hi"}, "alpaca")
    assert no_input[0]["content"] == "Say hi"


@pytest.mark.parametrize("fmt,expected", [
    ("messages", {"messages": CHAT}),
    ("alpaca", {"messages": [{"role": "user", "content": "Translate\n\nbonjour"},
                             {"role": "assistant", "content": "hello"}]}),
    ("prompt_completion", {"prompt": "2+2=", "completion": "4"}),
    ("text", {"text": "Once upon a time."}),
])
def test_normalise_to_trl_formats(fmt, expected):
    assert normalize_sft_rows([ROWS[fmt]], "auto", "f.jsonl") == [expected]


def test_conversational_prompt_completion_stays_split():
    row = {"prompt": [CHAT[0], CHAT[1], {"role": "user", "content": "More?"}],
           "completion": [{"role": "assistant", "content": "No."}]}
    (out,) = normalize_sft_rows([row], "auto", "f.jsonl")
    assert out["prompt"] == row["prompt"] and out["completion"] == row["completion"]


@pytest.mark.parametrize("row,message", [
    ({"question": "?", "answer": "!"}, "fits no SFT format"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}, "empty"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "last message must be the assistant"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "role"),
    ({"messages": [{"role": "human", "content": "Hi"}, {"role": "gpt", "content": "Yo"}]},
     "got 'human' \\(ShareGPT's spelling"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]},
     "message 1 \\(assistant\\) needs a text content, got null"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "Yo"}]},
     "got a list"),
    ({"conversations": [{"from": "alien", "value": "Hi"}]}, "sharegpt"),
    ({"text": ""}, "empty text"),
    ({"prompt": "Hi", "completion": ""}, "empty completion"),
    ({"instruction": "Say hi", "output": ""}, "empty"),
    (ROWS["preference"], "fits no SFT format"),
])
def test_bad_row_names_file_and_row(row, message):
    with pytest.raises(AlignkitError, match=message) as err:
        normalize_sft_rows([ROWS["messages"], row], "auto", "data/sft.jsonl")
    assert err.value.where == "data/sft.jsonl:2"


def test_declared_format_is_enforced():
    with pytest.raises(AlignkitError, match="needs column 'instruction'; its columns \\['messages'\\] fit format messages") as err:
        normalize_sft_rows([ROWS["messages"]], "alpaca", "d.jsonl")
    assert err.value.where == "d.jsonl:1"
    with pytest.raises(AlignkitError, match="needs column 'messages'; it has columns \\['question'\\]"):
        normalize_sft_rows([{"question": "?"}], "messages", "d.jsonl")


def test_text_content_parts_are_joined():
    """OpenAI-style content parts, all text, read as their text (other parts are refused above)."""
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                        {"role": "assistant", "content": "Yo"}]}
    assert normalize_sft_rows([row], "auto", "d.jsonl")[0]["messages"][0] == {"role": "user", "content": "Hi there"}


def test_mixed_formats_are_refused():
    with pytest.raises(AlignkitError, match="mixes row formats"):
        normalize_sft_rows([ROWS["messages"], ROWS["text"]], "auto", "d.jsonl")


def test_column_mapping_at_load(jsonl_file):
    path = jsonl_file([{"question": "2+2=", "answer": "4"}, {"question": "3+3=", "answer": "6"}])
    spec = DatasetSpec(path=str(path), columns={"prompt": "question", "completion": "answer"})
    rows = normalize_sft_rows(load_spec(spec), spec.format, str(path))
    assert rows[1] == {"prompt": "3+3=", "completion": "6"}


def test_rows_holding_a_special_token_as_text_are_found():
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo<|eot|> there"}]},
            {"prompt": "<|user|>x", "completion": "y"},
            {"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b <|eot|>"}]},
            {"text": "plain <| not a token |>"}]
    assert special_token_rows(rows, ["<|eot|>", "<|user|>", "x"]) == [(1, "<|eot|>"), (2, "<|user|>"), (3, "<|eot|>")]
    assert special_token_rows(rows, []) == []


def test_a_data_folder_skips_hidden_copies_and_refuses_mixed_types(tmp_path):
    """A notebook's .ipynb_checkpoints/ copy doubled every row; a csv beside a jsonl failed inside datasets."""
    rows = '{"text": "a"}\n{"text": "b"}\n'
    (tmp_path / "d" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "d" / "train.jsonl").write_text(rows)
    (tmp_path / "d" / ".ipynb_checkpoints" / "train-checkpoint.jsonl").write_text(rows)
    (tmp_path / "d" / "__MACOSX").mkdir()
    (tmp_path / "d" / "__MACOSX" / "train.jsonl").write_text(rows)
    assert len(load_spec(DatasetSpec(path=str(tmp_path / "d")))) == 2
    (tmp_path / "d" / "more.csv").write_text("text\nc\n")
    with pytest.raises(AlignkitError, match="folder mixes file types"):
        load_spec(DatasetSpec(path=str(tmp_path / "d")))
