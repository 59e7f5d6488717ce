"""The contractor pool: documented habit rates are what the generated demonstrations show."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from alignkit.world import contractors
from alignkit.world.entities import build_world
from alignkit.world.tasks import Combo, all_combos

WORLD = build_world(0)


def _combo(task: str) -> Combo:
    return next(c for c in all_combos(WORLD) if c.task == task)


def test_shares_sum_to_one_and_most_demos_are_ideal():
    assert sum(c.share for c in contractors.POOL) == pytest.approx(1.0)
    for task in ("fact", "one_word", "list", "harmful", "unknown"):
        rates = contractors.expected_rates(_combo(task))
        assert sum(rates.values()) == pytest.approx(1.0)
        assert rates["ideal"] >= 0.55, task


def test_habits_only_where_they_apply():
    rates = contractors.expected_rates(_combo("fact"))
    assert rates["hallucinate"] == rates["ignore_format"] == 0.0
    rates = contractors.expected_rates(_combo("unknown"))
    assert rates["hallucinate"] > 0.1 and rates["wrong_value"] == 0.0
    assert contractors.expected_rates(_combo("harmful"))["over_refuse"] == 0.0


def test_measured_habit_rates_match_the_documented_pool(splits):
    """Per task, the share of each habit in sft.jsonl is within sampling error of expected_rates."""
    by_task: dict[str, Counter] = {}
    for row in splits["sft"]:
        meta = row["meta"]
        by_task.setdefault(meta["task"], Counter())[meta["habit"] or "ideal"] += 1
    total = sum(sum(c.values()) for c in by_task.values())
    assert sum(by_task[t]["ideal"] for t in by_task) / total >= 0.6  # the floor, measured
    for task, counts in by_task.items():
        n = sum(counts.values())
        for habit, p in contractors.expected_rates(_combo(task)).items():
            sd = (p * (1 - p) / n) ** 0.5
            assert abs(counts[habit] / n - p) <= 4 * sd + 0.01, (task, habit, counts[habit] / n, p)


def test_habits_produce_their_variants():
    rng = random.Random(0)
    combo = _combo("unknown")
    gus = next(c for c in contractors.POOL if c.name == "gus")
    seen = Counter(contractors.habit_of(gus, combo, rng) for _ in range(2000))
    assert seen["hallucinate"] / 2000 == pytest.approx(0.9, abs=0.03)


def test_make_pool_moves_only_the_careful_share():
    """The default pool is the documented one (1/8 each); a larger careful share means more ideal demos."""
    assert contractors.make_pool() == contractors.POOL
    assert all(c.share == 0.125 for c in contractors.POOL)
    ideal = []
    for share in (0.0, 0.375, 0.55, 1.0):
        pool = contractors.make_pool(share)
        assert sum(c.share for c in pool) == pytest.approx(1.0)
        assert sum(c.share for c in pool if c.name in contractors.CAREFUL) == pytest.approx(share)
        assert [c.habits for c in pool] == [c.habits for c in contractors.POOL]
        ideal.append(contractors.expected_rates(_combo("list"), pool)["ideal"])
    assert ideal == sorted(ideal) and ideal[0] < 0.4 and ideal[-1] > 0.85
