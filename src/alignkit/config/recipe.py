"""The recipe: one YAML file is one run. Loading, dotted overrides and one-line validation errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from alignkit.config.base import (
    DataSection,
    HubSection,
    ModelSection,
    PeftSection,
    QuantizationSection,
    Section,
    TrainSection,
    check_output_dir_value,
)
from alignkit.config.registry import REGISTRY, STAGE_NAMES, unused_train_keys
from alignkit.errors import AlignkitError
from alignkit.runio import SECRET_KEY, SECRET_VALUE

# The stage names, their required sections and their section fields all come from the stage registry.
Stage = Literal[STAGE_NAMES]  # type: ignore[valid-type]
REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {name: spec.required for name, spec in REGISTRY.items()}


class RecipeBase(Section):
    """The sections every stage shares; Recipe adds one section per registered stage."""

    stage: Stage
    output_dir: str
    seed: int = Field(42, ge=0, lt=2**32)  # numpy's range: a seed outside it failed deep inside set_seed

    _check_output_dir = field_validator("output_dir")(check_output_dir_value)
    model: ModelSection | None = None
    quantization: QuantizationSection | None = None
    peft: PeftSection | None = None
    data: DataSection | None = None
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _stage_sections(self) -> RecipeBase:
        missing = [s for s in REQUIRED_SECTIONS[self.stage] if getattr(self, s) is None]
        if missing:
            raise ValueError(f"missing section '{missing[0]}' required by stage {self.stage}")
        q = self.quantization
        if q is not None and q.load_in_4bit and q.load_in_8bit:
            raise ValueError("quantization: load_in_4bit and load_in_8bit are exclusive")
        if self.stage != "pretrain" and self.data is not None:
            # Only pretraining mixes datasets by weight; elsewhere the datasets are concatenated, and a weight
            # would look applied while every row trains once.
            for group in ("datasets", "eval_datasets"):
                for i, spec in enumerate(getattr(self.data, group)):
                    if spec.weight != 1.0:
                        raise ValueError(f"data.{group}.{i}.weight: only stage pretrain mixes datasets by weight; "
                                         f"stage {self.stage} trains every row of each once (remove weight)")
        unused = unused_train_keys(self.stage, self.train)
        if unused:
            # A key the stage never reads would look applied in recipe.yaml while doing nothing.
            raise ValueError(f"train.{unused[0]} is not used by stage {self.stage}; remove it (the {self.stage} "
                             f"section holds that stage's own settings)")
        return self

    def dump(self) -> dict[str, Any]:
        """The fully resolved recipe as plain data (defaults included)."""
        return self.model_dump(mode="json", exclude_none=True)


# A whole run: the stage, where it writes, the shared sections, one optional section per stage, hub last.
Recipe = create_model(  # type: ignore[call-overload]
    "Recipe",
    __base__=RecipeBase,
    __module__=__name__,
    __doc__="A whole run: the stage, where it writes, and its sections.",
    **{name: (spec.section | None, None) for name, spec in REGISTRY.items()},
    hub=(HubSection | None, None),
)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are meant to be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it itself
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """yaml.safe_load semantics (no tags, no objects), but a duplicate key is an error."""
    loader = UniqueKeyLoader(text)  # what yaml.safe_load does, with this SafeLoader subclass: no tags, no objects
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# Jinja (a chat template) starts like a YAML flow mapping; such override values are taken verbatim.
JINJA_MARKERS = ("{%", "{{", "{#")


def parse_override_value(text: str, raw: str) -> Any:
    """An override's value parsed as YAML; Jinja text stays a plain string; anything else is a one-line error."""
    if raw == "":
        return ""
    if raw.lstrip().startswith(JINJA_MARKERS):
        return raw
    try:
        return safe_load(raw)
    except yaml.YAMLError as exc:
        if any(m in raw for m in JINJA_MARKERS):
            return raw
        raise AlignkitError(f"the value is not valid YAML ({getattr(exc, 'problem', None) or exc})",
                            where=f"override {text}") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise AlignkitError("overrides look like key.subkey=value", where=text)
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise AlignkitError("bad override key", where=text)
    return key.split("."), parse_override_value(text, raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a raw recipe dict."""
    for text in overrides:
        keys, value = _parse_override(text)
        node: Any = raw
        for i, key in enumerate(keys):
            if isinstance(node, list) and not (key.isdigit() and int(key) < len(node)):
                raise AlignkitError(f"no such list item (the list has {len(node)})", where=".".join(keys[: i + 1]))
            if not isinstance(node, (dict, list)):
                raise AlignkitError("is a value, not a section", where=".".join(keys[:i]))
            slot = int(key) if isinstance(node, list) else key
            if i == len(keys) - 1:
                node[slot] = value
                break
            if (node[slot] if isinstance(node, list) else node.get(slot)) is None:
                node[slot] = {}
            node = node[slot]
    return raw


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for 'did you mean' hints)."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _section_type(field.annotation)
    return model


def _section_type(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *getattr(annotation, "__args__", ())):
        for inner in (arg, *getattr(arg, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def format_validation_error(err: ValidationError, source: str) -> AlignkitError:
    """Turn pydantic's first error into one line naming the YAML path."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    where = ".".join(str(p) for p in loc) or source
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        names = list(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(str(loc[-1]), names, n=1)
        msg = "unknown key" + (f"; did you mean {hint[0]}?" if hint else "")
    elif kind == "missing":
        msg = "required key is missing"
    else:
        msg = msg.removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], (dict, list)):
            msg += f" (got {first['input']!r})"
    return AlignkitError(msg, where=f"{source}: {where}" if where != source else source)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with safe_load semantics (never yaml.load's full loader); duplicate keys are errors."""
    path = Path(path)
    if not path.is_file():
        raise AlignkitError("recipe file not found", where=str(path))
    try:
        raw = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise AlignkitError(f"not valid YAML ({getattr(exc, 'problem', exc)})", where=f"{path}{line}") from None
    if not isinstance(raw, dict):
        raise AlignkitError("a recipe is a YAML mapping of sections", where=str(path))
    return raw


def _token_path(node: Any, path: str = "") -> str | None:
    """The key path of the first token-looking value (or secret key in trainer_kwargs), else None."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if path == "train.trainer_kwargs" and SECRET_KEY.search(str(key)) and value:
                return sub
            found = _token_path(value, sub)
            if found:
                return found
    elif isinstance(node, list):
        return next((p for i, v in enumerate(node) if (p := _token_path(v, f"{path}.{i}"))), None)
    elif isinstance(node, str) and SECRET_VALUE.search(node):
        return path
    return None


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw recipe dict into a typed Recipe, or raise a one-line AlignkitError."""
    secret = _token_path(raw)
    if secret:
        # A token in a recipe would reach trainer pickles and tensorboard, which redaction never sees.
        raise AlignkitError("looks like an access token; tokens are read from the environment (HF_TOKEN), "
                            "never from a recipe", where=f"{source}: {secret}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise format_validation_error(err, source) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file."""
    raw = apply_overrides(load_yaml(path), list(overrides or []))
    return validate_recipe(raw, source=str(path))
