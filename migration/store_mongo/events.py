"""The events log of a run in ``<prefix>events``: one document per transition.

Each document holds the JSON line the file store would append to
``<run-id>.events.jsonl`` (``line``), plus the fields queries need (run, plan,
event, host, time). Progress events (``event == "progress"``) are compacted: only
the newest ``PROGRESS_KEEP`` or so of a run are kept, as the file store's step
journal keeps only what the next full save has not folded in.
"""

from __future__ import annotations

import json
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection

from migration.secrets import Redactor
from migration.state import now_iso
from migration.store_mongo.connection import Connection


class MongoEventLog:
    """Audit trail of one run, one inserted document per event."""

    PROGRESS_KEEP = 64

    def __init__(self, conn: Connection, run_id: str, plan_name: str, host: str, redact: Redactor) -> None:
        self.conn = conn
        self.run_id = run_id
        self.plan_name = plan_name
        self.host = host
        self._redact = redact
        self._progress: list[ObjectId] = []

    @property
    def _events(self) -> Collection[dict[str, Any]]:
        return self.conn.collection("events")

    def emit(self, event: str, **fields: Any) -> None:
        at = now_iso()
        record = {"event": event, **self._redact(fields), "host": self.host, "timestamp": at}
        line = json.dumps(record, default=str, ensure_ascii=False)
        event_id = ObjectId()
        doc = {
            "_id": event_id,
            "run_id": self.run_id,
            "plan": self.plan_name,
            "event": event,
            "host": self.host,
            "at": at,
            "line": self._redact.text(line) if "://" in line else line,
        }
        with self.conn.errors("writing an event"):
            self._events.insert_one(doc)
        if event == "progress":
            self._progress.append(event_id)
            if len(self._progress) >= 2 * self.PROGRESS_KEEP:
                self._compact()

    def _compact(self) -> None:
        oldest_kept = self._progress[-self.PROGRESS_KEEP]
        with self.conn.errors("compacting progress events"):
            self._events.delete_many(
                {"run_id": self.run_id, "event": "progress", "_id": {"$lt": oldest_kept}}
            )
        self._progress = self._progress[-self.PROGRESS_KEEP :]

    def close(self) -> None:
        self._progress = []


def read_events(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    """The events of one run, oldest first, as the file store's JSON lines parse."""
    with conn.errors("reading events"):
        docs = list(conn.collection("events").find({"run_id": run_id}).sort([("at", 1), ("_id", 1)]))
    return [json.loads(doc["line"]) for doc in docs]
