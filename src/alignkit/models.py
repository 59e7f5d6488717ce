"""The one model loader: tokenizer + chat template, causal LMs (full, 4-bit, adapters), LoRA configs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from alignkit.config.base import ModelSection, PeftSection, QuantizationSection
from alignkit.data.templates import require_chat_template, set_chat_template
from alignkit.errors import AlignkitError
from alignkit.memory import (
    read_checkpoints_without_mmap,
    release_checkpoint_mapping,
    return_freed_memory_to_os,
)
from alignkit.runio import read_quantization_record

log = logging.getLogger("alignkit.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype | str:
    """Map a recipe dtype name to torch (\"auto\" passes through)."""
    return "auto" if name == "auto" else DTYPES[name]


def _load_error(path: str, exc: Exception, key: str, attn_implementation: str | None) -> AlignkitError:
    """The user error for a failed model load: the attention kernel when that is what failed, else the path."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if attn_implementation and re.search(r"attn_implementation|attention|FlashAttention|flash_attn", message):
        return AlignkitError(f"attn_implementation '{attn_implementation}' cannot be used: {message}; use "
                             "'sdpa' or 'eager' (or leave it unset)", where="model.attn_implementation")
    if isinstance(exc, ImportError):
        return AlignkitError(f"loading '{path}' needs a package that is missing: {message}", where=key)
    return _hub_error(path, exc, key)


def _hub_error(path: str, exc: Exception, key: str) -> AlignkitError:
    unknown = re.search(r"Unrecognized configuration class <class '[\w.]*\.(\w+)'> for this kind of AutoModel: (\w+)",
                        str(exc))
    if unknown:
        return AlignkitError(f"'{path}' is a {unknown.group(1).removesuffix('Config')} model, which transformers "
                             f"cannot load as {unknown.group(2)}", where=key)
    if Path(path).exists():
        return AlignkitError(f"'{path}' is not a loadable model/tokenizer folder ({type(exc).__name__})", where=key)
    return AlignkitError(
        f"'{path}' is not a local folder and could not be fetched from the Hub (offline or no such repo)",
        where=key,
    )


def tokenizer_source(model: ModelSection) -> str:
    """Where the tokenizer comes from: model.tokenizer, an adapter folder's own (saved) tokenizer, or its base."""
    path = model.name_or_path
    if model.tokenizer:
        return model.tokenizer
    if (Path(path) / "tokenizer_config.json").is_file():
        return path
    return adapter_base(path) or path


def has_tokenizer(model: ModelSection) -> bool:
    """False only for a local folder without tokenizer files (weights only) and no model.tokenizer."""
    source = Path(tokenizer_source(model))
    return not source.is_dir() or any((source / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json"))


def load_tokenizer(model: ModelSection, padding_side: str = "right", chat: bool = False) -> Any:
    """Load the tokenizer, apply the recipe's chat template, and make sure PAD exists and differs from EOS.

    `chat`: the stage renders conversations, so a tokenizer without a template is a user error now,
    before any model loads.
    """
    from transformers import AutoTokenizer

    source = tokenizer_source(model)
    try:
        tok = AutoTokenizer.from_pretrained(
            source, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc, "model.tokenizer" if model.tokenizer else "model.name_or_path") from None
    if model.chat_template:
        set_chat_template(tok, model.chat_template)  # before PAD: a built-in may change EOS
    if chat:
        require_chat_template(tok)
    ensure_pad_token(tok)
    tok.padding_side = padding_side
    return tok


ADDED_PAD = "<|pad|>"
# Tokens that pretrained vocabularies reserve for padding (Llama-3.1, T5/Gemma, BERT, ours, Pythia).
PAD_NAMES = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]", ADDED_PAD, "<|padding|>")


def spare_pad_token(tok: Any) -> str | None:
    """A token already in the vocabulary that can serve as PAD without a new embedding row, or None.

    In order: unk, a token named for padding, the first reserved special token (Llama-3's
    <|reserved_special_token_N|>), then <|endoftext|> when EOS is another token (Qwen's chat EOS is
    <|im_end|>). Never EOS or BOS, nor a token the chat template writes.
    """
    taken = {tok.eos_token, tok.bos_token}
    template = tok.chat_template if isinstance(tok.chat_template, str) else ""
    vocab = tok.get_vocab()

    def usable(token: str | None) -> bool:
        return token is not None and token in vocab and token not in taken and token not in template

    if usable(tok.unk_token):
        return tok.unk_token
    named = next((t for t in PAD_NAMES if usable(t)), None)
    if named:
        return named
    reserved = sorted((vocab[t], t) for t in tok.get_added_vocab() if "reserved" in t.lower() and usable(t))
    if reserved:
        return reserved[0][1]
    return "<|endoftext|>" if usable("<|endoftext|>") else None


def ensure_pad_token(tok: Any) -> None:
    """Give the tokenizer a PAD that differs from EOS, adding <|pad|> only when the vocabulary has none to spare.

    PAD must differ from EOS: if EOS is masked as padding the policy never learns to stop. An added PAD
    needs a new embedding row; the saved tokenizer carries it and load_causal_lm grows every later load
    (merge, reward, PPO, DPO, eval) to the tokenizer the same way.
    """
    if tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id:
        return
    spare = spare_pad_token(tok)
    if spare is None:
        tok.add_special_tokens({"pad_token": ADDED_PAD})
        log.info("the vocabulary has no token to spare as PAD: added %s (the embeddings grow by one row)", ADDED_PAD)
    else:
        tok.pad_token = spare


def same_vocabulary(tokenizer: Any, other: Any) -> bool:
    """Whether two tokenizers map every token to the same id (log-probs and rewards of ids then agree)."""
    return tokenizer.get_vocab() == other.get_vocab()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only (left padding skipped), as `generate` numbers them."""
    # A recomputed forward pass must use the positions generation used, else its log-probs differ.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def is_quantized_config(quant: QuantizationSection | None) -> bool:
    """Whether a recipe's quantization section asks for a 4-bit or 8-bit base (the one test for both)."""
    return bool(quant and (quant.load_in_4bit or quant.load_in_8bit))


def quantization_record(quant: QuantizationSection | None) -> dict[str, Any] | None:
    """What an adapter trained on this base records beside itself (runio.QUANT_FILE); None for a float base."""
    return quant.model_dump() if is_quantized_config(quant) else None


def recorded_quantization(adapter_dir: str) -> QuantizationSection | None:
    """The quantization an adapter's base was trained in (its record), to rebuild that same base; else None."""
    record = read_quantization_record(adapter_dir)
    return QuantizationSection(**record) if record is not None else None


def base_quantization(path: str, quant: QuantizationSection | None = None) -> QuantizationSection | None:
    """The quantization to load `path`'s base in: the one asked for, else an adapter's own record.

    An adapter trained on a 4/8-bit base is that base + adapter: loaded on a float base it is another model.
    """
    if quant is None and adapter_base(path) is not None:
        return recorded_quantization(path)
    return quant


def quantization_config(quant: QuantizationSection | None) -> Any:
    """bitsandbytes config for QLoRA (NF4 + double quantization by default), or None."""
    if not is_quantized_config(quant):
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


def keep_4bit_arithmetic(model: Any) -> Any:
    """Make a model's bitsandbytes 4-bit layers compute as configured on the CPU, in place; returns the model.

    bitsandbytes >= 0.50 on a CPU with AVX512-BF16, in eval mode without gradients, repacks each 4-bit weight
    in place into a CPU layout and computes in bfloat16 whatever bnb_4bit_compute_dtype says. The model then
    evaluated is not the one trained (reward scores 3e-4 apart, logits 3e-3), and a later dequantize or merge
    reads the repacked bytes as NF4 (shape errors, or wrong weights). Switching that path off keeps the
    arithmetic of training on every CPU; weights already repacked are unpacked first.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # no bitsandbytes, or one without the repacking path
        return model
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
    return model


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
    except (OSError, ValueError, ImportError, TypeError) as exc:  # TypeError: a config.json that is not an object
        raise _load_error(path, exc, key, model.attn_implementation) from None
    except RuntimeError as exc:
        if "size mismatch" not in str(exc) and "ignore_mismatched_sizes" not in str(exc):
            raise
        raise AlignkitError(f"'{path}': its weights do not fit its config.json (tensor shapes differ); copy or "
                            "download the model again, config and weights together", where=key) from None
    if quantized:
        release_checkpoint_mapping(loaded)
        keep_4bit_arithmetic(loaded)
    if on_cpu:
        return_freed_memory_to_os()
    return loaded


def load_causal_lm(model: ModelSection, quant: QuantizationSection | None = None,
                   tokenizer: Any = None, adapter_trainable: bool = False) -> Any:
    """Load a causal LM: full weights, 4/8-bit (QLoRA), or base + PEFT adapter when the path is an adapter.

    An adapter folder with a quantization record (runio.QUANT_FILE) gets the same 4/8-bit base it was
    trained on unless `quant` says otherwise.
    """
    from transformers import AutoModelForCausalLM

    base = adapter_base(model.name_or_path)
    kwargs: dict[str, Any] = {}
    qcfg = quantization_config(base_quantization(model.name_or_path, quant))
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    if tokenizer is None and has_tokenizer(model):
        tokenizer = load_tokenizer(model)
    lm = _from_pretrained(AutoModelForCausalLM, base or model.name_or_path, model, "model.name_or_path", **kwargs)
    if tokenizer is not None:  # a weights-only folder has no tokenizer that could have grown
        grow_embeddings(lm, len(tokenizer))
    if base is not None:
        lm = attach_adapter(lm, model.name_or_path, is_trainable=adapter_trainable)
    return lm


def load_for_generation(path: str, tokenizer: Any = None) -> tuple[Any, Any]:
    """A causal LM in eval mode (on the GPU when there is one) and its tokenizer with left padding, to generate."""
    section = ModelSection(name_or_path=path)
    tokenizer = tokenizer or load_tokenizer(section, padding_side="left")
    model = load_causal_lm(section, tokenizer=tokenizer)
    return (model.to("cuda") if torch.cuda.is_available() else model).eval(), tokenizer


def grow_embeddings(model: Any, size: int) -> bool:
    """Grow the (input and output) embeddings to `size` rows when the tokenizer is larger; True if grown.

    New rows start at the mean of the old ones, not at random, so that every load of the same base
    (training, merge, PPO's reference, eval) builds identical rows for tokens whose rows are not saved
    (an adapter saves only the layers it trains).
    """
    import torch

    rows = model.get_input_embeddings().weight.shape[0]
    if size <= rows:
        return False
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                      if m is not None}.values():
            layer.weight[rows:] = layer.weight[:rows].mean(dim=0, keepdim=True)
    return True


def attach_adapter(model: Any, adapter_dir: str, is_trainable: bool = False) -> Any:
    """A saved PEFT adapter on its base, the base grown first to the adapter's own tokenizer."""
    from peft import PeftModel

    grow_embeddings(model, len(load_tokenizer(ModelSection(name_or_path=adapter_dir))))
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)


def register_score_head(path: str, section: ModelSection) -> str | None:
    """Let AutoModelForSequenceClassification load `path`'s architecture when transformers has no such class.

    About half of the causal-LM architectures transformers 5 knows (Granite, Cohere, OLMoE, Gemma-3n, Llama-4
    text, ...) come without a ...ForSequenceClassification, so neither alignkit nor TRL could make a reward
    model or a PPO critic of them. The class built here is transformers' own GenericForSequenceClassification
    on the architecture's PreTrainedModel, the recipe LlamaForSequenceClassification is made of (the base
    model, a bias-free linear score read at the last non-pad token), registered for the config class, as
    OpenRLHF builds reward models from any base model plus a linear head. Returns the new class's name, or
    None when nothing was needed or possible (the load then reports its own error)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
        MODEL_MAPPING,
    )

    try:
        config = AutoConfig.from_pretrained(path, revision=section.revision, trust_remote_code=section.trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None
    kind = type(config)
    if (kind in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING or getattr(config, "auto_map", None)
            or config.is_encoder_decoder):  # a score head on the decoder-only backbone, nothing else
        return None
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING or kind not in MODEL_MAPPING:  # no backbone to put a head on
        return None
    causal = MODEL_FOR_CAUSAL_LM_MAPPING[kind]
    pretrained = next((c for c in causal.__mro__[1:] if c.__name__.endswith("PreTrainedModel")
                       and c.__name__ != "PreTrainedModel"), None)
    if pretrained is None:
        return None
    name = causal.__name__.replace("ForCausalLM", "") + "ForSequenceClassification"
    head = type(name, (GenericForSequenceClassification, pretrained),
                {"base_model_prefix": pretrained.base_model_prefix, "config_class": kind, "__module__": __name__})
    AutoModelForSequenceClassification.register(kind, head, exist_ok=True)
    return name


def load_reward_model(path: str, model: ModelSection | None = None, quant: QuantizationSection | None = None) -> Any:
    """Load a sequence-classification model with one score (a reward model or critic init)."""
    from transformers import AutoModelForSequenceClassification

    section = model or ModelSection(name_or_path=path)
    kwargs: dict[str, Any] = {"num_labels": 1}
    base = adapter_base(path)
    register_score_head(base or path, section)
    qcfg = quantization_config(base_quantization(path, quant))
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    rm = _from_pretrained(AutoModelForSequenceClassification, base or path, section, "reward_model", **kwargs)
    if base is not None:
        rm = attach_adapter(rm, path)
    return rm


# Names one architecture uses for what another calls otherwise (Llama/Qwen/Mistral/Gemma vs GPT-2,
# GPT-NeoX, Falcon, Phi): a recipe written for one family then targets the same layers in another.
MODULE_ALIASES: tuple[frozenset[str], ...] = (
    frozenset({"embed_tokens", "wte", "embed_in", "word_embeddings", "tok_embeddings"}),
    frozenset({"lm_head", "embed_out", "output"}),
    frozenset({"q_proj", "k_proj", "v_proj", "c_attn", "query_key_value", "qkv_proj", "Wqkv"}),
    frozenset({"o_proj", "c_proj", "dense", "out_proj"}),
    frozenset({"gate_proj", "up_proj", "c_fc", "fc1", "dense_h_to_4h", "gate_up_proj"}),
    frozenset({"down_proj", "c_proj", "fc2", "dense_4h_to_h"}),
)


def _matches(names: list[str], target: str) -> bool:
    """PEFT's rule for a listed name: the full module name, or its last dotted parts."""
    return any(name == target or name.endswith("." + target) for name in names)


def _resolve_modules(names: list[str], wanted: list[str], key: str) -> list[str]:
    """Each wanted module name, or its alias that this model has; an error names the key and what exists."""
    out: list[str] = []
    for target in wanted:
        if _matches(names, target):
            found = [target]
        else:
            found = sorted({alias for group in MODULE_ALIASES if target in group
                            for alias in group if alias != target and _matches(names, alias)})
        if not found:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
            raise AlignkitError(f"no module named '{target}' in this model; its modules are: {', '.join(leaves)}",
                                where=key)
        if found != [target]:
            log.info("%s: '%s' is called %s in this model", key, target, " / ".join(found))
        out.extend(f for f in found if f not in out)
    return out


def resolve_peft_modules(model: Any, peft: PeftSection) -> PeftSection:
    """The peft section with target_modules / modules_to_save checked against the model, aliases resolved.

    PEFT ignores a modules_to_save name that matches nothing (GPT-2's embeddings are `wte`, not
    `embed_tokens`, so they would silently stay frozen) and fails on target_modules with a traceback.
    """
    names = [name for name, _ in model.named_modules()]
    update: dict[str, Any] = {}
    targets = peft.target_modules
    if isinstance(targets, list):
        update["target_modules"] = _resolve_modules(names, targets, "peft.target_modules")
    elif targets != "all-linear" and not any(re.fullmatch(targets, n) for n in names):
        raise AlignkitError(f"the pattern '{targets}' matches no module name of this model",
                            where="peft.target_modules")
    if peft.modules_to_save:
        update["modules_to_save"] = _resolve_modules(names, peft.modules_to_save, "peft.modules_to_save")
    return peft.model_copy(update=update)


def moe_routers(model: Any) -> list[str]:
    """Names of mixture-of-experts routers that are nn.Linear subclasses (Llama-4's returns a tuple).

    PEFT's "all-linear" wraps them, and a LoRA layer cannot wrap a Linear whose forward returns
    (scores, logits): training failed with "'tuple' object has no attribute 'dtype'". Routers are left
    out of LoRA by default, as the expert routing is not what an adapter should retrain."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and "router" in type(module).__name__.lower()]


def lora_config(peft: PeftSection, task_type: str = "CAUSAL_LM", model: Any = None) -> Any:
    """PEFT LoraConfig from the recipe's `peft` section (module names checked against `model` when given)."""
    from peft import LoraConfig

    exclude = None
    if model is not None:
        peft = resolve_peft_modules(model, peft)
        if peft.target_modules == "all-linear":
            exclude = moe_routers(model) or None
    return LoraConfig(
        exclude_modules=exclude,
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
    return get_peft_model(model, lora_config(peft, task_type, model=model))


def match_adapter_dtype(model: Any, dtype: Any) -> None:
    """Keep trainable adapter weights in the 4-bit compute dtype.

    TRL casts QLoRA adapters to bf16 (the paper's GPU recipe); with a float32 compute dtype (CPU) that
    only adds casts and slow bf16 kernels (2.5x slower steps on the tiny model here).
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def is_quantized_model(model: Any) -> bool:
    """Whether a (PEFT-wrapped) transformers model holds bitsandbytes 4/8-bit weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_quantized", False))


def merge_dequantized(model: Any) -> Any:
    """The active LoRA adapter merged into a float base: a 4/8-bit base is dequantized first, then merged.

    PEFT merges into 4-bit layers by re-quantizing W + BA, which gives another model than the one trained
    (up to 0.1 apart in reward scores here; peft #1080, #2321). Dequantizing the trained NF4 weights and
    merging the same adapter state into those is the trained model in plain floats (as `alignkit merge`).
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if not is_quantized_model(model):
        return model.merge_and_unload()
    name = model.active_adapter
    peft_config = model.peft_config[name]
    state = get_peft_model_state_dict(model, adapter_name=name)
    base = model.unload()  # the LoRA layers removed, their 4-bit base layers back in place
    qcfg = base.config.quantization_config
    # 4-bit layers compute in bnb_4bit_compute_dtype: the dequantized weights keep the trained arithmetic.
    dtype = getattr(qcfg, "bnb_4bit_compute_dtype", None) if getattr(qcfg, "load_in_4bit", False) else None
    base = dequantize(base, dtype or base.get_input_embeddings().weight.dtype)
    fresh = get_peft_model(base, peft_config, adapter_name=name)
    set_peft_model_state_dict(fresh, state, adapter_name=name)
    return fresh.merge_and_unload()


def dequantize(model: Any, dtype: torch.dtype | None = None) -> Any:
    """A 4/8-bit model in plain floats, each layer back in its own class (GPT-2's Conv1D, not nn.Linear).

    transformers' dequantize() makes every bitsandbytes layer an nn.Linear, but a Conv1D stores its
    weight transposed ([in, out]): saved that way, GPT-2's checkpoint no longer loads into GPT-2.
    """
    from transformers.pytorch_utils import Conv1D

    keep_4bit_arithmetic(model)  # NF4 bytes in their own layout before they are read
    conv1d = [name for name, module in model.named_modules()
              if isinstance(getattr(module, "source_cls", None), type) and issubclass(module.source_cls, Conv1D)]
    model = model.dequantize(dtype=dtype)
    for name in conv1d:
        linear = model.get_submodule(name)
        with torch.device("meta"):
            layer = Conv1D(linear.out_features, linear.in_features)
        layer.weight = torch.nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        else:
            layer.bias = None
        model.set_submodule(name, layer)
    return model
