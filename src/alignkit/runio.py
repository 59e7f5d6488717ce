"""The run folder: atomic writes, the resolved recipe, the metrics logger, the completion marker.

Layout of `output_dir`:
    recipe.yaml          the fully resolved recipe (defaults + overrides), secrets redacted
    checkpoints/         checkpoint-<step>/ folders (resumable)
    model/               the loadable final model + tokenizer, written atomically: full weights, or a LoRA
                         adapter (run.json's "model_kind" says which: "full" or "adapter")
    adapter/             the LoRA adapter, where model/ holds the merged full model (reward, online RL)
    merged/              the adapter merged into its base, where asked (sft.merge_adapter)
    metrics.jsonl        one JSON object per logged step
    run.json             written LAST: final metrics and status; its presence means "finished"
Files and folders are created with the usual permissions (0644/0755 under the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError

COMPLETE_MARKER = "run.json"
CHECKPOINT_STATE = "trainer_state.json"  # written last into every checkpoint-<step>/ (Trainer and PPO)
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: its presence makes a model folder an adapter
# How the 4/8-bit base of an adapter was built: `alignkit merge` and reward-model loading rebuild the same
# quantized base from it (an adapter learned to correct the quantized weights, not the original ones).
QUANT_FILE = "alignkit_quantization.json"
# Where a reward model keeps how its score is read (config.json keys, or this file beside an adapter), and
# the folder of the language model whose surprise it adds (reward.lm_surprise).
NORMALIZATION_FILE = "alignkit_reward.json"
BIAS_KEY, SCALE_KEY = "alignkit_reward_bias", "alignkit_reward_scale"
LM_WEIGHT_KEY, LM_FOLDER = "alignkit_lm_surprise_weight", "lm"
LM_FLOOR_KEY = "alignkit_lm_surprise_floor"
# Key names that hold credentials (not e.g. `eos_token` or `train_tokens`).
SECRET_KEY = re.compile(
    r"^(hf_|hub_|api_|access_|auth_|bearer_)?token$|secret|password|passwd|api[_-]?key|authorization",
    re.IGNORECASE,
)
SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9_-]{8,})")
# Out of space: the errno of an OSError, or the OS text wrapped in torch's or safetensors' own exceptions.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os error (28|122)\b")


def redact(obj: Any) -> Any:
    """Replace secret-looking keys and token-looking values so they never reach disk or logs."""
    if isinstance(obj, dict):
        return {k: ("***" if SECRET_KEY.search(str(k)) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return SECRET_VALUE.sub("***", obj)
    return obj


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to a temp file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0600; a plain open() would give 0644
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise
    return path


def current_umask() -> int:
    """The process umask (read by setting it and putting it back: the OS offers no plain getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_disk_full(exc: BaseException) -> bool:
    """True when a write failed for lack of space, whichever library raised it."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return bool(DISK_FULL_TEXT.search(str(exc)))


def disk_full_error(path: str | Path) -> AlignkitError:
    """The one-line error for a write that ran out of space."""
    return AlignkitError(
        "no space left on device; no half-written checkpoint or model is kept and everything saved before "
        "is intact (free space, then rerun with train.resume_from_checkpoint=true)",
        where=str(path),
    )


@contextmanager
def disk_full_as_error(path: str | Path) -> Iterator[None]:
    """Turn running out of space anywhere inside the block into the one-line error (naming the file if known)."""
    try:
        yield
    except AlignkitError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(getattr(exc, "filename", None) or path) from exc
        raise


def replace_dir(src: str | Path, final: str | Path) -> None:
    """Move the finished folder `src` to `final` in one rename, replacing an older `final` if there is one."""
    src, final = Path(src), Path(final)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(obj: Any) -> str:
    """JSON text with NaN/Inf turned into null (strict JSON readers reject them)."""
    return json.dumps(_finite(obj), indent=2, default=_json_default, sort_keys=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically."""
    return atomic_write_text(path, to_json(redact(obj)) + "\n")


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename.

    A run killed mid-write leaves only a hidden `.tmp-*` folder, never a half-written `final`; a full
    disk removes the partial folder and is a one-line error naming `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp creates 0700; the published folder gets mkdir's 0755
        yield tmp
        replace_dir(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(final) from exc
        raise


def write_quantization_record(folder: str | Path, quantization: dict[str, Any]) -> Path:
    """Record beside an adapter how its 4/8-bit base was quantized (the recipe's quantization section)."""
    return atomic_write_json(Path(folder) / QUANT_FILE, quantization)


def read_quantization_record(folder: str | Path) -> dict[str, Any] | None:
    """The quantization an adapter's base was trained in, or None for a float base."""
    path = Path(folder) / QUANT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_model(model: Any, tokenizer: Any, final: str | Path, *, quantization: dict[str, Any] | None = None,
               extra_json: dict[str, Any] | None = None) -> Path:
    """Save a model (or adapter) + tokenizer to `final` in one atomic rename.

    `quantization` (for an adapter trained on a 4/8-bit base) is written as its quantization record;
    `extra_json` maps file names to JSON bodies saved beside the weights.
    """
    with atomic_dir(final) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if quantization is not None:
            write_quantization_record(tmp, quantization)
        for name, body in (extra_json or {}).items():
            atomic_write_json(tmp / name, body)
    return Path(final)


def complete_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """The complete checkpoint-<step> folders under `checkpoint_dir`, oldest (lowest step) first.

    Checkpoints are published by one rename once written (hidden `.tmp-*` folders are never picked up);
    trainer_state.json, which every trainer writes last, also guards against folders from older writers.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := CHECKPOINT_NAME.fullmatch(p.name)) and (p / CHECKPOINT_STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint-<step> folder under `checkpoint_dir`, or None."""
    found = complete_checkpoints(checkpoint_dir)
    return found[-1] if found else None


class RunDir:
    """One run's output folder; its properties name every output folder (the layout above)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        """The loadable final model: full weights or an adapter (model_kind says which)."""
        return self.path / "model"

    @property
    def adapter_dir(self) -> Path:
        """The LoRA adapter, where model/ holds it merged into a full model."""
        return self.path / "adapter"

    @property
    def merged_dir(self) -> Path:
        """The adapter in model/ merged into its base (sft.merge_adapter)."""
        return self.path / "merged"

    def model_kind(self) -> str | None:
        """What model/ holds: "adapter" (PEFT), "full" (plain weights) or None (no model/)."""
        if not self.model_dir.is_dir():
            return None
        return "adapter" if (self.model_dir / ADAPTER_CONFIG).is_file() else "full"

    def model_record(self) -> dict[str, str]:
        """run.json's statement of what model/ holds ({} for runs that write no model)."""
        kind = self.model_kind()
        return {"model_kind": kind} if kind else {}

    def is_complete(self) -> bool:
        """True when the run finished (its marker was written last)."""
        return (self.path / COMPLETE_MARKER).is_file()

    def prepare(self, *, overwrite: bool = False, resume: bool | str = False) -> None:
        """Check the folder can take this run without destroying a finished one, then create it."""
        if self.is_complete() and not overwrite:
            raise AlignkitError(
                "already holds a finished run; choose another output_dir or set train.overwrite_output_dir=true",
                where=f"output_dir: {self.path}",
            )
        if self.path.exists() and not self.path.is_dir():
            raise AlignkitError("exists and is not a folder", where=f"output_dir: {self.path}")
        unfinished = None if resume or overwrite else self.latest_checkpoint()
        if unfinished is not None:
            # A crashed run's checkpoints are its progress: a fresh start would overwrite them.
            raise AlignkitError(
                f"holds checkpoints of an unfinished run ({unfinished.name}); set "
                "train.resume_from_checkpoint=true to continue it or train.overwrite_output_dir=true to start over",
                where=f"output_dir: {self.path}",
            )
        self.resolve_resume(resume)  # nothing to resume from is an error before any stage work, not after
        self.path.mkdir(parents=True, exist_ok=True)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run, or None."""
        return latest_checkpoint(self.checkpoints)

    def resolve_resume(self, resume: bool | str) -> str | None:
        """The checkpoint to resume from: an explicit path, the newest one, or None.

        Asking to resume when there is nothing to resume from is an error, never a silent fresh start.
        """
        if resume is False or resume is None:
            return None
        if isinstance(resume, str):
            if not Path(resume).is_dir():
                raise AlignkitError("checkpoint folder not found", where=f"train.resume_from_checkpoint: {resume}")
            return resume
        latest = self.latest_checkpoint()
        if latest is None:
            raise AlignkitError(
                f"no checkpoint-<step> folder under {self.checkpoints} to resume from",
                where="train.resume_from_checkpoint",
            )
        return str(latest)

    def save_recipe(self, recipe_dump: dict[str, Any]) -> Path:
        """Save the fully resolved recipe beside the outputs (secrets redacted)."""
        return atomic_write_text(self.path / "recipe.yaml", yaml.safe_dump(redact(recipe_dump), sort_keys=False))

    def finish(self, metrics: dict[str, Any], **extra: Any) -> Path:
        """Write the completion marker last: final metrics and status."""
        body = {"status": "complete", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": metrics, **extra}
        return atomic_write_json(self.path / COMPLETE_MARKER, body)

    def read_summary(self) -> dict[str, Any]:
        """The run.json of a finished run."""
        if not self.is_complete():
            raise AlignkitError("not a finished alignkit run (no run.json)", where=str(self.path))
        try:
            summary = json.loads((self.path / COMPLETE_MARKER).read_text())
        except json.JSONDecodeError as exc:
            raise AlignkitError(f"{COMPLETE_MARKER} is not valid JSON ({exc.msg})", where=str(self.path)) from None
        if not isinstance(summary, dict):
            raise AlignkitError(f"{COMPLETE_MARKER} is not a JSON object", where=str(self.path))
        return summary


class MetricsLogger:
    """The one metrics logger: JSONL in the run folder, tensorboard when asked, console callback."""

    def __init__(self, path: str | Path, report_to: list[str] | None = None, enabled: bool = True,
                 on_log: Callable[[dict[str, Any], int], None] | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.on_log = on_log
        self._tb = None
        if enabled and "tensorboard" in (report_to or []):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Append one row {step, time, **metrics}; scalars also go to tensorboard."""
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **_finite(dict(metrics))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(redact(row), default=_json_default) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self.on_log:
            self.on_log(metrics, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
