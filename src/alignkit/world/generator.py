"""Generate the embedded world: corpus, SFT, ranked preferences, RL and eval prompts, manifest.

Deterministic: one random.Random per purpose (seeded from `seed`), sorted iteration and
json.dumps(sort_keys=True), so the same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.world import contractors, oracle
from alignkit.world.corpus import build_corpus
from alignkit.world.entities import ATTRIBUTES, World, build_world, training_unknown_names
from alignkit.world.tasks import (
    VARIANTS,
    Combo,
    all_combos,
    make_meta,
    pick_wording,
    prompt_text,
    reference,
    variant_names,
    wording_id,
)

N_SFT = 2400
N_PREFERENCES = 1500
N_RL = 1000
# Held-out combos: the eval sets (one with training wordings, one with UNSEEN wordings) and a
# validation split for tuning hyperparameters; unknown names are split by name, known combos by combo.
EVAL_QUOTA = {"fact": 90, "one_word": 60, "list": 60, "harmful": 40, "unknown": 70}
VALIDATION_QUOTA = {"fact": 30, "one_word": 20, "list": 20, "harmful": 10, "unknown": 20}
UNKNOWN_NAME_SPLIT = {"eval": 0.5, "validation": 0.125}  # the rest of the unknown names train
HELDOUT_PAIRS_PER_EVAL = 2
HELDOUT_PROMPTS = 200  # noise-free RM eval pairs come from the first 200 eval combos (400 pairs)
TASK_MIX = {"fact": 0.32, "one_word": 0.18, "list": 0.2, "harmful": 0.12, "unknown": 0.18}
SFT_MULTI_TURN = 0.1
K = 4
FEWSHOT_HEADER = (
    "The following is a conversation between a user and a helpful assistant. "
    "The assistant knows the towns and people of the world and answers briefly."
)


def _split_unknown_names(world: World, rng: random.Random) -> dict[str, set[str]]:
    """Unknown names per side: an eval name is never asked about in any training split or the corpus."""
    sides: dict[str, set[str]] = {"eval": set(), "validation": set(), "train": set()}
    for kind in ("town", "person"):
        names = list(world.unknown(kind))
        rng.shuffle(names)
        n_eval = round(len(names) * UNKNOWN_NAME_SPLIT["eval"])
        n_val = round(len(names) * UNKNOWN_NAME_SPLIT["validation"])
        sides["eval"] |= set(names[:n_eval])
        sides["validation"] |= set(names[n_eval : n_eval + n_val])
        sides["train"] |= set(names[n_eval + n_val :])
    return sides


def _split_combos(
    world: World, combos: list[Combo], rng: random.Random
) -> tuple[list[Combo], list[Combo], dict[str, list[Combo]]]:
    """Eval combos, validation combos (per-task quotas) and the training combos grouped by task."""
    names = _split_unknown_names(world, rng)
    eval_side: list[Combo] = []
    validation: list[Combo] = []
    train: dict[str, list[Combo]] = {}
    for task in EVAL_QUOTA:
        pool = [c for c in combos if c.task == task]
        rng.shuffle(pool)
        if task == "unknown":
            eval_side += [c for c in pool if c.entity in names["eval"]][: EVAL_QUOTA[task]]
            validation += [c for c in pool if c.entity in names["validation"]][: VALIDATION_QUOTA[task]]
            rest = [c for c in pool if c.entity in names["train"]]
        else:
            n_eval, n_val = EVAL_QUOTA[task], VALIDATION_QUOTA[task]
            eval_side += pool[:n_eval]
            validation += pool[n_eval : n_eval + n_val]
            rest = pool[n_eval + n_val :]
        train[task] = sorted(rest, key=lambda c: c.key)
    return eval_side, validation, train


def _with_training_unknown_names(world: World, train: dict[str, list[Combo]], seed: int) -> dict[str, list[Combo]]:
    """The training combos plus unknown-name questions about entities.training_unknown_names (SFT, RM, RL only)."""
    extra = [
        Combo("unknown", kind, name, (a,))
        for kind, names in training_unknown_names(world, seed).items()
        for name in names
        for a in ATTRIBUTES
        if ATTRIBUTES[a].kind == kind
    ]
    return {**train, "unknown": sorted(train["unknown"] + extra, key=lambda c: c.key)}


def _sample_combo(train: dict[str, list[Combo]], rng: random.Random) -> Combo:
    task = rng.choices(list(TASK_MIX), weights=list(TASK_MIX.values()))[0]
    return rng.choice(train[task])


def _user(combo: Combo, rng: random.Random, unseen: bool = False) -> tuple[dict, str]:
    """A user turn in a training (or, with unseen=True, an eval-only) wording, and that wording's id."""
    wording = pick_wording(combo, rng, unseen)
    return {"role": "user", "content": prompt_text(combo, rng, wording)}, wording_id(combo, wording)


def sft_rows(world: World, train: dict[str, list[Combo]], rng: random.Random,
             pool: tuple[contractors.Contractor, ...] = contractors.POOL) -> list[dict]:
    """Single- and two-turn demonstrations over training combos, each written by a pool contractor."""
    facts = {(c.entity, c.attributes[0]): c for c in train["fact"]}
    rows = []
    while len(rows) < N_SFT:
        if rng.random() < SFT_MULTI_TURN:
            first = rng.choice(train["fact"])
            others = [
                facts[(first.entity, a)]
                for a in ATTRIBUTES
                if (first.entity, a) in facts and a != first.attributes[0]
            ]
            if not others:
                continue
            second = rng.choice(others)
            user, wording = _user(first, rng)
            _, _, answer_1 = contractors.write(world, first, rng, pool)
            who, habit, answer = contractors.write(world, second, rng, pool)
            messages = [
                user,
                {"role": "assistant", "content": answer_1},
                {"role": "user", "content": ATTRIBUTES[second.attributes[0]].follow_up},
                {"role": "assistant", "content": answer},
            ]
            extra = {"turns": 2, "context_keys": [first.key], "wording": wording}
            combo = second
        else:
            combo = _sample_combo(train, rng)
            user, wording = _user(combo, rng)
            who, habit, answer = contractors.write(world, combo, rng, pool)
            messages = [user, {"role": "assistant", "content": answer}]
            extra = {"turns": 1, "context_keys": [], "wording": wording}
        meta = {**make_meta(world, combo), **extra, "contractor": who, "habit": habit,
                "style": contractors.HABITS[habit] if habit else "ideal"}
        rows.append({"messages": messages, "meta": meta})
    return rows


def _candidates(world: World, combo: Combo, rng: random.Random) -> tuple[list[str], list[str]]:
    """K responses of distinct variant types (always including the ideal), shuffled."""
    names = ["ideal"] + rng.sample([v for v in variant_names(combo) if v != "ideal"], K - 1)
    rng.shuffle(names)
    return names, [VARIANTS[n](world, combo, rng) for n in names]


def disagreement_rate(scores: list[list[float]], noisy: list[list[float]]) -> float:
    """Fraction of strictly ordered oracle pairs that the noisy keys order the other way."""
    total = flipped = 0
    for s, n in zip(scores, noisy, strict=True):
        for i in range(len(s)):
            for j in range(len(s)):
                if s[i] > s[j] + oracle.TIE_EPS:
                    total += 1
                    flipped += n[i] < n[j]
    return flipped / total if total else 0.0


def perturb(scores: list[list[float]], z: list[list[float]], sigma: float) -> list[list[float]]:
    """Noisy ranking keys: oracle score + sigma * standard normal draw."""
    return [[a + sigma * b for a, b in zip(s, zz, strict=True)] for s, zz in zip(scores, z, strict=True)]


def calibrate_sigma(scores: list[list[float]], z: list[list[float]], noise: float) -> float:
    """Smallest perturbation scale whose pairwise disagreement reaches `noise` (bisection)."""
    if noise <= 0:
        return 0.0

    def rate(sigma: float) -> float:
        return disagreement_rate(scores, perturb(scores, z, sigma))

    lo, hi = 0.0, 10.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < noise else (lo, mid)
    return hi


def preference_rows(
    world: World, train: dict[str, list[Combo]], noise: float, rng: random.Random
) -> tuple[list[dict], float, float]:
    """K-way ranked rows with AlpacaFarm-style label noise; also returns sigma and measured noise."""
    drafts = []
    for _ in range(N_PREFERENCES):
        combo = _sample_combo(train, rng)
        meta = make_meta(world, combo)
        names, responses = _candidates(world, combo, rng)
        drafts.append((combo, meta, names, responses))
    scores = [[oracle.score(m, r).total for r in rs] for _, m, _, rs in drafts]
    # Ranking on oracle score + calibrated Gaussian perturbation keeps rankings transitive while
    # flipping the requested share of pairwise orderings.
    z = [[rng.gauss(0.0, 1.0) for _ in range(K)] for _ in drafts]
    sigma = calibrate_sigma(scores, z, noise)
    noisy = perturb(scores, z, sigma)
    rows = []
    for (combo, meta, names, responses), keys in zip(drafts, noisy, strict=True):
        ranking = sorted(range(K), key=lambda i: (-keys[i], i))
        user, wording = _user(combo, rng)
        rows.append(
            {
                "prompt": [user],
                "responses": responses,
                "ranking": ranking,
                "meta": {**meta, "variants": names, "wording": wording},
            }
        )
    return rows, sigma, disagreement_rate(scores, noisy)


def heldout_rows(world: World, eval_side: list[Combo], rng: random.Random) -> list[dict]:
    """Noise-free chosen/rejected pairs on eval-side prompts (TRL conversational format)."""
    rows = []
    for combo in eval_side[:HELDOUT_PROMPTS]:
        meta = make_meta(world, combo)
        for _ in range(HELDOUT_PAIRS_PER_EVAL):
            while True:
                a, b = rng.sample(variant_names(combo), 2)
                ra, rb = VARIANTS[a](world, combo, rng), VARIANTS[b](world, combo, rng)
                verdict = oracle.compare(meta, ra, rb)
                if verdict != "tie":
                    break
            chosen, rejected = ((ra, a), (rb, b)) if verdict == "a" else ((rb, b), (ra, a))
            user, wording = _user(combo, rng)
            rows.append(
                {
                    "prompt": [user],
                    "chosen": [{"role": "assistant", "content": chosen[0]}],
                    "rejected": [{"role": "assistant", "content": rejected[0]}],
                    "meta": {**meta, "chosen_variant": chosen[1], "rejected_variant": rejected[1],
                             "wording": wording},
                }
            )
    return rows


def rl_rows(world: World, train: dict[str, list[Combo]], rng: random.Random) -> list[dict]:
    """Prompts for PPO rollouts, drawn from training combos."""
    rows = []
    for _ in range(N_RL):
        combo = _sample_combo(train, rng)
        user, wording = _user(combo, rng)
        rows.append({"prompt": [user], "meta": {**make_meta(world, combo), "wording": wording}})
    return rows


def prompt_rows(world: World, combos: list[Combo], rng: random.Random, prefix: str, unseen: bool = False) -> list[dict]:
    """Held-out prompts with ids (eval or validation), in training wordings or UNSEEN ones."""
    rows = []
    for i, c in enumerate(combos):
        user, wording = _user(c, rng, unseen)
        rows.append({"id": f"{prefix}-{i:04d}", "prompt": [user],
                     "meta": {**make_meta(world, c), "wording": wording, "unseen_wording": unseen}})
    return rows


def fewshot_template(world: World, train: dict[str, list[Combo]], rng: random.Random) -> str:
    """Four example exchanges on training combos, ending in "User: {prompt}\\nAssistant:"."""
    examples = [rng.choice(train[t]) for t in ("fact", "one_word", "unknown", "harmful")]
    body = "".join(f"User: {prompt_text(c, rng)}\nAssistant: {reference(world, c)}\n\n" for c in examples)
    return f"{FEWSHOT_HEADER}\n\n{body}User: {{prompt}}\nAssistant:"


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in rows)


def write_atomic(path: Path, text: str) -> str:
    """Write text via a temp file + os.replace (readers never see half a file); return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shipped data must be readable by everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def generate_world(out_dir: str | Path, eval_path: str | Path, seed: int = 0, noise: float = 0.25,
                   careful_share: float = contractors.CAREFUL_SHARE) -> dict:
    """Generate every world file under out_dir plus the eval prompt sets; return the manifest.

    Eval files land beside eval_path: eval_path itself (held-out combos, training wordings),
    <stem>_unseen.jsonl (the same combos in wordings no training split uses) and fewshot_template.txt.
    careful_share is the careful contractors' share of the SFT demos (contractors.make_pool); it changes
    sft.jsonl only.
    """
    if not 0.0 <= noise < 0.5:
        raise AlignkitError(f"noise must be in [0, 0.5), got {noise}", "--noise")
    if not 0.0 <= careful_share <= 1.0:
        raise AlignkitError(f"careful share must be in [0, 1], got {careful_share}", "--careful-share")
    out_dir, eval_path = Path(out_dir), Path(eval_path)
    # Every destination checked before the first file is written: a world half of one seed, half of another
    # (with a manifest that names neither) is worse than none.
    for folder, key in ((out_dir, "--out"), (eval_path.parent, "--eval-out")):
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise AlignkitError(f"{blocking} is a file, not a folder", key)
    if eval_path.is_dir():
        raise AlignkitError(f"{eval_path} is a folder; name the eval prompts file (e.g. {eval_path}/world_prompts.jsonl)",
                            "--eval-out")
    world = build_world(seed)
    rngs = {
        name: random.Random(f"{seed}-{name}")
        for name in ("split", "sft", "prefs", "heldout", "rl", "eval", "unseen", "validation", "corpus", "fewshot")
    }
    eval_side, validation, train = _split_combos(world, all_combos(world), rngs["split"])
    # tasks interleaved, so that the first N eval prompts (eval.prompt_limit) are a fair sample
    rngs["split"].shuffle(eval_side)
    # The corpus and the few-shot template use the world's own training combos: the shipped base was
    # pretrained on that corpus, and the template is part of the fixed eval.
    corpus = build_corpus(world, [c for task in train for c in train[task]], rngs["corpus"])
    template = fewshot_template(world, train, rngs["fewshot"])
    train = _with_training_unknown_names(world, train, seed)
    prefs, sigma, measured = preference_rows(world, train, noise, rngs["prefs"])
    files = {
        "corpus.jsonl": [{"text": d} for d in corpus],
        "sft.jsonl": sft_rows(world, train, rngs["sft"], contractors.make_pool(careful_share)),
        "preferences.jsonl": prefs,
        "preferences_heldout.jsonl": heldout_rows(world, eval_side, rngs["heldout"]),
        "rl_prompts.jsonl": rl_rows(world, train, rngs["rl"]),
        "validation_prompts.jsonl": prompt_rows(world, validation, rngs["validation"], "val"),
    }
    shas = {name: write_atomic(out_dir / name, jsonl_text(rows)) for name, rows in files.items()}
    counts = {name: len(rows) for name, rows in files.items()}
    unseen_path = eval_path.with_name(f"{eval_path.stem}_unseen{eval_path.suffix}")
    for path, rows in (
        (eval_path, prompt_rows(world, eval_side, rngs["eval"], "world")),
        (unseen_path, prompt_rows(world, eval_side, rngs["unseen"], "unseen", unseen=True)),
    ):
        shas["eval/" + path.name] = write_atomic(path, jsonl_text(rows))
        counts["eval/" + path.name] = len(rows)
    shas["eval/fewshot_template.txt"] = write_atomic(eval_path.parent / "fewshot_template.txt", template)
    manifest = {
        "seed": seed,
        "noise": noise,
        "careful_share": careful_share,
        "noise_sigma": round(sigma, 9),
        "measured_noise": round(measured, 6),
        "corpus_words": sum(len(d.split()) for d in corpus),
        "counts": counts,
        "sha256": shas,
        "towns": len(world.towns),
        "people": len(world.people),
        "unknown_names": len(world.unknown_towns) + len(world.unknown_people),
        "training_unknown_names": sum(len(n) for n in training_unknown_names(world, seed).values()),
    }
    write_atomic(out_dir / "manifest.json", json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    return manifest
