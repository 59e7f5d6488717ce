"""The one model loader: tokenizer + chat template, causal LMs (full, 4-bit, adapters), LoRA configs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from alignkit.config.base import ModelSection, PeftSection, QuantizationSection
from alignkit.errors import AlignkitError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype | str:
    """Map a recipe dtype name to torch (\"auto\" passes through)."""
    return "auto" if name == "auto" else DTYPES[name]


def _hub_error(path: str, exc: Exception, key: str) -> AlignkitError:
    if Path(path).exists():
        return AlignkitError(f"'{path}' is not a loadable model/tokenizer folder ({type(exc).__name__})", where=key)
    return AlignkitError(
        f"'{path}' is not a local folder and could not be fetched from the Hub (offline or no such repo)",
        where=key,
    )


def read_chat_template(value: str) -> str:
    """A chat template given inline or as a path to a .jinja file."""
    path = Path(value)
    if value.endswith((".jinja", ".j2", ".txt")):
        if not path.is_file():
            raise AlignkitError("chat template file not found", where=f"model.chat_template: {value}")
        return path.read_text()
    return value


def load_tokenizer(model: ModelSection, padding_side: str = "right") -> Any:
    """Load the tokenizer, apply the recipe's chat template, and make sure PAD exists and differs from EOS."""
    from transformers import AutoTokenizer

    source = model.tokenizer or adapter_base(model.name_or_path) or model.name_or_path
    try:
        tok = AutoTokenizer.from_pretrained(
            source, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc, "model.tokenizer" if model.tokenizer else "model.name_or_path") from None
    if model.chat_template:
        tok.chat_template = read_chat_template(model.chat_template)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # PAD must differ from EOS: if EOS is masked as padding the policy never learns to stop.
        candidate = tok.unk_token if tok.unk_token is not None and tok.unk_token != tok.eos_token else None
        if candidate is None:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
        else:
            tok.pad_token = candidate
    tok.padding_side = padding_side
    return tok


def quantization_config(quant: QuantizationSection | None) -> Any:
    """bitsandbytes config for QLoRA (NF4 + double quantization by default), or None."""
    if quant is None or not (quant.load_in_4bit or quant.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    if quant.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=DTYPES[quant.bnb_4bit_compute_dtype],
        # FSDP needs the 4-bit weights stored in a float dtype it can shard.
        bnb_4bit_quant_storage=getattr(torch, quant.bnb_4bit_quant_storage),
    )


def adapter_base(path: str) -> str | None:
    """If `path` is a PEFT adapter folder, the base model it was trained on; else None."""
    cfg = Path(path) / "adapter_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("base_model_name_or_path")
    return None


def _from_pretrained(cls: Any, path: str, model: ModelSection, key: str, **kwargs: Any) -> Any:
    quantized = "quantization_config" in kwargs
    on_cpu = quantized and not torch.cuda.is_available()
    if on_cpu:
        return_freed_memory_to_os()  # before the load too: its freed weights then leave at once
    try:
        with read_checkpoints_without_mmap(quantized):
            loaded = cls.from_pretrained(
                path,
                revision=model.revision,
                trust_remote_code=model.trust_remote_code,
                dtype=resolve_dtype(model.torch_dtype),
                **({"attn_implementation": model.attn_implementation} if model.attn_implementation else {}),
                **kwargs,
            )
    except (OSError, ValueError) as exc:
        raise _hub_error(path, exc, key) from None
    if quantized:
        release_checkpoint_mapping(loaded)
    if on_cpu:
        return_freed_memory_to_os()
    return loaded


def load_causal_lm(model: ModelSection, quant: QuantizationSection | None = None,
                   tokenizer: Any = None, adapter_trainable: bool = False) -> Any:
    """Load a causal LM: full weights, 4/8-bit (QLoRA), or base + PEFT adapter when the path is an adapter."""
    from transformers import AutoModelForCausalLM

    base = adapter_base(model.name_or_path)
    kwargs: dict[str, Any] = {}
    qcfg = quantization_config(quant)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    lm = _from_pretrained(AutoModelForCausalLM, base or model.name_or_path, model, "model.name_or_path", **kwargs)
    if tokenizer is not None and len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer))
    if base is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, model.name_or_path, is_trainable=adapter_trainable)
    return lm


@contextlib.contextmanager
def read_checkpoints_without_mmap(enabled: bool = True) -> Iterator[None]:
    """Within the block, transformers reads safetensors tensors with pread instead of mapping the file.

    A quantized load reads every full-precision weight once and keeps only its 4-bit copy, but the
    pages of a memory-mapped file stay resident (and count in the process's RSS) for as long as the
    file is mapped, i.e. the whole load: a 110M float32 checkpoint adds ~0.4 GB to the peak of a run
    whose model then holds ~0.06 GB. pread reads one tensor at a time into memory that is freed once
    it is quantized. transformers picks pread itself on Windows and MPS but has no switch for it
    elsewhere, so this swaps the `safe_open` its loader calls; when that name or safetensors'
    `backend` argument is missing (another version) the block changes nothing.
    """
    import transformers.modeling_utils as modeling_utils

    original = getattr(modeling_utils, "safe_open", None)
    if not enabled or original is None or not _takes_backend(original):
        yield
        return

    def safe_open_pread(filename: Any, framework: str, device: Any = "cpu", backend: str = "mmap") -> Any:
        backend = "pread" if backend == "mmap" and str(device) == "cpu" else backend
        return original(filename, framework=framework, device=device, backend=backend)

    modeling_utils.safe_open = safe_open_pread
    try:
        yield
    finally:
        modeling_utils.safe_open = original


def _takes_backend(fn: Any) -> bool:
    import inspect

    try:
        return "backend" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a compiled function without a text signature
        return False


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def return_freed_memory_to_os() -> bool:
    """On glibc, hand freed heap pages back now and keep later large blocks returnable; False elsewhere.

    glibc serves blocks above its mmap threshold with their own mappings, which go back to the system
    when freed, but it raises that threshold to the size of each large block freed (up to 32 MiB), so
    after quantization has freed the first full-precision weight, later weights and every activation of
    the same size come from the heap, whose free middle cannot be returned. On a 110M QLoRA run that
    kept ~0.2 GB of freed memory in the peak RSS (bench/memory.py: 988 -> 775 MB). Fixing the threshold
    (mallopt, which also stops its growth) costs a page fault per large allocation, so it is done for
    quantized loads on CPU only: the runs whose point is memory. malloc_trim then releases what is free.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # musl and others
        return False
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    malloc_trim(0)
    return True


def release_checkpoint_mapping(model: Any) -> int:
    """Copy the CPU tensors that still view the memory-mapped checkpoint; returns how many were copied.

    On CPU a quantized load keeps the unquantized tensors (norms, embeddings, head) as views of the
    safetensors mmap, so every page of the full-precision file that quantization read stays resident
    (~4 bytes per parameter, 0.4 GB for a 110M model). Copies of the few small tensors let it go.
    """
    import torch

    copied = 0
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for value in tensors.values():
                if value is None or value.device.type != "cpu" or type(value).__name__ == "Params4bit":
                    continue
                if value.untyped_storage().nbytes() and not value.untyped_storage().resizable():
                    with torch.no_grad():
                        value.data = value.data.clone()
                    copied += 1
    return copied


def load_reward_model(path: str, model: ModelSection | None = None, quant: QuantizationSection | None = None) -> Any:
    """Load a sequence-classification model with one score (a reward model or critic init)."""
    from transformers import AutoModelForSequenceClassification

    section = model or ModelSection(name_or_path=path)
    kwargs: dict[str, Any] = {"num_labels": 1}
    qcfg = quantization_config(quant)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    base = adapter_base(path)
    rm = _from_pretrained(AutoModelForSequenceClassification, base or path, section, "reward_model", **kwargs)
    if base is not None:
        from peft import PeftModel

        rm = PeftModel.from_pretrained(rm, path)
    return rm


def lora_config(peft: PeftSection, task_type: str = "CAUSAL_LM") -> Any:
    """PEFT LoraConfig from the recipe's `peft` section."""
    from peft import LoraConfig

    return LoraConfig(
        r=peft.r,
        lora_alpha=peft.lora_alpha,
        lora_dropout=peft.lora_dropout,
        target_modules=peft.target_modules,
        modules_to_save=peft.modules_to_save,
        bias=peft.bias,
        use_rslora=peft.use_rslora,
        use_dora=peft.use_dora,
        task_type=task_type,
    )


def set_generation_eos(model: Any, tokenizer: Any) -> None:
    """Put EOS/PAD in generation_config so the saved model stops where the chat template ends a turn."""
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "config", None) is not None:
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id


def apply_lora(model: Any, peft: PeftSection, task_type: str = "CAUSAL_LM", quantized: bool = False,
               gradient_checkpointing: bool = False) -> Any:
    """Wrap a model with a fresh LoRA adapter; 4/8-bit bases are prepared for k-bit training first."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return get_peft_model(model, lora_config(peft, task_type))


def match_adapter_dtype(model: Any, dtype: Any) -> None:
    """Keep trainable adapter weights in the 4-bit compute dtype.

    TRL casts QLoRA adapters to bf16 (the paper's GPU recipe); with a float32 compute dtype (CPU) that
    only adds casts and slow bf16 kernels (2.5x slower steps on the tiny model here).
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
