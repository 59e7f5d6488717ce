"""The preflight: what a validated recipe can still get wrong, found before any model loads.

`alignkit validate` and the start of every `train` run these checks; each raises a one-line
AlignkitError naming the recipe key (or file:line), so a typo costs seconds, not minutes of loading.
They read only headers, names and data files: no weights, no network.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_token
from transformers.integrations.integration_utils import (
    INTEGRATION_TO_CALLBACK,
    get_available_reporting_integrations,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames
from transformers.utils import (
    is_flash_attn_2_available,
    is_flash_attn_3_available,
    is_flash_attn_4_available,
    is_kernels_available,
)

from alignkit.config import Recipe
from alignkit.config.base import DatasetSpec
from alignkit.config.recipe import apply_overrides, load_yaml
from alignkit.config.registry import REGISTRY
from alignkit.config.steps import resolve_refs, step_outputs, step_recipe
from alignkit.errors import AlignkitError

TRAINING_STAGES = tuple(name for name, spec in REGISTRY.items() if spec.trains)
SPLITS_FOR_EVAL = ("sft", "dpo")  # the stages that hold out data.eval_split_size of their rows
TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".txt")
FLASH_ATTENTION = {"flash_attention_2": is_flash_attn_2_available, "flash_attention_3": is_flash_attn_3_available,
                   "flash_attention_4": is_flash_attn_4_available}
# Every recipe key that names a file or folder a run reads (`*` is a list index). train.resume_from_checkpoint
# is not here: a checkpoint lives inside output_dir by design.
# The shared sections' keys here; each stage's own in its registry entry (model_keys, input_keys).
MODEL_KEYS = ("model.name_or_path", *(key for spec in REGISTRY.values() for key in spec.model_keys))
INPUT_KEYS = (
    *MODEL_KEYS, "model.tokenizer", "model.chat_template", "data.datasets.*.path", "data.eval_datasets.*.path",
    *(key for spec in REGISTRY.values() for key in spec.input_keys),
)


def preflight(recipe: Recipe, *, training: bool = False) -> None:
    """Run every check that needs no model; `training` adds those that only matter to a run (Hub access)."""
    check_output_dir(recipe)
    if recipe.stage in TRAINING_STAGES:
        check_scheduler_and_optim(recipe)
        check_report_to(recipe)
    check_attn_implementation(recipe)
    check_ppo_batches(recipe, int(os.environ.get("WORLD_SIZE", "1")))
    check_text_files(recipe)
    check_eval_split(recipe)
    check_safetensors(recipe)
    check_reward_heads(recipe)
    if training and recipe.hub is not None and recipe.hub.push_on_finish:
        check_hub_access("hub.push_on_finish")
    if recipe.stage == "pipeline":
        check_pipeline(recipe, training=training)


# ---- paths -------------------------------------------------------------------------------------------------

def values_at(node: object, key: str, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) for a dotted key with `*` list wildcards, over a recipe dump."""
    head, _, rest = key.partition(".")
    items = (enumerate(node) if isinstance(node, list) and head == "*"
             else [(head, node[head])] if isinstance(node, dict) and node.get(head) is not None else [])
    for name, value in items:
        where = f"{prefix}.{name}" if prefix else str(name)
        yield from values_at(value, rest, where) if rest else [(where, value)]


def local_path(value: object) -> Path | None:
    """The resolved local path a recipe value names, or None (a Hub id, inline Jinja, not there)."""
    if not isinstance(value, str) or not value or "\n" in value or "{" in value:
        return None
    try:
        path = Path(value).expanduser()
        return path.resolve() if path.exists() else None
    except OSError:  # e.g. a name too long to be a path
        return None


def input_paths(recipe: Recipe, keys: tuple[str, ...] = INPUT_KEYS) -> list[tuple[str, Path]]:
    """(recipe key, resolved path) for every local file or folder the recipe reads."""
    dump = recipe.dump()
    return [(where, path) for key in keys for where, value in values_at(dump, key)
            if (path := local_path(value)) is not None]


def overlap(out: Path, inp: Path) -> str | None:
    """How a folder we write relates to a path we read: 'is', 'contains', 'is inside', or None."""
    if out == inp:
        return "is"
    if out in inp.parents:
        return "contains"
    if inp in out.parents:
        return "is inside"
    return None


def check_output_dir(recipe: Recipe) -> None:
    """output_dir must not be, hold, or sit inside anything the run reads (a run there would replace it)."""
    out = Path(recipe.output_dir).expanduser().resolve()
    for key, path in input_paths(recipe):
        relation = overlap(out, path)
        if relation:
            raise AlignkitError(f"{relation} the input of {key} ({path}); writing there could destroy or mix "
                                "into it, choose a separate output_dir", where=f"output_dir: {recipe.output_dir}")


# ---- training options -----------------------------------------------------------------------------------------

def check_scheduler_and_optim(recipe: Recipe) -> None:
    """lr_scheduler_type and optim must be names transformers knows."""
    for key, value, enum in (("lr_scheduler_type", recipe.train.lr_scheduler_type, SchedulerType),
                             ("optim", recipe.train.optim, OptimizerNames)):
        names = [m.value for m in enum]
        if value not in names:
            raise AlignkitError(f"unknown value {value!r} (transformers knows: {', '.join(names)})",
                                where=f"train.{key}")


def check_report_to(recipe: Recipe) -> None:
    """Every report_to backend must be one transformers knows and whose package is installed."""
    installed = get_available_reporting_integrations()
    for name in recipe.train.report_to:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise AlignkitError(f"unknown logging backend {name!r} (one of none, all, "
                                f"{', '.join(INTEGRATION_TO_CALLBACK)})", where="train.report_to")
        if name not in installed:
            raise AlignkitError(f"logging backend {name!r} is not installed (pip install {name}), or "
                                "remove it from the list", where="train.report_to")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_attn_implementation(recipe: Recipe) -> None:
    """model.attn_implementation must be a kernel transformers has, with its package installed."""
    impl = recipe.model.attn_implementation if recipe.model else None
    if impl is None or impl in ("eager", "sdpa"):
        return
    where = "model.attn_implementation"
    if "/" in impl:  # a Hub kernel repo, e.g. kernels-community/flash-attn2
        if not is_kernels_available():
            raise AlignkitError(f"Hub kernel {impl!r} needs the `kernels` package (pip install kernels)", where=where)
        return
    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if impl not in known:
        raise AlignkitError(f"unknown attention implementation {impl!r} (one of {', '.join(known)})", where=where)
    available = FLASH_ATTENTION.get(impl)
    # With `kernels` installed and a CUDA GPU transformers can fetch a Hub kernel instead (probing that here
    # would download it); on a CPU it cannot, whatever is installed.
    if available is not None and not (available() or (is_kernels_available() and _cuda_available())):
        raise AlignkitError(f"{impl} needs a CUDA GPU and its flash-attn package (or the `kernels` package); "
                            "use sdpa", where=where)


def check_ppo_batches(recipe: Recipe, processes: int) -> None:
    """Per process, a PPO rollout splits into whole mini-batches and a mini-batch into whole micro-batches."""
    if recipe.ppo is None or recipe.stage != "ppo":
        return
    rollout, mini, accum = (recipe.ppo.rollout_batch_size, recipe.ppo.mini_batch_size,
                            recipe.train.gradient_accumulation_steps)
    # The same arithmetic as ppo.trainer.PPOConfig.local_sizes, which otherwise fails after the models load.
    if rollout % processes or mini % processes:
        raise AlignkitError(f"rollout_batch_size {rollout} and mini_batch_size {mini} must be multiples of the "
                            f"{processes} processes", where="ppo.rollout_batch_size")
    if (rollout // processes) % (mini // processes):
        raise AlignkitError(f"rollout_batch_size {rollout} is not a multiple of mini_batch_size {mini}"
                            + (f" per process ({processes} processes)" if processes > 1 else ""),
                            where="ppo.rollout_batch_size")
    if (mini // processes) % accum:
        raise AlignkitError(f"mini_batch_size {mini} per process is not a multiple of "
                            f"train.gradient_accumulation_steps {accum}", where="ppo.mini_batch_size")


# ---- data files -------------------------------------------------------------------------------------------------

def text_data_files(recipe: Recipe) -> list[tuple[str, Path]]:
    """(key, path) of the local text-format data files the run reads."""
    keys = ("data.datasets.*.path", "data.eval_datasets.*.path", "eval.prompts", "eval.judge.labels")
    return [(key, path) for key, path in input_paths(recipe, keys)
            if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES]


def check_utf8(path: Path, where: str) -> None:
    """Raise naming line and byte offset of the first byte sequence that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                line += block[: exc.start].count(b"\n")
                raise AlignkitError(f"{path}:{line}: not UTF-8 text (byte 0x{block[exc.start]:02x} at offset "
                                    f"{bad}); re-save the file as UTF-8", where=where) from None
            offset += len(block)
            line += block.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise AlignkitError(f"{path}: not UTF-8 text (it ends inside a multi-byte character)", where=where) from None


def check_text_files(recipe: Recipe) -> None:
    """Local JSON/JSONL/CSV/text data files must be UTF-8 (the loaders fail deep inside otherwise)."""
    for key, path in text_data_files(recipe):
        check_utf8(path, key)


def count_rows(path: Path) -> int | None:
    """Rows `datasets` will read from a local file, or None when not cheaply known."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suffix not in TEXT_SUFFIXES:
        return None
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            return None
        return len(rows) if isinstance(rows, list) else None
    if suffix == ".csv":
        return max(0, sum(1 for _ in csv.reader(text.splitlines())) - 1)
    return sum(1 for line in text.splitlines() if line.strip())


def dataset_rows(specs: list[DatasetSpec]) -> int | None:
    """Rows over all datasets (max_samples applied), or None when one is a Hub dataset or unknown."""
    total = 0
    for spec in specs:
        path = local_path(spec.path)
        rows = count_rows(path) if path is not None and path.is_file() else None
        if rows is None:
            return None
        total += min(rows, spec.max_samples or rows)
    return total


def check_eval_split(recipe: Recipe) -> None:
    """data.eval_split_size must leave both a training and an evaluation row."""
    data = recipe.data
    if recipe.stage not in SPLITS_FOR_EVAL or data is None or data.eval_datasets or not data.eval_split_size:
        return
    rows = dataset_rows(data.datasets)
    if not rows:
        return  # unknown (a Hub dataset), or none at all: the loader names the empty file
    held_out = max(1, math.ceil(rows * data.eval_split_size))  # as datasets.train_test_split rounds
    if rows - held_out < 1:
        raise AlignkitError(f"holding out {data.eval_split_size} of {rows} row(s) leaves no training rows; "
                            "set it to 0 or add rows or data.eval_datasets", where="data.eval_split_size")


# ---- model files ---------------------------------------------------------------------------------------------------

def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is cut short or corrupt (header length, JSON header, data offsets), or None."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"header of {length} bytes does not fit in the file ({size} bytes)"
        try:
            header = json.loads(fh.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "the header is not valid safetensors JSON"
    if 8 + length + end > size:
        return f"truncated: the header needs {8 + length + end} bytes, the file has {size}"
    return None


def json_object(file: Path, key: str) -> dict[str, Any]:
    """A model folder's config.json / adapter_config.json as a dict; anything else names the file and key."""
    try:
        data = json.loads(file.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        raise AlignkitError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno}); copy or download the model "
                            "again", where=key) from None
    if not isinstance(data, dict):
        raise AlignkitError(f"{file}: not a JSON object; copy or download the model again", where=key)
    return data


def model_folders(recipe: Recipe) -> list[tuple[str, Path]]:
    """(key, folder) of local model folders, with an adapter's local base folder after it."""
    found = []
    for key, path in input_paths(recipe, MODEL_KEYS):
        if not path.is_dir():
            continue
        found.append((key, path))
        config = path / "adapter_config.json"
        base = json_object(config, key).get("base_model_name_or_path") if config.is_file() else None
        if (path / "config.json").is_file():
            json_object(path / "config.json", key)
        if (base_path := local_path(base)) is not None and base_path.is_dir():
            found.append((f"{key} (the adapter's base)", base_path))
    return found


def check_safetensors(recipe: Recipe) -> None:
    """Every .safetensors file in a local model folder must be whole (a cut copy fails deep inside loading)."""
    for key, folder in model_folders(recipe):
        for file in sorted(folder.glob("*.safetensors")):
            problem = safetensors_problem(file)
            if problem:
                raise AlignkitError(f"{file}: {problem}; copy or download the model again", where=key)


def scoring_reward_models(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, path) of every reward model whose score a run uses (not a critic's initialisation)."""
    found: list[tuple[str, str]] = []
    section = getattr(recipe, recipe.stage, None)
    if getattr(section, "reward", None) == "model" and section.reward_model:  # the online-RL stages
        found.append((f"{recipe.stage}.reward_model", section.reward_model))
    if recipe.stage == "eval":
        if section.reward_model:
            found.append(("eval.reward_model", section.reward_model))
        if section.judge.type == "reward_model" and section.judge.path:
            found.append(("eval.judge.path", section.judge.path))
    return found


def reward_head_problem(folder: Path, key: str = "reward_model") -> str | None:
    """Why a local model folder is not a reward model (a causal LM's folder has no trained score head), or None."""
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        task = json_object(adapter, key).get("task_type")
        return None if task in (None, "SEQ_CLS") else f"is a {task} adapter, not a reward model's (SEQ_CLS)"
    config = folder / "config.json"
    architectures = json_object(config, key).get("architectures") if config.is_file() else None
    if not architectures or any(a.endswith("ForSequenceClassification") for a in architectures):
        return None
    return f"is a {architectures[0]}, not a reward model: its score head would start random"


def check_reward_heads(recipe: Recipe) -> None:
    """A reward model that scores must have a trained score head; a language model's folder would load with a
    random one, and PPO would then optimise noise without a word."""
    for key, path in scoring_reward_models(recipe):
        folder = local_path(path)
        if folder is not None and folder.is_dir() and (problem := reward_head_problem(folder, key)):
            raise AlignkitError(f"{path} {problem}; train one with stage: reward (recipes/reward.yaml)", where=key)


# ---- Hub and pipeline ----------------------------------------------------------------------------------------------

def check_hub_access(where: str) -> None:
    """Pushing needs a token (HF_TOKEN or `hf auth login`) and the Hub not switched off (HF_HUB_OFFLINE)."""
    if constants.is_offline_mode():
        raise AlignkitError("cannot push in offline mode (HF_HUB_OFFLINE=1); unset it to upload", where=where)
    if get_token() is None:
        raise AlignkitError("no Hugging Face token: set HF_TOKEN or run `hf auth login`", where=where)


def check_pipeline(recipe: Recipe, *, training: bool) -> None:
    """Each step's ${steps.NAME.KIND} must name an earlier step; steps whose inputs exist are preflighted too."""
    out = Path(recipe.output_dir)
    outputs: dict[str, dict[str, str]] = {}
    for i, step in enumerate(recipe.pipeline.steps):
        step_dir = out / step.name
        try:
            raw = apply_overrides(load_yaml(step.recipe), list(step.overrides))
        except AlignkitError as exc:  # name the step's key, not only the file it points at
            raise AlignkitError(f"{step.recipe}: {exc.message}", where=f"pipeline.steps.{i}") from None
        resolve_refs(raw, outputs, f"pipeline.steps.{i} ({step.recipe})")  # unknown names: now, not hours later
        ready = {name: {kind: p for kind, p in kinds.items() if Path(p).exists()} for name, kinds in outputs.items()}
        try:
            resolve_refs(raw, ready, "")
        except KeyError:
            pass  # it reads what an earlier step has not written yet: checked when that step has run
        else:
            preflight(step_recipe(step, i, step_dir, ready), training=training)
        outputs[step.name] = step_outputs(step_dir)
