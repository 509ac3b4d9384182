"""Building run documents (see :mod:`migration.state.document`) and fitting them to a plan."""

from __future__ import annotations

import os
from pathlib import Path

from migration.jsonable import jsonable as jsonable  # one home; re-exported for the engine
from migration.plan.loader import LoadedPlan
from migration.plan.model import Phase
from migration.state.document import SCHEMA_VERSION, PhaseDoc, RollbackDoc, RunDoc, Status, StepDoc
from migration.state.host import host_name


def new_step_state(step_id: str, uses: str) -> StepDoc:
    return {
        "id": step_id,
        "uses": uses,
        "status": Status.PENDING,
        "attempts": 0,
        "outputs": {},
        "error": None,
        "started_at": None,
        "finished_at": None,
    }


def new_phase_state(phase: Phase, old: PhaseDoc | None) -> PhaseDoc:
    if old is None:
        return {
            "id": phase.id,
            "status": Status.PENDING,
            "started_at": None,
            "finished_at": None,
            "checkpoint": {"status": Status.PENDING, "results": []},
            "steps": [new_step_state(s.id, s.uses) for s in phase.steps],
        }
    old_steps = {s["id"]: s for s in old.get("steps", [])}
    return {
        "id": phase.id,
        "status": old.get("status", Status.PENDING),
        "started_at": old.get("started_at"),
        "finished_at": old.get("finished_at"),
        "checkpoint": old.get("checkpoint") or {"status": Status.PENDING, "results": []},
        "steps": [old_steps.get(s.id) or new_step_state(s.id, s.uses) for s in phase.steps],
    }


def new_rollback_state() -> RollbackDoc:
    return {
        "status": None,
        "reason": None,
        "started_at": None,
        "finished_at": None,
        "steps": [],
        "error": None,
    }


def new_state(
    loaded: LoadedPlan, run_id: str, started_at: str, workdir: Path, var_overrides: list[str]
) -> RunDoc:
    """A fresh run. Rendered vars are not stored: they may hold values from ``env``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "plan_name": loaded.plan.name,
        "plan_path": str(loaded.path),
        "plan_digest": loaded.digest,
        "status": Status.PENDING,
        "started_at": started_at,
        "finished_at": None,
        "workdir": str(workdir),
        "host": host_name(),
        "pid": os.getpid(),
        "var_overrides": sorted(var_overrides),
        "error": None,
        "needs_operator": False,
        "interrupted_from": None,
        "downtime": loaded.plan.downtime.model_dump() if loaded.plan.downtime else None,
        "phases": [new_phase_state(p, None) for p in loaded.plan.phases],
        "rollback": new_rollback_state(),
    }


def reconcile(state: RunDoc, loaded: LoadedPlan) -> None:
    """Fit a saved state to the plan (same plan: no change; an allowed changed plan:
    steps and phases matched by id keep their status and outputs)."""
    old = {p["id"]: p for p in state["phases"]}
    state["phases"] = [new_phase_state(p, old.get(p.id)) for p in loaded.plan.phases]


def all_steps(state: RunDoc) -> list[StepDoc]:
    """Every step of the run, the rollback's entries last."""
    return [*(st for phase in state["phases"] for st in phase["steps"]), *state["rollback"]["steps"]]


def failure_message(state: RunDoc) -> str | None:
    """The message of the failure that stopped the run, if any."""
    error = state.get("error")
    return error.get("message") if error else None


def checkpoint_status(phase: PhaseDoc) -> str | None:
    checkpoint = phase.get("checkpoint")
    return checkpoint["status"] if checkpoint else None
