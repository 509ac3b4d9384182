"""MongoStateStore: the runs of one plan kept in MongoDB, so any host can resume them.

Collections in the database the URL names (prefix ``migration_`` by default):

- ``runs``: one document per run. ``state_json`` is the run document as the
  file store writes it (the same JSON text, redacted the same way: stored as
  text, keys with ``$`` or ``.`` need no encoding, and FerretDB rewrites a 1,000
  step document as text ten times faster than as nested fields). Beside it, the
  fields ``migration history`` queries: plan, digest, target, hosts, operator,
  status, times, downtime; and ``lease_epoch``, the epoch of its last writer.
- ``current``: ``{_id: <scope>, run_id}``, the latest run of the plan.
- ``journal``: step changes of big runs between full saves (as the file store's
  ``<run-id>.journal.jsonl``), compacted at every full save.
- ``events``: the events log (:mod:`.events`); ``leases``: :mod:`.lease`.

Every state change is one write, conditional on the writer's lease epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo.errors import DuplicateKeyError

from migration.errors import StateError
from migration.report import downtime
from migration.secrets import Redactor
from migration.state import host_name, now_iso, operator_name
from migration.state.shape import parse_run_document
from migration.store_mongo.backend import RunDocument, StepDocument
from migration.store_mongo.connection import (
    DEFAULT_PREFIX,
    Connection,
    describe_target,
    parse_seconds,
)
from migration.store_mongo.errors import LeaseLost
from migration.store_mongo.events import MongoEventLog, read_events
from migration.store_mongo.lease import Lease

DEFAULT_LEASE_SECONDS = 30.0


@dataclass
class _RunRecord:
    """What the store keeps of a run document besides the state (who held it, and when)."""

    hosts: list[str] = field(default_factory=list)
    holders: list[dict[str, Any]] = field(default_factory=list)
    operator: str = ""
    epoch: int | None = None  # lease_epoch of the stored document


class MongoStateStore:
    """All state of one plan in MongoDB: runs, the ``current`` pointer, the lease and events.

    ``target`` (the database the plan migrates, credentials are dropped) is
    recorded in each run for ``migration history`` and ``run_once``. The lease and
    the ``current`` pointer are per plan, as the file store's lock and pointer are
    (a plan is identified by its name, whichever host runs it and whatever the
    target: a second target needs a second plan name). ``on_lease_lost`` is called from
    the renewal thread when a renewal finds the lease taken over (to stop the run
    at once rather than at its next write).
    """

    JOURNAL_THRESHOLD = 64 * 1024
    COMPACT_EVERY = 256

    def __init__(
        self,
        url: str,
        plan_name: str,
        redact: Redactor | None = None,
        *,
        target: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease_seconds: float | None = None,
        local_dir: Path | None = None,
        on_lease_lost: Callable[[LeaseLost], None] | None = None,
    ) -> None:
        self.plan_name = plan_name
        self.redact = redact or Redactor()
        self.conn = Connection(url, prefix=prefix)
        self.target = describe_target(target) if target else None
        self.scope = plan_name
        self.host = host_name()
        seconds = parse_seconds(
            lease_seconds if lease_seconds is not None else os.environ.get("MIGRATION_LEASE_SECONDS"),
            DEFAULT_LEASE_SECONDS,
            "the lease length (MIGRATION_LEASE_SECONDS)",
        )
        self.lock = Lease(self.conn, self.scope, seconds=seconds, host=self.host, on_lost=on_lease_lost)
        # The debug log stays on this host: it is a traceback for whoever runs here.
        self.dir = local_dir or Path(os.environ.get("MIGRATION_STATE_DIR") or "state") / plan_name
        self._records: dict[str, _RunRecord] = {}
        self._events: MongoEventLog | None = None
        self._seq = 0  # last journal entry written or replayed
        self._journal_entries = 0  # entries written since the last full save
        self._last_size = 0  # characters of the last full save

    @property
    def where(self) -> str:
        return f"{self.conn.shown} ({self.conn.prefix}runs)"

    def _coll(self, name: str) -> Any:
        return self.conn.collection(name)

    # -- connection and lease -----------------------------------------------------------
    def prepare(self) -> None:
        """Check the store can be written (and with which write concern); create the indexes."""
        self.conn.probe(self.host)
        with self.conn.errors("creating indexes"):
            self._coll("runs").create_index([("plan", 1), ("started_at", 1)])
            self._coll("journal").create_index([("run_id", 1), ("epoch", 1), ("seq", 1)])
            self._coll("events").create_index([("run_id", 1), ("at", 1)])
            self._coll("leases").create_index([("scope", 1), ("epoch", -1)])

    def acquire(self) -> None:
        self.prepare()
        self.lock.acquire()

    def release(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        self.lock.release()

    def close(self) -> None:
        self.release()
        self.conn.close()

    # -- runs ---------------------------------------------------------------------------
    def run_path(self, run_id: str) -> str:
        """Where a run is kept (for messages: a database, a collection and an id)."""
        return f"{self.conn.shown} {self.conn.prefix}runs/{run_id}"

    def current_run_id(self) -> str | None:
        with self.conn.errors("reading the current run"):
            doc = self._coll("current").find_one({"_id": self.scope})
        run_id = (doc or {}).get("run_id")
        return run_id if isinstance(run_id, str) and run_id else None

    @property
    def _abandon_hint(self) -> str:
        return f"set it aside and start a new run with: migration abandon {self.plan_name}"

    def load(self, run_id: str) -> RunDocument:
        with self.conn.errors("reading a run"):
            doc = self._coll("runs").find_one({"_id": run_id})
        if doc is None or doc.get("set_aside"):
            raise StateError(
                f"run {run_id} named by the current run of plan {self.plan_name} is missing from "
                f"{self.where}; restore it from backup, or {self._abandon_hint}"
            )
        place = self.run_path(run_id)
        text = doc.get("state_json")
        if not isinstance(text, str):
            raise StateError(f"run {place} holds no state_json text; it was edited. {self._abandon_hint}")
        state = parse_run_document(
            text,
            run_id,
            f"run {place}",
            "document id",
            f"its events are in {self.conn.prefix}events",
            self._abandon_hint,
        )
        record = self._record_of(doc)
        self._records[run_id] = record
        self._replay_journal(state, record.epoch)
        return state

    def _replay_journal(self, state: RunDocument, epoch: int | None) -> None:
        """Apply the step changes written since the last full save, by the same holder.

        Entries of an older epoch are either folded into the document already or
        were written by a holder that had lost the lease: neither is applied.
        """
        applied = state.get("journal_seq") or 0
        self._seq = applied
        with self.conn.errors("reading the journal"):
            entries = list(
                self._coll("journal")
                .find({"run_id": state["run_id"], "epoch": epoch, "seq": {"$gt": applied}})
                .sort("seq", 1)
            )
        by_id = {st["id"]: st for phase in state["phases"] for st in phase["steps"]}
        by_id.update({st["id"]: st for st in state["rollback"]["steps"]})
        for entry in entries:
            step = _journal_step(entry)
            if step is None:
                raise StateError(
                    f"journal entry {entry.get('_id')} of run {self.run_path(state['run_id'])} is not a step "
                    f"change; it was edited or damaged. Repair it, or {self._abandon_hint}"
                )
            target: Any = by_id.get(step["id"])
            if target is not None:
                target.clear()
                target.update(step)
            applied = entry["seq"]
            self._journal_entries += 1
        state["journal_seq"] = self._seq = applied

    def load_current(self) -> RunDocument | None:
        run_id = self.current_run_id()
        return self.load(run_id) if run_id else None

    def list_runs(self) -> list[str]:
        with self.conn.errors("listing runs"):
            docs = self._coll("runs").find({"plan": self.plan_name, "set_aside": {"$ne": True}}, {"_id": 1})
            return sorted(str(doc["_id"]) for doc in docs)

    def set_aside(self, run_id: str) -> str | None:
        """Mark a damaged run set aside (kept for the record) and drop the ``current`` pointer."""
        epoch = self._epoch()
        self.lock.ensure()
        with self.conn.errors("setting a run aside"):
            marked = self._coll("runs").update_one(
                {"_id": run_id, "lease_epoch": {"$lte": epoch}},
                {"$set": {"set_aside": True, "set_aside_at": now_iso(), "lease_epoch": epoch}},
            )
            self._coll("current").delete_one({"_id": self.scope, "lease_epoch": {"$lte": epoch}})
        self.lock.ensure()
        return f"{self.run_path(run_id)} (marked set_aside)" if marked.matched_count else None

    # -- writing ------------------------------------------------------------------------
    def _epoch(self) -> int:
        if self.lock.epoch is None:
            raise StateError("the lease is not held: acquire it before writing state")
        return self.lock.epoch

    def _encode(self, value: Any) -> str:
        # As the file store: values are redacted as they enter the state; one cheap
        # pass over the text catches URL passwords.
        text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
        return self.redact.text(text) if "://" in text else text

    def _record(self, run_id: str) -> _RunRecord:
        record = self._records.get(run_id)
        if record is None:
            with self.conn.errors("reading a run"):
                doc = self._coll("runs").find_one({"_id": run_id}, {"state_json": 0})
            record = self._record_of(doc) if doc else _RunRecord(operator=operator_name())
            self._records[run_id] = record
        return record

    @staticmethod
    def _record_of(doc: dict[str, Any]) -> _RunRecord:
        epoch = doc.get("lease_epoch")
        return _RunRecord(
            hosts=[h for h in doc.get("hosts") or [] if isinstance(h, str)],
            holders=[h for h in doc.get("holders") or [] if isinstance(h, dict)],
            operator=str(doc.get("operator") or operator_name()),
            epoch=epoch if isinstance(epoch, int) else None,
        )

    def save(self, state: RunDocument) -> None:
        """Write the whole run document (folding the journal into it): one conditional write."""
        epoch = self._epoch()
        self.lock.ensure()
        run_id = state["run_id"]
        state["journal_seq"] = self._seq
        text = self._encode(state)
        record = self._record(run_id)
        hosts, holders = list(record.hosts), list(record.holders)
        if not hosts or hosts[-1] != self.host:
            hosts.append(self.host)
        if not holders or holders[-1].get("epoch") != epoch:
            holders.append({"host": self.host, "user": operator_name(), "pid": os.getpid(), "epoch": epoch})
            holders[-1]["since"] = now_iso()
        fields = {
            "state_json": text,
            "lease_epoch": epoch,
            "run_id": run_id,
            "plan": self.plan_name,
            "scope": self.scope,
            "plan_digest": state.get("plan_digest"),
            "target": self.target,
            "status": state.get("status"),
            "started_at": state.get("started_at"),
            "finished_at": state.get("finished_at"),
            "downtime_s": (downtime(state) or {}).get("seconds"),
            "hosts": hosts,
            "holders": holders,
            "operator": record.operator or operator_name(),
            "updated_at": now_iso(),
        }
        try:
            with self.conn.errors("saving the run"):
                self._coll("runs").update_one(
                    {"_id": run_id, "lease_epoch": {"$lte": epoch}}, {"$set": fields}, upsert=True
                )
        except StateError as exc:
            if isinstance(exc.__cause__, DuplicateKeyError):  # a newer epoch wrote it: fenced off
                raise self.lock.fenced() from None
            raise
        self.lock.ensure()
        record.hosts, record.holders, record.epoch = hosts, holders, epoch
        self._last_size = len(text)
        if self._journal_entries:
            # Everything journaled is in the document now; entries of older epochs are dead.
            with self.conn.errors("compacting the journal"):
                self._coll("journal").delete_many({"run_id": run_id})
            self._journal_entries = 0
        self.lock.set_run(run_id)

    def save_step(self, state: RunDocument, step: StepDocument, *, durable: bool = True) -> None:
        """Persist a change of one step: a journal entry for big states, else a full save.

        Every write is acknowledged with the durable write concern, so ``durable``
        changes nothing here (it exists for the file store's fdatasync).
        """
        record = self._records.get(state["run_id"])
        epoch = self.lock.epoch
        if (
            self._last_size < self.JOURNAL_THRESHOLD
            or self._journal_entries >= self.COMPACT_EVERY
            or record is None
            or record.epoch != epoch  # a new holder's first write folds the journal
        ):
            self.save(state)
            return
        epoch = self._epoch()
        self.lock.ensure()
        self._seq += 1
        entry_id = f"{state['run_id']}|{epoch}|{self._seq:012d}"
        entry = {
            "_id": entry_id,
            "run_id": state["run_id"],
            "epoch": epoch,
            "seq": self._seq,
            "step_json": self._encode(step),
        }
        with self.conn.errors("journaling a step"):
            self._coll("journal").insert_one(entry)
        self._journal_entries += 1
        try:
            self.lock.ensure()
        except LeaseLost:
            # Never applied (its epoch is older than the new holder's); removed for tidiness.
            with contextlib.suppress(StateError), self.conn.errors("removing a fenced entry"):
                self._coll("journal").delete_one({"_id": entry_id})
            raise

    def sync(self) -> None:
        """Nothing to do: every write was acknowledged as durable when it returned."""

    def set_current(self, run_id: str) -> None:
        epoch = self._epoch()
        self.lock.ensure()
        try:
            with self.conn.errors("setting the current run"):
                self._coll("current").update_one(
                    {"_id": self.scope, "lease_epoch": {"$lte": epoch}},
                    {"$set": {"run_id": run_id, "plan": self.plan_name, "lease_epoch": epoch}},
                    upsert=True,
                )
        except StateError as exc:
            if isinstance(exc.__cause__, DuplicateKeyError):
                raise self.lock.fenced() from None
            raise
        self.lock.ensure()
        self.lock.set_run(run_id)

    # -- events and local files ---------------------------------------------------------
    def open_events(self, run_id: str) -> MongoEventLog:
        if self._events is None or self._events.run_id != run_id:
            if self._events is not None:
                self._events.close()
            self._events = MongoEventLog(self.conn, run_id, self.plan_name, self.host, self.redact)
        return self._events

    def read_events(self, run_id: str) -> list[dict[str, Any]]:
        return read_events(self.conn, run_id)

    def debug_log_path(self) -> Path:
        with contextlib.suppress(OSError):
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.dir / "debug.log"


def _journal_step(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The step of a journal entry, or None if it is not one."""
    if not isinstance(entry.get("seq"), int) or not isinstance(entry.get("step_json"), str):
        return None
    try:
        step = json.loads(entry["step_json"])
    except json.JSONDecodeError:
        return None
    if not isinstance(step, dict) or not isinstance(step.get("id"), str) or not step["id"]:
        return None
    if not isinstance(step.get("status"), str):
        return None
    return step
