"""The report's plots as PNG bytes (matplotlib, Agg canvas, no pyplot global state).

Each function takes one section of the report dict (see `alignkit.eval.report`) and returns PNG bytes,
or None when the section has nothing to draw.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def num(value: Any) -> float:
    """A float, with None (JSON's NaN) as nan."""
    return math.nan if value is None else float(value)


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    # An explicit Agg canvas: works with no display and never touches pyplot's global backend.
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _errors(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Lower and upper error-bar lengths around row[key] from ci_low/ci_high (0 where unknown)."""
    low, high = [], []
    for r in rows:
        v, lo, hi = num(r.get(key)), num(r.get("ci_low")), num(r.get("ci_high"))
        low.append(0.0 if math.isnan(lo) else max(v - lo, 0.0))
        high.append(0.0 if math.isnan(hi) else max(hi - v, 0.0))
    return low, high


def winrate_plot(pairs: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Horizontal win-rate bars with 95% interval error bars, a 50% line and LC win rates as diamonds."""
    if not pairs:
        return None
    fig = Figure(figsize=(7, 0.6 * len(pairs) + 1.4))
    ax = fig.add_subplot()
    y = list(range(len(pairs)))[::-1]
    rates = [num(p["win_rate"]) for p in pairs]
    ax.barh(y, rates, xerr=_errors(pairs, "win_rate"), color="#4c72b0", capsize=4, label="win rate (ties half)")
    lc = [num(p.get("lc_win_rate")) for p in pairs]
    if any(not math.isnan(v) for v in lc):
        ax.scatter(lc, y, marker="D", color="#dd8452", zorder=3, label="length-controlled")
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{p['model_a']} vs {p['model_b']}" for p in pairs])
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate of the first model (95% bootstrap interval)")
    # Above the axes: inside it would hide the bars and intervals it describes.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=8)
    return _png(fig)


def breakdown_plot(breakdown: Mapping[str, Any]) -> bytes | None:
    """Win rate per group (eval.breakdown_by), one bar per model pair in each group, 95% intervals, a 50% line."""
    rows = breakdown.get("rows") or []
    if not rows:
        return None
    groups = list(dict.fromkeys(str(r["group"]) for r in rows))
    pairs = list(dict.fromkeys(f"{r['model_a']} vs {r['model_b']}" for r in rows))
    height = 0.8 / len(pairs)
    fig = Figure(figsize=(7, 0.25 * len(rows) + 0.5 * len(groups) + 1.4))
    ax = fig.add_subplot()
    for k, pair in enumerate(pairs):
        mine = [r for r in rows if f"{r['model_a']} vs {r['model_b']}" == pair]
        y = [len(groups) - 1 - groups.index(str(r["group"])) + 0.4 - (k + 0.5) * height for r in mine]
        ax.barh(y, [num(r["win_rate"]) for r in mine], height=height, xerr=_errors(mine, "win_rate"), capsize=2,
                label=pair)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(groups))[::-1], groups)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"win rate of the first model by {breakdown.get('by')} (95% bootstrap interval)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(3, len(pairs)), frameon=False, fontsize=8)
    return _png(fig)


def ratings_plot(ratings: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Rating ladder: one point per model with its 95% interval, best at the top."""
    if not ratings:
        return None
    fig = Figure(figsize=(7, 0.5 * len(ratings) + 1.4))
    ax = fig.add_subplot()
    y = list(range(len(ratings)))[::-1]
    ax.errorbar([num(r["rating"]) for r in ratings], y, xerr=_errors(ratings, "rating"), fmt="o",
                color="#55a868", capsize=4)
    ax.set_yticks(y, [str(r["model"]) for r in ratings])
    ax.set_xlabel("Bradley-Terry rating, Elo scale (95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def kl_plot(kl_curve: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Judge win rate against KL to the reference across PPO checkpoints (reward over-optimisation)."""
    if not kl_curve:
        return None
    rows = sorted(kl_curve, key=lambda r: num(r["kl"]))
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    kl = [num(r["kl"]) for r in rows]
    ax.errorbar(kl, [num(r["win_rate"]) for r in rows], yerr=_errors(rows, "win_rate"), fmt="o-",
                color="#c44e52", capsize=4)
    for r in rows:
        ax.annotate(str(r["checkpoint"]), (num(r["kl"]), num(r["win_rate"])), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("KL(policy || reference)")
    ax.set_ylabel("judge win rate")
    ax.set_ylim(0, 1)
    return _png(fig)


def training_plots(curves: Mapping[str, Mapping[str, Sequence[Sequence[float]]]]) -> bytes | None:
    """Small multiples: one panel per metric, one line per run."""
    metrics = list(dict.fromkeys(m for run in curves.values() for m in run))
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        for name, run in curves.items():
            points = run.get(metric) or []
            if points:
                ax.plot([num(p[0]) for p in points], [num(p[1]) for p in points], label=name)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if len(curves) > 1:
        fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
