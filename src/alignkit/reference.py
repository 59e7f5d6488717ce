"""The frozen reference policy, one module for DPO and the online methods (PPO, GRPO, RLOO).

Reference modes (memory is one base model with LoRA, not two):
    copy              a separate frozen causal LM (full fine-tuning, or any explicit reference)
    adapter_disabled  LoRA policy on a base that already holds the SFT weights: the reference is the
                      policy with its adapter switched off
    frozen_adapter    the policy continues an SFT LoRA adapter: the reference is a frozen copy of that
                      starting adapter ("ref") on the same base, switched in with set_adapter (TRL PR #4723);
                      disabling the adapter would give the base model, not SFT
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from alignkit.errors import AlignkitError
from alignkit.models import adapter_base

COPY = "copy"
ADAPTER_DISABLED = "adapter_disabled"
FROZEN_ADAPTER = "frozen_adapter"
MODES = (COPY, ADAPTER_DISABLED, FROZEN_ADAPTER)
REF_ADAPTER = "ref"  # the frozen adapter's name, as TRL's DPOTrainer names it


def resolve_mode(model_path: str, has_peft: bool, requested: str = "auto", where: str = "reference") -> str:
    """Pick (or check) the reference mode for a policy starting at `model_path`, with or without a peft section."""
    is_adapter = adapter_base(model_path) is not None
    auto = FROZEN_ADAPTER if is_adapter else (ADAPTER_DISABLED if has_peft else COPY)
    if requested == "auto":
        return auto
    if requested == ADAPTER_DISABLED and is_adapter:
        raise AlignkitError("the policy starts from an unmerged SFT adapter, so disabling it gives the base "
                            "model, not SFT; use frozen_adapter (or merge the SFT adapter first)", where=where)
    if requested in {ADAPTER_DISABLED, FROZEN_ADAPTER} and not (is_adapter or has_peft):
        raise AlignkitError(f"reference {requested} needs a LoRA policy (a peft section or an adapter model)",
                            where=where)
    if requested == FROZEN_ADAPTER and not is_adapter:
        raise AlignkitError("frozen_adapter needs model.name_or_path to be an SFT adapter folder", where=where)
    return requested


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a PEFT wrapper with switchable adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout so training-time logprobs equal rollout-time ones (ratio 1 at the first step)."""
    # N+ details #4 ("disable dropout"): with dropout the PPO ratio is noisy before any update.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


class Reference:
    """Computes the frozen reference policy: a separate model, the adapter switched off, or a frozen adapter."""

    def __init__(self, mode: str, model: Any = None):
        if mode not in MODES:
            raise ValueError(f"unknown reference mode {mode!r}")
        self.mode, self.model = mode, model

    @classmethod
    def build(cls, policy: Any, ref_policy: Any) -> Reference:
        """From a trainer's ref_policy argument: a Reference, a model, None / "adapter_disabled", "frozen_adapter"."""
        if isinstance(ref_policy, Reference):
            ref_policy = ref_policy.model if ref_policy.mode == COPY else ref_policy.mode
        if ref_policy is None or ref_policy == ADAPTER_DISABLED:
            if not is_peft_model(policy):
                raise ValueError("ref_policy=None (adapter disabled) needs a PEFT policy; pass a frozen reference model")
            return cls(ADAPTER_DISABLED)
        if ref_policy == FROZEN_ADAPTER:
            if not is_peft_model(policy):
                raise ValueError("ref_policy='frozen_adapter' needs a PEFT policy")
            add_frozen_adapter_copy(policy)
            return cls(FROZEN_ADAPTER)
        if isinstance(ref_policy, str):
            raise ValueError(f"unknown ref_policy {ref_policy!r}: a model, None or 'frozen_adapter'")
        ref_policy.requires_grad_(False)
        disable_dropout(ref_policy)
        return cls(COPY, ref_policy.eval())

    @contextmanager
    def active(self, policy: Any) -> Iterator[Any]:
        """Yield the module whose forward is the reference policy (`policy` is the unwrapped policy)."""
        if self.mode == COPY:
            yield self.model
        elif self.mode == ADAPTER_DISABLED:
            # Correct only when the SFT weights are merged into the base; otherwise this is the base model.
            with policy.disable_adapter():
                yield policy
        else:
            trained = policy.active_adapter
            policy.set_adapter(REF_ADAPTER, inference_mode=True)
            try:
                yield policy
            finally:
                policy.set_adapter(trained)
                freeze_adapter(policy, REF_ADAPTER)


def freeze_adapter(policy: Any, name: str) -> None:
    """requires_grad=False on one adapter's weights (set_adapter may flip them)."""
    for pname, p in policy.named_parameters():
        if f".{name}." in pname:
            p.requires_grad_(False)


def add_frozen_adapter_copy(policy: Any) -> None:
    """Load the active (starting) adapter a second time as the frozen "ref" adapter, unless one is loaded."""
    trained = policy.active_adapter
    if REF_ADAPTER not in policy.peft_config:
        cfg = copy.deepcopy(policy.peft_config[trained])
        cfg.inference_mode = True
        policy.add_adapter(REF_ADAPTER, cfg)
        state = get_peft_model_state_dict(policy, adapter_name=trained)
        set_peft_model_state_dict(policy, state, adapter_name=REF_ADAPTER)
    policy.set_adapter(trained)
    freeze_adapter(policy, REF_ADAPTER)


def without_reference_adapter(policy: Any) -> Any:
    """The policy with the frozen "ref" adapter deleted (it must not be saved beside the result)."""
    if REF_ADAPTER in getattr(policy, "peft_config", {}):
        policy.delete_adapter(REF_ADAPTER)
    return policy
