"""An answer's first word is tokenised in the SFT demos as in the corpus (the v1 first-token problem)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "data" / "models" / "tiny-base"


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    if not (BASE / "tokenizer.json").exists():
        pytest.skip("data/models/tiny-base is not shipped in this checkout")
    return transformers.AutoTokenizer.from_pretrained(BASE)


def test_first_answer_token_is_the_corpus_spelling(tokenizer):
    """Templated demos start each answer with the token(s) the word has after "Assistant:" in the corpus."""
    rows = [json.loads(line) for line in (REPO / "data" / "world" / "sft.jsonl").open()][:300]
    corpus_ids: set[int] = set()
    for line in list((REPO / "data" / "world" / "corpus.jsonl").open())[:1500]:
        corpus_ids.update(tokenizer(json.loads(line)["text"])["input_ids"])
    for row in rows:
        enc = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        start = mask.index(1)
        answer = row["messages"][1]["content"]
        # the answer as running text: after "Assistant:" in a corpus chat log, i.e. after a space
        as_in_corpus = tokenizer("Assistant: " + answer)["input_ids"][len(tokenizer("Assistant:")["input_ids"]):]
        n = min(3, len(as_in_corpus))
        assert ids[start : start + n] == as_in_corpus[:n], (answer, tokenizer.convert_ids_to_tokens(ids[start:start + n]))
        # a made-up name (a hallucination about an unknown name) may start with a piece no corpus text has
        if not (row["meta"]["unknown"] and answer.startswith(row["meta"]["entity"])):
            assert ids[start] in corpus_ids


def test_generation_prompt_leaves_the_space_to_the_model(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|assistant|>")
    full = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}],
                                         tokenize=False)
    assert full.startswith(text + " Yes.")
