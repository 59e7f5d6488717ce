"""The sft stage section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.config.base import Section


class SFTSection(Section):
    """Supervised fine-tuning options beyond model/data/train."""

    assistant_only_loss: bool = Field(True, description="loss on assistant tokens only (multi-turn included)")
    completion_only_loss: bool = True
    packing_strategy: str = "bfd"
    packed_layout: Literal["auto", "flat", "rows"] = Field(
        "auto", description="packed batches as one flattened row (flat: pays with a varlen flash-attention kernel) "
        "or as [batch, max_length] rows with per-row position_ids (rows: attention cost per row); auto picks "
        "flat for flash-attention kernels, rows otherwise")
    merge_adapter: bool = Field(False, description="also write a merged full model after LoRA/QLoRA training")
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune (Jain et al. 2023): uniform noise of scale alpha / sqrt(length x hidden) on "
        "the input embeddings while training (5 in the paper); off by default")
