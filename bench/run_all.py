"""`make bench`: run every CPU benchmark in its own subprocess, then write docs/benchmarks.md from bench/results.

    python bench/run_all.py              # all benchmarks (~15 minutes on 2 busy cores), then the docs
    python bench/run_all.py --docs-only  # rewrite docs/benchmarks.md from the JSON already there
    python bench/run_all.py --only packing memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common

BENCHMARKS = ["sft_throughput", "packing", "ppo_vs_rloo", "eval_generation", "memory", "grpo_rloo_vs_trl"]
# the result files each script writes (bench/results/<name>.json), where they are not named after it
RESULTS = {"grpo_rloo_vs_trl": ["grpo_vs_trl", "rloo_vs_trl"]}
TITLES = {
    "sft_throughput": "1. SFT LoRA throughput, tokens/s (vs TRL SFTTrainer script)",
    "packing": "2. Packing vs padding, variable-length rows, real tokens/s",
    "ppo_vs_rloo": "3. PPO episodes/s (vs TRL RLOOTrainer)",
    "eval_generation": "4. Eval generation, batch 32 vs 1, generated tokens/s",
    "memory": "5. Peak RSS, QLoRA vs full fine-tuning, 110M Llama (MB)",
    "grpo_vs_trl": "6. GRPO episodes/s (vs TRL GRPOTrainer)",
    "rloo_vs_trl": "7. RLOO episodes/s (vs TRL RLOOTrainer)",
}


def result_names() -> list[str]:
    """Every result file's name, in the table's order."""
    return [r for name in BENCHMARKS for r in RESULTS.get(name, [name])]
DOCS = common.ROOT / "docs" / "benchmarks.md"


def run(name: str) -> bool:
    """Run bench/<name>.py in a fresh process with one thread; True when it exits 0."""
    start = time.time()
    print(f"== {name}", flush=True)
    proc = subprocess.run([sys.executable, str(common.ROOT / "bench" / f"{name}.py")], cwd=common.ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    print(f"== {name}: exit {proc.returncode} in {time.time() - start:.0f}s", flush=True)
    return proc.returncode == 0


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def table_rows(results: dict[str, dict]) -> list[str]:
    rows = ["| benchmark | alignkit | baseline | ratio | goal | met? |", "|---|---|---|---|---|---|"]
    for name in result_names():
        r = results.get(name)
        if r is None:
            rows.append(f"| {TITLES[name]} | not run | | | | |")
            continue
        op = r.get("goal_direction", ">=")
        rows.append(f"| {TITLES[name]} | {fmt(r['alignkit'])} | {fmt(r['baseline'])} ({r['baseline_name']}) | "
                    f"{r['ratio']:.2f}x | {op} {r['goal']}x | {'yes' if r['met'] else '**no**'} |")
    gpu = common.RESULTS / "gpu_h100.json"
    if gpu.is_file():
        g = json.loads(gpu.read_text())
        sdpa = next(s for s in g["sft"] if s["attn_implementation"] == "sdpa")
        dyn = next(p for p in g["ppo_generation"] if p["cache"] == "dynamic")
        rows.append(f"| 8. GPU ({g['device']}): SFT MFU, 0.57B Llama, bf16, packed (sdpa) | "
                    f"{sdpa['mfu'] * 100:.1f}% MFU ({fmt(sdpa['tokens_per_s'], 0)} tokens/s); PPO sampling "
                    f"{fmt(dyn['tokens_per_s'], 0)} tokens/s (batch 64, 128 new) | — | — | reported | — |")
    return rows


def details(results: dict[str, dict]) -> list[str]:
    out: list[str] = []
    ppo = results.get("ppo_vs_rloo")
    if ppo:
        s = ppo["alignkit_time_share"]
        out.append(f"- PPO time split (alignkit): generation {s['generate']:.0%}, other rollout work "
                   f"(policy/reference logprobs, values, reward) {s['rollout_other']:.0%}, PPO update "
                   f"{s['train']:.0%}.")
    mem = results.get("memory")
    if mem:
        parts = ", ".join(f"{m} {fmt(v['peak_rss_after_training_mb'], 0)} MB ({v['ratio_to_full']:.2f}x)"
                          for m, v in mem["runs"].items())
        out.append(f"- Peak RSS after training: {parts}; {mem['settings']['params'] / 1e6:.0f}M parameters, "
                   f"batch {mem['settings']['batch']} x {mem['settings']['max_length']} tokens.")
        same = mem["runs"].get("qlora", {}).get("ratio_to_full_same_allocator")
        if same is not None:
            out.append(f"- QLoRA vs full fine-tuning under the same allocator setting (full_same_allocator): {same:.2f}x.")
        if all("above_imports_ratio_to_full" in v for v in mem["runs"].values()):
            base = mem["runs"]["full"]["rss_after_imports_mb"]
            above = ", ".join(f"{m} {v['above_imports_ratio_to_full']:.2f}x" for m, v in mem["runs"].items())
            out.append(f"- Memory above the {fmt(base, 0)} MB that Python + torch/transformers/TRL/PEFT/bitsandbytes "
                       f"hold after import: {above}.")
    pk = results.get("packing")
    if pk:
        d = pk["settings"]["data"]
        out.append(f"- Packing data: {d['rows']} rows, {d['tokens_min']}-{d['tokens_max']} tokens "
                   f"(median {d['tokens_median']}, mean {d['tokens_mean']:.0f}), batch {pk['settings']['batch']}, "
                   f"max_length {pk['settings']['max_length']}.")
        if "packed_flat_ratio" in pk["settings"]:
            out.append(f"- Packing layouts: rows (the CPU default) {pk['ratio']:.2f}x padding; TRL's padding-free "
                       f"single flattened row {pk['settings']['packed_flat_ratio']:.2f}x padding.")
    return out


def measured_on(results: dict[str, dict]) -> list[str]:
    """Where and when each result was measured: results are rerun one at a time (--only), so they can differ."""
    rows = [(name, r["machine"]) for name, r in results.items() if isinstance(r.get("machine"), dict)]
    if len({(m.get("cpu"), m.get("commit"), (m.get("date") or "")[:10]) for _, m in rows}) <= 1:
        return []
    return ["Each result was measured on its own run (ratios compare within a run only):", "",
            "| result file | date | commit | CPU |", "|---|---|---|---|",
            *[f"| {name}.json | {m.get('date', '?')} | {m.get('commit', '?')} | {m.get('cpu', '?')} |"
              for name, m in rows], ""]


def write_docs(results: dict[str, dict], notes: str) -> None:
    machine = list(results.values())[-1]["machine"] if results else common.machine_info()
    v = machine["versions"]
    lines = [
        "# Benchmarks",
        "",
        "Measured against what a user would pick instead, with the baseline run in the same process, "
        "repetitions interleaved (A B B A ...), medians reported. Not timed tests: numbers move with the machine.",
        "",
        "    make bench            # = .venv/bin/python bench/run_all.py; writes bench/results/*.json and this page",
        "",
        *table_rows(results),
        "",
        *details(results),
        "",
        f"Machine of the last benchmark run: {machine['nproc']} cores, {machine['cpu']}, shared with other work "
        f"(1-minute load {machine['load_avg_1m']:.1f} at its end); one thread per benchmark "
        f"(OMP_NUM_THREADS=1). Date {machine['date']}, commit {machine['commit']}.",
        "",
        *measured_on(results),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Item 8 comes from `bench/gpu.py` on a lent GPU machine (bench/results/gpu_h100.json); it is not run by "
        "`make bench`.",
        "",
    ]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text("\n".join(lines))
    print(f"wrote {DOCS}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs-only", action="store_true")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS)
    args = ap.parse_args()
    failed = []
    if not args.docs_only:
        failed = [n for n in (args.only or BENCHMARKS) if not run(n)]
    results = {}
    for name in result_names():
        path = common.RESULTS / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    notes_file = common.ROOT / "bench" / "NOTES.md"
    write_docs(results, notes_file.read_text() if notes_file.is_file() else "")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
