"""Merge a LoRA/QLoRA adapter into its base. For QLoRA the 4-bit base is dequantized first.

Merging a QLoRA adapter into the original full-precision weights gives a different model from
the one trained (the adapter learned to correct the *quantized* weights; peft #1080, #2321), so we
rebuild the same NF4 base, dequantize it, and merge into that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignkit.config.base import ModelSection, looks_local
from alignkit.errors import AlignkitError
from alignkit.models import (
    adapter_base,
    attach_adapter,
    dequantize,
    load_causal_lm,
    load_tokenizer,
    recorded_quantization,
    set_generation_eos,
)
from alignkit.preflight import json_object, local_path, overlap
from alignkit.runio import QUANT_FILE, save_model

__all__ = ["MERGE_MARKER", "QUANT_FILE", "check_merge_target", "load_for_merge", "merge_adapter"]
# Written into every merge output: the only non-empty folder a merge may replace is one it wrote itself.
# Hidden, so Hub uploads and pipeline content hashes skip it.
MERGE_MARKER = ".alignkit-merge.json"


def load_for_merge(adapter_dir: str, dtype: str = "float32") -> Any:
    """Base (dequantized if it was trained in 4-bit) + adapter, merged and unloaded."""
    base = adapter_base(adapter_dir)
    if base is None:
        raise AlignkitError("not a PEFT adapter folder (no adapter_config.json)", where=adapter_dir)
    section = ModelSection(name_or_path=base, torch_dtype=dtype)
    quant = recorded_quantization(adapter_dir)  # the 4/8-bit base the adapter was trained on, if any
    if quant is not None:
        model = load_causal_lm(section, quant)
        model = dequantize(model)  # GPT-2's Conv1D layers stay Conv1D
        model = model.to(getattr(torch, dtype))
    else:
        model = load_causal_lm(section)
    model = attach_adapter(model, adapter_dir)  # grows the base to the adapter's tokenizer first
    return model.merge_and_unload()


def check_merge_target(adapter_dir: str, out_dir: str) -> None:
    """Refuse an output folder that would replace or mix into anything the merge did not write itself."""
    where = f"merge output {out_dir}"
    out = Path(out_dir).expanduser().resolve()
    base = adapter_base(adapter_dir)
    inputs = {"the adapter folder": local_path(adapter_dir), "the adapter's base model": local_path(base)}
    for what, path in inputs.items():
        relation = overlap(out, path) if path is not None else None
        if relation:
            raise AlignkitError(f"{relation} {what} ({path}); merge into a new folder", where=where)
    if out.exists() and not out.is_dir():
        raise AlignkitError("exists and is not a folder", where=where)
    if out.is_dir() and any(out.iterdir()) and not (out / MERGE_MARKER).is_file():
        raise AlignkitError("is not empty and is not an earlier merge output; merge only replaces folders it "
                            "wrote itself, choose a new or empty folder", where=where)


def check_adapter(adapter_dir: str, files: bool = True) -> None:
    """The adapter folder holds what a merge reads: a JSON config naming its base (and, with `files`, that base,
    the adapter's weights). Each was a traceback from PEFT, pydantic or the Hub client."""
    folder = Path(adapter_dir)
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise AlignkitError("not a PEFT adapter folder (no adapter_config.json)", where=adapter_dir)
    base = json_object(config, adapter_dir).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise AlignkitError(f"{config}: no base_model_name_or_path", where=adapter_dir)
    if not files:
        return
    if looks_local(base) and not Path(base).expanduser().exists():
        raise AlignkitError(f"its base model {base} (base_model_name_or_path in adapter_config.json) is not found; "
                            "put the base there or edit that path", where=adapter_dir)
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AlignkitError("no adapter_model.safetensors: the adapter's weights are missing", where=adapter_dir)


def merge_adapter(adapter_dir: str, out_dir: str, dtype: str = "float32") -> Path:
    """Write the merged full model + tokenizer (+ generation_config) to out_dir as safetensors."""
    check_adapter(adapter_dir, files=False)
    check_merge_target(adapter_dir, out_dir)  # before minutes of loading, and before anything is replaced
    check_adapter(adapter_dir)
    merged = load_for_merge(adapter_dir, dtype)
    if getattr(merged.config, "quantization_config", None) is not None:
        # The weights are now plain floats; a leftover config would make loaders re-quantize them.
        del merged.config.quantization_config
        merged.is_quantized = False
    tokenizer = load_tokenizer(ModelSection(name_or_path=adapter_dir))  # the adapter's own, else its base's
    set_generation_eos(merged, tokenizer)  # the base's generation_config may not know the chat EOS
    return save_model(merged, tokenizer, out_dir, extra_json={MERGE_MARKER: {"adapter": str(adapter_dir), "dtype": dtype}})
