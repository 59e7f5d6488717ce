"""Merge a LoRA/QLoRA adapter into its base. For QLoRA the 4-bit base is dequantized first.

Merging a QLoRA adapter into the original full-precision weights gives a different model from
the one trained (the adapter learned to correct the *quantized* weights; peft #1080, #2321), so we
rebuild the same NF4 base, dequantize it, and merge into that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignkit.config.base import ModelSection, QuantizationSection
from alignkit.errors import AlignkitError
from alignkit.runio import atomic_dir

QUANT_FILE = "alignkit_quantization.json"


def load_for_merge(adapter_dir: str, dtype: str = "float32") -> Any:
    """Base (dequantized if it was trained in 4-bit) + adapter, merged and unloaded."""
    import torch

    from alignkit.models import adapter_base, attach_adapter, load_causal_lm

    base = adapter_base(adapter_dir)
    if base is None:
        raise AlignkitError("not a PEFT adapter folder (no adapter_config.json)", where=adapter_dir)
    section = ModelSection(name_or_path=base, torch_dtype=dtype)
    quant_file = Path(adapter_dir) / QUANT_FILE
    if quant_file.is_file():
        quant = QuantizationSection(**json.loads(quant_file.read_text()))
        model = load_causal_lm(section, quant)
        model = model.dequantize()
        model = model.to(getattr(torch, dtype))
    else:
        model = load_causal_lm(section)
    model = attach_adapter(model, adapter_dir)  # grows the base to the adapter's tokenizer first
    return model.merge_and_unload()


def merge_adapter(adapter_dir: str, out_dir: str, dtype: str = "float32") -> Path:
    """Write the merged full model + tokenizer (+ generation_config) to out_dir as safetensors."""
    from transformers import AutoTokenizer

    from alignkit.models import set_generation_eos

    merged = load_for_merge(adapter_dir, dtype)
    if getattr(merged.config, "quantization_config", None) is not None:
        # The weights are now plain floats; a leftover config would make loaders re-quantize them.
        del merged.config.quantization_config
        merged.is_quantized = False
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    set_generation_eos(merged, tokenizer)  # the base's generation_config may not know the chat EOS
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
