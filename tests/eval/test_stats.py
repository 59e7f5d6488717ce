"""The win-rate statistics against hand computations and independent fits written here."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from alignkit.errors import AlignkitError
from alignkit.eval.stats import (
    Judgment,
    bootstrap_ci,
    bradley_terry,
    distinct_n,
    lc_win_rates,
    length_controlled_win_rate,
    pair_summary,
    reconcile_orders,
    sample_entropy,
)


def judgment(prompt: int | str, a: str, b: str, winner: str, len_a: int = 10, len_b: int = 10) -> dict:
    return {"prompt_id": str(prompt), "model_a": a, "model_b": b, "winner": winner, "len_a": len_a, "len_b": len_b}


def duel(wins: int, ties: int, losses: int, a: str = "x", b: str = "y") -> list[dict]:
    """`a` against `b` on distinct prompts with the given outcome counts."""
    winners = ["a"] * wins + ["tie"] * ties + ["b"] * losses
    return [judgment(k, a, b, w) for k, w in enumerate(winners)]


# --- position swap -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ab", "ba", "expected"), [
    ("a", "b", "a"),      # model_a first, then model_a second: wins both -> a
    ("b", "a", "b"),
    ("a", "a", "tie"),    # the judge always picked the first position
    ("b", "b", "tie"),
    ("a", "tie", "tie"),
    ("tie", "b", "tie"),
    ("tie", "tie", "tie"),
])
def test_reconcile_orders_mt_bench_rule(ab, ba, expected):
    assert reconcile_orders(ab, ba) == expected


def test_reconcile_orders_rejects_unknown_verdict():
    with pytest.raises(ValueError):
        reconcile_orders("a", "model_b")


def test_bad_judgment_rows_name_the_row():
    with pytest.raises(AlignkitError, match=r"judgments\[1\]"):
        pair_summary([judgment(0, "x", "y", "a"), judgment(1, "x", "y", "draw")], n_boot=10)


# --- bootstrap ---------------------------------------------------------------------------------------

def test_bootstrap_ci_of_a_constant_is_the_constant():
    assert bootstrap_ci([3.0] * 20, n_boot=50) == (3.0, 3.0)


def test_bootstrap_ci_of_the_mean_matches_the_normal_approximation():
    values = np.random.default_rng(1).normal(5.0, 2.0, size=4000)
    low, high = bootstrap_ci(values, n_boot=400, seed=0)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_ci_takes_a_statistic_without_axis():
    values = list(range(101))
    low, high = bootstrap_ci(values, stat=lambda s: sorted(s)[len(s) // 2], n_boot=200)
    assert low <= 50 <= high


# --- pair summary ------------------------------------------------------------------------------------

def test_pair_summary_counts_and_orientation():
    rows = duel(5, 2, 3, "ppo", "sft") + [judgment(100, "sft", "ppo", "a"), judgment(101, "sft", "ppo", "tie")]
    (row,) = pair_summary(rows, n_boot=50)
    # sft winning as model_a is a ppo loss; counted by hand: 5 wins, 3 ties, 4 losses over 12.
    assert (row["model_a"], row["model_b"]) == ("ppo", "sft")
    assert (row["n"], row["wins"], row["ties"], row["losses"]) == (12, 5, 3, 4)
    assert row["win_rate"] == pytest.approx((5 + 0.5 * 3) / 12)
    (flipped,) = pair_summary(rows, n_boot=50, pairs=[("sft", "ppo")])
    assert flipped["win_rate"] == pytest.approx(1 - row["win_rate"])
    assert (flipped["wins"], flipped["losses"]) == (4, 5)


def test_all_wins_give_the_degenerate_interval():
    (row,) = pair_summary(duel(30, 0, 0), n_boot=100)
    assert (row["win_rate"], row["ci_low"], row["ci_high"]) == (1.0, 1.0, 1.0)


def test_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 800):
        winners = rng.choice(["a", "b", "tie"], size=n, p=[0.55, 0.35, 0.10])
        (row,) = pair_summary([judgment(k, "x", "y", w) for k, w in enumerate(winners)], n_boot=300)
        assert row["ci_low"] <= row["win_rate"] <= row["ci_high"]
        widths.append(row["ci_high"] - row["ci_low"])
    assert widths[1] < widths[0] / 2.5  # ~ 1/sqrt(16) = 1/4 expected


def test_interval_agrees_with_the_binomial_normal_approximation():
    (row,) = pair_summary(duel(1400, 0, 600), n_boot=500)
    p, n = 0.7, 2000
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert row["win_rate"] == pytest.approx(p)
    assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(half, rel=0.15)


def test_prompts_are_resampled_whole():
    # Each prompt holds two rows with the same verdict: the effective sample is 20 prompts, not 40.
    rows = [judgment(k // 2, "x", "y", "a" if (k // 2) % 2 else "b") for k in range(40)]
    (row,) = pair_summary(rows, n_boot=500)
    half = 1.96 * math.sqrt(0.25 / 20)
    assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(half, rel=0.25)


# --- Bradley-Terry -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("wins", "ties", "losses"), [(70, 0, 30), (60, 20, 20), (12, 0, 88)])
def test_two_models_rating_gap_is_the_log_odds(wins, ties, losses):
    ratings = {r["model"]: r for r in bradley_terry(duel(wins, ties, losses), n_boot=30)}
    p = (wins + 0.5 * ties) / (wins + ties + losses)
    assert ratings["x"]["rating"] - ratings["y"]["rating"] == pytest.approx(400 * math.log10(p / (1 - p)), abs=0.05)
    assert (ratings["x"]["rating"] + ratings["y"]["rating"]) / 2 == pytest.approx(1000)


def test_scale_base_and_anchor():
    rows = duel(70, 0, 30)
    ratings = {r["model"]: r["rating"] for r in bradley_terry(rows, n_boot=0, scale=1, base=math.e, init=0, anchor="y")}
    assert ratings["y"] == pytest.approx(0)
    assert ratings["x"] == pytest.approx(math.log(0.7 / 0.3), abs=1e-4)


def zermelo(names: list[str], rows: list[dict], iters: int = 5000) -> dict[str, float]:
    """Independent BT fit: Zermelo / Hunter (2004) MM iterations on win counts, ties half each way."""
    k = {m: i for i, m in enumerate(names)}
    wins = np.zeros(len(names))
    games = np.zeros((len(names), len(names)))
    for r in rows:
        a, b = k[r["model_a"]], k[r["model_b"]]
        s = {"a": 1.0, "tie": 0.5, "b": 0.0}[r["winner"]]
        wins[a] += s
        wins[b] += 1 - s
        games[a, b] += 1
        games[b, a] += 1
    pi = np.ones(len(names))
    for _ in range(iters):
        pi = wins / (games / (pi[:, None] + pi[None, :])).sum(axis=1)
        pi /= np.exp(np.log(pi).mean())
    elo = 400 * np.log10(pi)
    return {m: float(elo[k[m]] - elo.mean() + 1000) for m in names}


def test_three_models_agree_with_zermelo_iterations():
    rng = np.random.default_rng(3)
    true = {"base": 850.0, "sft": 1000.0, "ppo": 1120.0}
    rows = []
    for prompt in range(150):
        for a, b in (("base", "sft"), ("sft", "ppo"), ("ppo", "base")):
            p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
            u = rng.random()
            rows.append(judgment(prompt, a, b, "tie" if u < 0.1 else ("a" if u < 0.1 + 0.9 * p else "b")))
    fitted = bradley_terry(rows, n_boot=100)
    expected = zermelo(list(true), rows)
    assert [r["model"] for r in fitted] == ["ppo", "sft", "base"]  # best first
    for r in fitted:
        assert r["rating"] == pytest.approx(expected[r["model"]], abs=0.05)
        assert r["ci_low"] < r["rating"] < r["ci_high"]
        assert r["n"] == 300


def correlated_round_robin(n_prompts: int, seed: int = 0) -> list[dict]:
    """Three models on every prompt; each model's per-prompt quality is shared by all its pairs on that prompt."""
    rng = np.random.default_rng(seed)
    true = {"base": 0.0, "sft": 0.5, "ppo": 1.0}
    rows = []
    for prompt in range(n_prompts):
        quality = {m: q + rng.normal(0, 1.5) for m, q in true.items()}  # e.g. a prompt that suits one model
        for a, b in (("sft", "base"), ("ppo", "base"), ("ppo", "sft")):
            rows.append(judgment(prompt, a, b, "a" if quality[a] > quality[b] else "b"))
    return rows


def resampled_intervals(rows: list[dict], clusters: list[list[dict]], n_boot: int, seed: int) -> dict:
    """Percentile intervals of bradley_terry's point ratings refitted on resamples of `clusters` (independent loop)."""
    rng = np.random.default_rng(seed)
    names = sorted({r["model_a"] for r in rows} | {r["model_b"] for r in rows})
    boot = []
    for _ in range(n_boot):
        table = [row for k in rng.integers(0, len(clusters), len(clusters)) for row in clusters[k]]
        fitted = {r["model"]: r["rating"] for r in bradley_terry(table, n_boot=0)}
        boot.append([fitted[m] for m in names])
    low, high = np.percentile(np.array(boot), [2.5, 97.5], axis=0)
    return {m: (low[k], high[k]) for k, m in enumerate(names)}


def test_bradley_terry_intervals_resample_prompts_not_rows():
    rows = correlated_round_robin(60)
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    fitted = {r["model"]: r for r in bradley_terry(rows, n_boot=200, seed=5)}
    cluster = resampled_intervals(rows, list(by_prompt.values()), n_boot=200, seed=5)
    for model, (low, high) in cluster.items():
        assert fitted[model]["ci_low"] == pytest.approx(low, abs=1e-3)
        assert fitted[model]["ci_high"] == pytest.approx(high, abs=1e-3)
    # The rows of one prompt are correlated: resampling rows as if independent gives narrower intervals.
    by_row = resampled_intervals(rows, [[r] for r in rows], n_boot=200, seed=5)
    widths = [(fitted[m]["ci_high"] - fitted[m]["ci_low"]) / (by_row[m][1] - by_row[m][0]) for m in cluster]
    assert np.mean(widths) > 1.1  # 1.20 on this data (seed 0)


def test_unknown_anchor_is_a_user_error():
    with pytest.raises(AlignkitError, match="anchor"):
        bradley_terry(duel(3, 0, 1), n_boot=0, anchor="nobody")


# --- length-controlled win rate ----------------------------------------------------------------------

def irls(X: np.ndarray, y: np.ndarray, iters: int = 50) -> np.ndarray:
    """Independent logistic fit: Newton / IRLS on soft labels, no regularisation."""
    beta = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X @ beta))
        beta = beta + np.linalg.solve((X.T * (p * (1 - p))) @ X, X.T @ (y - p))
    return beta


def vs_reference(winners, len_model, len_ref, model="m", ref="ref") -> list[dict]:
    # Alternate orientation so that both ways of writing a row are exercised.
    return [judgment(k, model, ref, w, lm, lr) if k % 2 else
            judgment(k, ref, model, {"a": "b", "b": "a", "tie": "tie"}[w], lr, lm)
            for k, (w, lm, lr) in enumerate(zip(winners, len_model, len_ref, strict=True))]


def test_lc_matches_an_independent_glm_fit():
    rng = np.random.default_rng(0)
    n = 400
    len_model, len_ref = rng.integers(20, 200, n), rng.integers(20, 200, n)
    z = (len_model - len_ref) / statistics.stdev((len_model - len_ref).tolist())
    p = 1 / (1 + np.exp(-(0.4 + 1.5 * np.tanh(z))))
    u = rng.random(n)
    winners = np.where(u < 0.1, "tie", np.where(u < 0.1 + 0.9 * p, "a", "b"))
    result = length_controlled_win_rate(vs_reference(winners, len_model, len_ref), "m", "ref", n_boot=50)
    y = np.array([{"a": 1.0, "tie": 0.5, "b": 0.0}[w] for w in winners])
    beta = irls(np.column_stack([np.ones(n), np.tanh(z)]), y)
    assert result["win_rate"] == pytest.approx(y.mean())
    assert result["lc_win_rate"] == pytest.approx(1 / (1 + math.exp(-beta[0])), abs=2e-3)
    assert result["length_coef"] == pytest.approx(beta[1], abs=1e-2)
    assert result["lc_ci_low"] < result["lc_win_rate"] < result["lc_ci_high"]


def test_lc_is_close_to_the_raw_win_rate_when_length_is_uninformative():
    rng = np.random.default_rng(1)
    n = 600
    winners = rng.choice(["a", "b", "tie"], size=n, p=[0.6, 0.3, 0.1])
    result = length_controlled_win_rate(vs_reference(winners, rng.integers(20, 200, n), rng.integers(20, 200, n)),
                                        "m", "ref", n_boot=0)
    assert result["lc_win_rate"] == pytest.approx(result["win_rate"], abs=0.02)


def test_lc_moves_to_half_when_length_explains_the_wins():
    # The model is usually longer and wins exactly by being longer: no quality difference at equal length.
    rng = np.random.default_rng(2)
    n = 600
    len_ref = rng.integers(50, 100, n)
    len_model = len_ref + rng.normal(40, 40, n).astype(int)
    z = (len_model - len_ref) / statistics.stdev((len_model - len_ref).tolist())
    winners = np.where(rng.random(n) < 1 / (1 + np.exp(-3 * np.tanh(z))), "a", "b")
    result = length_controlled_win_rate(vs_reference(winners, len_model, len_ref), "m", "ref", n_boot=0)
    assert result["win_rate"] > 0.7
    assert abs(result["lc_win_rate"] - 0.5) < 0.06
    assert result["length_coef"] > 0


def test_lc_difficulty_term_matches_an_independent_fit():
    rng = np.random.default_rng(4)
    n = 300
    len_model, len_ref = rng.integers(20, 200, n), rng.integers(20, 200, n)
    difficulty = rng.normal(0, 1, n)
    z = (len_model - len_ref) / statistics.stdev((len_model - len_ref).tolist())
    p = 1 / (1 + np.exp(-(0.3 + 0.8 * np.tanh(z) - 1.2 * difficulty)))
    winners = np.where(rng.random(n) < p, "a", "b")
    rows = vs_reference(winners, len_model, len_ref)
    result = length_controlled_win_rate(rows, "m", "ref", difficulty={str(k): d for k, d in enumerate(difficulty)},
                                        n_boot=0)
    beta = irls(np.column_stack([np.ones(n), np.tanh(z), difficulty]), (winners == "a").astype(float))
    expected = np.mean(1 / (1 + np.exp(-(beta[0] + beta[2] * difficulty))))
    assert result["lc_win_rate"] == pytest.approx(expected, abs=3e-3)


def test_lc_win_rates_covers_every_model_against_the_reference():
    rows = duel(6, 1, 3, "sft", "base") + duel(8, 0, 2, "base", "ppo") + duel(5, 0, 5, "sft", "ppo")
    results = {r["model"]: r for r in lc_win_rates(rows, "base", n_boot=0)}
    assert set(results) == {"sft", "ppo"}
    assert results["ppo"]["win_rate"] == pytest.approx(0.2)
    assert results["sft"]["n"] == 10


# --- diversity ---------------------------------------------------------------------------------------

def test_distinct_n_by_hand():
    texts = ["the cat sat", "the cat ran", ""]
    # unigrams: the cat sat the cat ran -> 4 unique / 6; bigrams: (the cat) x2, (cat sat), (cat ran) -> 3 / 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0


def test_sample_entropy_by_hand():
    samples = [["a", "a", "a", "a"], ["a", "b", "c", "d"], ["x", "x", "y", " y "]]
    # 0, ln 4, and two responses with probability 1/2 each -> ln 2 (whitespace around a response ignored)
    expected = (0 + math.log(4) + math.log(2)) / 3
    assert sample_entropy(samples) == pytest.approx(expected)
    assert sample_entropy([[], ["a", "b"]]) == pytest.approx(math.log(2))


def test_judgment_dataclass_is_accepted():
    rows = [Judgment(str(k), "x", "y", "a", 3, 4) for k in range(4)]
    assert pair_summary(rows, n_boot=10)[0]["wins"] == 4
