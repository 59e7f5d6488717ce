"""Recipe sections shared by every stage: model, quantization, LoRA, data, training loop, hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignkit.chat_templates import check_template_setting
from alignkit.errors import AlignkitError

DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow")


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are validated, and the object is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def looks_local(path: str) -> bool:
    """True when a string names a local path rather than a Hub id ('org/name')."""
    return (
        path.startswith((".", "/", "~"))
        or path.endswith(DATA_SUFFIXES)
        or path.count("/") > 1
        or Path(path).exists()
    )


def check_unique_names(names: list[str], what: str) -> None:
    """Raise when a name is used twice (steps, models: later keys refer to them by name)."""
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"{what} name {dup!r} is used twice; names must be unique")


def expand_home(path: str) -> str:
    """A recipe path with a leading "~" as the home folder (it became a literal "~" folder beside the run)."""
    return str(Path(path).expanduser()) if path.startswith("~") else path


def check_local_path(path: str | None) -> str | None:
    """Raise if a path that is clearly local does not exist; Hub ids pass through; "~" is the home folder."""
    if path is not None and looks_local(path) and not Path(path).expanduser().exists():
        raise ValueError(f"file not found: {path}")
    return None if path is None else expand_home(path)


def check_output_dir_value(path: str) -> str:
    """The output_dir value: "~" expanded; empty or holding an unexpanded $VARIABLE is a user error."""
    if not path.strip():
        raise ValueError("is empty; name the run's folder")
    if "$" in path:
        raise ValueError("holds a $ variable, which recipes do not expand; write the path (on the command line the "
                         "shell expands output_dir=$VAR/run)")
    return expand_home(path)


def check_hub_only_keys(path: str, split: str, name: str | None, split_key: str = "split") -> None:
    """A local file has no splits or configurations: the keys would look applied while the whole file is read."""
    if not Path(path).expanduser().exists():
        return
    if split != "train":
        raise ValueError(f"{split_key} {split!r} applies to Hub datasets; {path} is a local file: point path at the "
                         "file that holds that split")
    if name is not None:
        raise ValueError(f"name {name!r} applies to Hub datasets; {path} is a local file")


class ModelSection(Section):
    """Which model and tokenizer to load, and how."""

    name_or_path: str
    revision: str | None = None
    tokenizer: str | None = None
    chat_template: str | None = Field(
        None, description="a built-in template (chatml, llama3, mistral, gemma, phi3, zephyr), Jinja text, "
        "or a path to a .jinja file; default: the tokenizer's"
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    max_length: int = Field(512, gt=0)

    _check_paths = field_validator("name_or_path", "tokenizer")(check_local_path)
    _check_template = field_validator("chat_template")(check_template_setting)


class QuantizationSection(Section):
    """bitsandbytes quantization of the base model (QLoRA)."""

    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    bnb_4bit_quant_storage: Literal["uint8", "float32", "bfloat16", "float16"] = "uint8"


class PeftSection(Section):
    """LoRA adapter settings (PEFT's names)."""

    method: Literal["lora"] = "lora"
    r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False


class DatasetSpec(Section):
    """One dataset: a local file (json, jsonl, parquet, csv, txt) or a Hub dataset id."""

    path: str
    name: str | None = None
    split: str = "train"
    format: Literal[
        "auto", "text", "messages", "alpaca", "sharegpt", "prompt_completion",
        "preference", "ranking",
    ] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="map our column names to yours")
    weight: float = Field(1.0, gt=0, description="sampling proportion in a mixture")
    streaming: bool = False
    max_samples: int | None = Field(None, gt=0)

    _check_path = field_validator("path")(check_local_path)

    @model_validator(mode="after")
    def _hub_only_keys(self) -> DatasetSpec:
        check_hub_only_keys(self.path, self.split, self.name)
        return self


class DataSection(Section):
    """Training (and optional evaluation) data."""

    datasets: list[DatasetSpec] = Field(min_length=1)
    eval_datasets: list[DatasetSpec] = Field(default_factory=list)
    eval_split_size: float = Field(0.0, ge=0, lt=1, description="hold out this share when no eval_datasets")
    packing: bool = False
    shuffle_seed: int = 0


# TrainingArguments that alignkit sets itself from the run folder: passed through trainer_kwargs they would put
# checkpoints where resume and the completion marker never look.
OWNED_TRAINER_KWARGS = frozenset({"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_dir"})


class TrainSection(Section):
    """The training loop: the names of transformers' TrainingArguments."""

    learning_rate: float = Field(2e-4, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="-1: train num_train_epochs; else this many optimizer steps")
    per_device_train_batch_size: int = Field(8, gt=0)
    per_device_eval_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    lr_scheduler_type: str = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = "adamw_torch"
    logging_steps: int = Field(10, gt=0)
    eval_steps: int | None = Field(None, gt=0)
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    gradient_checkpointing: bool = False
    bf16: bool | Literal["auto"] = Field(False, description="auto: bf16 where the device supports it, else fp32")
    fp16: bool | Literal["auto"] = Field(False, description="auto: fp16 on an accelerator when bf16 is not used")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    resume_from_checkpoint: bool | str = Field(
        False, description="true: the newest checkpoint in output_dir; or a checkpoint path"
    )
    overwrite_output_dir: bool = False
    dataloader_num_workers: int = Field(0, ge=0)
    trainer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments passed to the trainer's config as is"
    )

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be -1 (train num_train_epochs) or a positive number of steps")
        return value

    @field_validator("trainer_kwargs")
    @classmethod
    def _not_owned(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(value) & OWNED_TRAINER_KWARGS)
        if owned:
            raise ValueError(f"'{owned[0]}' is set by alignkit (checkpoints live under output_dir, resuming and "
                             "overwriting are train.resume_from_checkpoint / train.overwrite_output_dir); remove it")
        return value

    @model_validator(mode="after")
    def _one_precision(self) -> TrainSection:
        if self.bf16 is True and self.fp16 is True:
            raise ValueError("bf16 and fp16 are exclusive; set one (or both to auto)")
        return self


def resolve_precision(train: TrainSection) -> dict[str, bool]:
    """TrainingArguments' bf16/fp16 on this machine; an explicit true the device cannot do names its key."""
    # Imported here, not at the top: `alignkit validate` reads recipes without loading torch.
    from transformers.utils import is_torch_accelerator_available, is_torch_bf16_gpu_available

    bf16_ok, fp16_ok = is_torch_bf16_gpu_available(), is_torch_accelerator_available()
    for key, value, ok in (("bf16", train.bf16, bf16_ok), ("fp16", train.fp16, fp16_ok)):
        if value is True and not ok:
            raise AlignkitError(f"this machine cannot train in {key} (no GPU with {key} support); set it to auto "
                                f"({key} where supported, else float32) or false", where=f"train.{key}")
    bf16 = train.bf16 is True or (train.bf16 == "auto" and bf16_ok and train.fp16 is not True)
    return {"bf16": bf16, "fp16": train.fp16 is True or (train.fp16 == "auto" and fp16_ok and not bf16)}


class HubSection(Section):
    """Where to push the result on the Hugging Face Hub (tokens come from the environment)."""

    repo_id: str
    private: bool = True
    revision: str | None = None
    push: Literal["adapter", "merged", "full"] = "adapter"
    push_on_finish: bool = False
    license: str = "apache-2.0"
