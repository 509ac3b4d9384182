"""Server-side ``operations``: ``update_many`` with an update pipeline, chunk by chunk of ``_id``.

An operation list that needs no Python (``set``, ``unset``, ``lower``, ``upper``,
``trim``, each field changed by one operation) runs on the server where it
accepts update pipelines (MongoDB 4.2+, FerretDB 2): one probe, an update with a
pipeline that matches nothing, tells (FerretDB 1.x answers code 14,
TypeMismatch). The filter of each ``update_many`` is the step's filter, the
documents the pipeline would change (so a re-run, or a chunk applied twice,
changes nothing) and the chunk's ``_id`` range; after each chunk the last
``_id`` and the counters are recorded, so a resumed run goes on after the last
chunk done. The log holds a line per chunk (last ``_id``, changed, matched,
modified): there is no per-document before/after on this path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from migration.steps.base import StepContext
from migration.steps.mongo.conversions import server_expression
from migration.steps.mongo.documents import after_id, decode_id, encode_id, show_id
from migration.steps.mongo.operations import SetOperation, UnsetOperation
from migration.steps.mongo.record_log import new_path
from migration.steps.mongo.transform_batches import COUNTERS, resume_query, zero_counters

# Codes a server without update pipelines answers: TypeMismatch (FerretDB 1.x,
# MongoDB before 4.2: "u" must be a document), FailedToParse.
NO_PIPELINES = frozenset({9, 14})


@dataclass
class ServerPlan:
    """The update pipeline of an operation list, and the filter of what it would change."""

    stages: list[dict[str, Any]]
    changes: dict[str, Any]


def server_plan(operations: list[Any]) -> ServerPlan | str:
    """The pipeline doing ``operations`` on the server, or why they need Python."""
    stages: list[dict[str, Any]] = []
    conditions: list[dict[str, Any]] = []
    touched: set[str] = set()
    for operation in operations:
        new: dict[str, Any]
        if isinstance(operation, SetOperation):
            new = {path: {"$literal": value} for path, value in operation.set.items()}
            # Differs in type (1 and 1.0, null and absent) or in value, as the client-side path compares.
            conditions += [
                {
                    "$expr": {
                        "$or": [
                            {"$ne": [{"$type": "$" + path}, {"$type": value}]},
                            {"$ne": ["$" + path, value]},
                        ]
                    }
                }
                for path, value in new.items()
            ]
            stages.append({"$set": new})
        elif isinstance(operation, UnsetOperation):
            new = dict.fromkeys(operation.unset)
            conditions += [{path: {"$exists": True}} for path in operation.unset]
            stages.append({"$unset": list(operation.unset)})
        else:
            expression = server_expression(operation)
            if isinstance(expression, str):
                return expression
            new = expression
            conditions += [{"$expr": {"$ne": ["$" + path, value]}} for path, value in new.items()]
            stages.append({"$set": new})
        for path in new:
            if any(path == t or path.startswith(t + ".") or t.startswith(path + ".") for t in touched):
                return f"{path} is changed by more than one operation"
            touched.add(path)
    return ServerPlan(stages, {"$or": conditions})


def _differs(ref: str, value: Any) -> dict[str, Any]:
    return {"$expr": {"$or": [{"$ne": [{"$type": ref}, {"$type": value}]}, {"$ne": [ref, value]}]}}


def probe(collection: Collection[Any]) -> str | None:
    """None when the server runs update pipelines, else why not (an update that matches nothing)."""
    try:
        collection.update_one({"_id": {"$in": []}}, [{"$set": {"_migration_probe": 1}}])
    except OperationFailure as exc:
        if exc.code in NO_PIPELINES:
            return f"the server has no update pipelines (code {exc.code})"
        return f"the server refused the update-pipeline probe (code {exc.code})"
    return None


def choose(collection: Collection[Any], operations: list[Any] | None) -> ServerPlan | str:
    """The server-side plan, or the reason the transform runs client-side (one line)."""
    if operations is None:
        return "a function runs in Python"
    plan = server_plan(operations)
    if isinstance(plan, str):
        return plan
    refused = probe(collection)
    return plan if refused is None else refused


def run_chunks(
    collection: Collection[Any],
    base: dict[str, Any],
    plan: ServerPlan,
    *,
    chunk_size: int,
    last_id: Any,
    pending: dict[str, Any] | None,
    counters: dict[str, int],
    log: Path,
    record: Callable[[Any, dict[str, int], dict[str, Any] | None], None],
    check_stop: Callable[[], None],
) -> dict[str, int]:
    """Apply ``plan`` to the documents of ``base`` after ``last_id``, ``chunk_size`` at a time.

    Each chunk is recorded as pending (its last ``_id`` and how many documents it
    changes) before its ``update_many``, then as done: a run that died in between
    re-applies it (a no-op for what was already changed) and counts it once.
    """
    query = {"$and": [base, plan.changes]} if base else plan.changes
    with open(log, "a", encoding="utf-8") as out:
        while True:
            check_stop()
            remaining = resume_query(query, last_id)
            if pending is None:
                found = collection.find(remaining, {"_id": 1}, sort=[("_id", 1)], limit=chunk_size)
                ids = [doc["_id"] for doc in found]
                if not ids:
                    return counters
                pending = {"end": encode_id(ids[-1]), "count": len(ids)}
                record(last_id, counters, pending)
            end = decode_id(pending["end"])
            result = collection.update_many({"$and": [remaining, {"$nor": [after_id(end)]}]}, plan.stages)
            counters["migrated"] += int(pending["count"])
            line = {
                "last_id": show_id(end),
                "changed": pending["count"],
                "matched": result.matched_count,
                "modified": result.modified_count,
            }
            out.write(json.dumps(line) + "\n")
            out.flush()
            os.fsync(out.fileno())
            last_id, pending = end, None
            record(last_id, counters, None)


def path_line(path: ServerPlan | str) -> str:
    """The dry run's line saying which path a transform takes, and why."""
    if isinstance(path, ServerPlan):
        return "path: server-side (the server has update pipelines: update_many per chunk of _ids)"
    return f"path: client-side batches ({path})"


def execute(
    ctx: StepContext[Any], collection: Collection[Any], plan: ServerPlan, saved: dict[str, Any]
) -> dict[str, Any]:
    """Run a transform's operations on the server; resume after the last chunk ``saved`` records."""
    params = ctx.params
    if saved.get("mode") == "server":
        last = None if saved.get("last_id") is None else decode_id(saved["last_id"])
        counters = {k: int(saved["counters"].get(k, 0)) for k in COUNTERS}
        log = Path(saved["log"])
        pending = saved.get("pending")
    else:
        last, counters, pending = None, zero_counters(), None
        counters["total"] = collection.count_documents(params.filter)
        log = new_path(ctx.path(params.log_dir), "migration-log")

    def record(last_id: Any, current: dict[str, int], chunk: dict[str, Any] | None) -> None:
        encoded = None if last_id is None else encode_id(last_id)
        fields = {"mode": "server", "last_id": encoded, "counters": dict(current), "log": str(log)}
        ctx.progress(collection=params.collection, pending=chunk, **fields)

    record(last, counters, pending)
    log.parent.mkdir(parents=True, exist_ok=True)
    ctx.log.info("transform on the server", collection=params.collection, documents=counters["total"])
    counters = run_chunks(
        collection,
        params.filter,
        plan,
        chunk_size=params.batch_size,
        last_id=last,
        pending=pending,
        counters=counters,
        log=log,
        record=record,
        check_stop=ctx.check_stop,
    )
    counters["skipped"] = max(0, counters["total"] - counters["migrated"])
    ctx.log.info("transform finished", collection=params.collection, log=str(log), **counters)
    return {**counters, "log": str(log)}
