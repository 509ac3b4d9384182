"""Rollback handlers as ordinary step types: ``rollback: {handler: NAME, with: {...}}``.

A handler is a callable ``handler(ctx, **with)`` registered by name (see
:func:`migration.steps.registry.register_handler` and the entry point group
``migration.rollback_handlers``). :func:`handler_step_type` wraps it in a
:class:`Step`, so the engine runs it like every other step: rendered ``with:``,
secrets redacted, the stop flag honoured, a preview for dry runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import ConfigDict

from migration.errors import Interrupted
from migration.secrets import Redactor
from migration.steps.base import Preview, Step, StepContext, StepParams, StopFlag
from migration.steps.registry import RollbackHandler, find_handler

# The ``uses`` a handler's entry has in the run document (a contract of the state file).
HANDLER_USES = "handler"


@dataclass
class RollbackContext:
    """What a rollback handler gets: the failure, the run, earlier outputs, and the
    environment, redactor and stop flag every step gets."""

    run_id: str
    plan_name: str
    workdir: Path
    error: str | None
    outputs_of: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    redact: Redactor = field(default_factory=Redactor)
    stop_flag: StopFlag = field(default_factory=StopFlag)

    @property
    def log(self) -> Any:
        return structlog.get_logger("migration.rollback")

    def check_stop(self) -> None:
        """Raise :class:`Interrupted` if SIGINT/SIGTERM arrived; call between units of work."""
        if self.stop_flag.is_set():
            raise Interrupted(f"interrupted by {self.stop_flag.signal_name}")


class HandlerParams(StepParams):
    """A handler's ``with:`` is its keyword arguments, whatever they are."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _rollback_context(ctx: StepContext[HandlerParams]) -> RollbackContext:
    return RollbackContext(
        run_id=ctx.run_id,
        plan_name=ctx.plan_name,
        workdir=ctx.workdir,
        error=ctx.failure,
        outputs_of=ctx.outputs_of,
        env=ctx.env,
        redact=ctx.redact,
        stop_flag=ctx.stop_flag,
    )


def handler_entry_id(name: str) -> str:
    return f"handler:{name}"


def handler_step_type(name: str) -> type[Step[Any]] | None:
    """The step type that runs the rollback handler ``name``, or None if none is registered."""
    found = find_handler(name)
    if found is None:
        return None
    handler: RollbackHandler = found

    class HandlerStep(Step[HandlerParams]):
        """Run a Python rollback handler."""

        Params = HandlerParams

        def run(self, ctx: StepContext[HandlerParams]) -> dict[str, Any]:
            result = handler(_rollback_context(ctx), **(ctx.params.model_extra or {}))
            return result if isinstance(result, dict) else {"result": result}

        def preview(self, ctx: StepContext[HandlerParams]) -> str | Preview:
            """The handler's own ``preview(ctx, **with)`` when it has one (read-only, like
            a step's), else what would be called."""
            arguments = ctx.params.model_extra or {}
            own = getattr(handler, "preview", None)
            if callable(own):
                shown = own(_rollback_context(ctx), **arguments)
                return shown if isinstance(shown, Preview) else str(shown)
            return (
                f"would call rollback handler {name} with {arguments} "
                "(it has no preview(ctx, **with) of its own to say more)"
            )

    HandlerStep.name = handler_entry_id(name)
    HandlerStep.__qualname__ = f"HandlerStep[{name}]"
    return HandlerStep
