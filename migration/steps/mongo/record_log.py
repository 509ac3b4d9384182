"""The per-record log of ``mongo.transform``: ``migration-log-<ts>.json``, one JSON object a line.

Each line is ``{"id", "status", "reason", "before", "after"}`` (plus ``current`` for
a conflict: what someone else left there), in relaxed extended JSON (an ObjectId
is ``{"$oid": "..."}``). Lines are appended batch by batch and made durable before
the batch's progress is recorded; a resumed run truncates the file to the length
recorded with that progress, so the log of an interrupted-then-resumed run is the
log of an uninterrupted one. ``jq`` reads it as it is (``jq -c 'select(.status
!= "migrated")' migration-log-*.json``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from migration.steps.mongo.documents import id_key, to_json


def timestamp(moment: datetime | None = None) -> str:
    """``2026-02-11T10-30-00-000Z``: the guide's file-name timestamp (UTC, milliseconds)."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H-%M-%S-") + f"{moment.microsecond // 1000:03d}Z"


def new_path(folder: Path, prefix: str, suffix: str = ".json") -> Path:
    """A file name ``<prefix>-<timestamp><suffix>`` in ``folder`` that does not exist yet."""
    path = folder / f"{prefix}-{timestamp()}{suffix}"
    counter = 1
    while path.exists():
        path = folder / f"{prefix}-{timestamp()}-{counter}{suffix}"
        counter += 1
    return path


class RecordLog:
    """Append-only JSON-lines file, committed (flushed and fsynced) per batch."""

    def __init__(self, path: Path, resume_offset: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes]
        if resume_offset and path.exists():
            self._file = open(path, "r+b")  # noqa: SIM115 - closed by close()
            self._file.truncate(resume_offset)
            self._file.seek(resume_offset)
        else:
            self._file = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(
        self,
        doc_id: Any,
        status: str,
        reason: str | None,
        before: Any,
        after: Any,
        current: Any = None,
    ) -> None:
        record: dict[str, Any] = {"id": doc_id, "status": status, "reason": reason}
        record["before"] = before
        record["after"] = after
        if current is not None:
            record["current"] = current
        line = json.dumps(to_json(record), ensure_ascii=False, separators=(",", ":"))
        self._file.write(line.encode("utf-8") + b"\n")

    def commit(self) -> int:
        """Make everything written so far durable; return the file's length."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self.commit()
            self._file.close()


class InflightJournal:
    """The before-states of the batch being written, made durable before its writes.

    A crash after some of a batch's writes leaves those documents in their
    after-state, where the function would now see nothing to do ("skipped"). The
    resumed attempt replans them from the journaled before-states instead, so
    their guards fail, the re-read finds them in their after-state, and they count
    as ``migrated``, exactly as in an uninterrupted run. The file sits next to the
    log (``<log>.inflight``) and is removed when the transform finishes.
    """

    def __init__(self, log_path: Path) -> None:
        self.path = log_path.with_name(log_path.name + ".inflight")

    def save(self, after_id: Any, docs: list[dict[str, Any]]) -> None:
        """Record ``docs`` as the batch that follows ``after_id`` (None: the first)."""
        payload = json_util.dumps({"after": after_id, "docs": docs}, json_options=CANONICAL_JSON_OPTIONS)
        partial = self.path.with_name(self.path.name + ".tmp")
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def load(self, after_id: Any) -> dict[str, dict[str, Any]]:
        """Before-states by ``_id`` key, if the journal is of the batch after ``after_id``."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        data = json_util.loads(text, json_options=CANONICAL_JSON_OPTIONS)
        if id_key(data.get("after")) != id_key(after_id):
            return {}  # a batch whose progress was recorded: nothing in flight
        return {id_key(doc["_id"]): doc for doc in data.get("docs", [])}

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
