"""The dpo stage section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignkit.config.base import Section


class DPOSection(Section):
    """Direct preference optimisation (TRL DPOTrainer) on the reward stage's data."""

    beta: float = Field(0.1, gt=0, description="strength of the implicit KL to the reference (DPO's beta)")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: assumed label-flip probability")
    sft_loss_weight: float = Field(
        0.0, ge=0, description="weight of an NLL term on the chosen answers added to the DPO loss (RPO, Pang et al. "
        "2024): keeps the chosen answers likely, against DPO's likelihood displacement (Razin et al. 2024)"
    )
    pairs: Literal["best_vs_others", "all"] = Field(
        "best_vs_others", description="how a K-way ranking becomes pairs: best vs each other (K-1) or all C(K,2)"
    )
    max_prompt_length: int | None = Field(
        None, gt=0, description="drop pairs whose prompt is longer (in tokens); left-truncating cuts the instruction"
    )
    precompute_ref_log_probs: bool = Field(
        False, description="score the reference once before training instead of keeping it in memory"
    )

    @model_validator(mode="after")
    def _smoothing_needs_robust(self) -> DPOSection:
        # TRL 1.x reads label_smoothing in its robust loss only (its sigmoid loss has no cDPO term).
        if self.label_smoothing and self.loss_type != "robust":
            raise ValueError(f"label_smoothing is used by loss_type robust only; {self.loss_type} would ignore it")
        return self
