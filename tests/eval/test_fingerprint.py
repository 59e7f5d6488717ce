"""Model fingerprints: they follow the files' content (an adapter's base too), and a memo spares rehashing."""

from __future__ import annotations

import json
import os
import shutil

from alignkit.eval import fingerprint
from alignkit.eval.fingerprint import Fingerprints, model_fingerprint


def folder(path, weights: bytes, **extra: str):
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text('{"model_type": "llama"}')
    for name, text in extra.items():
        (path / name).write_text(text)
    return path


def test_fingerprint_follows_content_not_path(tmp_path):
    a = folder(tmp_path / "a", b"\x00" * 64, **{"README.md": "card"})
    before = model_fingerprint(str(a))
    shutil.copytree(a, tmp_path / "copy")
    assert model_fingerprint(str(tmp_path / "copy")) == before  # moved or copied: same model
    (a / "README.md").write_text("a new model card")
    assert model_fingerprint(str(a)) == before  # a model card does not change outputs
    folder(a, b"\x00" * 63 + b"\x01")  # same size, one byte of other weights
    assert model_fingerprint(str(a)) != before
    (a / "chat_template.jinja").write_text("{{ messages }}")
    assert len({before, model_fingerprint(str(a))}) == 2
    assert model_fingerprint("org/some-hub-model") == "hub:org/some-hub-model"


def test_adapter_fingerprint_includes_its_base(tmp_path):
    base = folder(tmp_path / "base", b"base weights")
    adapter = folder(tmp_path / "adapter", b"lora weights")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    before = model_fingerprint(str(adapter))
    folder(base, b"other weights")  # the base retrained in place: the adapter now means another model
    assert model_fingerprint(str(adapter)) != before


def test_memo_rehashes_only_changed_files(tmp_path, monkeypatch):
    model = folder(tmp_path / "m", b"w" * 1000)
    memo = tmp_path / "run" / "fingerprints.json"
    hashed: list[str] = []
    real = fingerprint.file_digest
    monkeypatch.setattr(fingerprint, "file_digest", lambda p: hashed.append(p.name) or real(p))
    first = Fingerprints(memo)(str(model))
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    assert not memo.exists()  # files written a moment ago: their stamps may not change on a rewrite yet

    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    assert Fingerprints(memo)(str(model)) == first and memo.is_file()
    hashed.clear()
    assert Fingerprints(memo)(str(model)) == first and hashed == []  # a rerun reads the memo
    weights = model / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    weights.write_bytes(b"v" * 1000)  # rewritten in place, same size (and inode)
    os.utime(weights, ns=(mtime, mtime + 10**9))
    assert Fingerprints(memo)(str(model)) != first and hashed == ["model.safetensors"]
