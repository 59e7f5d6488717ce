"""The pipeline stage section: chain stage recipes, each feeding the next."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from alignkit.config.base import Section, check_local_path, check_unique_names


class PipelineStep(Section):
    """One step: a stage recipe file plus dotted overrides; `${steps.NAME.output}` names an earlier step's result."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="also the step's run folder under output_dir")
    recipe: str
    overrides: list[str] = Field(default_factory=list)

    _check_recipe = field_validator("recipe")(check_local_path)


class PipelineSection(Section):
    """An ordered list of steps; the win-rate table of `report` (default: the last eval step) is printed at the end."""

    steps: list[PipelineStep] = Field(min_length=1)
    report: str | None = Field(None, description="the eval step whose report.md is printed at the end")

    @model_validator(mode="after")
    def _names(self) -> PipelineSection:
        names = [s.name for s in self.steps]
        check_unique_names(names, "step")
        if self.report is not None and self.report not in names:
            raise ValueError(f"report names no step ({self.report!r}; steps: {', '.join(names)})")
        return self
