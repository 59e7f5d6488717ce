"""Reward-model losses and the scoring API used by PPO and the eval harness.

A reward model is a causal-LM backbone with a one-score head (AutoModelForSequenceClassification,
num_labels=1) read at the last real token of  chat_template(prompt, generation prompt) + response + EOS,
which is exactly the sequence a policy emits.

Normalisation: after training, the stage measures the raw scores of reference (SFT) responses and
stores `alignkit_reward_bias` and `alignkit_reward_scale` in the model's config.json (for an adapter
folder, in alignkit_reward.json beside adapter_config.json). RewardScorer applies
score = (raw + bias) / scale, so reference responses score mean 0 (and std 1 when scaled). A plain
`AutoModelForSequenceClassification` load returns the raw scores.

LM surprise (`reward.lm_surprise`): a small reward model's head cannot read facts its backbone knows as a
language model (docs/winrate_embedded_world.md). With it on, raw = head + w * surprise, where surprise is the
least likely response token's log-probability below the top token's, min_t (log p(y_t) - max_v log p(v)),
under the language model the reward model was initialised from (kept in the model folder's lm/), and w >= 0
is fitted on the training comparisons after the head is trained (`alignkit_lm_surprise_weight`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alignkit.models import position_ids_from_mask
from alignkit.runio import (
    BIAS_KEY,
    LM_FLOOR_KEY,
    LM_FOLDER,
    LM_WEIGHT_KEY,
    NORMALIZATION_FILE,
    SCALE_KEY,
)


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                  margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Bradley-Terry: mean of -log sigmoid(r_chosen - r_rejected - margin)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def centering_term(r_better: torch.Tensor, r_worse: torch.Tensor) -> torch.Tensor:
    """Eisenstein et al. 2023 reward centering: mean over pairs of (r_better + r_worse)^2 (TRL's form)."""
    return ((r_better + r_worse) ** 2).mean()


def ranking_loss(rewards: torch.Tensor, group_sizes: Sequence[int], margins: torch.Tensor | None = None,
                 center_coef: float | None = None) -> torch.Tensor:
    """InstructGPT K-way loss: per prompt, the mean over its C(K,2) pairs; then the mean over prompts.

    `rewards` holds each group's K responses best first, groups concatenated: one forward pass per
    response, not per pair. A group's margin applies to all of its pairs; the centering term is
    averaged the same way, so K=2 equals the pairwise loss exactly.
    """
    losses, start = [], 0
    for g, k in enumerate(group_sizes):
        r = rewards[start:start + k]
        better, worse = torch.triu_indices(k, k, offset=1, device=r.device)
        loss = pairwise_loss(r[better], r[worse], None if margins is None else margins[g])
        if center_coef:
            loss = loss + center_coef * centering_term(r[better], r[worse])
        losses.append(loss)
        start += k
    return torch.stack(losses).mean()


def reward_input_text(tokenizer: Any, prompt: Sequence[dict[str, str]] | str, response: str,
                      ended: bool = True) -> str:
    """Prompt (chat template + generation prompt) + response + EOS: exactly what a policy's rollout looks like."""
    messages = as_messages(prompt)
    text = prompt_input_text(tokenizer, messages)
    lead = "" if response[:1].isspace() else response_lead(tokenizer, messages, text)  # HH replies bring their own
    return text + lead + response + (tokenizer.eos_token if ended else "")


def as_messages(prompt: Sequence[dict[str, str]] | str) -> list[dict[str, str]]:
    """Chat messages of a prompt given as messages or as one user text."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_input_text(tokenizer: Any, prompt: Sequence[dict[str, str]] | str) -> str:
    """The prompt rendered by the chat template, up to and including the generation prompt."""
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)


def response_lead(tokenizer: Any, messages: Sequence[dict[str, str]], prompt_text: str) -> str:
    """What the template writes between the generation prompt and an answer's text (e.g. one space).

    A template that puts the answer after a space (alignkit's tiny tokenizer) makes a policy's first
    token " The", not "The"; reward and preference texts must spell it the same way. Found by
    rendering a probe answer, so it works for any template ("" for most).
    """
    probe = "\x00probe"
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": probe}], tokenize=False)
    at = full.find(probe, len(prompt_text)) if full.startswith(prompt_text) else -1
    lead = full[len(prompt_text):at] if at >= 0 else ""
    return lead if lead.isspace() else ""


def reward_input_ids(tokenizer: Any, prompt: Sequence[dict[str, str]] | str, response: str,
                     ended: bool = True) -> list[int]:
    """Token ids of `reward_input_text` (the template already holds any special tokens)."""
    return tokenizer(reward_input_text(tokenizer, prompt, response, ended), add_special_tokens=False)["input_ids"]


def sequence_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw head outputs at the last attended token of each row, for left- or right-padded batches."""
    pad_id = model.config.pad_token_id
    # transformers pools at the rightmost token that is not PAD; writing PAD wherever the mask is 0
    # makes that the last attended token even when PPO leaves non-PAD ids after EOS.
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_id)
    # Positions count real tokens only, so a left-padded row scores as it would unpadded.
    position_ids = position_ids_from_mask(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.logits.squeeze(-1).float()


def read_normalization(path: str | Path, config: Any) -> tuple[float, float]:
    """(bias, scale) from a model config or an adapter folder's alignkit_reward.json; (0, 1) if unset."""
    values = _stored_values(path, config)
    return float(values[BIAS_KEY] or 0.0), float(values[SCALE_KEY] or 1.0)


def read_lm_weight(path: str | Path, config: Any) -> float:
    """The LM-surprise weight stored with a reward model (0 when it has none)."""
    return float(_stored_values(path, config)[LM_WEIGHT_KEY] or 0.0)


def read_lm_floor(path: str | Path, config: Any) -> float | None:
    """The floor the LM surprise is clamped at (reward.lm_surprise_floor), or None."""
    floor = _stored_values(path, config).get(LM_FLOOR_KEY)
    return None if floor is None else float(floor)


def _stored_values(path: str | Path, config: Any) -> dict[str, Any]:
    values = {k: getattr(config, k, None) for k in (BIAS_KEY, SCALE_KEY, LM_WEIGHT_KEY, LM_FLOOR_KEY)}
    file = Path(path) / NORMALIZATION_FILE
    if file.is_file():
        values.update(json.loads(file.read_text()))
    return values


@torch.no_grad()
def lm_surprise(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor) -> torch.Tensor:
    """Per row, min over response tokens of log p(token) - max_v log p(v) under `lm`; 0 when the LM's top choice
    everywhere (or no response token). `response_mask` marks the response's tokens (EOS included)."""
    position_ids = position_ids_from_mask(attention_mask)
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1)
    gap = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1) - logp.max(-1).values  # for token t + 1, <= 0
    counted = response_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    return gap.masked_fill(~counted, 0.0).min(-1).values


class RewardScorer:
    """Score (prompt, response) pairs with a reward model, normalisation applied."""

    def __init__(self, model: Any, tokenizer: Any, bias: float | None = None, scale: float | None = None,
                 lm: Any = None, lm_weight: float = 0.0, lm_floor: float | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        self.bias = float(getattr(cfg, BIAS_KEY, 0.0) or 0.0) if bias is None else bias
        self.scale = float(getattr(cfg, SCALE_KEY, 1.0) or 1.0) if scale is None else scale
        self.lm = lm.eval() if lm is not None else None
        self.lm_weight = lm_weight
        self.lm_floor = lm_floor  # the surprise is clamped at it (reward.lm_surprise_floor); None: no floor
        if cfg.pad_token_id is None:
            cfg.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device | None = None) -> RewardScorer:
        """Load a reward-model folder (full model, or LoRA adapter over its base) and its tokenizer."""
        from alignkit.config.base import ModelSection
        from alignkit.models import load_causal_lm, load_reward_model, load_tokenizer

        tokenizer = load_tokenizer(ModelSection(name_or_path=path, tokenizer=path), padding_side="right")
        model = load_reward_model(path)
        bias, scale = read_normalization(path, model.config)
        weight, lm = read_lm_weight(path, model.config), None
        if weight:
            from alignkit.errors import AlignkitError

            lm_dir = Path(path) / LM_FOLDER
            if not (lm_dir / "config.json").is_file():
                raise AlignkitError(f"this reward model adds its language model's surprise (weight {weight:g}) "
                                    f"but {lm_dir} is missing; copy the whole folder", where=str(path))
            lm = load_causal_lm(ModelSection(name_or_path=str(lm_dir)))
        if device is not None:
            model = model.to(device)
            lm = lm.to(device) if lm is not None else None
        return cls(model, tokenizer, bias, scale, lm, weight, read_lm_floor(path, model.config))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply the stored bias and scale to raw head outputs."""
        return (raw + self.bias) / self.scale

    @torch.no_grad()
    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised scores of tokenized sequences (left or right padded), read at the last non-pad token.

        `response_mask` (1 on the response's tokens) is needed when the model adds its LM's surprise."""
        return self.normalize(self.raw_scores(input_ids, attention_mask, response_mask))

    @torch.no_grad()
    def raw_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head scores plus, when the model has an LM-surprise weight, that weight times the surprise."""
        if not self.lm_weight:
            return sequence_scores(self.model, input_ids, attention_mask)
        if response_mask is None:
            raise ValueError("this reward model adds its LM's surprise: score_ids needs response_mask")
        head, surprise = self._parts(input_ids, attention_mask, response_mask)
        return head + self.lm_weight * surprise

    def _parts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               response_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(head score, LM surprise) per row; the surprise is 0 without an LM or a response mask."""
        head = sequence_scores(self.model, input_ids, attention_mask)
        if self.lm is None or response_mask is None:
            return head, torch.zeros_like(head)
        surprise = lm_surprise(self.lm, input_ids, attention_mask, response_mask).to(head.device)
        return head, surprise if self.lm_floor is None else surprise.clamp(min=self.lm_floor)

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str], ended: Sequence[bool] | None = None,
              batch_size: int = 32) -> torch.Tensor:
        """Normalised scores of (prompt, response) pairs; prompts are messages or user text; batched."""
        heads, surprise = self.features(prompts, responses, ended, batch_size, with_lm=bool(self.lm_weight))
        return self.normalize(heads + self.lm_weight * surprise)

    @torch.no_grad()
    def features(self, prompts: Sequence[Any], responses: Sequence[str], ended: Sequence[bool] | None = None,
                 batch_size: int = 32, with_lm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw head scores, LM surprise) of (prompt, response) pairs; the surprise is 0 without an LM."""
        ended = list(ended) if ended is not None else [True] * len(responses)
        texts = [reward_input_text(self.tokenizer, p, r, e) for p, r, e in zip(prompts, responses, ended, strict=True)]
        use_lm = with_lm and self.lm is not None
        starts = [len(self.tokenizer(prompt_input_text(self.tokenizer, p), add_special_tokens=False)["input_ids"])
                  for p in prompts] if use_lm else []
        device = next(self.model.parameters()).device
        heads, surprises = [], []
        self.tokenizer.padding_side = "right"
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(device)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            response = None
            if use_lm:
                first = torch.tensor(starts[s:s + batch_size], device=device)[:, None]
                response = (torch.arange(ids.shape[1], device=device)[None, :] >= first) & mask.bool()
            head, surprise = self._parts(ids, mask, response)
            heads.append(head.cpu())
            surprises.append(surprise.cpu())
        if not heads:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat(heads), torch.cat(surprises)
