"""``migration status``: one summary per run, as a dict (``--json``) or as text."""

from __future__ import annotations

from typing import Any

from migration import report
from migration.run_document import checkpoint_status, failure_message
from migration.state import LIVE, RunDoc, StateBackend, Status


def summarize(state: RunDoc, store: StateBackend | None = None) -> dict[str, Any]:
    steps = [s for p in state["phases"] for s in p["steps"]]
    counts: dict[str, int] = {}
    for s in steps:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    current = next(
        (s["id"] for s in steps if s["status"] in (Status.RUNNING, Status.INTERRUPTED, Status.FAILED)), None
    )
    downtime = report.downtime(state)
    return {
        "plan_name": state["plan_name"],
        "run_id": state["run_id"],
        "status": state["status"],
        "started_at": state["started_at"],
        "finished_at": state.get("finished_at"),
        "needs_operator": state.get("needs_operator", False),
        "error": failure_message(state),
        "steps": counts,
        "current_step": current,
        "rollback": state["rollback"]["status"],
        "downtime_s": downtime["seconds"] if downtime else None,
        "phases": [
            {"id": p["id"], "status": p["status"], "checkpoint": checkpoint_status(p)}
            for p in state["phases"]
        ],
        # A run recorded as in progress whose process is gone died (or was SIGKILLed).
        "process_alive": store.lock.is_held() if store and state["status"] in LIVE else None,
    }


def format_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs\n"
    lines = []
    for r in rows:
        steps = ", ".join(f"{n} {k}" for k, n in sorted(r["steps"].items()))
        lines.append(f"{r['plan_name']}: {r['status']} (run {r['run_id']}, started {r['started_at']})")
        if r.get("process_alive") is False:
            lines.append("  its process is gone (it died): `migration run` resumes it")
        lines.append(f"  steps: {steps}")
        if r["current_step"]:
            lines.append(f"  at step: {r['current_step']}")
        if r["error"]:
            lines.append(f"  failure: {r['error']}")
        if r["rollback"]:
            lines.append(f"  rollback: {r['rollback']}")
        if r["needs_operator"]:
            lines.append("  NEEDS AN OPERATOR: the rollback did not complete")
    return "\n".join(lines) + "\n"
