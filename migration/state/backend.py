"""What the runner and the commands need of a state store, whichever keeps the state.

Both :class:`migration.state.StateStore` (files under ``STATE_DIR``) and
:class:`migration.store_mongo.MongoStateStore` satisfy :class:`StateBackend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from migration.secrets import Redactor
from migration.state.document import RunDoc, StepDoc

# The run document and one step of it, as the stores read and write them.
RunDocument = RunDoc
StepDocument = StepDoc


class EventSink(Protocol):
    """The events log of one run: one record per transition, for audit."""

    def emit(self, event: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class LockView(Protocol):
    """What the commands read of the plan's lock (file store) or lease (MongoDB store)."""

    @property
    def previous_owner(self) -> dict[str, Any] | None:
        """The holder whose lock or lease this process took over, if it took one over."""
        ...

    @property
    def path(self) -> object:
        """Where the lock lives (a file, or a collection and document id)."""
        ...

    def is_held(self) -> bool | None:
        """Whether a live process holds it now (None if that cannot be known)."""
        ...

    def takeover_message(self) -> str | None:
        """What to tell the operator when this process took over a dead holder's lock or lease."""
        ...


class StateBackend(Protocol):
    """All state of one plan: its runs, the ``current`` pointer, the lock and the events."""

    @property
    def plan_name(self) -> str: ...

    @property
    def redact(self) -> Redactor: ...

    @property
    def dir(self) -> Path:
        """A local folder for what stays on this host (the debug log)."""
        ...

    @property
    def lock(self) -> LockView: ...

    def prepare(self) -> None: ...

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def close(self) -> None:
        """Release, and close what the store opened (a connection)."""
        ...

    def current_run_id(self) -> str | None: ...

    def load(self, run_id: str) -> RunDocument: ...

    def load_current(self) -> RunDocument | None: ...

    def list_runs(self) -> list[str]: ...

    def save(self, state: RunDocument) -> None: ...

    def save_step(self, state: RunDocument, step: StepDocument, *, durable: bool = True) -> None: ...

    def sync(self) -> None: ...

    def set_current(self, run_id: str) -> None: ...

    def open_events(self, run_id: str) -> EventSink: ...

    def set_aside(self, run_id: str) -> object:
        """Keep a damaged run for the record and drop the ``current`` pointer; says where it went."""
        ...

    def debug_log_path(self) -> Path: ...
