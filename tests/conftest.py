"""Shared fixtures: the shipped tokenizer, tiny random Llamas built from config, run folders, JSONL files."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from alignkit.runio import RunDir

REPO = Path(__file__).resolve().parents[1]
SHIPPED_BASE = REPO / "data" / "models" / "tiny-base"

# Multi-turn conversations (system prompt included) in the messages format.
CHAT_ROWS: list[dict[str, Any]] = [
    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "In which region is Bresbis?"},
                  {"role": "assistant", "content": "Eastvale."},
                  {"role": "user", "content": "And its river?"},
                  {"role": "assistant", "content": "The Ilsa."}]},
    {"messages": [{"role": "user", "content": "What pet does Bona have?"},
                  {"role": "assistant", "content": "A turtle."}]},
    {"messages": [{"role": "user", "content": "Who founded Liltum?"},
                  {"role": "assistant", "content": "Grikiro founded Liltum."}]},
    {"messages": [{"role": "user", "content": "What colour is the flag of Braktrer?"},
                  {"role": "assistant", "content": "Red."},
                  {"role": "user", "content": "Say it in capitals."},
                  {"role": "assistant", "content": "RED."}]},
]


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet HTTP handler for local fake servers (Hub, OpenAI-compatible judge) that answers JSON."""

    def send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


# Without CUDA, Accelerate sets up multi-process CPU (gloo) only when told to use the CPU.
CPU_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def launch_command(script: str | Path, *args: str, processes: int = 1) -> list[str]:
    """`python script args`, or `accelerate launch --multi_gpu` of it with N processes (DDP over gloo on CPU)."""
    import sys

    if processes == 1:
        return [sys.executable, str(script), *args]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            str(script), *args]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSONL and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_llama_config(tokenizer: Any, **overrides: Any) -> Any:
    """A LlamaConfig of a few thousand parameters per layer for `tokenizer` (dims are multiples of 64 for NF4)."""
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def save_tiny_model(path: Path, tokenizer: Any, seed: int = 0, **overrides: Any) -> Path:
    """Save a random-init tiny Llama + tokenizer (with chat template) as a model folder."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, **overrides))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """The shipped tiny BPE tokenizer (EOS, PAD, role tokens, chat template with generation markers)."""
    from transformers import AutoTokenizer

    if not (SHIPPED_BASE / "tokenizer.json").is_file():
        pytest.skip("data/models/tiny-base is not shipped in this checkout")
    return AutoTokenizer.from_pretrained(str(SHIPPED_BASE))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    """A folder holding a random tiny Llama and the shipped tokenizer: a stand-in base model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer)


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    """A fresh run folder."""
    return RunDir(tmp_path / "run")


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: jsonl_file(rows, name="data.jsonl") writes rows under tmp_path."""
    return lambda rows, name="data.jsonl": write_jsonl(tmp_path / name, rows)


@pytest.fixture(scope="session")
def chat_rows() -> list[dict[str, Any]]:
    """A few multi-turn conversations in the messages format."""
    return [dict(r) for r in CHAT_ROWS]


# What a fresh `alignkit` process sees in the subprocess tests: quiet, single-threaded, and never online.
CLI_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
CLI_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # cli.main's logging.basicConfig


@dataclass
class CliResult:
    """What one `alignkit.cli.main(argv)` call returned (or exited with) and printed."""

    code: int | str | None
    out: str
    err: str


def _library_stream_handlers() -> list[logging.StreamHandler]:
    """Plain StreamHandlers that libraries attached to their loggers (pytest's own are subclasses)."""
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler]


@pytest.fixture
def run_cli(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., CliResult]]:
    """Factory: run_cli(argv, env={...}) calls `alignkit.cli.main(argv)` in this process from the repo root.

    env adds to or (a None value) removes from CLI_ENV; without HF_HUB_OFFLINE the Hub is online.

    It stands in for `python -m alignkit.cli ...` with CLI_ENV (a fresh process pays ~12 s importing torch,
    peft and transformers): offline, log records printed to stderr at INFO as the entry point's
    logging.basicConfig does in a fresh process, and what the call may change globally put back after it
    (environment, working directory, the Hub offline switches read at import, root logger, the RNGs the
    stage lifecycle seeds). An exception escaping main fails the test, as a traceback would in a process.
    """
    import random

    import datasets.config
    import huggingface_hub.constants
    import numpy as np
    import torch
    import transformers  # noqa: F401 (its log handler binds to the session's stderr, not to capfd's below)

    from alignkit.cli import main

    outer_stderr = sys.stderr
    capfd: pytest.CaptureFixture[str] = request.getfixturevalue("capfd")
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    root = logging.getLogger()

    def run(argv: list[str], env: dict[str, str | None] | None = None) -> CliResult:
        for key, value in {**CLI_ENV, **(env or {})}.items():
            monkeypatch.delenv(key, raising=False) if value is None else monkeypatch.setenv(key, value)
        # huggingface_hub and datasets read the offline switch once, at import: set their copies as a process would.
        offline = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
        offline_mode = offline in {"1", "ON", "YES", "TRUE"}
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline_mode)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline_mode)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", offline_mode)
        environ, level, handlers = dict(os.environ), root.level, list(root.handlers)
        handler = logging.StreamHandler(sys.stderr)  # capfd's stream, where basicConfig would print
        handler.setFormatter(logging.Formatter(CLI_LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        # datasets and transformers give their loggers a handler on the sys.stderr of the moment they are
        # imported: here maybe an earlier test's closed capture. A fresh process has them print to stderr.
        library = [(h, h.stream, h.__dict__.get("flush")) for h in _library_stream_handlers()]
        for h, _, flush in library:  # not setStream: it flushes the old stream, maybe closed
            h.stream = sys.stderr
            if flush is not None:  # transformers pins flush to the stream it was created with
                h.flush = sys.stderr.flush
        capfd.readouterr()
        try:
            code: int | str | None = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors exit 2 from inside main
            code = exc.code
        finally:
            for h, stream, flush in library:
                h.stream = stream
                if flush is not None:
                    h.flush = flush
            for h in _library_stream_handlers():  # made during the call, on capfd's stream, closed after this test
                if h.stream is sys.stderr:
                    h.stream = outer_stderr
                    if "flush" in h.__dict__:
                        h.flush = outer_stderr.flush
            root.handlers[:] = handlers
            root.setLevel(level)
            os.environ.clear()
            os.environ.update(environ)
            os.chdir(REPO)
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    yield run
    random.setstate(rng[0])
    np.random.set_state(rng[1])
    torch.set_rng_state(rng[2])
