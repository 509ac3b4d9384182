"""Rollback as data: which entries undo a failed run, computed from the plan and the run.

The runner runs them in its one step loop, the same loop that runs a phase's
steps (as alembic's ``run_migrations`` serves both directions). Phase rollbacks
of started phases come newest first, then the plan's rollback steps, or its
rollback handler (``rollback: {handler: NAME, with: {...}}``), which runs as an
ordinary step through :mod:`migration.steps.rollback_handler`.

``register_handler``, ``find_handler`` and ``RollbackContext`` live in the steps
layer; they are re-exported here for plugins written against this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from migration.plan import templates
from migration.plan.model import Phase, Plan, StepSpec
from migration.run_document import new_step_state
from migration.state.document import PhaseDoc, RunDoc, Status, StepDoc
from migration.steps.registry import RollbackHandler, find_handler, register_handler
from migration.steps.rollback_handler import HANDLER_USES, RollbackContext, handler_entry_id

__all__ = [
    "Entry",
    "RollbackContext",
    "RollbackHandler",
    "find_handler",
    "missing_dependency",
    "phase_entries",
    "register_handler",
    "rollback_entries",
    "rollback_steps",
]


@dataclass(frozen=True)
class Entry:
    """One item of the engine's step loop: a step of the plan and its document in the run.

    Attributes:
        spec: the step in the plan; None when a rollback entry is no longer in it.
        doc: the step's document in the run (updated in place, persisted).
        phase: the phase it belongs to (a rollback entry: the phase it undoes), or None.
        undo: a rollback entry (run with the failure at hand; skipped, not failed,
            when the steps its templates read never succeeded).
        handler: the name of the rollback handler this entry runs, if it is one.
    """

    spec: StepSpec | None
    doc: StepDoc
    phase: str | None
    undo: bool = False
    handler: str | None = None

    @property
    def may_fail(self) -> bool:
        """A failure of this entry does not stop the loop (``continue_on_error``)."""
        return self.spec is not None and self.spec.continue_on_error


def phase_entries(phase: Phase, phase_doc: PhaseDoc) -> list[Entry]:
    """A phase's steps, forward."""
    return [Entry(spec, doc, phase.id) for spec, doc in zip(phase.steps, phase_doc["steps"], strict=True)]


def _started(phase_doc: PhaseDoc) -> bool:
    return phase_doc["status"] in (Status.SUCCEEDED, Status.FAILED, Status.RUNNING) or any(
        s["attempts"] for s in phase_doc["steps"]
    )


def rollback_steps(plan: Plan, state: RunDoc) -> list[StepDoc]:
    """The rollback's entries for this run, to be stored in ``state["rollback"]["steps"]``."""
    entries: list[StepDoc] = []
    for phase, phase_doc in reversed(list(zip(plan.phases, state["phases"], strict=True))):
        # Phases that started (completed, or failed part-way) are undone, newest first.
        if _started(phase_doc):
            entries.extend(
                {**new_step_state(spec.id, spec.uses), "phase": phase.id} for spec in phase.rollback
            )
    if isinstance(plan.rollback, list):
        entries.extend({**new_step_state(spec.id, spec.uses), "phase": None} for spec in plan.rollback)
    else:
        entries.append(
            {**new_step_state(handler_entry_id(plan.rollback.handler), HANDLER_USES), "phase": None}
        )
    return entries


def rollback_entries(plan: Plan, docs: list[StepDoc]) -> list[Entry]:
    """Pair the stored rollback entries with the plan's steps (the plan may have changed)."""
    specs = {spec.id: spec for phase in plan.phases for spec in phase.rollback}
    specs.update({spec.id: spec for spec in plan.rollback_steps()})
    entries = []
    for doc in docs:
        if doc["uses"] == HANDLER_USES and not isinstance(plan.rollback, list):
            # Its id, "handler:NAME", is no plan step id: built, not validated.
            spec = StepSpec.model_construct(id=doc["id"], uses=HANDLER_USES, with_=plan.rollback.with_)
            entries.append(Entry(spec, doc, None, undo=True, handler=plan.rollback.handler))
        else:
            entries.append(Entry(specs.get(doc["id"]), doc, doc.get("phase"), undo=True))
    return entries


def missing_dependency(spec: StepSpec, steps: Mapping[str, Any]) -> str | None:
    """A step this rollback step's templates read but that never succeeded (``steps``:
    what templates see of finished steps)."""
    refs = templates.References()
    for _, text in templates.iter_strings(spec.with_):
        if templates.is_template(text):
            refs.update(templates.references(templates.parse(text)))
    if spec.when:
        refs.update(templates.references(templates.parse_expression(spec.when)))
    for ref in sorted(refs.steps):
        found = steps.get(ref)
        if found is None or found["status"] != Status.SUCCEEDED:
            return ref
    return None
