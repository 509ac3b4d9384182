"""Planning and writing one batch of ``mongo.transform``.

Planning computes, in Python, each document's after-state and the update that
produces it (a diff, so what is written is exactly what is logged). Writing sends
the updates as unordered ``update`` commands (``update_command``), each guarded
by the values it read; an update that did not match is classified by reading the
document again: already in its after-state on every path the update touches (a
batch re-applied after a crash, or a concurrent change to other fields only) is
``migrated``; anything else is a ``conflict`` and is never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    DocumentTooLarge,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from migration.errors import InvalidDocument
from migration.steps.mongo.documents import (
    MISSING,
    UpdateError,
    apply_update,
    as_stored,
    copy_value,
    diff,
    get_path,
    guard,
    id_key,
    same,
)
from migration.steps.mongo.operations import OperationOutcome, OperationsProgram
from migration.steps.mongo.top_level_updates import top_level_update
from migration.steps.mongo.update_command import UpdateCommand, write_concern_failure

# FerretDB 1.24 (PostgreSQL backend) holds one pooled PostgreSQL connection per
# statement of an ``update`` command until the command ends; its pool has 50, so
# a command of 50 or more statements never finishes and wedges the server. Keep
# commands well below that.
FERRETDB_STATEMENTS_PER_COMMAND = 20
# Concurrent writers (``workers``) share that pool with every other client: together
# they keep no more statements in flight than one writer does, so workers add no
# risk of exhausting it (a mix of half-done commands from several clients that
# reaches 50 wedges it just the same: seen with two transforms on one server).
FERRETDB_STATEMENTS_IN_FLIGHT = FERRETDB_STATEMENTS_PER_COMMAND


@dataclass(slots=True)
class Planned:
    """One document of a batch: what was read and what should happen to it."""

    doc_id: Any
    before: dict[str, Any]
    status: str  # write | skipped | invalid | error
    reason: str | None = None
    after: dict[str, Any] | None = None
    update: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """What happened to a planned document: migrated, skipped, invalid, error or conflict."""

    planned: Planned
    status: str
    reason: str | None = None
    current: dict[str, Any] | None = None


class Planner:
    """Turns a document into a :class:`Planned`, with a function or with operations.

    ``before_batch`` (the function's batch hook, the lookups of the operations) is
    called with a batch's documents by :meth:`prepare` before they are planned;
    when it fails (other than a MongoDB error, which fails the step), every
    document of that batch is an error with its reason.
    """

    def __init__(
        self,
        function: Callable[[dict[str, Any]], Any] | None,
        program: OperationsProgram | None,
        redact: Callable[[str], str],
        before_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.function = function
        self.program = program
        self.redact = redact
        self.before_batch = before_batch
        self.batch_failure: str | None = None

    def prepare(self, docs: list[dict[str, Any]]) -> None:
        """Start a batch of ``docs`` (before any of them is planned)."""
        self.batch_failure = None
        if self.before_batch is None or not docs:
            return
        try:
            self.before_batch(docs)
        except PyMongoError:
            raise
        except Exception as exc:
            self.batch_failure = self.redact(f"the batch hook failed: {type(exc).__name__}: {exc}")

    def plan(self, doc: dict[str, Any]) -> Planned:
        doc_id = doc["_id"]
        if self.batch_failure is not None:
            return Planned(doc_id, doc, "error", self.batch_failure)
        try:
            if self.function is not None:
                update = self.function(copy_value(doc))
                if update is None:
                    return Planned(doc_id, doc, "skipped", "the function returned None")
                quick = top_level_update(doc, update)
                if quick is not None:
                    after, update = quick
                    if not update:
                        return Planned(doc_id, doc, "skipped", "no change")
                    return Planned(doc_id, doc, "write", after=after, update=update)
                # ``doc`` is as read, so only the values set need their stored form.
                after = apply_update(doc, update, stored=True)
            else:
                assert self.program is not None
                after = as_stored(self.program.apply(doc))
            if not same(after.get("_id", MISSING), doc_id):
                raise UpdateError("a transform may not change _id")
            update = diff(doc, after)
        except OperationOutcome as outcome:
            return Planned(doc_id, doc, outcome.status, self.redact(outcome.reason))
        except UpdateError as exc:
            return Planned(doc_id, doc, "error", self.redact(str(exc)))
        except InvalidDocument as exc:
            # A subclass may skip our __init__ and so lack .reason.
            reason = str(getattr(exc, "reason", "") or exc) or type(exc).__name__
            return Planned(doc_id, doc, "invalid", self.redact(reason))
        except Exception as exc:
            return Planned(doc_id, doc, "error", self.redact(f"{type(exc).__name__}: {exc}"))
        if not update:
            return Planned(doc_id, doc, "skipped", "no change")
        return Planned(doc_id, doc, "write", after=after, update=update)


class GuardedWriter:
    """Writes planned updates; reports what happened to each document."""

    def __init__(
        self,
        collection: Collection[Any],
        ferretdb: bool,
        redact: Callable[[str], str],
        check_stop: Callable[[], None] = lambda: None,
        *,
        concurrent_writers: int = 1,
    ) -> None:
        self.collection = collection
        self.command = UpdateCommand(collection)
        self.chunk = 0
        if ferretdb:
            shared = max(1, FERRETDB_STATEMENTS_IN_FLIGHT // max(1, concurrent_writers))
            self.chunk = min(FERRETDB_STATEMENTS_PER_COMMAND, shared)
        self.redact = redact
        # Stopping between chunks is safe: the batch is journaled and not yet
        # recorded as done, so a re-run replays it.
        self.check_stop = check_stop

    def write(self, planned: list[Planned]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        to_write = [(i, p) for i, p in enumerate(planned) if p.status == "write"]
        for i, p in enumerate(planned):
            if p.status != "write":
                outcomes[i] = Outcome(p, p.status, p.reason)
        size = self.chunk or max(1, len(to_write))
        recheck: list[tuple[int, Planned]] = []
        for start in range(0, len(to_write), size):
            if start:
                self.check_stop()
            chunk = to_write[start : start + size]
            matched, errors = self._bulk([p for _, p in chunk])
            applied = []
            for position, (i, p) in enumerate(chunk):
                if position in errors:
                    outcomes[i] = Outcome(p, "error", errors[position])
                else:
                    applied.append((i, p))
            if matched >= len(applied):
                for i, p in applied:
                    outcomes[i] = Outcome(p, "migrated")
            else:
                # The reply counts matches, not which ones: read them all back.
                recheck.extend(applied)
        if recheck:
            outcomes.update(self._classify(recheck))
        return [outcomes[i] for i in range(len(planned))]

    def _bulk(self, chunk: list[Planned]) -> tuple[int, dict[int, str]]:
        pairs = [(guard(p.doc_id, p.before, p.update), p.update) for p in chunk]
        try:
            reply = self.command.send(pairs)
        except DocumentTooLarge:
            return self._bulk_write(pairs)  # too large for one command: bulk_write splits it
        except OperationFailure:
            # FerretDB 1.x fails a whole command on a duplicate key: find the failing
            # updates one by one.
            return self._one_by_one(pairs)
        failed = write_concern_failure(reply, self.command.write_concern)
        if failed is not None:
            raise failed
        if not isinstance(reply.get("n"), int):
            # FerretDB 1.x leaves n/nModified out of a reply that has write errors.
            return self._one_by_one(pairs)
        return reply["n"], self._write_errors(reply.get("writeErrors") or [])

    def _write_errors(self, entries: list[dict[str, Any]]) -> dict[int, str]:
        return {
            int(e["index"]): self.redact(_with_code(e.get("errmsg", "write failed"), e.get("code")))
            for e in entries
        }

    def _bulk_write(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[int, dict[int, str]]:
        """The chunk through ``bulk_write``, which splits it by size: for a chunk too large for one."""
        try:
            result = self.collection.bulk_write(
                [UpdateOne(condition, update) for condition, update in pairs], ordered=False
            )
            return result.matched_count, {}
        except BulkWriteError as exc:
            details = exc.details or {}
            failed = write_concern_failure(details, self.command.write_concern)
            if failed is not None:
                raise failed from exc
            return int(details.get("nMatched", 0)), self._write_errors(details.get("writeErrors", []))
        except (KeyError, OperationFailure):
            # FerretDB 1.x leaves n/nModified out of a reply that has write errors
            # (pymongo then fails merging it), and fails a whole command on a
            # duplicate key: find the failing updates one by one.
            return self._one_by_one(pairs)

    def _one_by_one(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[int, dict[int, str]]:
        matched = 0
        errors: dict[int, str] = {}
        for index, (condition, update) in enumerate(pairs):
            try:
                matched += self.collection.update_one(condition, update).matched_count
            except WriteConcernError as exc:  # applied, but not as durably as asked
                failed = write_concern_failure(
                    {"writeConcernError": exc.details or {}}, self.command.write_concern
                )
                raise (failed or exc) from exc
            except OperationFailure as exc:
                errors[index] = self.redact(_with_code((exc.details or {}).get("errmsg") or exc, exc.code))
        return matched, errors

    def _classify(self, recheck: list[tuple[int, Planned]]) -> dict[int, Outcome]:
        ids = [p.doc_id for _, p in recheck]
        current = {id_key(d["_id"]): d for d in self.collection.find({"_id": {"$in": ids}})}
        outcomes: dict[int, Outcome] = {}
        for i, p in recheck:
            now = current.get(id_key(p.doc_id))
            if now is not None and _has_applied(now, p.update):
                outcomes[i] = Outcome(p, "migrated")
            elif now is None:
                outcomes[i] = Outcome(p, "conflict", "deleted by someone else after it was read")
            else:
                outcomes[i] = Outcome(
                    p,
                    "conflict",
                    "changed by someone else after it was read; not overwritten",
                    current=now,
                )
        return outcomes


def _with_code(message: Any, code: Any) -> str:
    """The server's message with its error code, which (unlike the wording) every server shares."""
    return f"{message} (code {code})" if isinstance(code, int) else str(message)


def _has_applied(doc: dict[str, Any], update: dict[str, Any]) -> bool:
    """Every path the update touches holds its after-state value (other fields may differ)."""
    for path, value in update.get("$set", {}).items():
        if not same(get_path(doc, path), value):
            return False
    return all(get_path(doc, path) is MISSING for path in update.get("$unset", {}))
