"""Online-RL checkpoint folders (PPO, GRPO, RLOO): weights saved with save_pretrained, loaded back in place.

    <run>/checkpoints/checkpoint-<rollout>/
        policy/              the policy (adapter for PEFT), loadable by path like any model folder
        critic/              PPO's value model
        optimizer.pt
        trainer_state.json   counters, KL coefficient, KL_KEY, history (written last)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch

from alignkit.errors import AlignkitError
from alignkit.reference import REF_ADAPTER, is_peft_model
from alignkit.runio import CHECKPOINT_STATE, RunDir, complete_checkpoints

CHECKPOINT_PREFIX = "checkpoint-"
POLICY_DIR = "policy"
CRITIC_DIR = "critic"
# trainer_state.json's key for the checkpoint's KL to the reference (objective/kl of its last rollout):
# the x axis of the eval harness's win-rate-vs-KL curve.
KL_KEY = "kl"


class CheckpointPolicy(NamedTuple):
    """One saved policy of an online-RL run: its checkpoint's name, the loadable folder, its KL to the reference."""

    checkpoint: str
    path: Path
    kl: float | None


def checkpoint_policies(run: str | Path, where: str | None = None) -> list[CheckpointPolicy]:
    """The policy of every complete checkpoint of an online-RL run folder, oldest first; none is a user error."""
    found = [CheckpointPolicy(ckpt.name, ckpt / POLICY_DIR,
                              json.loads((ckpt / CHECKPOINT_STATE).read_text()).get(KL_KEY))
             for ckpt in complete_checkpoints(RunDir(run).checkpoints) if (ckpt / POLICY_DIR).is_dir()]
    if not found:
        raise AlignkitError(f"no checkpoints/{CHECKPOINT_PREFIX}<n>/{POLICY_DIR} with {CHECKPOINT_STATE}",
                            where=where or str(run))
    return found


def save_policy(policy: Any, folder: Path, tokenizer: Any = None) -> None:
    """The policy as safetensors: the trained adapter only for PEFT, the full model otherwise."""
    if is_peft_model(policy):
        trained = [n for n in policy.peft_config if n != REF_ADAPTER]
        policy.save_pretrained(str(folder), selected_adapters=trained, safe_serialization=True)
    else:
        policy.save_pretrained(str(folder), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def read_safetensors_dir(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every *.safetensors file in a folder (sharded or not)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_full_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load save_pretrained weights into an existing model; only tied weights may be absent."""
    result = model.load_state_dict(read_safetensors_dir(folder), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")


def load_policy(policy: Any, folder: Path) -> None:
    """Load a saved policy (adapter or full model) into the live one."""
    if is_peft_model(policy):
        from peft import set_peft_model_state_dict

        trained = policy.active_adapter
        result = set_peft_model_state_dict(policy, read_safetensors_dir(folder), adapter_name=trained)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"adapter in {folder} does not match the policy: {result.unexpected_keys[:5]}")
    else:
        load_full_weights(policy, folder)


def prune_checkpoints(checkpoint_dir: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (train.save_total_limit); None keeps all.

    Called once a new checkpoint is complete, so a crash never leaves fewer than `keep` to resume from;
    the newest is always kept.
    """
    if keep is None:
        return []
    old = complete_checkpoints(checkpoint_dir)[:-max(keep, 1)]
    for path in old:
        shutil.rmtree(path)
    return old
