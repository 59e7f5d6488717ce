"""Pairwise judges behind one interface: `judge.compare(prompt_row, response_a, response_b) -> "a"|"b"|"tie"`.

    OracleJudge       a rubric over the prompt row's `meta` (the embedded world's oracle, handed in by the
                      eval stage: the harness imports no world, the world's research tools import it)
    RewardModelJudge  higher reward-model score wins; ties within `epsilon`
    LocalLMJudge      a local HF causal LM reading a pairwise template (next-token logits or parsed text)
    HTTPJudge         an OpenAI-compatible /v1/chat/completions endpoint (vLLM, TGI, any server)
    HumanJudge        exports pairs for annotators and imports their labels

A prompt row is {"id", "prompt": [messages], "meta"?}; a response is its text or a completion record
{"text", "ended"}. `judge_both_orders` asks for every pair in both presentation orders, reconciles
them with `stats.reconcile_orders` (MT-Bench: inconsistent -> tie) and caches verdicts on disk.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from alignkit.errors import AlignkitError
from alignkit.eval.fingerprint import model_fingerprint
from alignkit.eval.generate import JsonlCache, Sampling, generate, settings_hash
from alignkit.eval.stats import reconcile_orders
from alignkit.models import load_for_generation, position_ids_from_mask
from alignkit.reward_model import RewardScorer

Verdict = Literal["a", "b", "tie"]
log = logging.getLogger("alignkit.eval")


@dataclass(frozen=True)
class Response:
    """A response as judges see it: its text and whether the model ended it (EOS)."""

    text: str
    ended: bool = True


def as_response(value: str | Mapping[str, Any] | Response) -> Response:
    """A Response from a string, a completion record or a Response."""
    if isinstance(value, Response):
        return value
    if isinstance(value, str):
        return Response(value)
    return Response(str(value["text"]), bool(value.get("ended", True)))


def prompt_text(row: Mapping[str, Any]) -> str:
    """The prompt as plain text: the user's message, or the conversation with role names."""
    messages = row["prompt"]
    if isinstance(messages, str):
        return messages
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


Item = tuple[Mapping[str, Any], Response, Response]


class Judge:
    """A pairwise judge; subclasses implement `compare` (and `compare_batch` when batching pays)."""

    kind = "judge"
    cacheable = True  # verdicts may be cached on disk and reused

    def cache_id(self) -> str:
        """What identifies this judge's verdicts in the cache: its content, not its path (never a secret)."""
        return self.kind

    def describe(self) -> str:
        """The judge as the report names it."""
        return self.cache_id()

    def compare(self, row: Mapping[str, Any], response_a: Any, response_b: Any) -> Verdict:
        """Which of two responses to `row` is better: "a", "b" or "tie"."""
        return self.compare_batch([(row, as_response(response_a), as_response(response_b))])[0]

    def compare_batch(self, items: Sequence[Item]) -> list[Verdict]:
        """Verdicts for many (row, a, b) presentations."""
        return [self.compare(row, a, b) for row, a, b in items]

    def iter_verdicts(self, items: Sequence[Item]) -> Iterator[tuple[int, Verdict]]:
        """(index, verdict) pairs as verdicts become known, so that each can be cached on arrival."""
        yield from enumerate(self.compare_batch(items))

    def score(self, row: Mapping[str, Any], response: Any) -> float | None:
        """An absolute score of one response, where the judge has one."""
        return None

    def prepare(self, items: Sequence[Item], out_dir: Path) -> None:
        """Called once with every presentation before judging (humans get their export here)."""

    def close(self) -> None:
        """Free the judge's memory."""


class Rubric(Protocol):
    """An absolute rubric over a prompt's `meta` (alignkit.world.oracle is one): a score and a verdict."""

    def score(self, meta: dict, response: str, ended: bool = True) -> Any:
        """The response's score; its `.total` is the number compared."""

    def compare(self, meta: dict, response_a: str, response_b: str, ended_a: bool = True,
                ended_b: bool = True) -> Verdict:
        """Which response the rubric prefers."""

    def hallucination_rate(self, rows: Sequence[dict], records: Sequence[dict]) -> float | None:
        """Share of responses (`records`, dicts with "text") to prompts about unknown things that state a value."""


def require_rubric(rubric: Rubric | None, where: str) -> Rubric:
    """The rubric the oracle judge or oracle best-of-n needs, or a one-line error where none was given."""
    if rubric is None:
        raise AlignkitError("the oracle needs the embedded world's rubric, which this caller did not provide "
                            "(the eval stage provides it); use another judge", where=where)
    return rubric


class OracleJudge(Judge):
    """A rubric as judge (the world's oracle: a simulated annotator with no label noise at evaluation)."""

    kind = "oracle"

    def __init__(self, rubric: Rubric) -> None:
        self.rubric = rubric

    def compare(self, row: Mapping[str, Any], response_a: Any, response_b: Any) -> Verdict:
        a, b = as_response(response_a), as_response(response_b)
        return self.rubric.compare(world_meta(row), a.text, b.text, a.ended, b.ended)

    def score(self, row: Mapping[str, Any], response: Any) -> float | None:
        r = as_response(response)
        return self.rubric.score(world_meta(row), r.text, r.ended).total


def world_meta(row: Mapping[str, Any]) -> dict:
    """The oracle's `meta` of a prompt row, or a one-line error naming the prompt."""
    if not isinstance(row.get("meta"), Mapping):
        raise AlignkitError("the oracle judge needs prompt rows with the world's `meta` "
                            "(eval/world_prompts.jsonl); use another judge for other prompt sets",
                            where=f"prompt {row.get('id')}")
    return dict(row["meta"])


class RewardModelJudge(Judge):
    """Higher reward-model score wins; differences within `epsilon` are ties."""

    kind = "reward_model"

    def __init__(self, scorer: Any, epsilon: float = 0.0, name: str = "", fingerprint: str = ""):
        self.scorer, self.epsilon, self.name = scorer, epsilon, name
        self.fingerprint = fingerprint or name

    @classmethod
    def from_pretrained(cls, path: str, epsilon: float = 0.0,
                        fingerprint: Callable[[str], str] = model_fingerprint) -> RewardModelJudge:
        """Load a reward model folder (full or adapter) as a judge."""
        return cls(RewardScorer.from_pretrained(path), epsilon, name=path, fingerprint=fingerprint(path))

    def cache_id(self) -> str:
        return f"{self.kind}:{self.fingerprint}:{self.epsilon}"

    def describe(self) -> str:
        return f"{self.kind}:{self.name} (epsilon {self.epsilon})"

    def scores(self, rows: Sequence[Mapping[str, Any]], responses: Sequence[Response]) -> list[float]:
        """Reward-model scores of responses to rows, in one batched pass."""
        if not rows:
            return []
        out = self.scorer.score([r["prompt"] for r in rows], [x.text for x in responses],
                                [x.ended for x in responses])
        return [float(v) for v in out]

    def compare_batch(self, items: Sequence[Item]) -> list[Verdict]:
        n = len(items)
        s = self.scores([i[0] for i in items] * 2, [i[1] for i in items] + [i[2] for i in items])
        return [_by_score(s[k], s[n + k], self.epsilon) for k in range(n)]

    def compare(self, row: Mapping[str, Any], response_a: Any, response_b: Any) -> Verdict:
        return self.compare_batch([(row, as_response(response_a), as_response(response_b))])[0]

    def score(self, row: Mapping[str, Any], response: Any) -> float | None:
        return self.scores([row], [as_response(response)])[0]

    def close(self) -> None:
        self.scorer = None


def _by_score(a: float, b: float, epsilon: float) -> Verdict:
    if abs(a - b) <= epsilon:
        return "tie"
    return "a" if a > b else "b"


def load_template(path: str | Path) -> str:
    """A pairwise judge template with {prompt}, {response_a} and {response_b} placeholders."""
    path = Path(path)
    if not path.is_file():
        raise AlignkitError("judge template not found", where=f"eval.judge.template: {path}")
    text = path.read_text()
    missing = [p for p in ("{prompt}", "{response_a}", "{response_b}") if p not in text]
    if missing:
        raise AlignkitError(f"judge template lacks {', '.join(missing)}", where=f"eval.judge.template: {path}")
    return text


def fill_template(template: str, row: Mapping[str, Any], a: Response, b: Response) -> str:
    """The judge's prompt for one presentation (plain replacement: responses may contain braces)."""
    return (template.replace("{prompt}", prompt_text(row))
            .replace("{response_a}", a.text).replace("{response_b}", b.text))


_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_LEADING = re.compile(r"^\W*(A|B|tie)\b", re.IGNORECASE)
_NAMED = re.compile(r"\b(?:answer|response|verdict|winner)\W*(A|B)\b", re.IGNORECASE)


def parse_verdict(text: str) -> Verdict | None:
    """Read a verdict from a judge's text: [[A]]/[[B]]/[[C]] (MT-Bench), a leading A/B/tie, or 'Answer A'."""
    for pattern in (_BRACKETED, _LEADING, _NAMED):
        match = pattern.search(text.strip())
        if match:
            label = match.group(1).lower()
            return "tie" if label in ("c", "tie") else label  # type: ignore[return-value]
    return None


class LocalLMJudge(Judge):
    """A local causal LM reads a pairwise template and answers A, B or tie."""

    kind = "local_lm"
    LABELS: dict[str, str] = {"a": "A", "b": "B", "tie": "tie"}

    def __init__(self, model: Any, tokenizer: Any, template: str, mode: str = "logits",
                 max_tokens: int = 16, batch_size: int = 16, name: str = "", fingerprint: str = ""):
        self.model, self.tokenizer, self.template = model.eval(), tokenizer, template
        self.mode, self.max_tokens, self.batch_size, self.name = mode, max_tokens, batch_size, name
        self.fingerprint = fingerprint or name

    @classmethod
    def from_pretrained(cls, path: str, template: str, fingerprint: Callable[[str], str] = model_fingerprint,
                        **kwargs: Any) -> LocalLMJudge:
        """Load the judge model and tokenizer through alignkit's one loader (on the GPU when there is one)."""
        model, tokenizer = load_for_generation(path)
        return cls(model, tokenizer, template, name=path, fingerprint=fingerprint(path), **kwargs)

    def cache_id(self) -> str:
        # The judge's weights and tokenizer (fingerprint), template text and decoding settings decide a verdict.
        return f"{self.kind}:{self.fingerprint}:{self.mode}:{self.max_tokens}:{settings_hash(self.template)}"

    def describe(self) -> str:
        return f"{self.kind}:{self.name} ({self.mode})"

    def judge_prompt(self, row: Mapping[str, Any], a: Response, b: Response) -> str:
        """The template filled in, wrapped in the chat template when the judge has one."""
        text = fill_template(self.template, row, a, b)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    def label_ids(self) -> dict[str, list[int]]:
        """Per verdict, the first token of its label with and without a leading space."""
        ids = {}
        for verdict, label in self.LABELS.items():
            firsts = {self.tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in (label, " " + label)}
            ids[verdict] = sorted(firsts)
        return ids

    def compare_batch(self, items: Sequence[Item]) -> list[Verdict]:
        out: list[Verdict] = []
        for s in range(0, len(items), self.batch_size):
            prompts = [self.judge_prompt(*item) for item in items[s:s + self.batch_size]]
            out += self._by_logits(prompts) if self.mode == "logits" else self._by_text(prompts)
        return out

    def compare(self, row: Mapping[str, Any], response_a: Any, response_b: Any) -> Verdict:
        return self.compare_batch([(row, as_response(response_a), as_response(response_b))])[0]

    @torch.no_grad()
    def _by_logits(self, prompts: list[str]) -> list[Verdict]:
        """Argmax over the labels' next-token log-probabilities (a label's spellings pooled)."""
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(next(self.model.parameters()).device)
        position_ids = position_ids_from_mask(enc["attention_mask"])
        logits = self.model(**enc, position_ids=position_ids, use_cache=False).logits[:, -1].float()
        logp = torch.log_softmax(logits, -1)
        verdicts = list(self.LABELS)
        per_label = torch.stack([logp[:, ids].logsumexp(-1) for ids in self.label_ids().values()], -1)
        return [verdicts[k] for k in per_label.argmax(-1).tolist()]  # type: ignore[misc]

    @torch.no_grad()
    def _by_text(self, prompts: list[str]) -> list[Verdict]:
        """Greedy-decode a short answer and parse it; unreadable answers count as ties."""
        outs = generate(self.model, self.tokenizer, prompts,
                        Sampling(max_new_tokens=self.max_tokens, temperature=0.0, batch_size=len(prompts)),
                        progress=False)
        return [parse_verdict(o["text"]) or "tie" for o in outs]

    def close(self) -> None:
        self.model = None


class HTTPJudge(Judge):
    """An OpenAI-compatible chat completions endpoint answers A, B or tie (vLLM, TGI, any server)."""

    kind = "http"
    RETRY_STATUS = (408, 429, 500, 502, 503, 504)

    def __init__(self, base_url: str, model: str, template: str, api_key_env: str | None = None,
                 timeout: float = 60.0, max_retries: int = 3, concurrency: int = 4, max_tokens: int = 16,
                 options: Mapping[str, Any] | None = None, backoff: float = 0.5):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.template, self.timeout = model, template, timeout
        self.max_retries, self.concurrency, self.max_tokens = max_retries, concurrency, max_tokens
        self.options, self.backoff = dict(options or {}), backoff
        self.unparsed = 0
        # Only the variable's name is kept: the key is read per request, so it is never in this object,
        # its repr, the logs, the cache ids or an error message.
        self.api_key_env = api_key_env
        _api_key(api_key_env)  # fail early when the variable is unset

    def __repr__(self) -> str:
        return f"HTTPJudge(url={self.url!r}, model={self.model!r})"

    def cache_id(self) -> str:
        return f"{self.kind}:{self.url}:{self.model}:{settings_hash(self.template, self.options)}"

    def describe(self) -> str:
        return f"{self.kind}:{self.url} ({self.model})"

    def compare_batch(self, items: Sequence[Item]) -> list[Verdict]:
        verdicts: dict[int, Verdict] = dict(self.iter_verdicts(items))
        return [verdicts[k] for k in range(len(items))]

    def iter_verdicts(self, items: Sequence[Item]) -> Iterator[tuple[int, Verdict]]:
        """Verdicts in the order the endpoint answers; after a failure, requests not yet sent are cancelled,
        those in flight are awaited and yielded (they are paid for), then the failure is raised."""
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            index: dict[Future, int] = {pool.submit(self.compare, *item): k for k, item in enumerate(items)}
            pending = set(index)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        if error is None:
                            error = future.exception()
                            for other in pending:
                                other.cancel()
                        continue
                    yield index[future], future.result()
        if error is not None:
            raise error

    def compare(self, row: Mapping[str, Any], response_a: Any, response_b: Any) -> Verdict:
        a, b = as_response(response_a), as_response(response_b)
        body = {"model": self.model, "temperature": 0.0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": fill_template(self.template, row, a, b)}], **self.options}
        reply = self._post(body)
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise AlignkitError("the endpoint's reply has no choices[0].message.content",
                                where=f"eval.judge.base_url: {self.url}") from None
        verdict = parse_verdict(text)
        if verdict is None:
            self.unparsed += 1  # counted and reported; an unreadable verdict is no preference
            return "tie"
        return verdict

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with timeouts; retry transient failures (timeouts, 429, 5xx) with exponential backoff."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = _api_key(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code not in self.RETRY_STATUS or attempt == self.max_retries:
                    raise AlignkitError(f"judge endpoint answered HTTP {exc.code} ({exc.reason})",
                                        where=f"eval.judge.base_url: {self.url}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.max_retries:
                    reason = getattr(exc, "reason", exc)
                    raise AlignkitError(f"judge endpoint unreachable after {attempt + 1} tries ({reason})",
                                        where=f"eval.judge.base_url: {self.url}") from None
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")


def _api_key(env_name: str | None) -> str | None:
    """The API key from the environment variable the recipe names (the recipe holds only the name)."""
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise AlignkitError(f"environment variable {env_name} is not set", where="eval.judge.api_key_env")
    return key


class HumanJudge(Judge):
    """Annotators: export presentations (A/B order recorded) to JSONL/CSV, import their labels back."""

    kind = "human"
    cacheable = False  # the labels file is the record

    def __init__(self, labels: str | Path | None = None, orders: str = "both", seed: int = 0):
        self.labels_path = Path(labels) if labels else None
        self.orders, self.seed = orders, seed
        self.labels = read_labels(self.labels_path) if self.labels_path else {}
        self.export_path: Path | None = None

    def prepare(self, items: Sequence[Item], out_dir: Path) -> None:
        self.export_path = export_pairs(items, out_dir, self.orders, self.seed)["jsonl"]

    def compare_batch(self, items: Sequence[Item]) -> list[Verdict]:
        verdicts = [self._lookup(*item) for item in items]
        missing = sum(v is None for v in verdicts)
        if missing:
            where = str(self.labels_path) if self.labels_path else "eval.judge.labels"
            raise AlignkitError(
                f"{missing} of {len(items)} presentations have no label; annotate the `label` column "
                f"(A, B or tie) of {self.export_path or 'the exported pairs'} and set eval.judge.labels", where=where)
        return verdicts  # type: ignore[return-value]

    def compare(self, row: Mapping[str, Any], response_a: Any, response_b: Any) -> Verdict:
        return self.compare_batch([(row, as_response(response_a), as_response(response_b))])[0]

    def _lookup(self, row: Mapping[str, Any], a: Response, b: Response) -> Verdict | None:
        label = self.labels.get(item_id(row, a, b))
        if label is not None or self.orders == "both":
            return label
        # With one random order per pair, the other order is the same judgment seen from the other side.
        label = self.labels.get(item_id(row, b, a))
        return None if label is None else {"a": "b", "b": "a", "tie": "tie"}[label]  # type: ignore[return-value]


def item_id(row: Mapping[str, Any], a: Response, b: Response) -> str:
    """The id of one presentation (prompt, first response, second response)."""
    return settings_hash(str(row["id"]), a.text, a.ended, b.text, b.ended)


HUMAN_FIELDS = ["item_id", "prompt", "response_A", "response_B", "label"]


def export_pairs(items: Sequence[Item], out_dir: str | Path, orders: str = "both", seed: int = 0) -> dict[str, Path]:
    """Write pairs.jsonl and pairs.csv for annotators (shuffled, label empty) and pairs_key.jsonl.

    `items` are (row, a, b) presentations. orders="both" exports every presentation; "random"
    keeps one of each pair's two orders at random. The key file records which side of the pair is
    shown as A, so no model name reaches the annotators.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    chosen: list[Item] = []
    for row, a, b in items:
        pair = settings_hash(str(row["id"]), *sorted([(a.text, a.ended), (b.text, b.ended)]))
        if orders == "random":
            if pair in seen:
                continue
            if rng.random() < 0.5:
                a, b = b, a
        seen.add(pair)
        chosen.append((row, a, b))
    rng.shuffle(chosen)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"item_id": item_id(r, a, b), "prompt": prompt_text(r), "response_A": a.text, "response_B": b.text,
             "label": ""} for r, a, b in chosen]
    paths = {"jsonl": out_dir / "pairs.jsonl", "csv": out_dir / "pairs.csv", "key": out_dir / "pairs_key.jsonl"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HUMAN_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    paths["key"].write_text("".join(
        json.dumps({"item_id": item_id(r, a, b), "prompt_id": str(r["id"]), "A": a.text, "B": b.text}) + "\n"
        for r, a, b in chosen))
    return paths


LABELS = {"a": "a", "b": "b", "tie": "tie", "1": "a", "2": "b", "=": "tie"}


def read_labels(path: Path) -> dict[str, Verdict]:
    """item_id -> verdict from an annotated pairs.jsonl or pairs.csv; empty labels are skipped."""
    if not path.is_file():
        raise AlignkitError("labels file not found", where=f"eval.judge.labels: {path}")
    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: dict[str, Verdict] = {}
    for n, row in enumerate(rows, start=2 if path.suffix == ".csv" else 1):
        raw = str(row.get("label") or "").strip().lower()
        if not raw:
            continue
        if raw not in LABELS or "item_id" not in row:
            raise AlignkitError(f"label must be A, B or tie, got {raw!r}", where=f"{path}:{n}")
        out[str(row["item_id"])] = LABELS[raw]  # type: ignore[assignment]
    return out


def judge_both_orders(judge: Judge, pairs: Sequence[tuple[Mapping[str, Any], str, str, Any, Any]],
                      cache: JsonlCache | None = None, export_dir: Path | None = None) -> list[dict[str, Any]]:
    """Judge each (row, model_a, model_b, response_a, response_b) in both orders and reconcile them.

    Returns one judgments-table record per pair: {prompt_id, model_a, model_b, winner, len_a, len_b,
    verdict_ab, verdict_ba}; lengths are token counts when the responses carry n_tokens, else words.
    `export_dir` is where a human judge writes the pairs for annotators.
    """
    presentations: list[Item] = []
    for row, _, _, ra, rb in pairs:
        a, b = as_response(ra), as_response(rb)
        presentations += [(row, a, b), (row, b, a)]
    if export_dir is not None:
        judge.prepare(presentations, export_dir)
    verdicts = cached_verdicts(judge, presentations, cache)
    out = []
    for k, (row, ma, mb, ra, rb) in enumerate(pairs):
        ab, ba = verdicts[2 * k], verdicts[2 * k + 1]
        out.append({"prompt_id": str(row["id"]), "model_a": ma, "model_b": mb, "winner": reconcile_orders(ab, ba),
                    "len_a": _length(ra), "len_b": _length(rb), "verdict_ab": ab, "verdict_ba": ba})
    return out


def _length(response: Any) -> int:
    if isinstance(response, Mapping) and "n_tokens" in response:
        return int(response["n_tokens"])
    return len(as_response(response).text.split())


def cached_verdicts(judge: Judge, items: Sequence[Item], cache: JsonlCache | None) -> list[Verdict]:
    """Verdicts for presentations, reading and extending the on-disk cache when the judge allows it."""
    use_cache = cache is not None and judge.cacheable
    keys = [settings_hash(judge.cache_id(), str(r["id"]), a.text, a.ended, b.text, b.ended) for r, a, b in items]
    todo = [k for k, key in enumerate(keys) if not (use_cache and cache.get(key))]
    # One call per unique presentation: identical responses (e.g. greedy twins) are judged once.
    unique = list(dict.fromkeys(keys[k] for k in todo))
    first = {key: k for k, key in reversed(list(enumerate(keys)))}
    found: dict[str, Verdict] = {}
    # Each verdict is written as it arrives: when a later request fails, a rerun asks only for the rest
    # (HTTP judges are paid per call).
    for k, verdict in (judge.iter_verdicts([items[first[key]] for key in unique]) if unique else ()):
        found[unique[k]] = verdict
        if use_cache:
            cache.add([{"key": unique[k], "verdict": verdict}])
    return [found[key] if key in found else cache.get(key)["verdict"] for key in keys]  # type: ignore[union-attr]


def build_judge(section: Any, reward_model: str | None = None, seed: int = 0,
                fingerprint: Callable[[str], str] = model_fingerprint, rubric: Rubric | None = None) -> Judge:
    """The judge a recipe's `eval.judge` section asks for; `fingerprint` keys model judges by content.

    `rubric`: what the oracle judge scores with (the eval stage hands in the embedded world's oracle).
    """
    if section.type == "oracle":
        return OracleJudge(require_rubric(rubric, "eval.judge.type"))
    if section.type == "reward_model":
        return RewardModelJudge.from_pretrained(section.path or reward_model, section.epsilon, fingerprint)
    if section.type == "local_lm":
        return LocalLMJudge.from_pretrained(section.path, load_template(section.template), fingerprint,
                                            mode=section.mode, max_tokens=section.max_tokens)
    if section.type == "http":
        return HTTPJudge(section.base_url, section.model, load_template(section.template), section.api_key_env,
                         section.timeout, section.max_retries, section.concurrency, section.max_tokens,
                         section.options)
    return HumanJudge(section.labels, section.orders, seed)
