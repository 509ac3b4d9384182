"""The plan format as pydantic models (the source of ``migration schema``).

Unknown keys are errors everywhere. Step parameters (``with:``) are checked
against each step type's own model by the loader, after these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_PATTERN = r"^[a-z0-9-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Checkpoint(_Strict):
    """One condition that must hold after a phase: a Jinja2 expression."""

    that: str = Field(description="Jinja2 expression over vars, env, steps, run")
    message: str | None = Field(default=None, description="shown when the condition fails")


class StepSpec(_Strict):
    """A step: a registered step type with its parameters."""

    id: str = Field(pattern=ID_PATTERN, description="unique in the plan")
    uses: str = Field(description="a registered step type (see `migration steps`)")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    description: str | None = None
    timeout: float | None = Field(default=None, gt=0, description="seconds")
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay: float = Field(default=2.0, ge=0, description="seconds before the first retry; doubles")
    when: str | None = Field(default=None, description="Jinja2 expression; false skips the step")
    continue_on_error: bool = False


class Phase(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    description: str | None = None
    steps: list[StepSpec] = Field(default_factory=list)
    checkpoint: list[Checkpoint] = Field(default_factory=list)
    rollback: list[StepSpec] = Field(
        default_factory=list, description="undoes this phase; runs newest phase first"
    )


class RollbackHandler(_Strict):
    """A Python rollback handler registered in entry point group migration.rollback_handlers."""

    handler: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class Downtime(_Strict):
    """Steps between which the application is down, for the report."""

    start: str = Field(description="id of the step that stops the application")
    end: str = Field(description="id of the step after which it serves again")


class Plan(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="names the state folder")
    description: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    env_file: str | None = Field(default=None, description="loaded before templating")
    on_failure: Literal["rollback", "stop"] = "rollback"
    rollback: list[StepSpec] | RollbackHandler = Field(default_factory=list)
    downtime: Downtime | None = None
    state: str | None = Field(
        default=None,
        description="keep the run state in MongoDB: mongodb://HOST/DB, or a template over env "
        "such as '{{ env.MIGRATION_STATE_URL }}' (--state-url and MIGRATION_STATE_URL win)",
    )
    run_once: bool = Field(
        default=False,
        description="refuse a second run against a target it already succeeded on (unless --again)",
    )
    phases: list[Phase] = Field(min_length=1)

    def all_steps(self) -> list[StepSpec]:
        return [s for p in self.phases for s in p.steps]

    def rollback_steps(self) -> list[StepSpec]:
        return self.rollback if isinstance(self.rollback, list) else []
