"""A step's attempt history: one entry per attempt, so a report shows every try.

``StepDoc.history`` is a list of :class:`~migration.state.document.AttemptDoc`
(``attempt, started_at, finished_at, status, error``). The runner opens an entry
when an attempt starts and closes it when the attempt ends (succeeded, failed,
retried or interrupted). A process killed mid-attempt closes nothing: the next
process marks the open entry ``crashed`` before it touches the step, so the
report shows the crash and the resume that followed it.

The key is optional: a run document written before it existed has no history,
and the report then shows the ``attempts`` count alone.
"""

from __future__ import annotations

from migration.state.document import AttemptDoc, Status, StepDoc

# The status of an attempt whose process died without recording its end.
CRASHED = "crashed"
# A state document stays small even for a step retried by hand for days.
MAX_ENTRIES = 100


def close_dead(step: StepDoc) -> None:
    """Mark an attempt left open by a dead process as crashed (call before a new one)."""
    history = step.get("history")
    if history and history[-1].get("status") == Status.RUNNING:
        history[-1]["status"] = CRASHED


def begin(step: StepDoc) -> None:
    """Open the entry of the attempt that starts now (``attempts`` and ``started_at`` set)."""
    close_dead(step)
    history = step.setdefault("history", [])
    history.append(
        {
            "attempt": step.get("attempts", 0),
            "started_at": step.get("started_at"),
            "finished_at": None,
            "status": Status.RUNNING,
            "error": None,
        }
    )
    del history[:-MAX_ENTRIES]


def end(step: StepDoc, status: str, error: str | None = None, finished_at: str | None = None) -> None:
    """Close the open entry, if any, with how the attempt ended."""
    history = step.get("history")
    if not history or history[-1].get("status") != Status.RUNNING:
        return
    entry: AttemptDoc = history[-1]
    entry["status"] = status
    entry["finished_at"] = finished_at or step.get("finished_at")
    entry["error"] = error
