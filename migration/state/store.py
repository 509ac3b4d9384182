"""StateStore: the runs of one plan under ``STATE_DIR/<plan-name>/``.

Layout: ``<run-id>.json`` (one per run, written atomically), ``current`` (the
latest run id), ``lock`` (fcntl lock + pid and host), ``<run-id>.events.jsonl``
(every transition) and ``<run-id>.journal.jsonl`` (step changes of big states).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migration.errors import StateError
from migration.secrets import Redactor
from migration.state.atomic import atomic_write, fsync_dir, state_dir_error
from migration.state.document import JournalEntry, RunDoc, StepDoc
from migration.state.events import EventLog
from migration.state.journal import Journal
from migration.state.lock import PlanLock
from migration.state.shape import parse_run_document


class StateStore:
    """All state of one plan: runs, the ``current`` pointer, lock and events."""

    def __init__(self, state_dir: Path, plan_name: str, redact: Redactor | None = None) -> None:
        self.root = Path(state_dir)
        self.dir = self.root / plan_name
        self.plan_name = plan_name
        self.redact = redact or Redactor()
        self.lock = PlanLock(self.dir / "lock")
        self._events: EventLog | None = None
        self.journal = Journal(self.dir)
        self._last_size = 0  # bytes of the last full save

    # -- directory and lock -------------------------------------------------------
    def prepare(self) -> None:
        try:
            # Private from the top when we create it: runs record what the plan did.
            if not self.root.exists():
                self.root.mkdir(parents=True, mode=0o700)
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = self.dir / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise state_dir_error(self.dir, exc) from exc

    def acquire(self) -> None:
        self.prepare()
        self.lock.acquire()

    def release(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        try:
            self.sync()
        finally:
            self.journal.close()
            self.lock.release()

    def close(self) -> None:
        self.release()

    @property
    def where(self) -> str:
        """Where the runs are kept, for messages."""
        return str(self.root)

    # -- runs ---------------------------------------------------------------------
    def run_path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.json"

    def current_run_id(self) -> str | None:
        pointer = self.dir / "current"
        try:
            text = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {pointer}: {exc.strerror}") from exc
        return text or None

    def load(self, run_id: str) -> RunDoc:
        path = self.run_path(run_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise StateError(
                f"state file {path} named by {self.dir / 'current'} is missing; restore it from "
                f"backup, or {self._abandon_hint}"
            ) from exc
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from exc
        state = parse_run_document(
            text,
            run_id,
            f"state file {path}",
            "file name's",
            f"the events log {path.with_suffix('').name}.events.jsonl records every step",
            self._abandon_hint,
        )
        document: RunDoc = state
        self.journal.replay(document, self._abandon_hint)
        return document

    # -- the step journal (see migration.state.journal) ------------------------------
    JOURNAL_THRESHOLD = 64 * 1024
    COMPACT_EVERY = 256

    @property
    def _abandon_hint(self) -> str:
        return f"set it aside and start a new run with: migration abandon {self.plan_name}"

    def set_aside(self, run_id: str) -> Path | None:
        """Rename a damaged state file (kept for the record) and drop the ``current`` pointer."""
        path = self.run_path(run_id)
        kept = path.with_name(f"{path.name}.damaged-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
        try:
            if path.exists():
                path.rename(kept)
            (self.dir / "current").unlink(missing_ok=True)
            fsync_dir(self.dir)
        except OSError as exc:
            raise state_dir_error(self.dir, exc) from exc
        return kept if kept.exists() else None

    def load_current(self) -> RunDoc | None:
        run_id = self.current_run_id()
        return self.load(run_id) if run_id else None

    def list_runs(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json") if not p.name.startswith("."))

    def _encode(self, value: Any) -> bytes:
        # Values are redacted as they enter the state (outputs, errors, progress,
        # checkpoint values); one cheap pass over the text catches URL passwords.
        text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
        return self.redact.text(text).encode() if "://" in text else text.encode()

    def save(self, state: RunDoc) -> None:
        """Rewrite the whole state file atomically (and fold the journal into it)."""
        run_id = state["run_id"]
        state["journal_seq"] = self.journal.seq
        data = self._encode(state)
        try:
            atomic_write(self.run_path(run_id), data)
            self.journal.compacted(run_id)
        except OSError as exc:
            raise state_dir_error(self.dir, exc) from exc
        self._last_size = len(data)

    def save_step(self, state: RunDoc, step: StepDoc, *, durable: bool = True) -> None:
        """Persist a change of one step: durable when this returns (``durable=False``:
        see :mod:`migration.state.journal`)."""
        if self._last_size < self.JOURNAL_THRESHOLD or self.journal.entries >= self.COMPACT_EVERY:
            self.save(state)
            return
        self.journal.seq += 1
        entry: JournalEntry = {"seq": self.journal.seq, "step": step}
        line = self._encode(entry) + b"\n"
        try:
            self.journal.append(state["run_id"], line, durable=durable)
        except OSError as exc:
            raise state_dir_error(self.dir, exc) from exc

    def sync(self) -> None:
        """Make journal entries written with ``durable=False`` durable."""
        try:
            self.journal.sync()
        except OSError as exc:
            raise state_dir_error(self.dir, exc) from exc

    def set_current(self, run_id: str) -> None:
        try:
            atomic_write(self.dir / "current", (run_id + "\n").encode())
        except OSError as exc:
            raise state_dir_error(self.dir, exc) from exc

    # -- events -------------------------------------------------------------------
    def events_path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.events.jsonl"

    def open_events(self, run_id: str) -> EventLog:
        if self._events is None or self._events.path != self.events_path(run_id):
            if self._events is not None:
                self._events.close()
            self._events = EventLog(self.events_path(run_id), self.redact)
        return self._events

    def debug_log_path(self) -> Path:
        return self.dir / "debug.log"
