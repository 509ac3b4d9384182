"""The ``mongo.transform`` step type: rewrite documents in guarded, resumable batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.database import Database
from pymongo.errors import CursorNotFound, PyMongoError

from migration.errors import InvalidDocument, StepError
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.callables import check_spec, load_callable
from migration.steps.mongo.common import connect, detect_server
from migration.steps.mongo.documents import (
    MISSING,
    after_id,
    decode_id,
    encode_id,
    get_path,
    id_key,
    show_id,
    to_json,
)
from migration.steps.mongo.guarded_writes import GuardedWriter, Outcome, Planned, Planner
from migration.steps.mongo.operations import Operation, OperationsProgram, describe
from migration.steps.mongo.query_filters import check_filter, check_filter_on_server
from migration.steps.mongo.record_log import InflightJournal, RecordLog, new_path
from migration.steps.registry import register

__all__ = ["InvalidDocument", "MongoTransform"]

COUNTERS = ("total", "migrated", "skipped", "invalid", "errors", "conflicts")
COUNTER_OF_STATUS = {
    "migrated": "migrated",
    "skipped": "skipped",
    "invalid": "invalid",
    "error": "errors",
    "conflict": "conflicts",
}


def _query(base: dict[str, Any], last_id: Any) -> dict[str, Any]:
    if last_id is None:
        return base
    return {"$and": [base, after_id(last_id)]} if base else after_id(last_id)


class _Reader:
    """Documents through ONE cursor sorted by ``_id``, taken a batch at a time.

    Not re-queried per batch: FerretDB never pushes a range filter down, so a
    ``$gt`` query per batch would scan the collection each time (quadratic). The
    cursor is reopened after the last document read only if the server drops it.
    """

    def __init__(self, collection: Collection[Any], base: dict[str, Any], last_id: Any, size: int):
        self.collection = collection
        self.base = base
        self.last_id = last_id
        self.size = size
        self.cursor = self._open()

    def _open(self) -> Cursor[Any]:
        query = _query(self.base, self.last_id)
        return self.collection.find(query, sort=[("_id", 1)], batch_size=self.size)

    def take(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while len(batch) < self.size:
            try:
                doc = next(self.cursor)
            except StopIteration:
                break
            except CursorNotFound:
                self.cursor = self._open()
                continue
            batch.append(doc)
            self.last_id = doc["_id"]
        return batch

    def close(self) -> None:
        self.cursor.close()


@register
class MongoTransform(Step["MongoTransform.Params"]):
    """Rewrite the documents of a collection, in guarded, resumable batches.

    Documents matched by ``filter`` are read through one cursor in ``_id`` order.
    A ``function`` (``module:function``, imported with the working directory and
    ``PYTHONPATH`` on ``sys.path``) gets each document and returns update
    operators (``$set``, ``$unset``, ``$rename``) or None to skip it; raising
    ``migration.errors.InvalidDocument`` marks it invalid (left as it is), any other
    exception is an error. Or declarative ``operations`` (``set``, ``unset``, ``rename``,
    ``split``; each described below). Each batch is written
    with unordered ``bulk_write`` of updates guarded by the values read
    (``{_id, field: value read}``, ``{$exists: false}`` for an absent field;
    embedded documents and arrays are not guarded, the ``_id`` and the scalar
    fields are; on FerretDB in commands of 20 updates, as larger ones exhaust its
    connection pool and hang it): a document found already in its after-state
    counts as migrated, one changed by someone else is a ``conflict``, never
    overwritten. After each
    batch the last ``_id`` and the counters are recorded, so a re-run after a
    crash continues after the last committed batch with the same final outputs.
    Every document is logged (``migration-log-<ts>.json`` in ``log_dir``, JSON
    lines: id, status, reason, before, after). More than ``max_errors`` errors
    fails the step. ``batch_size`` 500 keeps the per-batch fsyncs (log, progress)
    negligible while a crash re-applies at most 500 updates. Dry run: counts the
    matches and shows ``sample`` before/after diffs, writing nothing.

    Outputs: ``total``, ``migrated``, ``skipped``, ``invalid``, ``errors``,
    ``conflicts``, ``log`` (path of the per-record log).

    Example:
        ```yaml
        - id: bank-details
          uses: mongo.transform
          with:
            uri: "{{ vars.db }}"
            collection: PropertyBankDetails
            function: "migration.recipes.bank_details:split_swift_bic_iban"
            filter: {swift_bic_iban: {$exists: true}}
            max_errors: 0
        ```
    """

    name = "mongo.transform"
    outputs = {
        "total": "documents read",
        "migrated": "documents updated (or found already in their after-state)",
        "skipped": "documents left alone (the function returned None)",
        "invalid": "documents marked invalid, left as they were",
        "errors": "documents that failed",
        "conflicts": "documents changed by someone else meanwhile, not overwritten",
        "log": "path of the per-record log (migration-log-<ts>.json)",
    }

    class Params(StepParams):
        uri: str = Field(description="connection string naming the database")
        collection: str = Field(min_length=1, description="collection to transform (must exist)")
        function: str | None = Field(
            default=None, description="module:function, document -> update operators or None"
        )
        operations: list[Operation] | None = Field(
            default=None, min_length=1, description="set / unset / rename / split, in order"
        )
        filter: dict[str, Any] = Field(default_factory=dict, description="documents to transform")
        batch_size: int = Field(
            default=500, ge=1, le=10_000, description="documents per batch (progress recorded after each)"
        )
        max_errors: int = Field(default=0, ge=0, description="fail when errors exceed this")
        sample: int = Field(default=5, ge=0, le=1000, description="diffs shown by a dry run")
        log_dir: str = Field(default="backups", description="folder of migration-log-<ts>.json")

        @field_validator("function")
        @classmethod
        def _function(cls, value: str | None) -> str | None:
            return None if value is None else check_spec(value)

        @field_validator("filter")
        @classmethod
        def _filter(cls, value: dict[str, Any]) -> dict[str, Any]:
            return check_filter(value)

        @model_validator(mode="after")
        def _one_mode(self) -> MongoTransform.Params:
            if (self.function is None) == (self.operations is None):
                raise ValueError("give exactly one of function or operations")
            return self

    def run(self, ctx: StepContext[MongoTransform.Params]) -> dict[str, Any]:
        client, db = connect(ctx.params.uri)
        try:
            return _Run(ctx, db).execute()
        except PyMongoError as exc:
            raise StepError(
                f"MongoDB error during the transform (re-run resumes after the last committed "
                f"batch): {ctx.redact(str(exc))}"
            ) from exc
        finally:
            client.close()

    def preview(self, ctx: StepContext[MongoTransform.Params]) -> str:
        client, db = connect(ctx.params.uri)
        try:
            return _Run(ctx, db).preview()
        finally:
            client.close()

    @classmethod
    def report_sections(cls, step_id: str, outputs: dict[str, Any]) -> list[str]:
        counters = ("total", "migrated", "skipped", "invalid", "errors", "conflicts")
        lines = [
            f"## Transform: {step_id}",
            "",
            "| " + " | ".join(counters) + " |",
            "|---|---|---|---|---|---|",
            " | ".join(["", *(str(outputs.get(k, "-")) for k in counters), ""]).strip(),
        ]
        if outputs.get("log"):
            lines += ["", f"Per-record log: `{outputs['log']}`"]
        return [*lines, ""]


class _Run:
    def __init__(self, ctx: StepContext[MongoTransform.Params], db: Database[Any]) -> None:
        self.ctx = ctx
        self.params = ctx.params
        self.db = db
        self.collection = self._existing_collection()
        check_filter_on_server(self.collection, self.params.filter, "filter")
        function = None
        program = None
        if self.params.function is not None:
            function = load_callable(self.params.function, ctx.workdir, ctx.env)
        else:
            assert self.params.operations is not None
            program = OperationsProgram(self.params.operations, ctx.workdir, ctx.env)
        self.planner = Planner(function, program, ctx.redact)

    def _existing_collection(self) -> Collection[Any]:
        name = self.params.collection
        if not self.db.list_collection_names(filter={"name": name}):
            raise StepError(f"collection {name!r} does not exist in database {self.db.name!r}")
        return self.db[name]

    def _resume(self) -> tuple[Any, dict[str, int], Path | None, int | None]:
        saved = self.ctx.resume or {}
        if "counters" not in saved:
            return None, dict.fromkeys(COUNTERS, 0), None, None
        if saved.get("collection") not in (None, self.params.collection):
            self.ctx.log.warning("progress saved for another collection ignored", saved=saved)
            return None, dict.fromkeys(COUNTERS, 0), None, None
        last = None if saved.get("last_id") is None else decode_id(saved["last_id"])
        counters = {k: int(saved["counters"].get(k, 0)) for k in COUNTERS}
        log = Path(saved["log"]) if saved.get("log") else None
        offset = int(saved.get("log_offset") or 0)
        if log is not None and not log.exists() and offset:
            self.ctx.log.warning("the log of the interrupted attempt is gone; starting a new one")
            log = None
        return last, counters, log, offset if log is not None else None

    def execute(self) -> dict[str, Any]:
        ctx, params = self.ctx, self.params
        last_id, counters, log_path, offset = self._resume()
        server = detect_server(self.db.client)
        if server.statements_per_command:
            ctx.log.info(
                "FerretDB 1.x workaround: update commands capped",
                server=server.name,
                statements_per_command=server.statements_per_command,
            )
        writer = GuardedWriter(self.collection, server.ferretdb1, ctx.redact, ctx.check_stop)
        if log_path is None:
            log_path = new_path(ctx.path(params.log_dir), "migration-log")
            # Names the log (and its in-flight journal) for a crash in the first
            # batch; recorded before the file exists, so a crash leaves no orphan.
            self._progress(last_id, counters, log_path, 0)
        log = RecordLog(log_path, offset)
        remaining = self.collection.count_documents(_query(params.filter, last_id))
        ctx.log.info(
            "transform resumed" if last_id is not None or counters["total"] else "transform started",
            collection=params.collection,
            documents=remaining,
            after_id=None if last_id is None else show_id(last_id),
            log=str(log_path),
        )
        journal = InflightJournal(log_path)
        replay = journal.load(last_id)
        reader = _Reader(self.collection, params.filter, last_id, params.batch_size)
        try:
            with ctx.progress_bar(f"transform {params.collection}", remaining) as bar:
                batch = reader.take()
                while batch:
                    ctx.check_stop()
                    if replay:
                        batch = [replay.pop(id_key(doc["_id"]), doc) for doc in batch]
                    planned, breach = self._plan(batch, counters)
                    to_write = [p.before for p in planned if p.status == "write"]
                    if to_write:
                        journal.save(last_id, to_write)
                    outcomes = writer.write(planned)
                    for outcome in outcomes:
                        self._record(log, outcome, counters)
                    offset = log.commit()
                    bar.advance(len(planned))
                    if breach is not None:
                        self._fail(log, breach, planned, last_id, counters, offset)
                    if counters["errors"] > params.max_errors:
                        # Refused by the server: no progress for this batch, so a re-run
                        # replays it from the journal and retries what failed.
                        last = [o for o in outcomes if o.status == "error"][-1]
                        self._too_many_errors(last.planned, last.reason, counters, log.path)
                    last_id = batch[-1]["_id"]
                    # Read the next batch before recording progress: whatever happens
                    # to a document after it was read is then caught by its guard.
                    upcoming = reader.take()
                    self._progress(last_id, counters, log_path, offset)
                    batch = upcoming
            journal.remove()
        finally:
            reader.close()
            log.close()
        ctx.log.info("transform finished", collection=params.collection, log=str(log_path), **counters)
        return {**counters, "log": str(log_path)}

    def _plan(
        self, batch: list[dict[str, Any]], counters: dict[str, int]
    ) -> tuple[list[Planned], Planned | None]:
        """Plan a batch; stop at the document whose error exceeds ``max_errors``."""
        planned: list[Planned] = []
        errors = counters["errors"]
        for doc in batch:
            item = self.planner.plan(doc)
            if item.status == "error":
                errors += 1
                if errors > self.params.max_errors:
                    return planned, item
            planned.append(item)
        return planned, None

    def _record(self, log: RecordLog, outcome: Outcome, counters: dict[str, int]) -> None:
        p = outcome.planned
        after = p.after if outcome.status in ("migrated", "conflict") else None
        log.write(p.doc_id, outcome.status, outcome.reason, p.before, after, outcome.current)
        counters["total"] += 1
        counters[COUNTER_OF_STATUS[outcome.status]] += 1
        if outcome.status in ("error", "conflict"):
            self.ctx.log.warning(outcome.status, id=show_id(p.doc_id), reason=outcome.reason)
        elif outcome.status == "invalid":
            self.ctx.log.info("invalid document", id=show_id(p.doc_id), reason=outcome.reason)

    def _progress(self, last_id: Any, counters: dict[str, int], log: Path, offset: int) -> None:
        self.ctx.progress(
            last_id=None if last_id is None else encode_id(last_id),
            counters=dict(counters),
            log=str(log),
            log_offset=offset,
            collection=self.params.collection,
        )

    def _fail(
        self,
        log: RecordLog,
        breach: Planned,
        planned: list[Planned],
        last_id: Any,
        counters: dict[str, int],
        offset: int,
    ) -> None:
        """Record progress up to the failing document (a re-run retries it), then fail."""
        if planned:
            last_id = planned[-1].doc_id
        self._progress(last_id, counters, log.path, offset)
        outputs = {**counters, "total": counters["total"] + 1, "errors": counters["errors"] + 1}
        log.write(breach.doc_id, "error", breach.reason, breach.before, None)
        log.commit()
        self.ctx.log.warning("error", id=show_id(breach.doc_id), reason=breach.reason)
        self._too_many_errors(breach, breach.reason, outputs, log.path)

    def _too_many_errors(
        self, last: Planned, reason: str | None, counters: dict[str, int], log: Path
    ) -> None:
        raise StepError(
            f"too many errors ({counters['errors']}, max_errors {self.params.max_errors}); last: "
            f"_id {show_id(last.doc_id)}: {reason} (every record is in {log})",
            outputs={**counters, "log": str(log)},
        )

    def preview(self) -> str:
        params = self.params
        resumed_after = None
        saved = self.ctx.resume or {}
        if saved.get("last_id") is not None and saved.get("collection") in (None, params.collection):
            resumed_after = decode_id(saved["last_id"])
        query = _query(params.filter, resumed_after)
        count = self.collection.count_documents(query)
        mode = params.function or describe(params.operations or [])
        lines = [
            f"would transform {count} documents of {self.db.name}.{params.collection}"
            + (f" matching {to_json(params.filter)}" if params.filter else "")
            + (f" after _id {show_id(resumed_after)} (resuming)" if resumed_after is not None else "")
            + f" with {mode}, in batches of {params.batch_size}, guarded updates;"
            f" log to {self.ctx.path(params.log_dir)}/migration-log-<timestamp>.json",
        ]
        if count == 0 or params.sample == 0:
            return "\n".join(lines)
        scanned = 0
        tally = dict.fromkeys(("write", "skipped", "invalid", "error"), 0)
        samples: list[Planned] = []
        limit = max(200, params.sample * 20)
        for doc in self.collection.find(query, sort=[("_id", 1)], batch_size=min(limit, 1000)):
            item = self.planner.plan(doc)
            scanned += 1
            tally[item.status] += 1
            if item.status != "skipped" and len(samples) < params.sample:
                samples.append(item)
            if scanned >= limit:
                break
        lines.append(
            f"of the first {scanned}: {tally['write']} would change, {tally['skipped']} unchanged, "
            f"{tally['invalid']} invalid, {tally['error']} errors"
        )
        for item in samples:
            lines.append(f"  _id {show_id(item.doc_id)}:")
            lines.extend("    " + line for line in _diff_lines(item))
        return "\n".join(lines)


def _shown(value: Any) -> str:
    text = json.dumps(to_json(value), ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _diff_lines(item: Planned) -> list[str]:
    if item.status != "write":
        return [f"! {item.status}: {item.reason}"]
    lines = []
    for path in item.update.get("$unset", {}):
        lines.append(f"- {path}: {_shown(get_path(item.before, path))}")
    for path, value in item.update.get("$set", {}).items():
        old = get_path(item.before, path)
        if old is MISSING:
            lines.append(f"+ {path}: {_shown(value)}")
        else:
            lines.append(f"~ {path}: {_shown(old)} -> {_shown(value)}")
    return lines
