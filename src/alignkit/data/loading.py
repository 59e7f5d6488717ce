"""Load a dataset named in a recipe (local json/jsonl/parquet/csv/txt or a Hub id) with clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from alignkit.config.base import DatasetSpec
from alignkit.errors import AlignkitError

log = logging.getLogger(__name__)

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text", ".arrow": "arrow"}


def data_files(folder: Path) -> list[str]:
    """The data files under a folder, hidden ones and those in hidden folders (.ipynb_checkpoints/, .git/) and
    __MACOSX/ left out: a notebook's checkpoint copy would otherwise train every row twice."""
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in BUILDERS and p.is_file()
                  and not any(part.startswith((".", "__")) for part in p.relative_to(folder).parts))


def load_spec(spec: DatasetSpec, where: str = "data.datasets") -> Any:
    """A datasets.Dataset (or IterableDataset when streaming) with the recipe's column mapping applied."""
    import datasets

    datasets.disable_progress_bars()
    # Its JSON builder logs an ERROR before it raises; the raise becomes one line naming file:row below.
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    path = Path(spec.path).expanduser()
    files: list[str] = []
    try:
        if path.exists():
            files = data_files(path) if path.is_dir() else [str(path)]
            if not files:
                raise AlignkitError("folder holds no json/jsonl/parquet/csv/txt files", where=f"{where}: {spec.path}")
            kinds = sorted({BUILDERS.get(Path(f).suffix, Path(f).suffix) for f in files})
            if len(kinds) > 1:
                raise AlignkitError(f"folder mixes file types ({', '.join(kinds)}); keep one type per dataset entry",
                                    where=f"{where}: {spec.path}")
            if path.is_dir():
                log.info("%s: %s: reading %d file(s): %s", where, spec.path, len(files),
                         ", ".join(str(Path(f).relative_to(path)) for f in files))
            builder = BUILDERS.get(Path(files[0]).suffix)
            if builder is None:
                raise AlignkitError(f"unsupported file type '{path.suffix}'", where=f"{where}: {spec.path}")
            ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=spec.streaming)
        else:
            ds = datasets.load_dataset(spec.path, spec.name, split=spec.split, streaming=spec.streaming)
    except AlignkitError:
        raise
    except StopIteration:  # datasets' json builder finds no first table in an empty file
        raise AlignkitError("dataset is empty", where=f"{where}: {spec.path}") from None
    except FileNotFoundError:
        raise AlignkitError("dataset not found (not a local file, not reachable on the Hub)",
                            where=f"{where}: {spec.path}") from None
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as exc:
        bad_line = first_bad_json_line(files)
        if bad_line:
            raise bad_line from None
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise AlignkitError(f"could not load dataset ({first})", where=f"{where}: {spec.path}") from None
    if spec.columns:
        ds = _rename(ds, spec, where)
    if spec.max_samples:
        ds = ds.take(spec.max_samples) if spec.streaming else ds.select(range(min(spec.max_samples, len(ds))))
    if not spec.streaming and len(ds) == 0:
        raise AlignkitError("dataset is empty", where=f"{where}: {spec.path}")
    return ds


def first_bad_json_line(files: list[str]) -> AlignkitError | None:
    """The first JSONL line that is not JSON, as an error naming file:row (datasets only says the file failed)."""
    for name in files:
        if not name.endswith(".jsonl"):
            continue
        with open(name, encoding="utf-8", errors="replace") as fh:
            for row, line in enumerate(fh, start=1):
                try:
                    value = json.loads(line) if line.strip() else {}
                except json.JSONDecodeError as exc:
                    return AlignkitError(f"not valid JSON ({exc.msg} at column {exc.colno})", where=f"{name}:{row}")
                if not isinstance(value, dict):
                    return AlignkitError("a row must be a JSON object ({...}) with named columns",
                                         where=f"{name}:{row}")
                if _has_duplicate_key(line):
                    return AlignkitError("a key appears twice in this row", where=f"{name}:{row}")
    return None


def _has_duplicate_key(line: str) -> bool:
    """Whether an object in one JSON line names a key twice (json.loads silently keeps the last)."""
    repeated = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        repeated.append(len({k for k, _ in pairs}) != len(pairs))
        return dict(pairs)

    json.loads(line, object_pairs_hook=pairs_hook)
    return any(repeated)


def _rename(ds: Any, spec: DatasetSpec, where: str) -> Any:
    names = ds.column_names or []
    for ours, theirs in spec.columns.items():
        if names and theirs not in names:
            raise AlignkitError(f"column '{theirs}' not in dataset (has {names})", where=f"{where}.columns.{ours}")
    return ds.rename_columns({theirs: ours for ours, theirs in spec.columns.items() if theirs != ours})


def load_specs(specs: list[DatasetSpec], where: str = "data.datasets") -> list[Any]:
    """Load several datasets, naming each one's index in errors."""
    return [load_spec(s, where=f"{where}.{i}") for i, s in enumerate(specs)]


def mix(parts: list[Any], weights: list[float], seed: int, stopping: str = "all_exhausted") -> Any:
    """A weighted mixture (LLaMA-style sampling proportions) of several datasets; one passes through."""
    if len(parts) == 1:
        return parts[0]
    import datasets

    total = sum(weights)
    return datasets.interleave_datasets(
        parts, probabilities=[w / total for w in weights], seed=seed, stopping_strategy=stopping
    )
