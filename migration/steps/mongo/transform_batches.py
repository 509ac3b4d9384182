"""The batch loop of ``mongo.transform``: read, plan, journal, write, log, record progress.

One loop serves both ways a transform runs: over the whole collection in the
step's own process (``workers: 1``), and over one ``_id`` range in a worker
process (``migration.steps.mongo.transform_workers``). What it needs from its
caller is where to start (:class:`Position`), how to make a position durable
(``record``), and how to tell whether to stop.

Per batch, in this order (each step relies on the one before):

1. the batch is read (raw BSON, decoded once) and planned;
2. the before-states of the documents to write are journaled (fsynced);
3. the guarded updates are written;
4. every document's record is appended to the log, and the log fsynced;
5. the next batch is read (so a change made after it was read is caught by its
   guard), then the position after this batch is recorded, durably, before the
   next batch's journal replaces this one.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo.collection import Collection
from pymongo.cursor import RawBatchCursor
from pymongo.errors import CursorNotFound

from migration.errors import StepError
from migration.steps.mongo.documents import after_id, id_key, show_id
from migration.steps.mongo.guarded_writes import GuardedWriter, Outcome, Planned, Planner
from migration.steps.mongo.record_log import InflightJournal, RecordLog, split_raw

COUNTERS = ("total", "migrated", "skipped", "invalid", "errors", "conflicts")
COUNTER_OF_STATUS = {
    "migrated": "migrated",
    "skipped": "skipped",
    "invalid": "invalid",
    "error": "errors",
    "conflict": "conflicts",
}


def zero_counters() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


def resume_query(base: dict[str, Any], last_id: Any) -> dict[str, Any]:
    """``base`` restricted to the documents after ``last_id`` (None: all of them)."""
    if last_id is None:
        return base
    return {"$and": [base, after_id(last_id)]} if base else after_id(last_id)


@dataclass
class Position:
    """Where a sequence of batches stands; what a progress record holds.

    ``last_id`` is the ``_id`` of the last document of the last committed batch
    (None before the first); ``log_offset`` the length of the log at that moment.
    """

    last_id: Any
    counters: dict[str, int] = field(default_factory=zero_counters)
    log: Path | None = None
    log_offset: int = 0


@dataclass(slots=True)
class Read:
    """One document as read: its BSON bytes (for the journal) and the decoded document."""

    raw: bytes
    doc: dict[str, Any]


class RawReader:
    """Documents through ONE cursor sorted by ``_id``, taken a batch at a time.

    Not re-queried per batch: FerretDB never pushes a range filter down, so a
    ``$gt`` query per batch would scan the collection each time (quadratic). The
    cursor is reopened after the last document taken only if the server drops it.
    Reads raw BSON batches and decodes each document once, keeping its bytes for
    the in-flight journal.
    """

    def __init__(self, collection: Collection[Any], base: dict[str, Any], last_id: Any, size: int):
        self.collection = collection
        self.base = base
        self.last_id = last_id
        self.size = size
        self.options: CodecOptions[Any] = collection.codec_options
        self.pending: deque[Read] = deque()
        self.cursor = self._open()

    def _open(self) -> RawBatchCursor[Any]:
        query = resume_query(self.base, self.last_id)
        return self.collection.find_raw_batches(query, sort=[("_id", 1)], batch_size=self.size)

    def take(self) -> list[Read]:
        batch: list[Read] = []
        while len(batch) < self.size:
            if not self.pending:
                try:
                    chunk = next(self.cursor)
                except StopIteration:
                    break
                except CursorNotFound:
                    self.cursor = self._open()
                    continue
                # One C call decodes the whole chunk; the bytes are kept for the journal.
                docs = bson.decode_all(chunk, self.options)
                self.pending.extend(map(Read, split_raw(chunk), docs))
                continue
            read = self.pending.popleft()
            batch.append(read)
            self.last_id = read.doc["_id"]
        return batch

    def close(self) -> None:
        self.cursor.close()


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """The objects alive before the loop (imported modules, the recipe's registry) left
    out of the garbage collector's full collections while it runs (``gc.freeze``).

    A batch allocates thousands of containers, so the collector runs often; each
    full collection would walk every object of the process again (measured: 3-15
    µs a document). Nothing is lost: reference counting still frees them, and
    they are handed back to the collector (``gc.unfreeze``) when the loop ends.
    Left alone when something else froze objects already, or disabled the collector.
    """
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class BatchLoop:
    """Runs batches from a :class:`Position` until the documents of ``base`` run out."""

    def __init__(
        self,
        collection: Collection[Any],
        planner: Planner,
        writer: GuardedWriter,
        *,
        base: dict[str, Any],
        batch_size: int,
        max_errors: int,
        record: Callable[[Position], None],
        check_stop: Callable[[], None],
        log: Any,
        advance: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.collection = collection
        self.planner = planner
        self.writer = writer
        self.base = base
        self.batch_size = batch_size
        self.max_errors = max_errors
        self.record = record
        self.check_stop = check_stop
        self.log = log
        self.advance = advance

    def run(self, start: Position) -> Position:
        """Transform every document after ``start``; return the final position.

        Raises:
            StepError: more than ``max_errors`` errors (outputs: the counters and the log).
        """
        assert start.log is not None
        with _old_objects_frozen():
            return self._run(start)

    def _run(self, start: Position) -> Position:
        assert start.log is not None
        position = Position(start.last_id, dict(start.counters), start.log, start.log_offset)
        log = RecordLog(start.log, start.log_offset or None)
        journal = InflightJournal(start.log)
        reader = RawReader(self.collection, self.base, position.last_id, self.batch_size)
        replay = journal.load(position.last_id, reader.options)
        try:
            batch = reader.take()
            while batch:
                self.check_stop()
                if replay:
                    batch = [self._replayed(replay, read, reader.options) for read in batch]
                planned, breach = self._plan(batch, position.counters)
                to_write = [read.raw for read, p in zip(batch, planned, strict=False) if p.status == "write"]
                if to_write:
                    journal.save(position.last_id, to_write)
                outcomes = self.writer.write(planned)
                for outcome in outcomes:
                    self._log_outcome(log, outcome, position.counters)
                position.log_offset = log.commit()
                self.advance(len(planned))
                if breach is not None:
                    self._fail(log, breach, planned, position)
                if position.counters["errors"] > self.max_errors:
                    # Refused by the server: no progress for this batch, so a re-run
                    # replays it from the journal and retries what failed.
                    last = [o for o in outcomes if o.status == "error"][-1]
                    self._too_many_errors(last.planned, last.reason, position.counters, log.path)
                position.last_id = batch[-1].doc["_id"]
                # Read the next batch before recording progress: whatever happens
                # to a document after it was read is then caught by its guard.
                upcoming = reader.take()
                self.record(position)
                batch = upcoming
            journal.remove()
        finally:
            reader.close()
            log.close()
        return position

    @staticmethod
    def _replayed(replay: dict[str, bytes], read: Read, options: CodecOptions[Any]) -> Read:
        raw = replay.pop(id_key(read.doc["_id"]), None)
        return read if raw is None else Read(raw, bson.decode(raw, options))

    def _plan(self, batch: list[Read], counters: dict[str, int]) -> tuple[list[Planned], Planned | None]:
        """Plan a batch; stop at the document whose error exceeds ``max_errors``."""
        planned: list[Planned] = []
        errors = counters["errors"]
        self.planner.prepare([read.doc for read in batch])
        for read in batch:
            item = self.planner.plan(read.doc)
            if item.status == "error":
                errors += 1
                if errors > self.max_errors:
                    return planned, item
            planned.append(item)
        return planned, None

    def _log_outcome(self, log: RecordLog, outcome: Outcome, counters: dict[str, int]) -> None:
        p = outcome.planned
        status = outcome.status
        after = p.after if status in ("migrated", "conflict") else None
        log.write(p.doc_id, status, outcome.reason, p.before, after, outcome.current)
        counters["total"] += 1
        counters[COUNTER_OF_STATUS[status]] += 1
        if status in ("error", "conflict"):
            self.log.warning(status, id=show_id(p.doc_id), reason=outcome.reason)
        elif status == "invalid":
            self.log.info("invalid document", id=show_id(p.doc_id), reason=outcome.reason)

    def _fail(self, log: RecordLog, breach: Planned, planned: list[Planned], position: Position) -> None:
        """Record progress up to the failing document (a re-run retries it), then fail."""
        if planned:
            position.last_id = planned[-1].doc_id
        self.record(position)
        counters = position.counters
        outputs = {**counters, "total": counters["total"] + 1, "errors": counters["errors"] + 1}
        log.write(breach.doc_id, "error", breach.reason, breach.before, None)
        log.commit()
        self.log.warning("error", id=show_id(breach.doc_id), reason=breach.reason)
        self._too_many_errors(breach, breach.reason, outputs, log.path)

    def _too_many_errors(
        self, last: Planned, reason: str | None, counters: dict[str, int], log: Path
    ) -> None:
        raise StepError(
            f"too many errors ({counters['errors']}, max_errors {self.max_errors}); last: "
            f"_id {show_id(last.doc_id)}: {reason} (every record is in {log})",
            outputs={**counters, "log": str(log)},
        )
