"""What an ended run means: success, or the MigrationError (with its exit code) that says
what happened and what to do next."""

from __future__ import annotations

from migration.errors import Interrupted, RollbackFailed, RolledBack, StateError, StepFailed
from migration.run_document import failure_message
from migration.state import RunDoc, Status


def resume_message(state: RunDoc, plan_path: str) -> str:
    return f"run {state['run_id']} of {state['plan_name']}; resume it with: migration run {plan_path}"


def outcome(state: RunDoc, plan_path: str, on_failure: str = "stop") -> RunDoc:
    status = state["status"]
    error = failure_message(state) or ""
    if status == Status.SUCCEEDED:
        return state
    if status == Status.INTERRUPTED:
        raise Interrupted(f"interrupted; {resume_message(state, plan_path)}")
    if status == Status.FAILED:
        if on_failure == "rollback":
            raise StepFailed(
                f"{error}. Nothing was undone: the plan has no rollback for the phases that ran. Fix the "
                f"cause and resume from the failed step with: migration run {plan_path}"
            )
        raise StepFailed(
            f"{error}. The run stopped (on_failure: stop). Fix the cause and resume from the failed "
            f"step with: migration run {plan_path}; or undo with: migration rollback {plan_path}"
        )
    if status == Status.ROLLED_BACK:
        rb = state["rollback"]
        skipped = [s for s in rb["steps"] if s["status"] == Status.SKIPPED]
        note = "; ".join(f"{s['id']}: {s.get('reason')}" for s in skipped)
        raise RolledBack(
            f"{error or rb.get('reason')}. Rollback completed ({len(rb['steps'])} step(s))"
            + (f"; skipped {note}" if note else "")
        )
    if status == Status.ROLLBACK_FAILED:
        rb = state["rollback"]
        raise RollbackFailed(
            f"ROLLBACK FAILED - manual intervention needed. Original failure: {error or rb.get('reason')}. "
            f"Rollback: {rb.get('error')}. "
            f"Rollback steps done: {', '.join(rb.get('done') or []) or 'none'}; "
            f"not done: {', '.join(rb.get('remaining') or []) or 'none'}. "
            "The system may be half rolled back: "
            f"check it, fix the cause, then retry the remaining steps with: migration rollback {plan_path}"
        )
    raise StateError(f"run ended in unexpected state {status}")
