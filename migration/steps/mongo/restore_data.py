"""What ``mongo.restore`` does to the data: check the files, insert, verify.

Split from :mod:`restore` (the step: resume records, drop rules, outputs), so that
``mongo.backup``'s verify-by-restore uses the same insertion and comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from bson import SON
from bson.raw_bson import RawBSONDocument
from pymongo.database import Database
from pymongo.errors import OperationFailure

from migration.steps.mongo.checksums import collection_digest
from migration.steps.mongo.common import ServerKind, collection_exists
from migration.steps.mongo.dumpfmt import (
    DumpedCollection,
    DumpError,
    DumpSource,
    iter_documents,
    read_metadata,
    scan_bson_file,
)
from migration.steps.mongo.parallel import Workers, consume

INSERT_BATCH_DOCS = 1000
INSERT_BATCH_BYTES = 8_000_000
# Index options FerretDB 1.x implements; others are dropped there, with a warning.
# Other servers get the specs as the dump has them (as mongorestore sends them).
FERRETDB_INDEX_OPTIONS = {"key", "name", "unique", "sparse"}
# FerretDB: 238 NotImplemented; 27 is what it answers for text/hashed/2dsphere keys.
FERRETDB_UNSUPPORTED_CODES = {238, 27, 115}


def select(source: DumpSource, wanted: list[str] | None) -> list[DumpedCollection]:
    """The dump's collections to restore (all, or the named subset), sorted by name."""
    if wanted is None:
        return [source.collections[name] for name in sorted(source.collections)]
    missing = [name for name in wanted if name not in source.collections]
    if missing:
        raise DumpError(f"collections not in the dump: {', '.join(missing)}")
    return [source.collections[name] for name in sorted(set(wanted))]


def check_files(
    source: DumpSource,
    chosen: list[DumpedCollection],
    advance: Callable[[int], None] = lambda n: None,
) -> dict[str, int]:
    """Read every chosen file whole: framing, counts and SHA-256 against the manifest.

    Returns counts from the files; raises DumpError listing what is off. Plain
    mongodump folders have nothing to compare with: their files are only read.
    """
    problems: list[str] = []
    counts: dict[str, int] = {}
    for dumped in chosen:
        if not dumped.bson.is_file():
            problems.append(f"{dumped.bson.name} is missing")
            continue
        if dumped.metadata is not None:
            if not dumped.metadata.is_file():
                problems.append(f"{dumped.metadata.name} is missing")
            else:
                try:
                    read_metadata(dumped.metadata)
                except DumpError as exc:
                    problems.append(str(exc))
        try:
            scan = scan_bson_file(dumped.bson)
        except (DumpError, OSError) as exc:
            problems.append(str(exc))
            continue
        counts[dumped.name] = scan.count
        advance(scan.count)
        if dumped.count is not None and scan.count != dumped.count:
            problems.append(
                f"{dumped.bson.name} holds {scan.count} documents, the manifest says {dumped.count}"
            )
        elif dumped.sha256 is not None and scan.sha256 != dumped.sha256:
            problems.append(f"{dumped.bson.name} does not match its checksum in the manifest")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DumpError("; ".join(problems[:3]) + more)
    return counts


def _index_specs(
    metadata: dict[str, Any], server: ServerKind, warn: Callable[[str], None], collection: str
) -> list[dict[str, Any]]:
    specs = []
    for index in metadata.get("indexes", []):
        if index.get("name") == "_id_":
            continue
        spec = {k: v for k, v in index.items() if k not in ("v", "ns", "background")}
        if server.ferretdb1:
            dropped = sorted(set(spec) - FERRETDB_INDEX_OPTIONS)
            if dropped:
                warn(
                    f"index {collection}.{spec.get('name')}: FerretDB does not support "
                    f"{', '.join(dropped)}; created without (FerretDB 1.x workaround, {server.name})"
                )
                spec = {k: v for k, v in spec.items() if k in FERRETDB_INDEX_OPTIONS}
        specs.append(spec)
    return specs


def create_indexes(
    db: Database[Any],
    name: str,
    metadata: dict[str, Any],
    server: ServerKind,
    warn: Callable[[str], None],
) -> list[str]:
    """Recreate the indexes recorded in a metadata file (not ``_id_``); return their names."""
    created = []
    for spec in _index_specs(metadata, server, warn, name):
        try:
            db.command(SON([("createIndexes", name), ("indexes", [spec])]))
        except OperationFailure as exc:
            if server.ferretdb and exc.code in FERRETDB_UNSUPPORTED_CODES:
                limit = f"{exc.code}, {server.name}"
                warn(f"index {name}.{spec.get('name')} not created: FerretDB cannot ({limit})")
                continue
            raise
        created.append(str(spec.get("name")))
    return created


def _create_collection(
    db: Database[Any], name: str, options: dict[str, Any], warn: Callable[[str], None]
) -> None:
    if collection_exists(db, name):
        return
    try:
        db.create_collection(name, **options)
    except OperationFailure as exc:
        if not options:
            raise
        warn(f"collection {name}: options {sorted(options)} refused ({exc.code}); created plain")
        db.create_collection(name)


def raw_batches_of(
    documents: Iterator[bytes], max_docs: int, max_bytes: int
) -> Iterator[list[RawBSONDocument]]:
    """Documents grouped into insert batches of at most ``max_docs`` and about ``max_bytes``."""
    batch: list[RawBSONDocument] = []
    size = 0
    append = batch.append
    for document in documents:
        append(RawBSONDocument(document))
        size += len(document)
        if len(batch) >= max_docs or size >= max_bytes:
            yield batch
            batch = []
            append = batch.append
            size = 0
    if batch:
        yield batch


def restore_native(
    db: Database[Any],
    dumped: DumpedCollection,
    server: ServerKind,
    warn: Callable[[str], None],
    advance: Callable[[int], None],
    shared: Workers,
    batch_docs: int = INSERT_BATCH_DOCS,
    workers: int = 1,
) -> tuple[int, list[str], int | None]:
    """Insert a collection's raw documents in batches (never decoded), then its indexes.

    The collection must be absent or empty. ``workers`` threads insert batches at
    once (mongorestore's ``--numInsertionWorkersPerCollection``); their order does not
    matter, as checksums are over ``_id`` order. Returns (documents inserted, indexes
    made, documents the server acknowledged: None under an unacknowledged write
    concern). On FerretDB 1.x an insert command carries at most
    :data:`~migration.steps.mongo.common.FERRETDB1_STATEMENTS_PER_COMMAND` documents.
    """
    batch_docs = min(batch_docs, server.statements_per_command or batch_docs)
    metadata = read_metadata(dumped.metadata) if dumped.metadata else {}
    options = metadata.get("options") or {}
    _create_collection(db, dumped.name, dict(options), warn)
    collection = db[dumped.name]
    inserted = [0]
    acknowledged = [True]

    def insert(batch: list[RawBSONDocument]) -> None:
        # Acknowledged and without a BulkWriteError: the server wrote every document.
        result = collection.insert_many(batch, ordered=True)
        with shared.lock:
            inserted[0] += len(batch)
            acknowledged[0] = acknowledged[0] and result.acknowledged
        advance(len(batch))

    batches = raw_batches_of(iter_documents(dumped.bson), batch_docs, INSERT_BATCH_BYTES)
    consume(batches, insert, workers, shared)
    shared.check()
    made = create_indexes(db, dumped.name, metadata, server, warn)
    return inserted[0], made, inserted[0] if acknowledged[0] else None


def verify_restored(
    db: Database[Any], chosen: list[DumpedCollection], file_counts: dict[str, int]
) -> tuple[str, dict[str, int], list[str]]:
    """Compare restored collections with the dump: counts always, checksums when known.

    Returns (``counts+checksums`` or ``counts``, counts found, problems).
    """
    found: dict[str, int] = {}
    problems: list[str] = []
    for dumped in chosen:
        count, problem, _ = verify_collection(db, dumped, file_counts, "checksums", False)
        found[dumped.name] = count
        if problem:
            problems.append(problem)
    with_checksums = all(d.checksum is not None for d in chosen)
    return ("counts+checksums" if with_checksums else "counts"), found, problems


# dbHash: MongoDB's MD5 over each collection's documents in _id order, computed by
# the server. FerretDB 1.x answers CommandNotFound (59), mongos has none, and a user
# may lack the privilege: then the collection is read back instead.
DBHASH_PROBE = "migration_dbhash_probe_absent"


def has_dbhash(db: Database[Any]) -> bool:
    """Whether the server computes ``dbHash`` for us (one call naming an absent collection:
    an empty list would mean every collection)."""
    try:
        db.command(SON([("dbHash", 1), ("collections", [DBHASH_PROBE])]))
    except OperationFailure:
        return False
    return True


def server_md5(db: Database[Any], name: str) -> str | None:
    """The server's ``dbHash`` of one collection, or None if it gives none."""
    reply = db.command(SON([("dbHash", 1), ("collections", [name])]))
    value = (reply.get("collections") or {}).get(name)
    return str(value) if isinstance(value, str) else None


def verify_collection(
    db: Database[Any],
    dumped: DumpedCollection,
    file_counts: dict[str, int],
    level: str,
    dbhash: bool,
    acknowledged: int | None = None,
) -> tuple[int, str | None, str]:
    """(documents found, a problem or None, how it was checked) for one restored collection.

    ``acknowledged``: the documents the server acknowledged inserting (None: not known,
    as after mongorestore, an earlier attempt, or an unacknowledged write concern). It
    must equal the dump's count at every level; ``inserts`` checks nothing else (no
    read), and falls back to one count where it is not known.

    ``checksums``: the server's ``dbHash`` where it has one and the file holds the
    documents in ``_id`` order (no documents cross the network; the file's MD5 is
    computed locally); otherwise, or if the hashes differ, every document is read back
    in ``_id`` order and hashed (``read-back``). ``counts``: one count only.
    """
    expected = dumped.count if dumped.count is not None else file_counts[dumped.name]
    if acknowledged is not None and acknowledged != expected:
        problem = f"{dumped.name}: the server acknowledged {acknowledged} documents, the dump has {expected}"
        return acknowledged, problem, "inserts"
    if level == "inserts" and acknowledged is not None:
        return acknowledged, None, "inserts"
    if level in ("counts", "inserts") or dumped.checksum is None:
        count = db[dumped.name].count_documents({})
        if count != expected:
            return count, f"{dumped.name} has {count} documents, the dump {expected}", "count"
        return count, None, "count"
    # Only where the file holds the documents in _id order (its SHA-256 is the collection
    # checksum, as in native backups) is its MD5 what dbHash must answer.
    if dbhash and dumped.sha256 is not None and dumped.sha256 == dumped.checksum:
        if dumped.md5 is None:
            dumped.md5 = scan_bson_file(dumped.bson, md5=True).md5
        if server_md5(db, dumped.name) == dumped.md5:
            return expected, None, "dbHash"
    count, checksum = collection_digest(db, dumped.name)
    if count != expected:
        return count, f"{dumped.name} has {count} documents, the dump {expected}", "read-back"
    if checksum != dumped.checksum:
        return count, f"{dumped.name} differs from the backup (checksum mismatch)", "read-back"
    return count, None, "read-back"
