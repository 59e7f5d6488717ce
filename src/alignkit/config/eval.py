"""The eval stage section: models, prompts, generation, judge, pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alignkit.config.base import Section, check_hub_only_keys, check_local_path, check_unique_names


class EvalModel(Section):
    """One contestant: a model (path or Hub id; adapter folders load on their base) and how it is prompted."""

    name: str = Field(min_length=1)
    path: str
    prompting: Literal["chat", "fewshot", "raw"] = "chat"
    best_of_n: int | None = Field(None, gt=1, description="sample n, keep the reward model's favourite")
    best_of_n_by: Literal["reward_model", "oracle"] = Field(
        "reward_model", description="who picks the best of n: eval.reward_model, or the world's oracle (the gold "
        "reward's best-of-n: what a perfect reward model would reach; prompts need meta)")
    ref: str | None = Field(None, description="name of the model that serves as KL reference")

    _check_paths = field_validator("path")(check_local_path)


class GenerationSection(Section):
    """Sampling settings shared by all contestants."""

    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.7, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k truncation")
    batch_size: int = Field(32, gt=0)
    seed: int = 0
    diversity_samples: int = Field(4, ge=0, description="extra samples per prompt for entropy/distinct-n")
    diversity_prompts: int = Field(50, ge=0, description="how many prompts get the extra samples")


class JudgeSection(Section):
    """Who judges: the world's oracle, a reward model, a local LM, an HTTP endpoint, or humans."""

    type: Literal["oracle", "reward_model", "local_lm", "http", "human"] = "oracle"
    path: str | None = Field(None, description="reward_model / local_lm: the judge model")
    template: str = Field("eval/judge_templates/pairwise.txt", description="local_lm / http: pairwise prompt")
    base_url: str | None = Field(None, description="http: OpenAI-compatible base URL, e.g. http://host:8000/v1")
    model: str | None = Field(None, description="http: the served model name")
    api_key_env: str | None = Field(None, description="http: name of the environment variable with the key")
    timeout: float = Field(60.0, gt=0, description="http: seconds per request")
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(4, gt=0, description="http: requests in flight")
    max_tokens: int = Field(16, gt=0, description="http / local_lm generate mode: verdict length")
    mode: Literal["logits", "generate"] = Field("logits", description="local_lm: read the next token or parse text")
    epsilon: float = Field(0.0, ge=0, description="reward_model: score differences within this are ties")
    labels: str | None = Field(None, description="human: the annotated labels file to import")
    orders: Literal["both", "random"] = Field(
        "both", description="human: annotate both presentation orders, or one random order per pair"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="http: extra request body fields")

    _check_paths = field_validator("path", "labels")(check_local_path)

    @model_validator(mode="after")
    def _needs(self) -> JudgeSection:
        if self.type == "local_lm" and not self.path:
            raise ValueError("judge type local_lm needs judge.path (a causal LM)")
        if self.type == "http" and not (self.base_url and self.model):
            raise ValueError("judge type http needs judge.base_url and judge.model")
        return self


class EvalSection(Section):
    """A win-rate evaluation."""

    models: list[EvalModel] = Field(min_length=2)
    prompts: str = Field(description="JSONL with id/prompt(/meta) rows, any local data file, or a Hub dataset id")
    prompt_column: str = "prompt"
    id_column: str = "id"
    prompt_split: str = Field("train", description="split of a Hub dataset")
    prompt_limit: int | None = Field(None, gt=0)
    breakdown_by: str | None = Field(
        None, min_length=1, description="a prompt-row column (dotted for nested objects, e.g. meta.task; a "
        "category column of a Hub set): the report adds each pair's win rate per value of it")
    fewshot_template: str = "eval/fewshot_template.txt"
    generation: GenerationSection = Field(default_factory=GenerationSection)
    judge: JudgeSection = Field(default_factory=JudgeSection)
    pairs: Literal["all", "reference"] | list[list[str]] = Field(
        "all", description="all: every pair (later-listed model vs earlier); reference: each vs eval.reference"
    )
    reference: str | None = Field(None, description="baseline for the LC win rate and pairs: reference")
    reward_model: str | None = Field(None, description="reward model for mean score and best-of-n")
    n_bootstrap: int = Field(1000, gt=0)
    ppo_run: str | None = Field(None, description="a PPO run folder: judge its checkpoints for a win-rate-vs-KL curve")
    ppo_against: str | None = Field(None, description="model the PPO checkpoints are judged against")

    _check_paths = field_validator("prompts", "fewshot_template", "reward_model", "ppo_run")(check_local_path)

    @model_validator(mode="after")
    def _names(self) -> EvalSection:
        names = [m.name for m in self.models]
        check_unique_names(names, "model")
        refs = [m.ref for m in self.models if m.ref] + [n for n in (self.reference, self.ppo_against) if n]
        if isinstance(self.pairs, list):
            seen: set[frozenset[str]] = set()
            for pair in self.pairs:
                if len(pair) != 2 or pair[0] == pair[1]:
                    raise ValueError(f"a pair names two different models, got {pair}")
                if frozenset(pair) in seen:  # its judgments would be pooled twice (counts, ratings, intervals)
                    raise ValueError(f"pair {pair} repeats an earlier pair (either order is the same comparison)")
                seen.add(frozenset(pair))
                refs += pair
        unknown = next((r for r in refs if r not in names), None)
        if unknown:
            raise ValueError(f"unknown model {unknown!r} (models: {', '.join(names)})")
        if self.pairs == "reference" and not self.reference:
            raise ValueError("pairs: reference needs eval.reference")
        if any(m.best_of_n and m.best_of_n_by == "reward_model" for m in self.models) and not self.reward_model:
            raise ValueError("best_of_n needs eval.reward_model")
        if any(m.best_of_n for m in self.models) and self.generation.temperature == 0:
            raise ValueError("best_of_n needs generation.temperature > 0 (greedy samples are all the same answer)")
        if self.judge.labels and self.judge.type != "human":
            raise ValueError(f"judge.labels is read by judge type human only, not {self.judge.type}")
        if self.judge.type == "reward_model" and not (self.judge.path or self.reward_model):
            raise ValueError("judge type reward_model needs judge.path or eval.reward_model")
        check_hub_only_keys(self.prompts, self.prompt_split, None, split_key="prompt_split")
        template = Path(self.fewshot_template)
        if (any(m.prompting == "fewshot" for m in self.models) and template.is_file()
                and "{prompt}" not in template.read_text(errors="replace")):
            # Without the placeholder every prompt would be the same text: the question is never asked.
            raise ValueError(f"fewshot_template {self.fewshot_template} has no {{prompt}} placeholder for the question")
        return self
