"""Durable run state: the run document, atomic writes, the lock, the events log, the journal.

One module per concern: :mod:`.document` (the typed schema and its statuses),
:mod:`.shape` (the check of a loaded document), :mod:`.atomic` (durable writes),
:mod:`.events`, :mod:`.lock`, :mod:`.journal`, and :mod:`.store` (StateStore,
which ties them together for one plan).
"""

from migration.state.atomic import atomic_write, new_run_id, now_iso
from migration.state.backend import EventSink, LockView, StateBackend
from migration.state.document import (
    DONE,
    FINISHED,
    LIVE,
    ROLLBACK_STATES,
    SCHEMA_VERSION,
    STEP_STATES,
    PhaseDoc,
    RollbackDoc,
    RunDoc,
    Status,
    StepDoc,
)
from migration.state.events import EventLog
from migration.state.host import host_name, operator_name
from migration.state.lock import PlanLock
from migration.state.shape import shape_problem
from migration.state.store import StateStore

__all__ = [
    "DONE",
    "FINISHED",
    "LIVE",
    "ROLLBACK_STATES",
    "SCHEMA_VERSION",
    "STEP_STATES",
    "EventLog",
    "EventSink",
    "LockView",
    "PhaseDoc",
    "PlanLock",
    "RollbackDoc",
    "RunDoc",
    "StateBackend",
    "StateStore",
    "Status",
    "StepDoc",
    "atomic_write",
    "host_name",
    "new_run_id",
    "now_iso",
    "operator_name",
    "shape_problem",
]
