"""The pool of simulated contractors who write the SFT demonstrations (InstructGPT / AlpacaFarm).

Each contractor has habits, each a probability per demo where it applies. Habits are about form and
behaviour (padding, ignoring the asked format, over-refusing, rambling, hallucinating about unknown
names), plus an occasional wrong value, so what a reward model learns from rankings of them carries
over to entities and wordings it never saw. Most demos are ideal (data/README.md has the numbers).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from alignkit.world.entities import World
from alignkit.world.tasks import VARIANTS, Combo

# habit -> the response variant it produces (alignkit.world.tasks.VARIANTS)
HABITS = {
    "hallucinate": "hallucination",      # states a made-up value about a name that does not exist
    "over_refuse": "refusal_or_compliance",  # declines a benign request
    "wrong_value": "wrong_fact",         # one value from another entity
    "ignore_format": "wrong_format",     # full sentences where one word or a list was asked for
    "ramble": "rambling",                # says it again and again, stops mid-sentence
    "pad": "verbose",                    # "Sure! Great question ... I hope this helps!"
}


def applies(habit: str, combo: Combo) -> bool:
    """Whether a habit can show on this combo's task (e.g. no format to ignore on a fact question)."""
    task = combo.task
    if habit == "hallucinate":
        return task == "unknown"
    if habit == "over_refuse":
        return task != "harmful"
    if habit == "wrong_value":
        return task in ("fact", "one_word", "list")
    if habit == "ignore_format":
        return task in ("one_word", "list")
    return True


@dataclass(frozen=True)
class Contractor:
    """One demo writer: a share of the demos and a probability per habit (checked in HABITS order)."""

    name: str
    share: float
    habits: dict[str, float] = field(default_factory=dict)


# Three careful writers and five with one strong habit each. Why these numbers: ~62% of demos come out
# ideal (the issue asks >= 60%); each habit must be common enough (4-15% of demos where it applies) that
# the SFT model keeps it at a rate the win rate can see; a careful writer still slips now and then (2% per
# habit), as people do. The careful writers' share is the world's one knob for demo quality
# (`python -m alignkit.world --careful-share`): docs/winrate_embedded_world.md measures what moving it does
# to the SFT model and to PPO's margin over it.
SLIP = 0.02
CAREFUL_SHARE = 0.375
CAREFUL = ("ana", "ben", "cai")
HABITUAL: tuple[tuple[str, dict[str, float]], ...] = (
    ("dev", {"pad": 0.8}),                                          # the padder
    ("eli", {"ignore_format": 0.9, "pad": 0.2}),                    # ignores formats
    ("fay", {"over_refuse": 0.5}),                                  # over-cautious
    ("gus", {"hallucinate": 0.9, "wrong_value": 0.25, "pad": 0.2}),  # over-confident
    ("hal", {"hallucinate": 0.5, "ramble": 0.5, "pad": 0.2}),         # rambles
)


def make_pool(careful_share: float = CAREFUL_SHARE) -> tuple[Contractor, ...]:
    """The pool: the careful writers share `careful_share` of the demos, the five with habits the rest, evenly."""
    careful = [Contractor(name, careful_share / len(CAREFUL), {h: SLIP for h in HABITS if h != "hallucinate"})
               for name in CAREFUL]
    habitual = [Contractor(name, (1 - careful_share) / len(HABITUAL), habits) for name, habits in HABITUAL]
    return (*careful, *habitual)


POOL = make_pool()


def choose(rng: random.Random, pool: tuple[Contractor, ...] = POOL) -> Contractor:
    """A contractor drawn by share."""
    return rng.choices(pool, weights=[c.share for c in pool])[0]


def habit_of(contractor: Contractor, combo: Combo, rng: random.Random) -> str | None:
    """The habit this demo shows (the first applicable habit whose coin comes up), or None (ideal)."""
    for habit in HABITS:
        p = contractor.habits.get(habit, 0.0)
        if p and applies(habit, combo) and rng.random() < p:
            return habit
    return None


def write(world: World, combo: Combo, rng: random.Random,
          pool: tuple[Contractor, ...] = POOL) -> tuple[str, str | None, str]:
    """One demonstration: (contractor name, habit or None, response text)."""
    contractor = choose(rng, pool)
    habit = habit_of(contractor, combo, rng)
    variant = HABITS[habit] if habit else "ideal"
    return contractor.name, habit, VARIANTS[variant](world, combo, rng)


def expected_rates(combo: Combo, pool: tuple[Contractor, ...] = POOL) -> dict[str, float]:
    """Probability of each habit (and "ideal") on a demo of this combo, over the pool (exact)."""
    rates = dict.fromkeys([*HABITS, "ideal"], 0.0)
    for c in pool:
        left = 1.0
        for habit in HABITS:
            p = c.habits.get(habit, 0.0) if applies(habit, combo) else 0.0
            rates[habit] += c.share * left * p
            left *= 1 - p
        rates["ideal"] += c.share * left
    return rates
