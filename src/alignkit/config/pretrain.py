"""The pretrain stage section: tokenizer training, from-scratch architecture, packing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignkit.config.base import Section


class TokenizerTraining(Section):
    """Train a byte-level BPE tokenizer on the corpus (from-scratch pretraining only)."""

    vocab_size: int = Field(2048, ge=300)
    min_frequency: int = Field(2, ge=1)
    max_documents: int | None = Field(None, gt=0, description="train on the first N documents only")


class ArchitectureSection(Section):
    """A Llama-architecture model built from config (random init) for from-scratch pretraining."""

    hidden_size: int = Field(192, gt=0)
    intermediate_size: int = Field(512, gt=0)
    num_hidden_layers: int = Field(4, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int | None = None
    max_position_embeddings: int = Field(512, gt=0)
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0


class PretrainSection(Section):
    """Continued pretraining (from `model`) or from scratch (`from_scratch: true`)."""

    from_scratch: bool = False
    tokenizer_training: TokenizerTraining | None = None
    architecture: ArchitectureSection | None = None
    block_size: int = Field(256, gt=8, description="tokens per packed row")
    eval_holdout_documents: int = Field(200, ge=0, description="documents kept out for held-out perplexity")
    text_column: str = "text"
    mixture_stopping: Literal["first_exhausted", "all_exhausted"] = "all_exhausted"

    @model_validator(mode="after")
    def _blocks_fit(self) -> PretrainSection:
        # The saved config would claim fewer positions than the model was trained on.
        arch = self.architecture
        if self.from_scratch and arch is not None and self.block_size > arch.max_position_embeddings:
            raise ValueError(f"block_size {self.block_size} is longer than architecture.max_position_embeddings "
                             f"({arch.max_position_embeddings}); raise that or shorten the blocks")
        return self
