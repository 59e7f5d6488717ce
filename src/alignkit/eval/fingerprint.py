"""Content fingerprints of model folders: eval cache keys that change when a model changes, not when its path does.

A model retrained or replaced at the same path must not reuse the old completions or verdicts, and
a model copied elsewhere may reuse them. The fingerprint hashes every file of the folder that
decides the model's outputs (weights, config, generation config, tokenizer, chat template; an
adapter's base folder too). Hashing a multi-GB checkpoint takes seconds, so each file's digest is
remembered on disk with its size, mtime, ctime and inode: a rerun rehashes only files that changed
(ctime cannot be set back by tools that copy timestamps, so a replaced file is always rehashed).
File times tick in steps of a few milliseconds, so a file written just before it was hashed could be
rewritten with the same stamp: such "racy" digests are not remembered (git's racy-clean rule).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from alignkit.eval.generate import settings_hash
from alignkit.models import adapter_base
from alignkit.runio import atomic_write_text

# Files that never change what a model generates (a model card rewritten after training).
IGNORED_SUFFIXES = (".md",)
# A file changed less than this long before it was hashed is hashed again next time.
RACY_NS = 2_000_000_000


def file_stamp(path: Path) -> list[int]:
    """What changes whenever a file's bytes may have changed (size, mtime, ctime, inode)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that decide its outputs (subfolders such as checkpoints are not read)."""
    return sorted(f for f in folder.iterdir()
                  if f.is_file() and not f.name.startswith(".") and f.suffix not in IGNORED_SUFFIXES)


class Fingerprints:
    """Model fingerprints; per-file digests are remembered in `memo_path` (JSON) when one is given."""

    def __init__(self, memo_path: str | Path | None = None):
        self.memo_path = Path(memo_path) if memo_path else None
        self.memo: dict[str, Any] = {}
        if self.memo_path and self.memo_path.is_file():
            try:
                self.memo = json.loads(self.memo_path.read_text())
            except json.JSONDecodeError:
                self.memo = {}  # a damaged memo only costs a rehash
        self._dirty = False

    def digest(self, path: Path) -> str:
        """A file's digest, from the memo while its stamp is unchanged."""
        key, stamp = str(path.resolve()), file_stamp(path)
        hit = self.memo.get(key)
        if hit and hit.get("stamp") == stamp:
            return str(hit["digest"])
        digest = file_digest(path)
        if time.time_ns() - max(stamp[1], stamp[2]) >= RACY_NS:
            self.memo[key] = {"stamp": stamp, "digest": digest}
            self._dirty = True
        return digest

    def __call__(self, path: str) -> str:
        """The fingerprint of a model folder (an adapter: its files and its base's); a Hub id stands for itself."""
        folder = Path(path)
        if not folder.is_dir():
            return f"hub:{path}"  # not local: the id (and the Hub's revision) is all there is to key on
        parts: list[Any] = [[f.name, self.digest(f)] for f in model_files(folder)]
        base = adapter_base(path)
        if base and Path(base).resolve() != folder.resolve():
            parts.append(["base", self(base)])
        self.save()
        return settings_hash(parts)

    def save(self) -> None:
        """Write the memo atomically when it gained entries."""
        if self.memo_path and self._dirty:
            atomic_write_text(self.memo_path, json.dumps(self.memo, sort_keys=True))
            self._dirty = False


def model_fingerprint(path: str) -> str:
    """The fingerprint of a model folder, hashed afresh (no memo)."""
    return Fingerprints()(path)
