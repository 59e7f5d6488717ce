"""Statistics of the win-rate harness: pure functions of a judgments table.

A judgments table is a list of records, one per (prompt, model pair) after position-swap
reconciliation (`reconcile_orders`). A record is a dict or a `Judgment`:

    {"prompt_id": str, "model_a": str, "model_b": str, "winner": "a" | "b" | "tie",
     "len_a": int, "len_b": int}          # lengths in tokens (or words), used for length control

All rates are fractions in [0, 1] (never percent); ties count half a win. Intervals are bootstrap
95% percentile intervals (2.5 / 97.5), as Chatbot Arena and AlpacaEval report them.

    reconcile_orders(verdict_ab, verdict_ba)      MT-Bench position-swap rule
    bootstrap_ci(values, stat, n_boot, seed)      percentile interval of any statistic
    pair_summary(judgments)                       W/T/L, win rate and interval per pair
    bradley_terry(judgments)                      Chatbot Arena Elo-scale ratings with intervals
    length_controlled_win_rate(judgments_vs_ref)  AlpacaEval 2 LC win rate of one model vs a reference
    lc_win_rates(judgments, reference)            the same for every model judged against `reference`
    distinct_n(texts, n), sample_entropy(samples) output diversity
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from alignkit.errors import AlignkitError

Winner = Literal["a", "b", "tie"]
WINNERS = ("a", "b", "tie")
# Score of model_a for each verdict: a win, half for a tie.
SCORE = {"a": 1.0, "tie": 0.5, "b": 0.0}


@dataclass(frozen=True)
class Judgment:
    """One reconciled verdict on one prompt for one model pair."""

    prompt_id: str
    model_a: str
    model_b: str
    winner: Winner
    len_a: int = 0
    len_b: int = 0


def as_records(judgments: Iterable[Mapping[str, Any] | Judgment]) -> list[dict[str, Any]]:
    """Normalise judgments (dicts or `Judgment`s) to checked dicts; bad rows raise AlignkitError."""
    rows = []
    for i, j in enumerate(judgments):
        row = asdict(j) if is_dataclass(j) else dict(j)
        where = f"judgments[{i}]"
        for key in ("prompt_id", "model_a", "model_b", "winner"):
            if key not in row:
                raise AlignkitError(f"missing key {key!r}", where=where)
        if row["winner"] not in WINNERS:
            raise AlignkitError(f"winner must be one of {WINNERS}, got {row['winner']!r}", where=where)
        if row["model_a"] == row["model_b"]:
            raise AlignkitError(f"a model cannot be judged against itself ({row['model_a']!r})", where=where)
        row.setdefault("len_a", 0)
        row.setdefault("len_b", 0)
        rows.append(row)
    return rows


def reconcile_orders(verdict_ab: Winner, verdict_ba: Winner) -> Winner:
    """Combine the verdicts of both presentation orders: a win only if both agree, else a tie."""
    # MT-Bench (arXiv 2306.05685): judges favour a position, so an answer wins only when it wins in
    # both orders. `verdict_ba` came from the swapped presentation, so its "a" is model_b.
    for v in (verdict_ab, verdict_ba):
        if v not in WINNERS:
            raise ValueError(f"verdict must be one of {WINNERS}, got {v!r}")
    unswapped = {"a": "b", "b": "a", "tie": "tie"}[verdict_ba]
    return verdict_ab if verdict_ab == unswapped and verdict_ab != "tie" else "tie"


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[..., Any] = np.mean,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over `values` resampled with replacement."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, values.size, size=(n_boot, values.size))]
    try:  # numpy reductions take axis=; anything else is applied per resample
        stats = np.asarray(stat(samples, axis=1), dtype=float)
    except TypeError:
        stats = np.array([stat(s) for s in samples], dtype=float)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return (float(low), float(high))


def _oriented(rows: list[dict[str, Any]], first: str, second: str) -> tuple[list[str], np.ndarray]:
    """Prompt ids and `first`'s scores over the rows that compare `first` with `second`."""
    prompts, scores = [], []
    for r in rows:
        if (r["model_a"], r["model_b"]) == (first, second):
            prompts.append(r["prompt_id"])
            scores.append(SCORE[r["winner"]])
        elif (r["model_a"], r["model_b"]) == (second, first):
            prompts.append(r["prompt_id"])
            scores.append(1.0 - SCORE[r["winner"]])
    return prompts, np.array(scores)


def _prompt_bootstrap(prompts: list[str], scores: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Interval of the mean score when whole prompts are resampled (a prompt may hold several rows)."""
    ids = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    group = np.array([ids[p] for p in prompts])
    sums = np.bincount(group, weights=scores, minlength=len(ids))
    counts = np.bincount(group, minlength=len(ids)).astype(float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    rates = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    low, high = np.percentile(rates, [2.5, 97.5])
    return (float(low), float(high))


def model_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The distinct model pairs of a judgments table, each in the orientation it first appears."""
    seen: dict[frozenset[str], tuple[str, str]] = {}
    for r in rows:
        seen.setdefault(frozenset((r["model_a"], r["model_b"])), (r["model_a"], r["model_b"]))
    return list(seen.values())


def pair_summary(judgments: Iterable[Mapping[str, Any] | Judgment], n_boot: int = 1000, seed: int = 0,
                 pairs: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Wins/ties/losses, win rate (ties half) and a prompt-bootstrap 95% interval per model pair.

    Each row reads "model_a against model_b": {model_a, model_b, n, wins, ties, losses, win_rate,
    ci_low, ci_high}. `pairs` fixes which pairs and orientations are reported (e.g. (ppo, sft));
    by default every pair in the order and orientation it first appears.
    """
    rows = as_records(judgments)
    out = []
    for first, second in pairs or model_pairs(rows):
        prompts, scores = _oriented(rows, first, second)
        n = len(scores)
        wins, ties = int((scores == 1).sum()), int((scores == 0.5).sum())
        win_rate = float(scores.mean()) if n else math.nan
        low, high = _prompt_bootstrap(prompts, scores, n_boot, seed) if n else (math.nan, math.nan)
        out.append({"model_a": first, "model_b": second, "n": n, "wins": wins, "ties": ties,
                    "losses": n - wins - ties, "win_rate": win_rate, "ci_low": low, "ci_high": high})
    return out


def fit_logistic(X: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float = 0.0) -> np.ndarray:
    """Coefficients of a weighted logistic regression without intercept; `y` may be soft labels in [0, 1]."""
    # Written here because the references fit it with sklearn's LogisticRegression, which alignkit
    # does not depend on, and no maintained library fits Bradley-Terry / AlpacaEval's GLM on a
    # judgments table. Soft labels y with weight w are the same likelihood as FastChat's duplicated
    # rows (y=1 with weight w*y, y=0 with weight w*(1-y)). The problem is tiny (one coefficient per
    # model or feature) and convex, so scipy's Newton trust region with the exact Hessian converges
    # in a few steps; L-BFGS-B found the same optimum but was 10-25x slower per fit on a loaded
    # 2-core machine (BLAS thread wake-ups), which matters for 1000 bootstrap refits.
    def nll(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = X @ beta
        loss = weight @ (np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * beta @ beta
        grad = X.T @ (weight * (expit(z) - y)) + l2 * beta
        return float(loss), grad

    def hess(beta: np.ndarray) -> np.ndarray:
        p = expit(X @ beta)
        return (X.T * (weight * p * (1 - p))) @ X + l2 * np.eye(X.shape[1])

    res = minimize(nll, np.zeros(X.shape[1]), jac=True, hess=hess, method="trust-exact",
                   options={"gtol": 1e-8, "maxiter": 1000})
    return res.x


def _bt_log_strengths(n_models: int, pair_i: np.ndarray, pair_j: np.ndarray, n: np.ndarray,
                      score_i: np.ndarray, base: float, l2: float) -> np.ndarray:
    """Bradley-Terry strengths (log-`base` units) from per-pair counts and model i's total score."""
    # FastChat elo_analysis.compute_mle_elo: row x = +ln(base) for i, -ln(base) for j, so that
    # P(i beats j) = 1 / (1 + base ** -(beta_i - beta_j)).
    X = np.zeros((len(n), n_models))
    X[np.arange(len(n)), pair_i] = math.log(base)
    X[np.arange(len(n)), pair_j] = -math.log(base)
    keep = n > 0
    y = np.divide(score_i, n, out=np.full(len(n), 0.5), where=keep)
    return fit_logistic(X[keep], y[keep], n[keep], l2)


def _anchor(beta: np.ndarray, present: np.ndarray, names: list[str], anchor: str | None,
            scale: float, init: float) -> np.ndarray:
    """Elo-scale ratings: scale * beta + init, shifted so the anchor model (or the mean) sits at init."""
    ratings = np.where(present, scale * beta, np.nan)
    if anchor is not None:
        ratings = ratings - ratings[names.index(anchor)]
    else:
        ratings = ratings - np.nanmean(ratings)
    return ratings + init


def bradley_terry(judgments: Iterable[Mapping[str, Any] | Judgment], n_boot: int = 1000, seed: int = 0,
                  scale: float = 400, base: float = 10, init: float = 1000, anchor: str | None = None,
                  l2: float = 1e-6) -> list[dict[str, Any]]:
    """Chatbot Arena Bradley-Terry ratings on the Elo scale with bootstrap 95% intervals, best first.

    Rating = scale * beta + init where P(i beats j) = 1 / (1 + base ** ((R_j - R_i) / scale)),
    i.e. beta is in log-`base` odds (FastChat's 400 * beta + 1000, base 10). Ties count half a win
    each way. The scale has no origin of its own: ratings are shifted so that `anchor` (a model
    name) or, by default, the mean of all models equals `init`. The tiny `l2` only keeps a model
    that never lost (or never won) finite: its rating is then very large and should be read as
    "unbeaten", not as a measurement. Models that were never compared, even indirectly, share no
    scale: judge a connected design (every model against a common reference or round robin).
    The bootstrap resamples prompts, not rows: a prompt yields one row per model pair and those
    rows share the prompt's difficulty, so resampling rows would treat them as independent and
    give intervals that are too narrow (the cluster bootstrap; pair_summary does the same).
    Rows: {model, rating, ci_low, ci_high, n (judgments the model took part in)}.
    """
    rows = as_records(judgments)
    if not rows:
        return []
    names = sorted({r["model_a"] for r in rows} | {r["model_b"] for r in rows})
    if anchor is not None and anchor not in names:
        raise AlignkitError(f"anchor model {anchor!r} is not among the judged models {names}", where="anchor")
    index = {m: k for k, m in enumerate(names)}
    pairs = sorted({tuple(sorted((index[r["model_a"]], index[r["model_b"]]))) for r in rows})
    pair_of = {p: k for k, p in enumerate(pairs)}
    pair_i, pair_j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    prompt_of = {p: k for k, p in enumerate(dict.fromkeys(r["prompt_id"] for r in rows))}
    # Per prompt and pair: how many judgments, and the total score of the pair's first (lower-index) model.
    counts = np.zeros((len(prompt_of), len(pairs)))  # (P, pairs)
    totals = np.zeros((len(prompt_of), len(pairs)))  # (P, pairs)
    for r in rows:
        a, b = index[r["model_a"]], index[r["model_b"]]
        cell = (prompt_of[r["prompt_id"]], pair_of[(min(a, b), max(a, b))])
        counts[cell] += 1
        totals[cell] += SCORE[r["winner"]] if a < b else 1.0 - SCORE[r["winner"]]

    def ratings(times: np.ndarray) -> np.ndarray:
        """Ratings when prompt p is counted times[p] times."""
        n, score = times @ counts, times @ totals
        present = np.zeros(len(names), dtype=bool)
        present[pair_i[n > 0]] = present[pair_j[n > 0]] = True
        beta = _bt_log_strengths(len(names), pair_i, pair_j, n, score, base, l2)
        if anchor is not None and not present[index[anchor]]:
            return np.full(len(names), np.nan)
        return _anchor(beta, present, names, anchor, scale, init)

    n_prompts = len(prompt_of)
    point = ratings(np.ones(n_prompts))
    # FastChat get_bootstrap_result refits on resamples (2.5/97.5 percentiles); here of prompts, in the
    # order they first appear, each resample drawn as rng.integers(0, n_prompts, n_prompts).
    rng = np.random.default_rng(seed)
    boot = np.array([ratings(np.bincount(rng.integers(0, n_prompts, n_prompts), minlength=n_prompts).astype(float))
                     for _ in range(n_boot)])
    low, high = (np.nanpercentile(boot, [2.5, 97.5], axis=0) if n_boot else
                 (np.full(len(names), np.nan), np.full(len(names), np.nan)))
    counts = Counter([r["model_a"] for r in rows] + [r["model_b"] for r in rows])
    out = [{"model": m, "rating": float(point[k]), "ci_low": float(low[k]), "ci_high": float(high[k]),
            "n": counts[m]} for k, m in enumerate(names)]
    return sorted(out, key=lambda row: -row["rating"])


def length_controlled_win_rate(judgments_vs_ref: Iterable[Mapping[str, Any] | Judgment], model: str,
                               reference: str, difficulty: Mapping[str, float] | None = None,
                               n_boot: int = 200, seed: int = 0, l2: float = 1e-3) -> dict[str, Any]:
    """AlpacaEval 2 length-controlled win rate of `model` against `reference`, with a bootstrap interval.

    Fits P(model beats reference) = sigmoid(theta_model + theta_len * tanh(delta_len / std(delta_len))
    [+ theta_difficulty * difficulty[prompt_id]]) with ties as 0.5, then predicts with delta_len = 0
    and averages over prompts (Dubois et al. 2024, arXiv 2404.04475; alpaca_eval
    metrics/glm_winrate.py). delta_len = len_model - len_reference; std is over this data (ddof=1,
    as pandas computes it). Returned as a fraction like `win_rate`, not x100.

    `difficulty` (prompt_id -> value) is AlpacaEval's instruction-difficulty term. AlpacaEval
    estimates it jointly over its whole leaderboard of models; with the few models of one run it
    would mostly refit each model's own noise, so it is off unless the caller has a per-prompt
    difficulty from elsewhere (e.g. many models or the oracle's rubric). AlpacaEval's L1
    regularisation towards "gamed" baselines is replaced by a small L2 (`l2`) that only keeps the fit
    finite when length separates the outcomes perfectly.
    Keys: {model, reference, n, win_rate, lc_win_rate, lc_ci_low, lc_ci_high, length_coef}.
    """
    prompts, scores, delta = [], [], []
    for r in as_records(judgments_vs_ref):
        if (r["model_a"], r["model_b"]) == (model, reference):
            scores.append(SCORE[r["winner"]])
            delta.append(float(r["len_a"]) - float(r["len_b"]))
        elif (r["model_a"], r["model_b"]) == (reference, model):
            scores.append(1.0 - SCORE[r["winner"]])
            delta.append(float(r["len_b"]) - float(r["len_a"]))
        else:
            continue
        prompts.append(r["prompt_id"])
    y, delta = np.array(scores), np.array(delta)
    diff = None
    if difficulty is not None:
        missing = [p for p in prompts if p not in difficulty]
        if missing:
            raise AlignkitError(f"no instruction difficulty for prompt {missing[0]!r}", where="difficulty")
        diff = np.array([float(difficulty[p]) for p in prompts])

    def lc(sample: np.ndarray) -> tuple[float, float]:
        d = delta[sample]
        std = d.std(ddof=1) if len(d) > 1 else 0.0
        length = np.tanh(d / std) if std > 0 else np.zeros(len(d))
        columns = [np.ones(len(d)), length] + ([diff[sample]] if diff is not None else [])
        X = np.column_stack(columns)
        theta = fit_logistic(X, y[sample], np.ones(len(d)), l2)
        X[:, 1] = 0.0  # the counterfactual: no length difference
        return float(expit(X @ theta).mean()), float(theta[1])

    out: dict[str, Any] = {"model": model, "reference": reference, "n": len(y),
                           "win_rate": float(y.mean()) if len(y) else math.nan}
    if not len(y):
        return {**out, "lc_win_rate": math.nan, "lc_ci_low": math.nan, "lc_ci_high": math.nan,
                "length_coef": math.nan}
    point, coef = lc(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    boot = [lc(rng.integers(0, len(y), len(y)))[0] for _ in range(n_boot)]
    low, high = np.percentile(boot, [2.5, 97.5]) if n_boot else (math.nan, math.nan)
    return {**out, "lc_win_rate": point, "lc_ci_low": float(low), "lc_ci_high": float(high), "length_coef": coef}


def lc_win_rates(judgments: Iterable[Mapping[str, Any] | Judgment], reference: str, n_boot: int = 200,
                 seed: int = 0, difficulty: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """`length_controlled_win_rate` of every model judged against `reference`."""
    rows = as_records(judgments)
    models = dict.fromkeys(r["model_b"] if r["model_a"] == reference else r["model_a"]
                           for r in rows if reference in (r["model_a"], r["model_b"]))
    return [length_controlled_win_rate(rows, m, reference, difficulty, n_boot, seed) for m in models]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams / total n-grams over all texts (whitespace tokens); 0.0 when there are none."""
    # Li et al. 2016 (distinct-1/2), pooled over the set of outputs rather than averaged per text.
    grams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = text.split()
        grams.extend(tuple(tokens[k:k + n]) for k in range(len(tokens) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_entropy(samples_per_prompt: Sequence[Sequence[str]]) -> float:
    """Mean over prompts of the Shannon entropy (nats) of the distinct responses among k samples."""
    # The seed talk's point: RLHF models lose entropy vs base models. Responses count as the same
    # when equal after stripping surrounding whitespace; with k samples the maximum is ln(k).
    entropies = []
    for samples in samples_per_prompt:
        if not samples:
            continue
        counts = np.array(list(Counter(s.strip() for s in samples).values()), dtype=float)
        p = counts / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies)) if entropies else math.nan
