"""The run document: the JSON the state file holds, and fitting it to a plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from migration.plan.loader import LoadedPlan
from migration.plan.model import StepSpec
from migration.state import now_iso


def new_step_state(spec: StepSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "uses": spec.uses,
        "status": "pending",
        "attempts": 0,
        "outputs": {},
        "error": None,
        "started_at": None,
        "finished_at": None,
    }


def new_phase_state(phase: Any, old: dict[str, Any] | None) -> dict[str, Any]:
    old_steps = {s["id"]: s for s in (old or {}).get("steps", [])}
    return {
        "id": phase.id,
        "status": (old or {}).get("status", "pending"),
        "started_at": (old or {}).get("started_at"),
        "finished_at": (old or {}).get("finished_at"),
        "checkpoint": (old or {}).get("checkpoint") or {"status": "pending", "results": []},
        "steps": [old_steps.get(s.id) or new_step_state(s) for s in phase.steps],
    }


def new_state(loaded: LoadedPlan, run_id: str, workdir: Path, var_overrides: list[str]) -> dict[str, Any]:
    """A fresh run. Rendered vars are not stored: they may hold values from ``env``."""
    import os
    import socket

    return {
        "schema_version": 1,
        "run_id": run_id,
        "plan_name": loaded.plan.name,
        "plan_path": str(loaded.path),
        "plan_digest": loaded.digest,
        "status": "pending",
        "started_at": now_iso(),
        "finished_at": None,
        "workdir": str(workdir),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "var_overrides": sorted(var_overrides),
        "error": None,
        "needs_operator": False,
        "interrupted_from": None,
        "downtime": loaded.plan.downtime.model_dump() if loaded.plan.downtime else None,
        "phases": [new_phase_state(p, None) for p in loaded.plan.phases],
        "rollback": {
            "status": None,
            "reason": None,
            "started_at": None,
            "finished_at": None,
            "steps": [],
            "error": None,
        },
    }


def reconcile(state: dict[str, Any], loaded: LoadedPlan) -> None:
    """Fit a saved state to the plan (same plan: no change; an allowed changed plan:
    steps and phases matched by id keep their status and outputs)."""
    old = {p["id"]: p for p in state["phases"]}
    state["phases"] = [new_phase_state(p, old.get(p.id)) for p in loaded.plan.phases]


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
