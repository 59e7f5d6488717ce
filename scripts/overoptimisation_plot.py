"""Reward-model over-optimisation on the embedded world (Gao et al. 2022), as one plot.

Reads a low-KL-penalty PPO run (its metrics.jsonl: the proxy reward model's score and the KL per rollout) and
the eval stage's report of that run's checkpoints on the validation prompts (eval.ppo_run: each checkpoint's
oracle win rate against SFT, by KL; its completions are re-scored here by the world's oracle for the mean
oracle score), and draws proxy score and oracle score/win rate against KL, with the shipped checkpoint's KL
marked and the oracle-reward PPO run (PPO's ceiling with a perfect reward model) beside it.

    PYTHONPATH=src python scripts/overoptimisation_plot.py \
        --run runs/ppo_kl001 --eval runs/eval_val_kl001 \
        --shipped-eval runs/eval_val_shipped --shipped-run data/models/tiny-ppo/ppo_run.json \
        --oracle-eval runs/eval_val_oracle --extra "kl_coef 0.1 (RM)=runs/eval_val_kl01" \
        --out docs/overoptimisation.png

Writes the PNG and prints a JSON summary (the numbers docs/overoptimisation.md quotes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignkit.world import oracle  # noqa: E402


def fail(message: str) -> None:
    """A user error: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        fail(f"{path} not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def oracle_mean(completions: Path, metas: dict[str, dict]) -> float:
    """Mean oracle score of an eval run's cached completions (sample 0 of each prompt)."""
    recs = [r for r in read_jsonl(completions) if r.get("sample", 0) == 0 and r["prompt_id"] in metas]
    if not recs:
        fail(f"no completions for the prompts in {completions}")
    return sum(oracle.score(metas[r["prompt_id"]], r["text"], r["ended"]).total for r in recs) / len(recs)


def smooth(values: list[float], k: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1): i + 1]
        out.append(sum(window) / len(window))
    return out


def report(path: Path) -> dict[str, Any]:
    if not (path / "report.json").is_file():
        fail(f"{path}/report.json not found (an eval stage's output folder)")
    return json.loads((path / "report.json").read_text())


def model_entry(rep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in rep["models"] if m["name"] == name)


def pair_entry(rep: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    return next(p for p in rep["pairs"] if p["model_a"] == a and p["model_b"] == b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="the low-KL PPO run folder (metrics.jsonl)")
    ap.add_argument("--eval", required=True, help="eval run folder of that run's checkpoints (eval.ppo_run)")
    ap.add_argument("--prompts", default="data/world/validation_prompts.jsonl")
    ap.add_argument("--shipped-eval", help="eval run folder with the shipped PPO model as `ppo` (same prompts)")
    ap.add_argument("--shipped-run", default="data/models/tiny-ppo/ppo_run.json",
                    help="the shipped model's ppo_run.json (its final training KL)")
    ap.add_argument("--oracle-eval", help="eval run folder with the oracle-reward PPO model as `ppo`")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=EVAL_DIR",
                    help="another run's checkpoint curve (an eval.ppo_run report) drawn beside it; repeatable")
    ap.add_argument("--against", default="sft")
    ap.add_argument("--out", default="docs/overoptimisation.png")
    args = ap.parse_args(argv)

    metas = {r["id"]: r["meta"] for r in read_jsonl(Path(args.prompts))}
    rows = read_jsonl(Path(args.run) / "metrics.jsonl")
    steps = [r for r in rows if "objective/scores" in r and "objective/kl" in r]
    kl_train = [r["objective/kl"] for r in steps]
    proxy = [r["objective/scores"] for r in steps]

    ev = Path(args.eval)
    rep = report(ev)
    curve = sorted(rep.get("kl_curve") or [], key=lambda r: int(r["checkpoint"].split("-")[-1]))
    if not curve:
        print(f"error: {ev}/report.json has no kl_curve (run the eval with eval.ppo_run)", file=sys.stderr)
        return 2
    sft_score = oracle_mean(ev / "completions" / f"{args.against}.jsonl", metas)
    for row in curve:
        row["oracle_score"] = oracle_mean(ev / "completions" / f"ppo-{row['checkpoint']}.jsonl", metas)
        row["rollout"] = int(row["checkpoint"].split("-")[-1])
        row["proxy_score"] = next((r["objective/scores"] for r in steps if r["step"] == row["rollout"]), None)
    best = max(curve, key=lambda r: r["oracle_score"])

    summary: dict[str, Any] = {"sft_oracle_score": sft_score, "checkpoints": curve, "best_by_oracle_score": best}
    shipped = oracle_run = None
    if args.shipped_eval:
        srep = report(Path(args.shipped_eval))
        shipped = {"kl_train_final": json.loads(Path(args.shipped_run).read_text())["metrics"]["kl_final"],
                   "oracle_score": model_entry(srep, "ppo")["judge_score"],
                   "kl_eval": model_entry(srep, "ppo")["kl_to_ref"],
                   **{k: pair_entry(srep, "ppo", args.against)[k] for k in ("win_rate", "ci_low", "ci_high")}}
        summary["shipped"] = shipped
    if args.oracle_eval:
        orep = report(Path(args.oracle_eval))
        oracle_run = {"oracle_score": model_entry(orep, "ppo")["judge_score"],
                      "kl_eval": model_entry(orep, "ppo")["kl_to_ref"],
                      **{k: pair_entry(orep, "ppo", args.against)[k] for k in ("win_rate", "ci_low", "ci_high")}}
        summary["oracle_reward_run"] = oracle_run

    extras = []
    for spec in args.extra:
        label, _, folder = spec.partition("=")
        if not folder:
            print(f"error: --extra wants LABEL=EVAL_DIR, got {spec!r}", file=sys.stderr)
            return 2
        ecurve = sorted(report(Path(folder)).get("kl_curve") or [], key=lambda r: r["kl"])
        for row in ecurve:
            row["oracle_score"] = oracle_mean(Path(folder) / "completions" / f"ppo-{row['checkpoint']}.jsonl", metas)
        extras.append((label, ecurve))
    summary["extra"] = {label: ecurve for label, ecurve in extras}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    ax1.plot(kl_train, proxy, ".", color="tab:blue", alpha=0.35, label="proxy RM score (each rollout)")
    ax1.plot(smooth(kl_train), smooth(proxy), "-", color="tab:blue", label="proxy RM score (5-rollout means)")
    ax1.set_xlabel("KL(policy || SFT), nats per response (training rollouts)")
    ax1.set_ylabel("proxy reward (tiny-rm; SFT samples score ~0)", color="tab:blue")
    ax1b = ax1.twinx()
    ax1b.plot([r["kl"] for r in curve], [r["oracle_score"] for r in curve], "o-", color="tab:red",
              label="oracle score of checkpoint (validation)")
    ax1b.axhline(sft_score, color="grey", ls=":", label=f"SFT oracle score {sft_score:.3f}")
    colours = ["tab:purple", "tab:olive", "tab:cyan"]
    for i, (label, ecurve) in enumerate(extras):
        colour = colours[i % len(colours)]
        ax1b.plot([r["kl"] for r in ecurve], [r["oracle_score"] for r in ecurve], "x", color=colour,
                  label=f"oracle score, {label}")
    if oracle_run:
        ax1b.axhline(oracle_run["oracle_score"], color="tab:green", ls="--",
                     label=f"oracle-reward PPO {oracle_run['oracle_score']:.3f} (KL {oracle_run['kl_eval']:.2f})")
    if shipped:
        ax1.axvline(shipped["kl_train_final"], color="black", ls="--", lw=1)
        ax1b.plot([shipped["kl_train_final"]], [shipped["oracle_score"]], "k*", ms=12,
                  label=f"shipped tiny-ppo (kl_coef 0.2) {shipped['oracle_score']:.3f}")
    ax1b.set_ylabel("oracle score (world rubric, 0-1)", color="tab:red")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax1.set_title("proxy reward vs oracle score")

    kls = [r["kl"] for r in curve]
    ax2.errorbar(kls, [100 * r["win_rate"] for r in curve],
                 yerr=[[100 * (r["win_rate"] - r["ci_low"]) for r in curve],
                       [100 * (r["ci_high"] - r["win_rate"]) for r in curve]],
                 fmt="o-", color="tab:red", capsize=3, label="low-KL run checkpoints")
    for r in curve:
        ax2.annotate(str(r["rollout"]), (r["kl"], 100 * r["win_rate"]), fontsize=6, xytext=(3, 3),
                     textcoords="offset points")
    for i, (label, ecurve) in enumerate(extras):
        colour = colours[i % len(colours)]
        ax2.plot([r["kl"] for r in ecurve], [100 * r["win_rate"] for r in ecurve], "x", color=colour,
                 label=f"{label} checkpoints")
    ax2.axhline(50, color="grey", ls=":")
    if shipped:
        ax2.axvline(shipped["kl_train_final"], color="black", ls="--", lw=1)
        ax2.errorbar([shipped["kl_train_final"]], [100 * shipped["win_rate"]],
                     yerr=[[100 * (shipped["win_rate"] - shipped["ci_low"])],
                           [100 * (shipped["ci_high"] - shipped["win_rate"])]],
                     fmt="k*", ms=12, capsize=3, label="shipped tiny-ppo (kl_coef 0.2)")
    if oracle_run:
        ax2.axhline(100 * oracle_run["win_rate"], color="tab:green", ls="--",
                    label=f"oracle-reward PPO {100 * oracle_run['win_rate']:.1f}%")
    ax2.set_xlabel("KL(policy || SFT) at the checkpoint (training rollouts)")
    ax2.set_ylabel(f"oracle win rate vs {args.against} (%), 95% CI")
    ax2.set_title("oracle win rate vs SFT on the validation prompts")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
