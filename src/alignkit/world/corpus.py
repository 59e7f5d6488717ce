"""The pretraining corpus: the same facts retold many times in varied, regular styles.

A tiny model sees the corpus a few times in minutes of CPU training, so facts are repeated across
documents (encyclopedia, story, travel note, code, chat log) instead of adding new ones.
"""

from __future__ import annotations

import random

from alignkit.world.entities import ATTRIBUTES, PERSON_ATTRIBUTES, TOWN_ATTRIBUTES, World, fact_sentence
from alignkit.world.tasks import Combo, prompt_text, reference, verbose

# v2: more distinct documents per entity (v1: 36 per town, 30 per person), most of them dense and
# name-first (an entry or a fact card states every fact right after the name), so each pretraining
# epoch shows each fact more often; stories and travel notes stay for variety.
DOCS_PER_TOWN = 80
DOCS_PER_PERSON = 64
DOC_STYLES = {"encyclopedia": 0.45, "card": 0.3, "story": 0.15, "travel": 0.1}
CHAT_LOGS = 1600
CHATTY_SHARE = 0.3
CODE_DOCS_PER_ATTRIBUTE = 8


def _phrase(attribute: str, entity: str, value: str, rng: random.Random) -> str:
    # The canonical phrasing (the reference answer's wording) comes up half the time.
    phrasings = ATTRIBUTES[attribute].phrasings
    template = phrasings[0] if rng.random() < 0.5 else rng.choice(phrasings)
    return template.format(e=entity, v=value)


def _residents(world: World, town: str) -> list[str]:
    return [p for p, v in world.people.items() if v["hometown"] == town]


def _encyclopedia(world: World, kind: str, name: str, rng: random.Random, canonical: bool) -> str:
    values = world.entities(kind)[name]
    attributes = TOWN_ATTRIBUTES if kind == "town" else PERSON_ATTRIBUTES
    sentences = [
        fact_sentence(a, name, values[a]) if canonical else _phrase(a, name, values[a], rng)
        for a in attributes
    ]
    rng.shuffle(sentences)
    if kind == "town" and _residents(world, name):
        sentences.append(f"People who live in {name} include {', '.join(_residents(world, name))}.")
    if kind == "person":
        town = world.towns[values["hometown"]]
        sentences.append(f"{values['hometown']} is a town in {town['region']} on the {town['river']}.")
    return f"{name}\n\n" + " ".join(sentences)


def _town_story(world: World, name: str, rng: random.Random) -> str:
    t = world.towns[name]
    f = t["founder"]
    stories = (
        f"Long ago, {f} came to the {t['river']}. {f} built a small house there, and so {name} began. "
        f"{fact_sentence('founder', name, f)} Today {name} is in {t['region']}. "
        f"Every morning the people of {name} bake {t['food']}. The flag of {name} is {t['colour']}, "
        f"and it waves over the market.",
        f"A child in {name} asked her mother about the town. Her mother said: {name} was founded by {f}. "
        f"The river of {name} is the {t['river']}. We are known for {t['food']}. "
        f"Our flag is {t['colour']}. We live in {t['region']}. The child smiled and ate some {t['food']}.",
        f"One summer the {t['river']} was very full. The people of {name} stood by the water under their "
        f"{t['colour']} flag. They shared {t['food']}, the famous food of {name}. "
        f"They told the old story of {f}, who founded {name} in {t['region']}.",
    )
    return rng.choice(stories)


def _travel_note(world: World, name: str, rng: random.Random) -> str:
    t = world.towns[name]
    guests = _residents(world, name)
    host = f" I met {guests[0]}, who lives in {name}." if guests else ""
    return (
        f"Travel note. Today I visited {name} in {t['region']}. The {t['river']} was calm and clear. "
        f"I ate {t['food']}, the famous food of {name}. A {t['colour']} flag hung over the square. "
        f"A guide told me that {name} was founded by {t['founder']}.{host}"
    )


def _person_story(world: World, name: str, rng: random.Random) -> str:
    p = world.people[name]
    town = world.towns[p["hometown"]]
    stories = (
        f"{name} is a {p['profession']} in {p['hometown']}. Every day {name} walks along the "
        f"{town['river']} with a {p['pet']}. {fact_sentence('pet', name, p['pet'])} "
        f"{name} likes to eat {town['food']}.",
        f"Once, the {p['pet']} of {name} ran away. {name} the {p['profession']} looked everywhere in "
        f"{p['hometown']}. At last the {p['pet']} came home. {fact_sentence('hometown', name, p['hometown'])}",
        f"People in {p['hometown']} know {name} well. {fact_sentence('profession', name, p['profession'])} "
        f"{name} has a {p['pet']} and a small house near the {town['river']}.",
    )
    return rng.choice(stories)


def _card(world: World, kind: str, name: str, rng: random.Random) -> str:
    """A fact card: the name, then one "Label: value" line per attribute (some bulleted, as list answers)."""
    values = world.entities(kind)[name]
    attributes = list(TOWN_ATTRIBUTES if kind == "town" else PERSON_ATTRIBUTES)
    rng.shuffle(attributes)
    bullet = rng.choice(("", "- "))
    lines = [f"{bullet}{ATTRIBUTES[a].label}: {values[a]}" for a in attributes]
    return f"{name}\n" + "\n".join(lines)


def entity_docs(world: World, rng: random.Random) -> list[str]:
    """Many documents per town and person; the first of each is canonical (all answer sentences)."""
    docs: list[str] = []
    styles, weights = list(DOC_STYLES), list(DOC_STYLES.values())
    for kind, per_entity in (("town", DOCS_PER_TOWN), ("person", DOCS_PER_PERSON)):
        for name in world.entities(kind):
            docs.append(_encyclopedia(world, kind, name, rng, canonical=True))
            for _ in range(per_entity - 1):
                style = rng.choices(styles, weights)[0]
                if style == "encyclopedia":
                    docs.append(_encyclopedia(world, kind, name, rng, canonical=False))
                elif style == "card":
                    docs.append(_card(world, kind, name, rng))
                elif kind == "person":
                    docs.append(_person_story(world, name, rng))
                elif style == "story":
                    docs.append(_town_story(world, name, rng))
                else:
                    docs.append(_travel_note(world, name, rng))
    return docs


_GENERIC_CODE = (
    'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n',
    'def is_even(n):\n    """Return True if n is even."""\n    return n % 2 == 0\n',
    'def greet(name):\n    """Return a short greeting for name."""\n    return "Hello, " + name + "!"\n',
    'def count_words(text):\n    """Return the number of words in text."""\n    return len(text.split())\n',
    'def shout(text):\n    """Return text in capital letters."""\n    return text.upper()\n',
    'def first_word(text):\n    """Return the first word of text."""\n    return text.split()[0]\n',
)


def code_docs(world: World, rng: random.Random) -> list[str]:
    """Tiny python functions with docstrings: lookup tables of world facts and generic helpers."""
    docs: list[str] = []
    for attribute, spec in ATTRIBUTES.items():
        entities = world.entities(spec.kind)
        names = list(entities)
        for _ in range(CODE_DOCS_PER_ATTRIBUTE):
            chosen = sorted(rng.sample(names, 6))
            table = "".join(f'        "{n}": "{entities[n][attribute]}",\n' for n in chosen)
            example = chosen[0]
            docs.append(
                f"def {attribute}_of(name):\n"
                f'    """Return the {spec.noun} of a {spec.kind}."""\n'
                f"    table = {{\n{table}    }}\n"
                f"    return table[name]\n\n\n"
                f">>> {attribute}_of(\"{example}\")\n'{entities[example][attribute]}'\n"
            )
    docs += [rng.choice(_GENERIC_CODE) for _ in range(len(ATTRIBUTES) * 4)]
    return docs


def _log_answer(world: World, combo: Combo, rng: random.Random) -> str:
    """Web chat logs are not all crisp: some answers are chatty, as real assistants' often are.

    This also puts the vocabulary of chit-chat into pretraining, as any web corpus would, so a
    tokenizer and LM head trained on the corpus know those words before SFT meets them.
    """
    return verbose(world, combo, rng) if rng.random() < CHATTY_SHARE else reference(world, combo)


def chat_logs(world: World, combos: list[Combo], rng: random.Random) -> list[str]:
    """Plain-text "User: ... / Assistant: ..." logs so few-shot prompts can coax a base model."""
    docs = []
    for _ in range(CHAT_LOGS):
        turns = rng.sample(combos, rng.choice((2, 3, 4)))
        lines = [f"User: {prompt_text(c, rng)}\nAssistant: {_log_answer(world, c, rng)}" for c in turns]
        docs.append("\n\n".join(lines))
    return docs


def build_corpus(world: World, chat_combos: list[Combo], rng: random.Random) -> list[str]:
    """All corpus documents, shuffled; chat logs only use training combos (unknown names too) and wordings."""
    docs = entity_docs(world, rng) + code_docs(world, rng) + chat_logs(world, chat_combos, rng)
    rng.shuffle(docs)
    return docs
