"""``_id`` partitions of a transform with ``workers``: how they are cut and how they are recorded.

A partition is a contiguous ``_id`` range ``[lo, hi)`` in BSON order (``lo`` None:
from the first document; ``hi`` None: to the last). The ranges are cut once,
when the run starts, and kept in the step's progress, so a resumed run works on
the very same ranges whatever the collection looks like by then. Each partition
carries its own resume point, exactly what a one-worker transform records
(``last_id``, ``counters``, ``log``, ``log_offset``), plus:

- ``state``: ``pending`` (not started, or its worker is gone), ``running``,
  ``done``;
- ``owner``: ``host:pid`` of the process working on it, None when pending.

A partition's log is its own file (``<log>.part-<k>``); when every partition is
done they are concatenated, in partition order (which is ``_id`` order), into
the step's one ``log``, which therefore reads exactly as a one-worker run's.

Today one step process hands the partitions to its own worker processes and
alone records their progress (it holds the plan's lock, so a ``running``
partition found on resume lost its worker and is pending again). The records are
shaped so that processes on other hosts could take partitions later: claim a
``pending`` one by setting ``owner`` and ``state`` in a shared state store, and
treat a ``running`` one whose owner's lease expired as pending.
"""

from __future__ import annotations

import os
import shutil
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from migration.steps.mongo.documents import (
    decode_id,
    encode_id,
    id_at_or_after,
    id_before,
    is_range_id,
)

# Ids kept by the boundary scan: the boundaries are within 1/SAMPLE of an even split.
SAMPLE = 1024


class PartitionState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


class PartitionRecord(TypedDict):
    """One ``_id`` range of a partitioned transform, as kept in the step's progress."""

    index: int
    lo: Any  # canonical extended JSON of the first _id of the range, or None
    hi: Any  # canonical extended JSON of the first _id after it, or None
    state: str  # a PartitionState
    owner: str | None  # host:pid of the process working on it
    last_id: Any  # canonical extended JSON, or None before its first batch
    counters: dict[str, int]
    log: str
    log_offset: int


def owner_name(pid: int) -> str:
    """``host:pid`` of the process working on a partition."""
    host = os.environ.get("MIGRATION_HOSTNAME") or socket.gethostname()
    return f"{host}:{pid}"


def range_query(base: dict[str, Any], record: PartitionRecord) -> dict[str, Any]:
    """``base`` restricted to the partition's ``_id`` range."""
    parts = [base] if base else []
    if record["lo"] is not None:
        parts.append(id_at_or_after(decode_id(record["lo"])))
    if record["hi"] is not None:
        parts.append(id_before(decode_id(record["hi"])))
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


def new_records(boundaries: list[Any], log: Path, counters: dict[str, int]) -> list[PartitionRecord]:
    """Partition records for ranges cut at ``boundaries`` (sorted, distinct)."""
    edges: list[Any] = [None, *boundaries, None]
    return [
        PartitionRecord(
            index=k,
            lo=None if edges[k] is None else encode_id(edges[k]),
            hi=None if edges[k + 1] is None else encode_id(edges[k + 1]),
            state=PartitionState.PENDING,
            owner=None,
            last_id=None,
            counters=dict(counters),
            log=str(part_log(log, k)),
            log_offset=0,
        )
        for k in range(len(edges) - 1)
    ]


def part_log(log: Path, index: int) -> Path:
    return log.with_name(f"{log.name}.part-{index}")


class Unsplittable(Exception):
    """The collection cannot be cut into ranges portably (an ``_id`` of another type)."""


def boundaries(
    collection: Collection[Any], query: dict[str, Any], parts: int, server_side: bool
) -> list[Any]:
    """Up to ``parts - 1`` ``_id`` values cutting the matching documents into even ranges.

    ``$bucketAuto`` where the server has it (``server_side``), else a scan of the
    ``_id`` values alone (a projection), keeping an evenly spaced sample of at
    most ``SAMPLE`` of them: FerretDB 1.x has neither ``$bucketAuto`` nor
    ``$sample`` nor ``splitVector``.

    Raises:
        Unsplittable: an ``_id`` whose type range filters do not order portably.
    """
    if parts < 2:
        return []
    if server_side:
        try:
            return _bucket_boundaries(collection, query, parts)
        except OperationFailure:
            pass  # not supported here: scan
    sample, seen = _sampled_ids(collection, query)
    if seen < parts * 2:
        parts = max(1, seen // 2)
    cuts = [sample[(k * len(sample)) // parts] for k in range(1, parts)]
    return sorted(set(cuts), key=cuts.index)


def _bucket_boundaries(collection: Collection[Any], query: dict[str, Any], parts: int) -> list[Any]:
    odd = collection.find_one(
        {
            "$and": [
                query,
                {"_id": {"$not": {"$type": ["double", "int", "long", "string", "objectId", "date"]}}},
            ]
        },
        projection={"_id": 1},
    )
    if odd is not None:
        raise Unsplittable(f"an _id of type {type(odd['_id']).__name__}")
    buckets = list(
        collection.aggregate(
            [{"$match": query}, {"$bucketAuto": {"groupBy": "$_id", "buckets": parts}}],
            allowDiskUse=True,
        )
    )
    cuts = [bucket["_id"]["min"] for bucket in buckets[1:]]
    if not all(is_range_id(cut) for cut in cuts):
        raise Unsplittable("a boundary of an unexpected type")
    return cuts


def _sampled_ids(collection: Collection[Any], query: dict[str, Any]) -> tuple[list[Any], int]:
    step, seen, kept = 1, 0, []
    for doc in collection.find(query, projection={"_id": 1}, sort=[("_id", 1)], batch_size=10_000):
        value = doc["_id"]
        if not is_range_id(value):
            raise Unsplittable(f"an _id of type {type(value).__name__}")
        if seen % step == 0:
            kept.append(value)
            if len(kept) > SAMPLE:
                kept, step = kept[::2], step * 2
        seen += 1
    return kept, seen


def merge_logs(final: Path, records: list[PartitionRecord], committed_only: bool = True) -> None:
    """Concatenate the partitions' logs, in ``_id`` order, into ``final`` (atomically).

    ``committed_only``: each up to its recorded ``log_offset``; else whole (for
    the picture of a failed run, which keeps the parts for its resume).
    """
    partial = final.with_name(final.name + ".merging")
    with open(partial, "wb") as out:
        for record in sorted(records, key=lambda r: r["index"]):
            path = Path(record["log"])
            if not path.exists():
                continue
            with open(path, "rb") as part:
                if committed_only:
                    _copy_prefix(part, out, record["log_offset"])
                else:
                    shutil.copyfileobj(part, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _copy_prefix(source: Any, target: Any, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = source.read(min(remaining, 1 << 20))
        if not chunk:
            break
        target.write(chunk)
        remaining -= len(chunk)


def remove_parts(records: list[PartitionRecord]) -> None:
    for record in records:
        path = Path(record["log"])
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".inflight").unlink(missing_ok=True)
