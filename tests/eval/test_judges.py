"""Judges: both-order reconciliation, the oracle, a reward model, a local LM, a real HTTP endpoint, humans."""

from __future__ import annotations

import ast
import csv
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from alignkit.config.eval import JudgeSection
from alignkit.errors import AlignkitError
from alignkit.eval.generate import JsonlCache
from alignkit.eval.judges import (
    HTTPJudge,
    HumanJudge,
    Judge,
    LocalLMJudge,
    OracleJudge,
    Response,
    RewardModelJudge,
    build_judge,
    judge_both_orders,
    load_template,
    parse_verdict,
)
from alignkit.world import oracle
from tests.conftest import JSONHandler

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "eval" / "judge_templates" / "pairwise.txt")
META = {"task": "fact", "expected": ["Eastvale"], "conflicts": [["Northmoor", "Lowmere"]], "harmful": False,
        "forbidden": [], "reference": "Bresbis is in Eastvale."}


def row(k: int) -> dict:
    return {"id": f"p{k}", "prompt": [{"role": "user", "content": f"In which region is Bresbis? ({k})"}],
            "meta": META}


GOOD, BAD = "Bresbis is in Eastvale.", "Bresbis is in Lowmere, I think, or somewhere else entirely."


def pairs(n: int = 3) -> list:
    """n prompts; model x answers well, model y badly."""
    return [(row(k), "x", "y", {"text": GOOD, "ended": True, "n_tokens": 6}, {"text": BAD, "ended": True,
                                                                             "n_tokens": 14}) for k in range(n)]


class FirstPositionJudge(Judge):
    """Always prefers whatever is shown first: pure position bias."""

    kind = "first"

    def __init__(self):
        self.calls = 0

    def compare(self, row, response_a, response_b):
        self.calls += 1
        return "a"


class ForbiddenJudge(Judge):
    kind = "first"  # same cache identity as FirstPositionJudge

    def compare(self, row, response_a, response_b):
        raise AssertionError("the verdict cache should have answered")


def test_position_biased_judge_becomes_ties_and_verdicts_are_cached(tmp_path):
    cache_path = tmp_path / "verdicts.jsonl"
    judge = FirstPositionJudge()
    out = judge_both_orders(judge, pairs(), JsonlCache(cache_path))
    assert [j["winner"] for j in out] == ["tie"] * 3
    assert all(j["verdict_ab"] == "a" and j["verdict_ba"] == "a" for j in out)
    assert judge.calls == 6  # both orders of every pair
    assert (out[0]["len_a"], out[0]["len_b"]) == (6, 14)
    again = judge_both_orders(ForbiddenJudge(), pairs(), JsonlCache(cache_path))
    assert again == out


def test_oracle_judge_prefers_the_correct_answer_in_both_orders():
    judge = OracleJudge(oracle)
    out = judge_both_orders(judge, pairs())
    assert [j["winner"] for j in out] == ["a"] * 3
    assert judge.score(row(0), GOOD) > judge.score(row(0), BAD)
    # A response cut off before EOS loses the rubric's "ends" points.
    assert judge.compare(row(0), {"text": GOOD, "ended": True}, {"text": GOOD, "ended": False}) == "a"
    with pytest.raises(AlignkitError, match="meta"):
        judge.compare({"id": "q", "prompt": "hi"}, "a", "b")


def test_the_eval_package_imports_no_world_module_and_the_oracle_needs_a_rubric():
    """alignkit.world's tools import the harness, so the harness gets the world's rubric handed in instead."""
    imported = set()
    for path in (ROOT / "src" / "alignkit" / "eval").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((path.name, alias.name) for alias in node.names)
    assert not [(f, m) for f, m in imported if m.startswith("alignkit.world")]
    with pytest.raises(AlignkitError, match="rubric"):
        build_judge(JudgeSection(type="oracle"))


class LengthScorer:
    """A stand-in reward model: longer is better."""

    def score(self, prompts, responses, ended=None):
        return torch.tensor([float(len(r)) for r in responses])


def test_reward_model_judge_prefers_higher_scores_with_a_tie_margin():
    judge = RewardModelJudge(LengthScorer(), epsilon=2.0)
    assert judge.compare(row(0), "short", "much longer") == "b"
    assert judge.compare(row(0), "abcd", "abc") == "tie"  # within epsilon
    out = judge_both_orders(judge, pairs())
    assert [j["winner"] for j in out] == ["b"] * 3
    assert judge.score(row(0), "four") == 4.0


def test_local_lm_judge_reads_the_next_token_and_batches_consistently():
    from alignkit.models import load_for_generation

    torch.set_num_threads(1)
    model, tokenizer = load_for_generation(str(ROOT / "data" / "models" / "tiny-base"))
    judge = LocalLMJudge(model, tokenizer, TEMPLATE, batch_size=4)
    items = [(row(k), Response(GOOD), Response(BAD)) for k in range(3)] + [(row(0), Response(BAD), Response(GOOD))]
    batched = judge.compare_batch(items)
    single = [judge.compare(*item) for item in items]
    assert batched == single
    assert set(batched) <= {"a", "b", "tie"}
    assert "[Answer A]\nBresbis is in Eastvale." in judge.judge_prompt(*items[0])
    texty = LocalLMJudge(model, tokenizer, TEMPLATE, mode="generate", max_tokens=4)
    assert set(texty.compare_batch(items[:2])) <= {"a", "b", "tie"}


@pytest.mark.parametrize(("text", "verdict"), [
    ("A", "a"), (" b.", "b"), ("tie", "tie"), ("[[C]]", "tie"), ("Explanation... [[B]]", "b"),
    ("The better answer is Answer A.", "a"), ("I cannot decide", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


# ---- a real OpenAI-compatible server on 127.0.0.1 --------------------------------------------------------

SECRET = "sk-test-0123456789abcdef"


class ChatHandler(JSONHandler):
    """/v1/chat/completions that prefers the answer mentioning Eastvale; fails the first call with 503."""

    seen_auth: list[str] = []
    calls = 0
    lock = threading.Lock()  # the server answers on several threads at once

    def do_POST(self):  # noqa: N802 (http.server's name)
        with self.lock:
            type(self).calls += 1
            call = type(self).calls
            type(self).seen_auth.append(self.headers.get("Authorization", ""))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self.send_json(404, {"error": "not found"})
        if self.headers.get("Authorization") != f"Bearer {SECRET}":
            return self.send_json(401, {"error": "bad key"})
        if call == 1:
            return self.send_json(503, {"error": "warming up"})  # the client must retry
        text = body["messages"][-1]["content"]
        first = text.split("[Answer A]")[1].split("[Answer B]")[0]
        second = text.split("[Answer B]")[1].split("Which answer")[0]
        verdict = "A" if "Eastvale" in first and "Eastvale" not in second else (
            "B" if "Eastvale" in second and "Eastvale" not in first else "tie")
        return self.send_json(200, {"choices": [{"message": {"role": "assistant", "content": verdict}}]})


@pytest.fixture
def server():
    ChatHandler.seen_auth, ChatHandler.calls = [], 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_http_judge_against_a_real_local_server(server, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    judge = HTTPJudge(server, "judge-model", TEMPLATE, api_key_env="JUDGE_KEY", timeout=30, max_retries=2,
                      concurrency=2, backoff=0.01)
    out = judge_both_orders(judge, pairs(), JsonlCache(tmp_path / "verdicts.jsonl"))
    assert [j["winner"] for j in out] == ["a"] * 3
    assert ChatHandler.calls == 7  # 6 presentations + the one 503 retried
    assert set(ChatHandler.seen_auth) == {f"Bearer {SECRET}"}
    (tmp_path / "judgments.jsonl").write_text(json.dumps(out))
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    logged = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    for place in (written, logged, repr(judge), judge.cache_id(), json.dumps(vars(judge), default=str)):
        assert SECRET not in place


def test_http_judge_errors_never_show_the_key(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-wrong-key-000000")
    judge = HTTPJudge(server, "m", TEMPLATE, api_key_env="JUDGE_KEY", max_retries=0)
    with pytest.raises(AlignkitError, match="HTTP 401") as err:
        judge.compare(row(0), GOOD, BAD)
    assert "sk-wrong" not in str(err.value)
    with pytest.raises(AlignkitError, match="UNSET_JUDGE_KEY is not set"):
        HTTPJudge(server, "m", TEMPLATE, api_key_env="UNSET_JUDGE_KEY")
    dead = HTTPJudge("http://127.0.0.1:9/v1", "m", TEMPLATE, timeout=1, max_retries=1, backoff=0.01)
    with pytest.raises(AlignkitError, match="unreachable after 2 tries"):
        dead.compare(row(0), GOOD, BAD)


class FlakyHandler(JSONHandler):
    """/v1/chat/completions that always answers A, except request number `fail_at`, answered HTTP 400."""

    calls, fail_at = 0, 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's name)
        with self.lock:
            type(self).calls += 1
            call = type(self).calls
        self.rfile.read(int(self.headers["Content-Length"]))
        if call == self.fail_at:
            return self.send_json(400, {"error": "quota exceeded"})
        return self.send_json(200, {"choices": [{"message": {"role": "assistant", "content": "A"}}]})


def test_http_verdicts_received_before_a_failure_are_kept_and_not_asked_again(tmp_path):
    FlakyHandler.calls, FlakyHandler.fail_at = 0, 4
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    cache = tmp_path / "verdicts.jsonl"
    try:
        judge = HTTPJudge(url, "m", TEMPLATE, max_retries=0, concurrency=3)
        with pytest.raises(AlignkitError, match="HTTP 400"):
            judge_both_orders(judge, pairs(5), JsonlCache(cache))  # 10 presentations; the 4th request fails
        first_run = FlakyHandler.calls
        kept = len(cache.read_text().splitlines())
        assert kept == first_run - 1 >= 3  # every answer that arrived is on disk (those in flight too)
        out = judge_both_orders(HTTPJudge(url, "m", TEMPLATE, max_retries=0, concurrency=3), pairs(5),
                                JsonlCache(cache))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert FlakyHandler.calls - first_run == 10 - kept  # the rerun asks only for the missing verdicts
    assert len(out) == 5 and len(cache.read_text().splitlines()) == 10


def save_reward_model(path: Path, seed: int) -> str:
    """A tiny random Llama reward model (1 label) with the shipped tokenizer, saved at `path`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "models" / "tiny-base")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


class Counting:
    """Counts the presentations a judge is asked about."""

    def __init__(self, judge):
        self.judge, self.asked = judge, 0
        inner = judge.compare_batch

        def compare_batch(items):
            self.asked += len(items)
            return inner(items)

        judge.compare_batch = compare_batch


def test_reward_model_judge_replaced_at_the_same_path_is_asked_again(tmp_path):
    path = save_reward_model(tmp_path / "rm", seed=1)
    section = JudgeSection(type="reward_model", path=path)
    cache = tmp_path / "verdicts.jsonl"
    first = Counting(build_judge(section))
    judge_both_orders(first.judge, pairs(2), JsonlCache(cache))
    again = Counting(build_judge(section))  # the same weights: every verdict comes from the cache
    judge_both_orders(again.judge, pairs(2), JsonlCache(cache))
    save_reward_model(tmp_path / "rm", seed=2)  # retrained in place
    replaced = Counting(build_judge(section))
    judge_both_orders(replaced.judge, pairs(2), JsonlCache(cache))
    assert (first.asked, again.asked, replaced.asked) == (4, 0, 4)
    assert replaced.judge.describe() == f"reward_model:{path} (epsilon 0.0)"


# ---- humans ---------------------------------------------------------------------------------------------

def annotate(pairs_csv: Path, key_jsonl: Path, out: Path, skip: int = 0) -> None:
    """A careful annotator: picks the answer mentioning Eastvale (leaves the first `skip` rows blank)."""
    with pairs_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for k, r in enumerate(rows):
        a, b = "Eastvale" in r["response_A"], "Eastvale" in r["response_B"]
        r["label"] = "" if k < skip else ("A" if a and not b else "B" if b and not a else "tie")
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("orders", ["both", "random"])
def test_human_export_import_round_trip(tmp_path, orders):
    export = tmp_path / "human"
    first = HumanJudge(orders=orders, seed=3)
    with pytest.raises(AlignkitError, match="have no label"):
        judge_both_orders(first, pairs(4), export_dir=export)
    exported = [json.loads(line) for line in (export / "pairs.jsonl").read_text().splitlines()]
    assert len(exported) == (8 if orders == "both" else 4)
    assert set(exported[0]) == {"item_id", "prompt", "response_A", "response_B", "label"}
    assert "x" not in json.dumps(exported).split('"')  # model names never reach annotators
    key = [json.loads(line) for line in (export / "pairs_key.jsonl").read_text().splitlines()]
    assert {k["item_id"] for k in key} == {e["item_id"] for e in exported}
    if orders == "random":  # the shown order is randomised and recorded
        assert {k["A"] for k in key} == {GOOD, BAD}

    annotate(export / "pairs.csv", export / "pairs_key.jsonl", tmp_path / "labels.csv")
    judged = judge_both_orders(HumanJudge(tmp_path / "labels.csv", orders=orders, seed=3), pairs(4),
                               export_dir=export)
    assert [j["winner"] for j in judged] == ["a"] * 4

    annotate(export / "pairs.csv", export / "pairs_key.jsonl", tmp_path / "partial.csv", skip=1)
    # Both orders: one blank row is one missing presentation; one random order: it covers two.
    with pytest.raises(AlignkitError, match=f"{1 if orders == 'both' else 2} of 8 presentations have no label"):
        judge_both_orders(HumanJudge(tmp_path / "partial.csv", orders=orders, seed=3), pairs(4),
                          export_dir=export)


def test_human_labels_must_be_a_b_or_tie(tmp_path):
    bad = tmp_path / "labels.jsonl"
    bad.write_text(json.dumps({"item_id": "x", "label": "maybe"}) + "\n")
    with pytest.raises(AlignkitError, match=r"labels.jsonl:1"):
        HumanJudge(bad)
