"""The models around the online-RL loop: the critic's per-token value head and response logits."""

from __future__ import annotations

from typing import Any

import torch

from alignkit.models import position_ids_from_mask


def response_slice(per_position: torch.Tensor, context_length: int) -> torch.Tensor:
    """The positions that predict (or value the state before) each response token.

    per_position is [B, T, ...] over query+response (T = context_length + R); the result is [B, R, ...]:
    position t sees tokens 0..t, so positions context_length-1 .. T-2 precede response tokens 0 .. R-1.
    """
    return per_position[:, context_length - 1:-1]


def response_logits(model: Any, query_responses: torch.Tensor, attention_mask: torch.Tensor,
                    context_length: int) -> torch.Tensor:
    """(B, R, V): the policy's logits for each response token."""
    out = model(input_ids=query_responses, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return response_slice(out.logits, context_length)


def response_values(critic: Any, query_responses: torch.Tensor, attention_mask: torch.Tensor,
                    context_length: int) -> torch.Tensor:
    """(B, R): the critic's value of the state before each response token."""
    return response_slice(critic(query_responses, attention_mask), context_length)


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
