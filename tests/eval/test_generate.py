"""Evaluation generation: batched = one-at-a-time, the completion cache, few-shot prompting, log-probs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.config.base import ModelSection
from alignkit.eval.generate import (
    Job,
    JsonlCache,
    Sampling,
    cut_fewshot,
    generate,
    generate_cached,
    render_prompt,
    response_logprobs,
    settings_hash,
)
from alignkit.models import load_causal_lm, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "data" / "models" / "tiny-base")
QUESTIONS = ["In which region is Bresbis?", "What pet does Lopolia have?", "Hi", "What is the river of Ruklan? "
             "Answer in one word, please, and be brief about it.", "Who lives in Sirsos?"]


@pytest.fixture(scope="module")
def tiny() -> tuple:
    section = ModelSection(name_or_path=TINY)
    tokenizer = load_tokenizer(section, padding_side="left")
    return load_causal_lm(section, tokenizer=tokenizer).eval(), tokenizer


def chat_prompts(tokenizer) -> list[str]:
    return [render_prompt(tokenizer, [{"role": "user", "content": q}], "chat") for q in QUESTIONS]


def test_batched_left_padded_greedy_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer)
    greedy = Sampling(max_new_tokens=20, temperature=0.0, batch_size=len(prompts))
    batched = generate(model, tokenizer, prompts, greedy, progress=False)
    single = generate(model, tokenizer, prompts, Sampling(max_new_tokens=20, temperature=0.0, batch_size=1),
                      progress=False)
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1  # padding really happened
    assert [b["token_ids"] for b in batched] == [s["token_ids"] for s in single]
    assert [b["text"] for b in batched] == [s["text"] for s in single]
    for b in batched:
        assert b["n_tokens"] == len(b["token_ids"])
        assert b["ended"] == (b["token_ids"][-1] == tokenizer.eos_token_id)


def jobs_for(prompts: list[str], samples: int = 1) -> list[Job]:
    return [Job(str(k), s, p, settings_hash(p, s)) for k, p in enumerate(prompts) for s in range(samples)]


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the sequences it is asked to generate."""

    def __init__(self, model):
        super().__init__()
        self.model, self.generated = model, 0

    def generate(self, **kwargs):
        self.generated += kwargs["input_ids"].shape[0]
        return self.model.generate(**kwargs)


def test_cache_is_reused_and_an_interrupted_run_resumes(tiny, tmp_path):
    model, tokenizer = tiny
    jobs = jobs_for(chat_prompts(tokenizer), samples=2)
    sampling = Sampling(max_new_tokens=8, temperature=1.0, batch_size=3, seed=1)
    path = tmp_path / "completions" / "m.jsonl"

    # An interrupted run: the first 4 jobs finished, then the process died in the middle of a line.
    counting = CountingModel(model)
    first = generate_cached(counting, tokenizer, jobs[:4], sampling, JsonlCache(path), progress=False)
    with path.open("a") as fh:
        fh.write('{"key": "half-writ')
    resumed = CountingModel(model)
    records = generate_cached(resumed, tokenizer, jobs, sampling, JsonlCache(path), progress=False)
    assert resumed.generated == len(jobs) - 4
    assert records[:4] == first
    assert [r["key"] for r in records] == [j.key for j in jobs]

    again = CountingModel(model)
    assert generate_cached(again, tokenizer, jobs, sampling, JsonlCache(path), progress=False) == records
    assert again.generated == 0  # nothing left to generate
    for r in records:
        assert {"text", "token_ids", "n_tokens", "ended", "seed", "settings", "prompt_id", "sample"} <= set(r)


FEWSHOT = "A conversation with a helpful assistant.\n\nUser: Hi?\nAssistant: Hello.\n\nUser: {prompt}\nAssistant:"


class ScriptedModel(torch.nn.Module):
    """A 'model' whose generate() appends a fixed continuation: few-shot cutting without a real LM."""

    def __init__(self, continuation: list[int], fewshot: bool = True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuation, self.fewshot = continuation, fewshot

    def generate(self, input_ids, **kwargs):
        assert bool(kwargs.get("stop_strings")) == self.fewshot, "few-shot generation should stop at the next turn"
        tail = torch.tensor([self.continuation] * input_ids.shape[0])
        return torch.cat([input_ids, tail], 1)


def test_fewshot_builds_the_document_and_stops_at_the_next_turn(tiny):
    _, tokenizer = tiny
    messages = [{"role": "user", "content": "In which region is Bresbis?"}]
    doc = render_prompt(tokenizer, messages, "fewshot", FEWSHOT)
    assert doc.endswith("User: In which region is Bresbis?\nAssistant:")
    assert doc.startswith("A conversation with a helpful assistant.")

    continuation = tokenizer(" Bresbis is in Eastvale.\n\nUser: And Sirsos?\nAssistant: Lowmere.",
                             add_special_tokens=False)["input_ids"]
    out = generate(ScriptedModel(continuation), tokenizer, [doc], Sampling(temperature=0.0), progress=False,
                   fewshot=True)[0]
    assert out["text"] == "Bresbis is in Eastvale."
    assert out["ended"] is True
    # The answer's tokens plus one for the stop (the turn boundary), as EOS counts for chat.
    assert out["n_tokens"] == len(tokenizer(" Bresbis is in Eastvale.", add_special_tokens=False)["input_ids"]) + 1
    assert cut_fewshot("Lowmere.\nUser: next") == ("Lowmere.", True)
    assert cut_fewshot("still going") == ("still going", False)


def test_lengths_count_the_stop_once_for_chat_and_fewshot_alike(tiny):
    _, tokenizer = tiny
    answer = tokenizer(" Bresbis is in Eastvale.", add_special_tokens=False)["input_ids"]
    boundary = tokenizer("\n\nUser: And Sirsos?", add_special_tokens=False)["input_ids"]
    greedy = Sampling(temperature=0.0)
    chat = generate(ScriptedModel(answer + [tokenizer.eos_token_id], fewshot=False), tokenizer, ["Q"], greedy,
                    progress=False)[0]
    few = generate(ScriptedModel(answer + boundary), tokenizer, ["Q"], greedy, progress=False, fewshot=True)[0]
    assert chat["ended"] and few["ended"] and chat["text"] == few["text"]
    assert chat["n_tokens"] == few["n_tokens"] == len(answer) + 1
    cut_short = generate(ScriptedModel(answer, fewshot=False), tokenizer, ["Q"], greedy, progress=False)[0]
    assert not cut_short["ended"] and cut_short["n_tokens"] == len(answer)  # no stop, nothing added


def test_logprobs_batched_equal_single_and_kl_to_itself_is_zero(tiny):
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer)
    outs = generate(model, tokenizer, prompts, Sampling(max_new_tokens=12, temperature=1.0, batch_size=8),
                    progress=False)
    ids = [o["token_ids"] for o in outs]
    batched = response_logprobs(model, tokenizer, prompts, ids, temperature=0.7, batch_size=8)
    single = [response_logprobs(model, tokenizer, [p], [r], temperature=0.7)[0] for p, r in zip(prompts, ids, strict=True)]
    assert batched == pytest.approx(single, abs=1e-3)
    assert all(v < 0 for v in batched)
    # Against a hand computation on one unpadded sequence.
    p_ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    full = torch.tensor([p_ids + ids[0]])
    logits = model(input_ids=full).logits[0, len(p_ids) - 1:-1] / 0.7
    manual = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[0])[:, None]).sum().item()
    assert batched[0] == pytest.approx(manual, abs=1e-3)


def test_cache_file_is_one_json_line_per_completion(tiny, tmp_path):
    model, tokenizer = tiny
    jobs = jobs_for(chat_prompts(tokenizer)[:2])
    path = tmp_path / "c.jsonl"
    generate_cached(model, tokenizer, jobs, Sampling(max_new_tokens=4, batch_size=2), JsonlCache(path),
                    progress=False)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["key"] for r in lines) == sorted(j.key for j in jobs)
