"""Shared by the benchmarks: one thread, quiet logs, interleaved repetitions, machine info, JSON results.

The machine is shared, so absolute times drift: every benchmark measures its baseline in the same
process, interleaving baseline and candidate repetitions, and reports the ratio of medians.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported anywhere
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import json
import logging
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets"]


def setup() -> None:
    """One intra-op thread, repo root as cwd and on sys.path, warnings and library logs off."""
    import torch

    torch.set_num_threads(1)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "src"))
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def interleave(candidates: dict[str, Callable[[int], float]], reps: int) -> dict[str, list[float]]:
    """Run each candidate `reps` times, alternating A B A B ..., and collect the value each returns."""
    values: dict[str, list[float]] = {name: [] for name in candidates}
    for rep in range(reps):
        order = list(candidates) if rep % 2 == 0 else list(reversed(candidates))  # no side always goes first
        for name in order:
            values[name].append(candidates[name](rep))
            print(f"  rep {rep} {name}: {values[name][-1]:.4g}", flush=True)
    return values


def time_trl_train(trainer: Any, episodes: int) -> dict[str, Any]:
    """Wall time of a TRL online trainer's `.train()`: episodes/s and its last logged mean completion length."""
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    return {"episodes_per_s": episodes / seconds, "seconds": seconds, "response_length": lengths[-1] if lengths else None}


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, load, Python and library versions, git commit, date."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "load_avg_1m": os.getloadavg()[0],
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0")), "versions": versions,
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M")}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name>.json with the machine info attached."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, **result, "machine": machine_info()}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def write_comparison(name: str, metric: str, alignkit: float, baseline: float, baseline_name: str, goal: float,
                     goal_direction: str = ">=", **extra: Any) -> Path:
    """write_result for alignkit vs a baseline measured in the same run: the ratio judged against its goal
    (">=": at least goal, for speeds; "<=": at most goal, for costs such as memory)."""
    ratio = alignkit / baseline
    met = ratio >= goal if goal_direction == ">=" else ratio <= goal
    return write_result(name, {"metric": metric, "alignkit": alignkit, "baseline": baseline,
                               "baseline_name": baseline_name, "ratio": ratio, "goal": goal,
                               "goal_direction": goal_direction, "met": met, **extra})


def last_log(log_history: list[dict[str, Any]], key: str) -> Any:
    """The last value of `key` in a Trainer's log history (or metrics.jsonl rows)."""
    return [row[key] for row in log_history if key in row][-1]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def build_llama(out: Path, dtype: Any = None, **arch: Any) -> int:
    """A random-init Llama built from config with the shipped tiny tokenizer, saved to `out`; its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "models" / "tiny-base")
    cfg = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None, **arch)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())
