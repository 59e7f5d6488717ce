"""The reward stage section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignkit.config.base import Section


class RewardSection(Section):
    """Reward-model training: loss, margin, centering, normalisation and accuracy samples."""

    loss: Literal["pairwise", "ranking"] = Field(
        "ranking",
        description="ranking: InstructGPT, all C(K,2) pairs of a prompt in one batch element; "
        "pairwise: every pair an independent row (TRL RewardTrainer)",
    )
    margin_column: str | None = Field(None, description="a per-row margin subtracted inside the sigmoid")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Eisenstein et al. 2023: + c * mean over pairs of (r_better + r_worse)^2; ~0.01"
    )
    normalize: bool = Field(True, description="set a bias so reference (SFT) responses score mean 0")
    normalize_std: bool = Field(False, description="also scale so reference responses have std 1")
    reference_responses: Literal["generate", "dataset"] = Field(
        "generate", description="generate: sample the SFT model on training prompts; dataset: the best responses"
    )
    reference_samples: int = Field(256, gt=1, description="prompts used for the normalisation statistics")
    reference_max_new_tokens: int = Field(64, gt=0)
    reference_temperature: float = Field(1.0, ge=0, description="as the PPO policy samples; 0 is greedy")
    accuracy_samples: int = Field(1000, gt=0, description="training pairs scored for the (noisy) train accuracy")
    accuracy_by: str | None = Field(
        None, description="a column of the held-out rows (dotted for nested, e.g. meta.rejected_variant): held-out "
        "accuracy is also reported per value, as RewardBench reports subsets")
    lm_loss_coef: float = Field(
        0.0, ge=0, description="GRM (Yang et al. 2024): + c * next-token loss on each ranking's best response, "
        "through the init model's frozen LM head, so the backbone keeps what it knew as a language model")

    lm_surprise: bool = Field(
        False, description="add w * the init language model's surprise at the response's least likely token, "
        "min_t (log p(y_t) - max_v log p(v)), with w >= 0 fitted on the training comparisons (or lm_surprise_weight): lets a small reward "
        "model judge facts its LM knows but its head cannot read; the LM is saved in model/lm/")
    lm_surprise_weight: float | None = Field(
        None, ge=0, description="a fixed w for lm_surprise instead of the fitted one (the fit still runs and is "
        "reported as lm_surprise_weight_fitted): the fit weighs every training comparison alike, most of them about "
        "form, so a weight chosen by the PPO result on validation prompts can differ")
    lm_surprise_floor: float | None = Field(
        None, lt=0, description="clamp lm_surprise at this many nats below the top choice (e.g. -6): a wrong value "
        "costs a few nats, an odd form (all capitals) ten or more, so without a floor the term outweighs the head "
        "on form; off by default")

    @model_validator(mode="after")
    def _options_fit_together(self) -> RewardSection:
        if self.lm_loss_coef and self.loss != "ranking":
            raise ValueError("lm_loss_coef needs loss: ranking")
        if self.lm_surprise_weight is not None and not self.lm_surprise:
            raise ValueError("lm_surprise_weight needs lm_surprise: true")
        if self.lm_surprise_floor is not None and not self.lm_surprise:
            raise ValueError("lm_surprise_floor needs lm_surprise: true")
        return self
