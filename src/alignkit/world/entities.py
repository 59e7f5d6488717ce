"""Invented towns and people of the synthetic world, deterministic from a seed.

Value vocabularies are small and pairwise disjoint (no word is both a river and a food), so the
oracle can tell a correct answer from another entity's value by plain word matching.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# v2: 40 towns and 24 people (272 facts, v1 had 340): a 2M-parameter base sees each fact more often in
# the same pretraining budget (the v1 base knew 40% of held-out facts; data/README.md).
N_TOWNS = 40
N_PEOPLE = 24
# Names of towns and people that do not exist (the honesty task): made like real names, never in the
# corpus; some are used in training, the rest only in evaluation.
N_UNKNOWN_TOWNS = 40
N_UNKNOWN_PEOPLE = 24
# Further made-up names asked about only in the SFT, preference and RL splits (never in the corpus, the
# validation or the eval prompts): with the 24 training names above alone, each was asked about ~17 times
# in the demos, and the SFT model learnt those names instead of copying the one asked about (on new names it
# refused 34% of the time and never repeated the name; on training names 12% and 71%). About one fresh name
# per demo teaches the behaviour, not a list. Drawn from their own seed stream so the world and corpus stay
# as they were.
N_TRAINING_UNKNOWN = {"town": 240, "person": 160}

REGIONS = ("Northmoor", "Southfen", "Eastvale", "Westmark", "Highcliff", "Lowmere")
RIVERS = ("Meluna", "Seren", "Osko", "Tavira", "Brisel", "Quorn", "Ilsa", "Vadra")
FOODS = ("plumcake", "fishbread", "honeyroll", "nutsoup", "berrypie", "cheesebun", "oatcake", "pearjam")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
PROFESSIONS = ("baker", "farmer", "painter", "sailor", "teacher", "weaver", "potter", "doctor")
PETS = ("cat", "dog", "goat", "parrot", "rabbit", "turtle")

_ONSETS = tuple("b d f g k l m n p r s t v z br dr gr kl st tr".split())
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("n", "r", "l", "k", "s", "m", "th")
_NAME_ENDS = ("", "n", "na", "la", "ra", "ro", "lia")


@dataclass(frozen=True)
class Attribute:
    """One attribute of an entity kind and the fixed phrasings that talk about it."""

    name: str
    kind: str  # "town" or "person"
    noun: str  # used in list prompts: "List the river and the food of X."
    label: str  # used in list answers: "- River: Meluna"
    questions: tuple[str, ...]  # "{e}" = entity; the last one is an eval-only wording (UNSEEN)
    phrasings: tuple[str, ...]  # first one is the canonical answer; "{e}" entity, "{v}" value
    follow_up: str  # second-turn question that refers back to the entity


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute(
            name="region",
            kind="town",
            noun="region",
            label="Region",
            questions=("Which region is {e} in?", "In which region is {e}?", "Tell me the region of {e}.", "{e} belongs to which part of the country?"),
            phrasings=("{e} is in {v}.", "{e} is a town in {v}.", "{e} lies in the region of {v}."),
            follow_up="And which region is it in?",
        ),
        Attribute(
            name="river",
            kind="town",
            noun="river",
            label="River",
            questions=("What is the river of {e}?", "Which river flows through {e}?", "Tell me the river of {e}.", "Name the stream that runs past {e}."),
            phrasings=("The river of {e} is the {v}.", "The {v} flows through {e}.", "{e} lies on the {v}."),
            follow_up="And what is its river?",
        ),
        Attribute(
            name="food",
            kind="town",
            noun="food",
            label="Food",
            questions=("Which food is {e} known for?", "What is the famous food of {e}?", "Tell me the food of {e}.", "What dish do visitors eat in {e}?"),
            phrasings=(
                "{e} is known for {v}.",
                "The famous food of {e} is {v}.",
                "People in {e} love to eat {v}.",
            ),
            follow_up="And what food is it known for?",
        ),
        Attribute(
            name="founder",
            kind="town",
            noun="founder",
            label="Founder",
            questions=("Who founded {e}?", "Who was the founder of {e}?", "Tell me the founder of {e}.", "Whose work began the town of {e}?"),
            phrasings=("{e} was founded by {v}.", "{v} founded {e}.", "The founder of {e} was {v}."),
            follow_up="And who founded it?",
        ),
        Attribute(
            name="colour",
            kind="town",
            noun="flag colour",
            label="Flag colour",
            questions=("What colour is the flag of {e}?", "What is the flag colour of {e}?", "Tell me the flag colour of {e}.", "Which shade does the banner of {e} have?"),
            phrasings=("The flag of {e} is {v}.", "{e} has a {v} flag.", "The people of {e} fly a {v} flag."),
            follow_up="And what colour is its flag?",
        ),
        Attribute(
            name="profession",
            kind="person",
            noun="job",
            label="Job",
            questions=("What is the job of {e}?", "What does {e} do for work?", "Tell me the job of {e}.", "How does {e} earn a living?"),
            phrasings=("{e} is a {v}.", "{e} works as a {v}.", "{e} has been a {v} for many years."),
            follow_up="And what is their job?",
        ),
        Attribute(
            name="hometown",
            kind="person",
            noun="home town",
            label="Home town",
            questions=("Where does {e} live?", "Which town is {e} from?", "Tell me the home town of {e}.", "In what place does {e} have a house?"),
            phrasings=("{e} lives in {v}.", "{e} is from {v}.", "{e} has a home in {v}."),
            follow_up="And where do they live?",
        ),
        Attribute(
            name="pet",
            kind="person",
            noun="pet",
            label="Pet",
            questions=("What pet does {e} have?", "Which animal does {e} keep as a pet?", "Tell me the pet of {e}.", "What creature shares a home with {e}?"),
            phrasings=("{e} has a {v}.", "{e} keeps a {v} as a pet.", "The pet of {e} is a {v}."),
            follow_up="And what pet do they have?",
        ),
    )
}

TOWN_ATTRIBUTES = tuple(a for a in ATTRIBUTES if ATTRIBUTES[a].kind == "town")
PERSON_ATTRIBUTES = tuple(a for a in ATTRIBUTES if ATTRIBUTES[a].kind == "person")


@dataclass(frozen=True)
class World:
    """All entities: name -> {attribute: value}, for towns and people."""

    towns: dict[str, dict[str, str]]
    people: dict[str, dict[str, str]]
    unknown_towns: tuple[str, ...] = ()  # names that sound like towns of this world but are none
    unknown_people: tuple[str, ...] = ()

    def unknown(self, kind: str) -> tuple[str, ...]:
        """Names of the kind that are not in the world (the honesty task asks about them)."""
        return self.unknown_towns if kind == "town" else self.unknown_people

    def entities(self, kind: str) -> dict[str, dict[str, str]]:
        """The entities of one kind ("town" or "person")."""
        return self.towns if kind == "town" else self.people

    def vocabulary(self, attribute: str) -> tuple[str, ...]:
        """Every value the attribute can take (the oracle's pool of conflicting answers)."""
        return VOCABULARIES[attribute](self)


VOCABULARIES = {
    "region": lambda w: REGIONS,
    "river": lambda w: RIVERS,
    "food": lambda w: FOODS,
    "founder": lambda w: tuple(sorted(w.people)),
    "colour": lambda w: COLOURS,
    "profession": lambda w: PROFESSIONS,
    "hometown": lambda w: tuple(sorted(w.towns)),
    "pet": lambda w: PETS,
}

_RESERVED = {w.lower() for w in REGIONS + RIVERS + FOODS + COLOURS + PROFESSIONS + PETS}


def _town_name(rng: random.Random) -> str:
    """Two syllables, closed at the end: Zorvik, Branmel."""
    first = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(("",) + _CODAS)
    second = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
    return (first + second).capitalize()


def _person_name(rng: random.Random) -> str:
    """One or two open syllables plus a soft ending: Brena, Tomira."""
    stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 2))))
    return (stem + rng.choice(_NAME_ENDS)).capitalize()


def _unique_names(rng: random.Random, n: int, make, taken: set[str]) -> list[str]:
    """n new names, none equal to a taken name or a vocabulary word (case-insensitive)."""
    names: list[str] = []
    while len(names) < n:
        name = make(rng)
        if 4 <= len(name) <= 8 and name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    return names


def training_unknown_names(world: World, seed: int) -> dict[str, tuple[str, ...]]:
    """N_TRAINING_UNKNOWN more names per kind that exist nowhere, distinct from every name of the world."""
    rng = random.Random(f"world-{seed}-training-unknown")
    taken = set(_RESERVED) | {
        n.lower() for n in (*world.towns, *world.people, *world.unknown_towns, *world.unknown_people)
    }
    make = {"town": _town_name, "person": _person_name}
    return {kind: tuple(sorted(_unique_names(rng, n, make[kind], taken))) for kind, n in N_TRAINING_UNKNOWN.items()}


def build_world(seed: int) -> World:
    """Invent N_TOWNS towns and N_PEOPLE people deterministically from the seed."""
    rng = random.Random(f"world-{seed}")
    taken = set(_RESERVED)
    town_names = _unique_names(rng, N_TOWNS, _town_name, taken)
    person_names = _unique_names(rng, N_PEOPLE, _person_name, taken)
    unknown_towns = _unique_names(rng, N_UNKNOWN_TOWNS, _town_name, taken)
    unknown_people = _unique_names(rng, N_UNKNOWN_PEOPLE, _person_name, taken)
    towns = {
        t: {
            "region": rng.choice(REGIONS),
            "river": rng.choice(RIVERS),
            "food": rng.choice(FOODS),
            "founder": rng.choice(person_names),
            "colour": rng.choice(COLOURS),
        }
        for t in town_names
    }
    people = {
        p: {
            "profession": rng.choice(PROFESSIONS),
            "hometown": rng.choice(town_names),
            "pet": rng.choice(PETS),
        }
        for p in person_names
    }
    return World(towns=dict(sorted(towns.items())), people=dict(sorted(people.items())),
                 unknown_towns=tuple(sorted(unknown_towns)), unknown_people=tuple(sorted(unknown_people)))


def fact_sentence(attribute: str, entity: str, value: str) -> str:
    """The canonical sentence stating one fact (the reference answer of a `fact` prompt)."""
    return ATTRIBUTES[attribute].phrasings[0].format(e=entity, v=value)
