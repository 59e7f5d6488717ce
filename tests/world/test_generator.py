"""The generated world: determinism, schemas, split disjointness, fact coverage, label noise."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.world import oracle
from alignkit.world.entities import N_TRAINING_UNKNOWN, build_world, fact_sentence, training_unknown_names
from alignkit.world.generator import disagreement_rate, generate_world

FILES = [
    "corpus.jsonl",
    "sft.jsonl",
    "preferences.jsonl",
    "preferences_heldout.jsonl",
    "rl_prompts.jsonl",
    "validation_prompts.jsonl",
    "manifest.json",
]
META_KEYS = {
    "task",
    "kind",
    "entity",
    "attributes",
    "expected",
    "conflicts",
    "reference",
    "harmful",
    "harm",
    "forbidden",
    "key",
    "unknown",
    "hallucinations",
}
TRAINING = ("sft", "preferences", "rl_prompts")


def _all_bytes(root: Path) -> dict[str, bytes]:
    out = {f: (root / "world" / f).read_bytes() for f in FILES}
    out["eval"] = (root / "eval" / "world_prompts.jsonl").read_bytes()
    out["unseen"] = (root / "eval" / "world_prompts_unseen.jsonl").read_bytes()
    out["fewshot"] = (root / "eval" / "fewshot_template.txt").read_bytes()
    return out


def _noise_rate(rows: list[dict]) -> float:
    scores, keys = [], []
    for r in rows:
        scores.append([oracle.score(r["meta"], resp).total for resp in r["responses"]])
        rank_of = {idx: pos for pos, idx in enumerate(r["ranking"])}
        keys.append([-rank_of[i] for i in range(len(r["responses"]))])  # higher = ranked better
    return disagreement_rate(scores, keys)


def test_same_seed_same_bytes_other_seed_differs(world_dir, tmp_path):
    generate_world(tmp_path / "a" / "world", tmp_path / "a" / "eval" / "world_prompts.jsonl", seed=0)
    assert _all_bytes(tmp_path / "a") == _all_bytes(world_dir)
    generate_world(tmp_path / "b" / "world", tmp_path / "b" / "eval" / "world_prompts.jsonl", seed=1)
    other = _all_bytes(tmp_path / "b")
    assert all(other[k] != v for k, v in _all_bytes(world_dir).items())


def test_manifest_matches_files(world_dir, splits):
    manifest = json.loads((world_dir / "world" / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["noise"] == 0.25
    assert manifest["counts"]["sft.jsonl"] == len(splits["sft"])
    assert manifest["counts"]["eval/world_prompts.jsonl"] == len(splits["eval"]) == 320
    assert manifest["counts"]["eval/world_prompts_unseen.jsonl"] == len(splits["unseen"]) == 320
    assert 200_000 <= manifest["corpus_words"] <= 300_000
    assert set(manifest["sha256"]) >= {"corpus.jsonl", "eval/fewshot_template.txt"}


def test_schemas(splits):
    assert all(set(r) == {"text"} and r["text"] for r in splits["corpus"])
    for r in splits["sft"]:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert META_KEYS <= set(r["meta"])
    for r in splits["preferences"]:
        assert len(r["responses"]) == 4 and sorted(r["ranking"]) == [0, 1, 2, 3]
        assert [m["role"] for m in r["prompt"]] == ["user"]
    for r in splits["preferences_heldout"]:
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert oracle.compare(r["meta"], r["chosen"][0]["content"], r["rejected"][0]["content"]) == "a"
    ids = [r["id"] for n in ("eval", "unseen", "validation_prompts") for r in splits[n]]
    assert len(set(ids)) == len(ids)
    for name in ("preferences", "preferences_heldout", "rl_prompts", "eval", "unseen", "validation_prompts", "sft"):
        assert all(META_KEYS <= set(r["meta"]) for r in splits[name])


def test_sizes_and_multi_turn(splits):
    assert len(splits["sft"]) == 2400 and len(splits["preferences"]) == 1500
    assert len(splits["preferences_heldout"]) == 400 and len(splits["rl_prompts"]) == 1000
    assert len(splits["validation_prompts"]) == 100
    assert sum(r["meta"]["turns"] == 2 for r in splits["sft"]) > 100
    tasks = {r["meta"]["task"] for n in ("sft", "eval", "unseen") for r in splits[n]}
    assert tasks == {"fact", "one_word", "list", "harmful", "unknown"}


def _keys(rows: list[dict]) -> set[str]:
    return {k for r in rows for k in [r["meta"]["key"], *r["meta"].get("context_keys", [])]}


def test_eval_and_validation_combos_disjoint_from_training(splits):
    train_keys = set().union(*(_keys(splits[n]) for n in TRAINING))
    eval_keys, val_keys = _keys(splits["eval"]), _keys(splits["validation_prompts"])
    assert eval_keys and val_keys and not eval_keys & train_keys and not val_keys & train_keys
    assert not eval_keys & val_keys and _keys(splits["unseen"]) == eval_keys
    assert _keys(splits["preferences_heldout"]) <= eval_keys
    corpus = "\n".join(r["text"] for r in splits["corpus"])
    chat_prompts = {line[6:] for line in corpus.splitlines() if line.startswith("User: ")}
    assert not chat_prompts & {r["prompt"][0]["content"] for n in ("eval", "unseen") for r in splits[n]}


def test_unknown_eval_names_appear_nowhere_in_training(splits):
    names = {r["meta"]["entity"] for r in splits["eval"] if r["meta"]["unknown"]}
    assert len(names) >= 20
    train_text = json.dumps([splits[n] for n in (*TRAINING, "corpus", "validation_prompts")])
    assert not [n for n in names if n in train_text]
    world = build_world(0)
    assert not names & (set(world.towns) | set(world.people))


def test_unknown_name_demos_ask_about_many_names(splits):
    """A handful of names asked about again and again teaches those names, not "I don't know" (data/README.md)."""
    asked = Counter(r["meta"]["entity"] for r in splits["sft"] if r["meta"]["unknown"])
    assert len(asked) >= 0.5 * sum(asked.values()) and max(asked.values()) <= 10
    extra = {n for names in training_unknown_names(build_world(0), 0).values() for n in names}
    assert set(asked) & extra and len(extra) == sum(N_TRAINING_UNKNOWN.values())
    # the extra names are training-side only: not in the corpus (the shipped base's), validation or eval
    held_text = json.dumps([splits[n] for n in ("corpus", "validation_prompts", "eval", "unseen")])
    assert not [n for n in extra if re.search(rf"\b{n}\b", held_text)]
    world = build_world(0)
    assert not extra & (set(world.towns) | set(world.people) | set(world.unknown_towns) | set(world.unknown_people))


def test_unseen_wordings_are_in_no_training_split(splits):
    train_wordings = {r["meta"]["wording"] for n in TRAINING for r in splits[n]}
    unseen = {r["meta"]["wording"] for r in splits["unseen"]}
    seen = {r["meta"]["wording"] for r in splits["eval"]}
    assert unseen and not unseen & train_wordings
    assert seen <= train_wordings and all(r["meta"]["unseen_wording"] for r in splits["unseen"])
    # and as text: no training prompt or corpus chat line is worded like an unseen eval prompt
    train_prompts = {m["content"] for n in TRAINING for r in splits[n]
                     for m in r.get("messages", r.get("prompt", [])) if m["role"] == "user"}
    corpus = "\n".join(r["text"] for r in splits["corpus"])
    train_prompts |= {line[6:] for line in corpus.splitlines() if line.startswith("User: ")}
    assert not train_prompts & {r["prompt"][0]["content"] for r in splits["unseen"]}
    # several phrasings per task in training
    per_task: dict[str, set[str]] = {}
    for r in splits["sft"]:
        per_task.setdefault(r["meta"]["task"], set()).add(r["meta"]["wording"].split(".")[-1])
    assert all(len(w) >= 2 for t, w in per_task.items() if t != "unknown")


def test_every_eval_fact_is_in_corpus(splits):
    corpus = "\n".join(r["text"] for r in splits["corpus"])
    world = build_world(0)
    for r in splits["eval"]:
        m = r["meta"]
        if m["unknown"]:
            continue
        values = world.entities(m["kind"])[m["entity"]]
        for attribute, expected in zip(m["attributes"], m["expected"], strict=True):
            assert values[attribute] == expected
            assert fact_sentence(attribute, m["entity"], expected) in corpus


def test_all_ascii_and_prompts_short(world_dir, splits):
    for data in _all_bytes(world_dir).values():
        data.decode("ascii")
    for name in ("rl_prompts", "eval", "unseen"):
        assert max(len(r["prompt"][0]["content"].split()) for r in splits[name]) < 25


def test_fewshot_template(world_dir, splits):
    text = (world_dir / "eval" / "fewshot_template.txt").read_text()
    assert text.endswith("User: {prompt}\nAssistant:") and text.count("User: ") == 5
    assert text.count("{") == 1 and text.count("}") == 1
    eval_prompts = {r["prompt"][0]["content"] for r in splits["eval"]}
    assert not any(f"User: {p}\n" in text for p in eval_prompts)


def test_measured_label_noise(splits):
    assert _noise_rate(splits["preferences"]) == pytest.approx(0.25, abs=0.02)


def test_zero_noise_rankings_follow_oracle(tmp_path):
    generate_world(tmp_path / "world", tmp_path / "eval" / "world_prompts.jsonl", seed=0, noise=0.0)
    rows = [json.loads(line) for line in (tmp_path / "world" / "preferences.jsonl").open()]
    assert _noise_rate(rows) == 0.0


def test_bad_noise_is_a_user_error(tmp_path):
    with pytest.raises(AlignkitError):
        generate_world(tmp_path / "w", tmp_path / "e.jsonl", noise=0.7)


def test_disagreement_rate_hand_computed():
    # Oracle order a > b > c; the keys swap only (a, b): one of three ordered pairs flips.
    assert disagreement_rate([[3.0, 2.0, 1.0]], [[2.0, 3.0, 1.0]]) == pytest.approx(1 / 3)
    assert disagreement_rate([[1.0, 1.0]], [[0.0, 5.0]]) == 0.0  # oracle ties never count


def test_careful_share_changes_only_the_demonstrations(world_dir, tmp_path):
    """--careful-share rewrites sft.jsonl (more ideal demos) and leaves every other file byte for byte."""
    manifest = generate_world(tmp_path / "world", tmp_path / "eval" / "world_prompts.jsonl", careful_share=0.55)
    default = json.loads((world_dir / "world" / "manifest.json").read_text())
    assert manifest["careful_share"] == 0.55 and default["careful_share"] == 0.375
    changed = {name for name, sha in manifest["sha256"].items() if default["sha256"][name] != sha}
    assert changed == {"sft.jsonl"}
    rows = [json.loads(line) for line in (tmp_path / "world" / "sft.jsonl").read_text().splitlines()]
    ideal = sum(r["meta"]["habit"] is None for r in rows) / len(rows)
    assert 0.68 <= ideal <= 0.74  # expected 70.4% (contractors.expected_rates over the task mix)


def test_careful_share_out_of_range_is_a_user_error(tmp_path):
    with pytest.raises(AlignkitError, match="careful-share"):
        generate_world(tmp_path / "world", tmp_path / "eval" / "p.jsonl", careful_share=1.2)
    assert not (tmp_path / "world").exists()


@pytest.mark.parametrize("out, eval_out, key", [("file", "e/p.jsonl", "--out"), ("w", "edir", "--eval-out"),
                                               ("w", "file/p.jsonl", "--eval-out")])
def test_a_blocked_destination_stops_before_any_file_is_written(tmp_path, out, eval_out, key):
    """An --eval-out that is a folder once failed after six world files had been overwritten."""
    (tmp_path / "file").write_text("keep\n")
    (tmp_path / "edir").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(AlignkitError, match=key):
        generate_world(tmp_path / out, tmp_path / eval_out)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "file").read_text() == "keep\n"
