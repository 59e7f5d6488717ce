"""The models around the online-RL loop: the critic's per-token value head and response logits."""

from __future__ import annotations

from typing import Any

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them; recomputed passes must match."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model: Any, query_responses: torch.Tensor, attention_mask: torch.Tensor,
                    context_length: int) -> torch.Tensor:
    """Logits that predict each response token (positions context_length-1 .. end-1)."""
    out = model(input_ids=query_responses, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.logits[:, context_length - 1:-1]


def response_values(critic: Any, query_responses: torch.Tensor, attention_mask: torch.Tensor,
                    context_length: int) -> torch.Tensor:
    """(B, T_resp): the critic's value of the state before each response token."""
    return critic(query_responses, attention_mask)[:, context_length - 1:-1]


class ValueHead(torch.nn.Module):
    """The critic: a sequence-classification model's backbone with its `score` head read at every position."""

    # Initialised from the reward model (InstructGPT; the TRL example; OpenRLHF's default), so the first
    # values are already on the reward's scale.
    def __init__(self, reward_model: Any):
        super().__init__()
        self.model = reward_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token values [B, T]."""
        backbone = getattr(self.model, self.model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        return self.model.score(hidden).squeeze(-1).float()
