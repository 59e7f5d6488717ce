"""Sampling that gives each response row its own random stream, so a rollout does not depend on how rows are split.

`generate(do_sample=True)` draws every row from one global generator: a row's response then depends on the
process count, the rank and the forward_batch_size chunk it falls in. Here generation is greedy over
Gumbel-perturbed logits instead: argmax(logits / T + g), g ~ Gumbel(0, 1) i.i.d., is an exact sample of
softmax(logits / T) (the Gumbel-max trick), and each row's noise comes from a generator seeded by
(seed, rollout, global row). One process and N processes then sample the same responses for the same rows.
"""

from __future__ import annotations

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

_MIX = 1_000_003  # a prime: distinct (seed, rollout, row) triples give distinct seeds for any realistic sizes


def row_seed(seed: int, rollout_idx: int, row: int) -> int:
    """The random stream of global row `row` of rollout `rollout_idx`."""
    return ((seed * _MIX + rollout_idx) * _MIX + row) % (2**63)


class RowSeededSampler(LogitsProcessor):
    """Temperature / top-k / top-p warping, then Gumbel noise drawn from one generator per row."""

    def __init__(self, seeds: list[int], device: torch.device | str, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Warped scores plus per-row Gumbel noise; generate's argmax of them is the sample."""
        scores = self.warpers(input_ids, scores)
        # -log(E), E ~ Exp(1), is Gumbel(0, 1); finished rows still draw, so a row's stream never depends on others.
        noise = torch.stack([-torch.empty(scores.shape[-1], device=scores.device).exponential_(generator=g).log()
                             for g in self.generators])
        return scores + noise.to(scores.dtype)


def greedy_config(max_new_tokens: int, eos_token_id: int, pad_token_id: int) -> GenerationConfig:
    """Argmax decoding with nothing else: the sampler above supplies the randomness and the warping."""
    # An explicit config so the model's own generation defaults (top_k=50, repetition penalty...) cannot sneak in.
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                            pad_token_id=pad_token_id, use_cache=True)
