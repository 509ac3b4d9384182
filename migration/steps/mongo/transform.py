"""The ``mongo.transform`` step type: rewrite documents in guarded, resumable batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from migration import mdtext
from migration.errors import InvalidDocument, StepError
from migration.steps.base import Preview, Step, StepContext, StepParams
from migration.steps.callables import check_spec
from migration.steps.mongo import pipeline, transform_report
from migration.steps.mongo.common import collection_exists, connect, detect_server
from migration.steps.mongo.documents import MISSING, decode_id, encode_id, get_path, show_id, to_json
from migration.steps.mongo.guarded_writes import GuardedWriter, Planned
from migration.steps.mongo.operations import Operation, describe
from migration.steps.mongo.partitions import (
    PartitionRecord,
    Unsplittable,
    boundaries,
    new_records,
    remove_parts,
)
from migration.steps.mongo.query_filters import check_filter, check_filter_on_server
from migration.steps.mongo.record_log import new_path
from migration.steps.mongo.transform_batches import (
    COUNTERS,
    BatchLoop,
    Position,
    resume_query,
    zero_counters,
)
from migration.steps.mongo.transform_context import make_planner
from migration.steps.mongo.transform_workers import PartitionedRun, WorkerSpec
from migration.steps.registry import register

__all__ = ["InvalidDocument", "MongoTransform"]


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
    with unordered ``update`` commands of updates guarded by the values read
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

    ``workers: N`` (default 1) cuts the matching documents into N ``_id`` ranges
    (``$bucketAuto`` where the server has it, else a scan of the ``_id`` values)
    transformed by N worker processes, each with its own guarded batches; the
    progress of every range is recorded after each of its batches, so a re-run
    after a crash, a SIGKILL included, resumes each range after its last
    committed batch. The ranges' logs are then joined, in ``_id`` order, into the
    one ``log``: outputs and log are those of a one-worker run. ``max_errors``
    counts the errors of all ranges (checked after each batch: other ranges may
    have gone a batch further when it fails). Collections whose ``_id`` values
    are not all numbers, strings, ObjectIds or dates run with one worker. On
    FerretDB 1.x the workers together send no more updates at once than one
    transform does (20: fewer per command each) and every range query reads the
    whole collection there, so workers help on servers that index ``_id`` ranges.

    A function that declares a second parameter (``def f(doc, ctx)`` or
    ``def f(doc, ctx=None)``) is called ``f(doc, ctx)``: ``ctx.args`` is the
    step's rendered ``args``, ``ctx.db`` the step's database (its own connection),
    ``ctx.log`` the run's logger, ``ctx.batch`` what the function's optional
    ``prepare_batch(docs, ctx)`` hook (``f.prepare_batch = hook``) fetched for the
    current batch in one query; each worker builds its own. Operations also
    convert values (``convert`` to date, int, float, number or string; ``lower``,
    ``upper``, ``trim``, ``replace``) and copy a field from another collection
    (``lookup``, one ``$in`` query per batch); a value they cannot convert leaves
    its document as it is, counted ``invalid`` and logged. Operations that need no
    Python (``set``, ``unset``, ``lower``, ``upper``, ``trim``) run on the server
    as ``update_many`` with an update pipeline, chunk by chunk of ``_id``, where
    it has them (MongoDB 4.2+, FerretDB 2; probed): the dry run says which path
    and why.

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
    outside_effects = False
    writes_folders = ("log_dir",)
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
        workers: int = Field(
            default=1, ge=1, le=64, description="worker processes, each transforming an _id range"
        )
        args: dict[str, Any] = Field(
            default_factory=dict, description="given to a function that takes ctx, as ctx.args"
        )

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
            lines += ["", f"Per-record log: {mdtext.code(outputs['log'])}"]
        # The ids and reasons an operator must look at: the first few, then a count.
        lines += transform_report.problem_records_section(outputs)
        return [*lines, ""]


class _Run:
    def __init__(self, ctx: StepContext[MongoTransform.Params], db: Database[Any]) -> None:
        self.ctx = ctx
        self.params = ctx.params
        self.db = db
        self.collection = self._existing_collection()
        check_filter_on_server(self.collection, self.params.filter, "filter")
        self.planner = make_planner(
            self.params.function,
            self.params.operations,
            workdir=ctx.workdir,
            env=ctx.env,
            redact=ctx.redact,
            db=db,
            args=self.params.args,
            log=ctx.log,
        )

    def _existing_collection(self) -> Collection[Any]:
        name = self.params.collection
        if not collection_exists(self.db, name):
            raise StepError(f"collection {name!r} does not exist in database {self.db.name!r}")
        return self.db[name]

    def _resume(self) -> Position:
        saved = self.ctx.resume or {}
        if "counters" not in saved:
            return Position(None)
        if saved.get("collection") not in (None, self.params.collection):
            self.ctx.log.warning("progress saved for another collection ignored", saved=saved)
            return Position(None)
        last = None if saved.get("last_id") is None else decode_id(saved["last_id"])
        counters = {k: int(saved["counters"].get(k, 0)) for k in COUNTERS}
        log = Path(saved["log"]) if saved.get("log") else None
        offset = int(saved.get("log_offset") or 0)
        if log is not None and not log.exists() and offset:
            self.ctx.log.warning("the log of the interrupted attempt is gone; starting a new one")
            log = None
        return Position(last, counters, log, offset if log is not None else 0)

    def execute(self) -> dict[str, Any]:
        server = detect_server(self.db.client)
        if server.statements_per_command:
            self.ctx.log.info(
                "FerretDB 1.x workaround: update commands capped",
                server=server.name,
                statements_per_command=server.statements_per_command,
            )
        ferretdb = server.ferretdb1
        saved = self.ctx.resume or {}
        ours = saved.get("collection") in (None, self.params.collection)
        if not (ours and "counters" in saved) or saved.get("mode") == "server":
            path = pipeline.choose(self.collection, self.params.operations)
            if isinstance(path, pipeline.ServerPlan):
                return pipeline.execute(self.ctx, self.collection, path, saved if ours else {})
            if self.params.operations is not None:
                self.ctx.log.info("transform runs client-side", reason=path)
        if ours and saved.get("partitions"):
            resumed = self._partitioned(saved, ferretdb)
            assert resumed is not None
            return resumed
        if not (ours and "counters" in saved) and self.params.workers > 1:
            outputs = self._partitioned(None, ferretdb)
            if outputs is not None:
                return outputs
        return self._single(ferretdb)

    def _single(self, ferretdb: bool) -> dict[str, Any]:
        ctx, params = self.ctx, self.params
        start = self._resume()
        writer = GuardedWriter(self.collection, ferretdb, ctx.redact, ctx.check_stop)
        if start.log is None:
            start.log = new_path(ctx.path(params.log_dir), "migration-log")
            # Names the log (and its in-flight journal) for a crash in the first
            # batch; recorded before the file exists, so a crash leaves no orphan.
            self._progress(start)
        remaining = self.collection.count_documents(resume_query(params.filter, start.last_id))
        resumed = start.last_id is not None or start.counters["total"]
        ctx.log.info(
            "transform resumed" if resumed else "transform started",
            collection=params.collection,
            documents=remaining,
            after_id=None if start.last_id is None else show_id(start.last_id),
            log=str(start.log),
        )
        with ctx.progress_bar(f"transform {params.collection}", remaining) as bar:
            loop = BatchLoop(
                self.collection,
                self.planner,
                writer,
                base=params.filter,
                batch_size=params.batch_size,
                max_errors=params.max_errors,
                record=self._progress,
                check_stop=ctx.check_stop,
                log=ctx.log,
                advance=bar.advance,
            )
            end = loop.run(start)
        counters, log_path = end.counters, str(end.log)
        ctx.log.info("transform finished", collection=params.collection, log=log_path, **counters)
        return {**counters, "log": log_path}

    def _partitioned(self, saved: dict[str, Any] | None, ferretdb: bool) -> dict[str, Any] | None:
        """The ``workers`` run (see ``transform_workers``); None: one worker after all."""
        ctx, params = self.ctx, self.params
        if saved is not None:
            log, records = Path(saved["log"]), list(saved["partitions"])
        else:
            try:
                cuts = boundaries(self.collection, params.filter, params.workers, not ferretdb)
            except Unsplittable as exc:
                ctx.log.warning("transform with one worker: _id ranges cannot be cut", reason=str(exc))
                return None
            if not cuts:
                return None  # too few documents to split
            log = new_path(ctx.path(params.log_dir), "migration-log")
            records = new_records(cuts, log, zero_counters())

        def save(current: list[PartitionRecord], merged: bool = False) -> None:
            copies = [PartitionRecord(**{**r, "counters": dict(r["counters"])}) for r in current]
            totals = {k: sum(r["counters"][k] for r in copies) for k in COUNTERS}
            fields = {"log": str(log), "partitions": copies, "counters": totals, "merged": merged}
            ctx.progress(collection=params.collection, **fields)

        if saved is None:
            save(records)
        elif saved.get("merged"):
            remove_parts(records)  # a crash came after the merge: only the outputs are left to give
            return {**saved["counters"], "log": str(log)}
        done = sum(int(r["counters"].get("total", 0)) for r in records)
        remaining = max(0, self.collection.count_documents(params.filter) - done)
        ctx.log.info(
            "transform resumed" if saved is not None else "transform started",
            collection=params.collection,
            documents=remaining,
            workers=params.workers,
            partitions=len(records),
            log=str(log),
        )
        spec = WorkerSpec(
            uri=params.uri,
            collection=params.collection,
            function=params.function,
            operations=None if params.operations is None else [o.model_dump() for o in params.operations],
            filter=params.filter,
            batch_size=params.batch_size,
            max_errors=params.max_errors,
            workdir=ctx.workdir,
            env=dict(ctx.env),
            redact=ctx.redact,
            ferretdb=ferretdb,
            workers=params.workers,
            args=params.args,
        )
        with ctx.progress_bar(f"transform {params.collection}", remaining) as bar:
            run = PartitionedRun(spec, records, log, save, ctx.check_stop, ctx.log, bar.advance)
            outputs = run.execute()
        ctx.log.info("transform finished", collection=params.collection, **outputs)
        return outputs

    def _progress(self, position: Position) -> None:
        self.ctx.progress(
            last_id=None if position.last_id is None else encode_id(position.last_id),
            counters=dict(position.counters),
            log=str(position.log),
            log_offset=position.log_offset,
            collection=self.params.collection,
        )

    def preview(self) -> str:
        params = self.params
        resumed_after = None
        saved = self.ctx.resume or {}
        if saved.get("last_id") is not None and saved.get("collection") in (None, params.collection):
            resumed_after = decode_id(saved["last_id"])
        query = resume_query(params.filter, resumed_after)
        count = self.collection.count_documents(query)
        mode = params.function or describe(params.operations or [])
        lines = [
            f"would transform {count} documents of {self.db.name}.{params.collection}"
            + (f" matching {to_json(params.filter)}" if params.filter else "")
            + (f" after _id {show_id(resumed_after)} (resuming)" if resumed_after is not None else "")
            + f" with {mode}, in batches of {params.batch_size}, guarded updates"
            + (f", by {params.workers} workers over _id ranges;" if params.workers > 1 else ";")
            + f" log to {self.ctx.path(params.log_dir)}/migration-log-<timestamp>.json",
            pipeline.path_line(pipeline.choose(self.collection, params.operations)),
        ]
        if count == 0 or params.sample == 0:
            return "\n".join(lines)
        scanned = 0
        tally = dict.fromkeys(("write", "skipped", "invalid", "error"), 0)
        samples: list[Planned] = []
        limit = max(200, params.sample * 20)
        for item in self._planned_in_batches(query, limit):
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
        if tally["error"] > params.max_errors:  # the run stops there: the dry run must say so
            why = f"{tally['error']} errors in the first {scanned} documents, max_errors {params.max_errors}"
            return Preview("\n".join(lines), problems=[f"{why}: the run would fail"])
        return "\n".join(lines)

    def _planned_in_batches(self, query: dict[str, Any], limit: int) -> Iterator[Planned]:
        """The first ``limit`` matching documents planned batch by batch, as the run plans them
        (a batch hook or a lookup sees the same batches)."""
        cursor = self.collection.find(query, sort=[("_id", 1)], batch_size=min(limit, 1000), limit=limit)
        batch: list[dict[str, Any]] = []
        for doc in cursor:
            batch.append(doc)
            if len(batch) == self.params.batch_size:
                yield from self._planned(batch)
                batch = []
        yield from self._planned(batch)

    def _planned(self, batch: list[dict[str, Any]]) -> Iterator[Planned]:
        self.planner.prepare(batch)
        for doc in batch:
            yield self.planner.plan(doc)


def _path_line(path: pipeline.ServerPlan | str) -> str:
    if isinstance(path, pipeline.ServerPlan):
        return (
            "path: server-side (update_many with an update pipeline per chunk of _ids; the server has them)"
        )
    return f"path: client-side batches ({path})"


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
