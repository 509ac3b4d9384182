"""Rollback: the driver that undoes a failed run, and Python handlers registered by name.

A plan may say ``rollback: {handler: NAME, with: {...}}`` instead of a list of
steps. NAME is looked up in the entry point group ``migration.rollback_handlers``
(or registered in-process with :func:`register_handler`). The handler is called
as ``handler(ctx, **with)`` where ``ctx`` is a :class:`RollbackContext`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from migration.errors import Interrupted, MigrationError
from migration.plan import templates
from migration.plan.model import StepSpec
from migration.run_document import jsonable, new_step_state
from migration.state import now_iso

if TYPE_CHECKING:
    from migration.context import TemplateContext
    from migration.machine import Lifecycle
    from migration.plan.model import Plan
    from migration.secrets import Redactor

log = structlog.get_logger("migration")

# What a skipped rollback step "had nothing to" do, by step type.
NOTHING_TO = {"mongo.restore": "restore", "process.stop": "stop", "shell": "run"}

RollbackHandler = Callable[..., Any]

_HANDLERS: dict[str, RollbackHandler] = {}


@dataclass
class RollbackContext:
    """What a rollback handler gets: the failure, the run, earlier outputs."""

    run_id: str
    plan_name: str
    workdir: Path
    error: str | None
    outputs_of: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def log(self) -> Any:
        return structlog.get_logger("migration.rollback")


def register_handler(name: str) -> Callable[[RollbackHandler], RollbackHandler]:
    def decorate(fn: RollbackHandler) -> RollbackHandler:
        _HANDLERS[name] = fn
        return fn

    return decorate


def find_handler(name: str) -> RollbackHandler | None:
    if name in _HANDLERS:
        return _HANDLERS[name]
    for ep in entry_points(group="migration.rollback_handlers"):
        if ep.name == name:
            handler = ep.load()
            _HANDLERS[name] = handler
            return handler
    return None


class RollbackDriver:
    """The rollback half of the runner: phase rollbacks of started phases newest
    first, then the plan's handler; persisted after every change like the rest."""

    # Provided by the Runner this is mixed into.
    plan: Plan
    state: dict[str, Any]
    run: Lifecycle
    context: TemplateContext
    redact: Redactor
    options: Any
    _specs: dict[str, StepSpec]

    def persist(self, step: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def event(self, name: str, **fields: Any) -> None:
        raise NotImplementedError

    def _fire_run(self, trigger: str) -> None:
        raise NotImplementedError

    def _interrupt(self, reason: str) -> None:
        raise NotImplementedError

    def _run_step(self, spec: StepSpec, st: dict[str, Any], phase_id: str | None) -> bool:
        raise NotImplementedError

    def _outputs_of(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def _interruptible_section(self, timeout: float | None) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _rollback_entries(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for phase, phase_state in reversed(list(zip(self.plan.phases, self.state["phases"], strict=True))):
            # Phases that started (completed, or failed part-way) are undone, newest first.
            if phase_state["status"] in ("succeeded", "failed", "running") or any(
                s["attempts"] for s in phase_state["steps"]
            ):
                for spec in phase.rollback:
                    entries.append({**new_step_state(spec), "phase": phase.id})
        if isinstance(self.plan.rollback, list):
            for spec in self.plan.rollback:
                entries.append({**new_step_state(spec), "phase": None})
        else:
            entries.append(
                {
                    "id": f"handler:{self.plan.rollback.handler}",
                    "uses": "handler",
                    "status": "pending",
                    "attempts": 0,
                    "outputs": {},
                    "error": None,
                    "started_at": None,
                    "finished_at": None,
                    "phase": None,
                }
            )
        return entries

    def rollback(self, reason: str) -> dict[str, Any]:
        """``migration rollback PLAN``: run (or finish) the rollback on demand."""
        try:
            self._rollback(reason)
        except Interrupted as exc:
            self._interrupt(str(exc))
        return self.state

    def _rollback(self, reason: str) -> None:
        rb = self.state["rollback"]
        if self.run.state != "rolling_back":
            self._fire_run("roll_back")
        if not rb["steps"] or rb["status"] in (None, "succeeded"):
            rb["steps"] = self._rollback_entries()
        if not rb.get("reason"):
            rb["reason"] = reason
        rb["status"] = "running"
        rb["started_at"] = rb.get("started_at") or now_iso()
        rb["error"] = None
        self.persist()
        log.warning("rolling back", reason=rb["reason"], steps=[e["id"] for e in rb["steps"]])
        for entry in rb["steps"]:
            if entry["status"] in ("succeeded", "skipped"):
                continue
            ok = self._run_rollback_entry(entry)
            if not ok:
                done = [e["id"] for e in rb["steps"] if e["status"] in ("succeeded", "skipped")]
                todo = [e["id"] for e in rb["steps"] if e["status"] not in ("succeeded", "skipped")]
                rb["status"] = "failed"
                rb["error"] = f"rollback step {entry['id']} failed: {entry['error']}"
                rb["done"] = done
                rb["remaining"] = todo
                self.state["needs_operator"] = True
                rb["finished_at"] = now_iso()
                self._fire_run("rollback_error")
                return
        rb["status"] = "succeeded"
        rb["finished_at"] = now_iso()
        self.state["needs_operator"] = False
        self._fire_run("rollback_done")

    def _run_rollback_entry(self, entry: dict[str, Any]) -> bool:
        if entry["uses"] == "handler" and not isinstance(self.plan.rollback, list):
            return self._run_handler(entry)
        spec = self._specs.get(entry["id"])
        if spec is None:  # the plan changed (--allow-plan-change) while rolling back
            entry["status"] = "skipped"
            entry["reason"] = "no longer in the plan"
            self.persist()
            log.warning("rollback step skipped", step=entry["id"], reason=entry["reason"])
            return True
        missing = self._missing_dependency(spec)
        if missing is not None:
            what = NOTHING_TO.get(spec.uses, "do")
            entry["status"] = "skipped"
            entry["reason"] = f"nothing to {what}: step {missing} did not complete"
            self.persist()
            self.event("step", step=spec.id, dest="skipped", reason=entry["reason"])
            log.warning("rollback step skipped", step=spec.id, reason=entry["reason"])
            return True
        ok = self._run_step(spec, entry, entry.get("phase"))
        return ok or spec.continue_on_error

    def _missing_dependency(self, spec: StepSpec) -> str | None:
        """A step this rollback step's templates read but that never succeeded."""
        refs = templates.References()
        for _, text in templates.iter_strings(spec.with_):
            if templates.is_template(text):
                refs.update(templates.references(templates.parse(text)))
        if spec.when:
            refs.update(templates.references(templates.parse_expression(spec.when)))
        for ref in sorted(refs.steps):
            found = self.context.steps.get(ref)
            if found is None or found["status"] != "succeeded":
                return ref
        return None

    def _run_handler(self, entry: dict[str, Any]) -> bool:
        assert not isinstance(self.plan.rollback, list)
        name = self.plan.rollback.handler
        handler = find_handler(name)
        entry["status"] = "running"
        entry["attempts"] = entry.get("attempts", 0) + 1
        entry["started_at"] = now_iso()
        self.persist()
        self.event("step", step=entry["id"], dest="running")
        try:
            if handler is None:
                raise MigrationError(f"rollback handler {name!r} is not registered")
            kwargs = templates.render_value(self.plan.rollback.with_, self.context.as_dict())
            ctx = RollbackContext(
                run_id=self.state["run_id"],
                plan_name=self.plan.name,
                workdir=self.options.workdir,
                error=(self.state.get("error") or {}).get("message"),
                outputs_of=self._outputs_of(),
            )
            with self._interruptible_section(None):
                result = handler(ctx, **kwargs)
            entry["outputs"] = self.redact(
                jsonable(result if isinstance(result, dict) else {"result": result})
            )
            entry["status"] = "succeeded"
        except Interrupted:
            raise
        except Exception as exc:
            entry["status"] = "failed"
            entry["error"] = self.redact.text(
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, MigrationError) else str(exc)
            )
        entry["finished_at"] = now_iso()
        self.persist()
        self.event("step", step=entry["id"], dest=entry["status"], error=entry.get("error"))
        return bool(entry["status"] == "succeeded")
