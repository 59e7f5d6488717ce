"""Batched generation for evaluation: left padding, KV cache, seeded sampling, prompt styles, a disk cache.

`prompting` says how a model is asked:
    chat     the tokenizer's chat template with the generation prompt (assistants)
    fewshot  a document that looks like a conversation with a helpful assistant (the seed talk's
             trick for base models), cut at the next turn
    raw      the user's text as is

Completions are cached one JSONL per model (`JsonlCache`), each line keyed by prompt id, sample
index and a hash of everything that changes the output, so a judge can change without regenerating
and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignkit.models import position_ids_from_mask

# Bumped whenever a completion record's fields change meaning (2: few-shot n_tokens count the stop),
# so that cached completions of an older definition are regenerated rather than mixed in.
COMPLETION_FORMAT = 2
# A few-shot completion ends where the document would start the next turn.
FEWSHOT_STOP = re.compile(r"\n\s*\n|\nUser:|\nAssistant:")
FEWSHOT_STOP_STRINGS = ["\n\n", "\nUser:", "\nAssistant:"]


@dataclass
class Sampling:
    """Sampling settings (top_k=0 and top_p=1 leave the distribution untouched; temperature 0 is greedy)."""

    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 32
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The settings that change the output (batch size does not, up to padding noise)."""
        out = asdict(self)
        out.pop("batch_size")
        return out


@dataclass
class Job:
    """One completion to produce: which prompt, which sample, the rendered text, the cache key."""

    prompt_id: str
    sample: int
    text: str
    key: str


def settings_hash(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable settings."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def last_user_text(messages: Sequence[dict[str, str]]) -> str:
    """The last user message of a conversation."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], prompting: str,
                  fewshot_template: str | None = None) -> str:
    """The text a model is given for one prompt, by prompting style."""
    if prompting == "chat":
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    if prompting == "fewshot":
        if fewshot_template is None:
            raise ValueError("fewshot prompting needs a template")
        return fewshot_template.replace("{prompt}", last_user_text(messages))
    return last_user_text(messages)


def cut_fewshot(text: str) -> tuple[str, bool]:
    """Cut a few-shot continuation at the start of the next turn; ended when a turn boundary was seen."""
    match = FEWSHOT_STOP.search(text)
    return (text[: match.start()].strip(), True) if match else (text.strip(), False)


def batch_seed(seed: int, first_key: str) -> int:
    """A per-batch seed from the run seed and the batch's first job, so resumed batches are reproducible."""
    return int(settings_hash(seed, first_key), 16) % (2**31 - 1)


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], sampling: Sampling,
             desc: str = "generating", progress: bool = True, fewshot: bool = False,
             seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Sample one completion per prompt, in batches with left padding and the KV cache.

    Returns per prompt: text (special tokens removed, cut at EOS or, with `fewshot`, at the next
    turn), token_ids, n_tokens (the answer's tokens plus one when it ended: EOS or the turn boundary),
    ended (EOS emitted or turn boundary seen), seed (of its batch).
    `seeds` gives one seed per batch; by default they are drawn from `sampling.seed`.
    """
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
    out: list[dict[str, Any]] = []
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for b, start in enumerate(range(0, len(prompts), sampling.batch_size)):
        batch = list(prompts[start:start + sampling.batch_size])
        seed = seeds[b] if seeds is not None else int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        rows = _generate_batch(model, tokenizer, batch, sampling, seed, fewshot, device)
        out.extend({**_completion(tokenizer, row, fewshot), "seed": seed} for row in rows)
        bar.update(len(batch))
    bar.close()
    return out


def _generate_batch(model: Any, tokenizer: Any, batch: list[str], sampling: Sampling, seed: int,
                    fewshot: bool, device: Any) -> list[list[int]]:
    """The new token ids of one left-padded batch."""
    enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    torch.manual_seed(seed)
    do_sample = sampling.temperature > 0
    extra = {"stop_strings": FEWSHOT_STOP_STRINGS, "tokenizer": tokenizer} if fewshot else {}
    seqs = model.generate(
        **enc,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=do_sample,
        temperature=sampling.temperature if do_sample else None,
        top_p=sampling.top_p if do_sample else None,
        top_k=sampling.top_k if do_sample else None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **extra,
    )
    return seqs[:, enc["input_ids"].shape[1]:].tolist()


def _completion(tokenizer: Any, row: list[int], fewshot: bool = False) -> dict[str, Any]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ended = eos in row
    ids = row[: row.index(eos) + 1] if ended else [t for t in row if t != pad]
    text = tokenizer.decode([t for t in ids if t != eos], skip_special_tokens=True).strip()
    if fewshot:
        cut, at_turn = cut_fewshot(text)
        if at_turn:  # the answer's own tokens, as if it had stopped there
            text, ended = cut, True
            ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            # One length definition for every prompting style: answer tokens plus one stop token when
            # the model stopped (EOS for chat; here the turn boundary), else the LC win rate is off by one.
            return {"text": text, "token_ids": ids, "n_tokens": len(ids) + 1, "ended": ended}
    return {"text": text, "token_ids": ids, "n_tokens": len(ids), "ended": ended}


class JsonlCache:
    """Records on disk, one JSON line each, looked up by their `key` (completions, verdicts)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        text = self.path.read_text() if self.path.is_file() else ""
        # A run killed mid-write leaves a partial last line: start the next record on a fresh line.
        self._needs_newline = bool(text) and not text.endswith("\n")
        if text:
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short when a run was killed mid-write
                self.records[rec["key"]] = rec

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record for a key, or None."""
        return self.records.get(key)

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with a `key`) and flush, so a killed run keeps every finished batch."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            if self._needs_newline:
                fh.write("\n")
                self._needs_newline = False
            for rec in records:
                self.records[rec["key"]] = rec
                fh.write(json.dumps(rec) + "\n")
            fh.flush()


def generate_cached(model: Any, tokenizer: Any, jobs: Sequence[Job], sampling: Sampling, cache: JsonlCache,
                    fewshot: bool = False, desc: str = "generating", progress: bool = True) -> list[dict[str, Any]]:
    """Completions for `jobs`: cached ones are read back, the rest generated batch by batch and cached."""
    # Similar lengths share a batch: less left padding to push through the model.
    missing = sorted((j for j in jobs if cache.get(j.key) is None), key=lambda j: len(j.text))
    bar = tqdm(total=len(missing), desc=desc, disable=not progress or not missing, leave=False)
    for start in range(0, len(missing), sampling.batch_size):
        batch = missing[start:start + sampling.batch_size]
        seed = batch_seed(sampling.seed, batch[0].key)
        outs = generate(model, tokenizer, [j.text for j in batch], sampling, progress=False,
                        fewshot=fewshot, seeds=[seed])
        cache.add({"key": j.key, "prompt_id": j.prompt_id, "sample": j.sample, **o, "settings": sampling.settings()}
                  for j, o in zip(batch, outs, strict=True))
        bar.update(len(batch))
    bar.close()
    return [cache.get(j.key) for j in jobs]


@torch.no_grad()
def response_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[Sequence[int]],
                      temperature: float = 1.0, batch_size: int = 16) -> list[float]:
    """Per response, sum over its tokens of log p(token | prompt, earlier tokens) under logits / temperature."""
    # Same temperature handling as PPO: the sampled distribution is softmax(logits / T), so the KL
    # between sampling policies must use it too (top-p/top-k truncation is not modelled).
    temperature = temperature if temperature > 0 else 1.0
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    model.eval()
    out: list[float] = []
    for s in range(0, len(prompts), batch_size):
        pids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[s:s + batch_size]]
        rids = [list(r) for r in responses[s:s + batch_size]]
        seqs = [p + r for p, r in zip(pids, rids, strict=True)]
        width = max(map(len, seqs))
        ids = torch.tensor([[pad] * (width - len(q)) + q for q in seqs], device=device)
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs], device=device)
        # Positions count from each row's first real token, as generate() numbered them.
        position_ids = position_ids_from_mask(mask)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                       use_cache=False).logits[:, :-1].float() / temperature
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        for k, r in enumerate(rids):
            out.append(float(logp[k, width - 1 - len(r):].sum()) if r else 0.0)
    return out
