"""The ``mongo.restore`` step type: check a dump, then restore it, then verify it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from bson import SON
from bson.raw_bson import RawBSONDocument
from pydantic import Field
from pymongo import uri_parser
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from migration.errors import Interrupted, StepError
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.mongo.checksums import collection_digest
from migration.steps.mongo.common import ServerKind, connect, database_name, detect_server
from migration.steps.mongo.dumpfmt import (
    DumpedCollection,
    DumpError,
    DumpSource,
    iter_documents,
    locate_dump,
    read_metadata,
    scan_bson_file,
)
from migration.steps.mongo.tools import find_tool, run_tool
from migration.steps.registry import register

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
    if name in db.list_collection_names(filter={"name": name}):
        return
    try:
        db.create_collection(name, **options)
    except OperationFailure as exc:
        if not options:
            raise
        warn(f"collection {name}: options {sorted(options)} refused ({exc.code}); created plain")
        db.create_collection(name)


def restore_native(
    db: Database[Any],
    dumped: DumpedCollection,
    server: ServerKind,
    warn: Callable[[str], None],
    advance: Callable[[int], None],
    check_stop: Callable[[], None],
) -> tuple[int, list[str]]:
    """Insert a collection's raw documents in batches, then its indexes.

    The collection must be absent or empty. Returns (documents inserted, indexes made).
    On FerretDB 1.x an insert command carries at most
    :data:`~migration.steps.mongo.common.FERRETDB1_STATEMENTS_PER_COMMAND` documents.
    """
    batch_docs = min(INSERT_BATCH_DOCS, server.statements_per_command or INSERT_BATCH_DOCS)
    metadata = read_metadata(dumped.metadata) if dumped.metadata else {}
    options = metadata.get("options") or {}
    _create_collection(db, dumped.name, dict(options), warn)
    collection = db[dumped.name]
    inserted = 0
    batch: list[RawBSONDocument] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal inserted, batch, batch_bytes
        if batch:
            collection.insert_many(batch, ordered=True)
            inserted += len(batch)
            advance(len(batch))
            batch = []
            batch_bytes = 0
            check_stop()

    for document in iter_documents(dumped.bson):
        batch.append(RawBSONDocument(document))
        batch_bytes += len(document)
        if len(batch) >= batch_docs or batch_bytes >= INSERT_BATCH_BYTES:
            flush()
    flush()
    return inserted, create_indexes(db, dumped.name, metadata, server, warn)


def verify_restored(
    db: Database[Any], chosen: list[DumpedCollection], file_counts: dict[str, int]
) -> tuple[str, dict[str, int], list[str]]:
    """Compare restored collections with the dump: counts always, checksums when known.

    Returns (``counts+checksums`` or ``counts``, counts found, problems).
    """
    verified, found, problems = _verify_each(db, chosen, file_counts)
    return verified, found, list(problems.values())


def _verify_each(
    db: Database[Any], chosen: list[DumpedCollection], file_counts: dict[str, int]
) -> tuple[str, dict[str, int], dict[str, str]]:
    """:func:`verify_restored`, with the problems by collection name."""
    problems: dict[str, str] = {}
    found: dict[str, int] = {}
    with_checksums = all(d.checksum is not None for d in chosen)
    for dumped in chosen:
        count, checksum = collection_digest(db, dumped.name)
        found[dumped.name] = count
        expected = dumped.count if dumped.count is not None else file_counts[dumped.name]
        if count != expected:
            problems[dumped.name] = f"{dumped.name} has {count} documents, the dump {expected}"
        elif dumped.checksum is not None and checksum != dumped.checksum:
            problems[dumped.name] = f"{dumped.name} differs from the backup (checksum mismatch)"
    return ("counts+checksums" if with_checksums else "counts"), found, problems


def _target(uri: str, database: str) -> str:
    """Where a restore writes, without credentials: ``host:port,.../database``."""
    try:
        nodes = uri_parser.parse_uri(uri)["nodelist"]
    except Exception:  # connect() already accepted it; keep the comparison total
        nodes = []
    return ",".join(sorted(f"{host}:{port}" for host, port in nodes)) + "/" + database


def _names(value: Any) -> list[str]:
    """A list of collection names from saved progress (anything else: none)."""
    return [v for v in value if isinstance(v, str) and v] if isinstance(value, list) else []


@register
class MongoRestore(Step["MongoRestore.Params"]):
    """Restore a backup: check it whole first, then replace only its collections.

    ``from`` is the folder ``mongo.backup`` outputs as ``path`` (holding
    ``backup-manifest.json``), its ``mongodb-dump`` subfolder, or a plain mongodump
    output folder (then counts come from the files, and there are no checksums).
    Before touching the database every file is read whole and compared with the
    manifest (counts, SHA-256); a missing or corrupt manifest, a truncated file or a
    dump of another database is refused with nothing changed. Without ``drop`` a
    collection that already holds documents is refused; with ``drop`` the dump's
    collections are replaced and all others are left alone (listed in
    ``left_alone``). Documents are inserted as raw BSON in batches, indexes rebuilt
    from the metadata, then every restored collection is compared with the manifest
    (counts, and checksums over the documents in ``_id`` order). Interrupted (a
    crash, a kill, the server going away) it resumes collection by collection: what
    an earlier attempt restored whole is kept, a half-restored collection is redone,
    and collections it wrote itself are never refused as "already holding data".

    Outputs: ``restored`` (collection name -> documents), ``total``, ``verified``
    (``counts+checksums``, or ``counts`` for a dump without manifest), ``dropped``,
    ``left_alone``, ``indexes`` (name -> index names made), ``warnings``.

    Example:
        ```yaml
        rollback:
          - id: restore
            uses: mongo.restore
            with:
              uri: "{{ vars.db }}"
              from: "{{ steps.backup.outputs.path }}"
              drop: true
        ```
    """

    name = "mongo.restore"
    undo_verb = "restore"
    outputs = {
        "restored": "collection name -> documents",
        "total": "documents restored",
        "verified": "counts+checksums, counts (a dump without manifest), failed or none",
        "dropped": "collections replaced",
        "left_alone": "collections of the database not in the dump, left as they were",
        "indexes": "collection name -> index names made",
        "database": "database name",
        "warnings": "what the operator should know (e.g. no checksums)",
    }

    class Params(StepParams):
        uri: str = Field(description="connection string naming the database to restore into")
        from_: str = Field(alias="from", description="backup folder (or mongodump folder)")
        drop: bool = Field(default=False, description="replace the dump's collections")
        tool: Literal["native", "mongorestore"] = "native"
        collections: list[str] | None = Field(default=None, description="restore only these")
        allow_other_database: bool = Field(
            default=False, description="restore a dump taken of a database with another name"
        )

    def _prepare(
        self, ctx: StepContext[MongoRestore.Params]
    ) -> tuple[DumpSource, list[DumpedCollection], dict[str, int]]:
        params = ctx.params
        target = database_name(params.uri)
        folder = ctx.path(params.from_)
        try:
            source = locate_dump(folder, target)
            chosen = select(source, params.collections)
            if source.database != target and not params.allow_other_database:
                raise DumpError(
                    f"the dump is of database {source.database}, the URI names {target} "
                    "(set allow_other_database: true to restore it there)"
                )
            total = sum(d.count or 0 for d in chosen)
            with ctx.progress_bar("checking dump", total or None) as bar:
                file_counts = check_files(source, chosen, bar.advance)
        except DumpError as exc:
            raise StepError(f"refusing to restore from {folder}: {exc}; nothing was changed") from exc
        return source, chosen, file_counts

    def run(self, ctx: StepContext[MongoRestore.Params]) -> dict[str, Any]:
        params = ctx.params
        tool = find_tool(ctx, "mongorestore") if params.tool == "mongorestore" else ""
        source, chosen, file_counts = self._prepare(ctx)
        warnings = list(source.warnings)
        for line in warnings:
            ctx.log.warning("dump", note=line)

        def warn(message: str) -> None:
            warnings.append(message)
            ctx.log.warning("restore", note=message)

        client, db = connect(params.uri)
        try:
            server = detect_server(client)
            if server.ferretdb1:
                ctx.log.info(
                    "FerretDB 1.x workarounds: index options it lacks dropped, inserts capped",
                    server=server.name,
                    statements_per_command=server.statements_per_command,
                )
                if params.tool == "mongorestore":
                    warn(
                        f"mongorestore adds ns to every index spec, which {server.name} refuses "
                        '(Index option "ns" is unknown): collections with indexes may fail; '
                        "tool: native restores them"
                    )
            names = {d.name for d in chosen}
            existing = set(db.list_collection_names())
            left_alone = sorted(n for n in existing - names if not n.startswith("system."))
            # Earlier attempts of this step (killed, interrupted or failed) recorded in their
            # progress the collections they restored whole (``done``: kept, not redone), the
            # one they were writing (``current``) and any they had left half-written
            # (``partial``): those are restored anew. Each attempt carries all of it forward,
            # so after any number of kills the step knows every collection whose data it
            # wrote itself, and only those.
            # Only the same dump into the same database counts as our own work: a resume
            # whose URI now names another server or database starts from nothing there.
            target = _target(params.uri, db.name)
            same = ctx.resume.get("source") == str(source.folder) and ctx.resume.get("target") == target
            resumed = ctx.resume if same else {}
            done = {n for n in _names(resumed.get("done")) if n in names and n in existing}
            partial = set(_names([resumed.get("current"), *_names(resumed.get("partial"))])) & names - done
            ours = done | partial
            saved: Any = resumed.get("indexes")
            indexes: dict[str, list[str]] = (
                {n: _names(saved[n]) for n in sorted(done) if n in saved} if isinstance(saved, dict) else {}
            )
            dropped = _names(resumed.get("dropped"))
            if not params.drop:
                busy = [
                    f"{n} ({db[n].estimated_document_count()} documents)"
                    for n in sorted(names & existing - ours)
                    if db[n].find_one({}, projection={"_id": 1}) is not None
                ]
                if busy:
                    raise StepError(
                        f"refusing to restore: {', '.join(busy)} already hold data; "
                        "set drop: true to replace them; nothing was changed"
                    )
            if left_alone:
                ctx.log.info("restore", left_alone=left_alone)
            if ours:
                ctx.log.info("restore resumed", kept=sorted(done), redone=sorted(partial))
            restored: dict[str, int] = {n: file_counts[n] for n in sorted(done)}

            def record(current: str) -> None:
                ctx.progress(
                    source=str(source.folder),
                    target=target,
                    done=sorted(restored),
                    current=current,
                    partial=sorted(partial),
                    indexes=indexes,
                    dropped=dropped,
                )

            current = ""
            try:
                with ctx.progress_bar("restoring", sum(file_counts.values()) or None) as bar:
                    for dumped in chosen:
                        ctx.check_stop()
                        if dumped.name in done:
                            bar.advance(file_counts[dumped.name])  # restored whole by an earlier attempt
                            continue
                        current = dumped.name
                        partial.discard(current)
                        replace = dumped.name in existing and (params.drop or dumped.name in ours)
                        if replace and dumped.name not in ours and dumped.name not in dropped:
                            dropped.append(dumped.name)  # data from before the restore (drop: true)
                        record(current)  # durable before the collection is touched
                        if replace:
                            db.drop_collection(dumped.name)
                        if params.tool == "mongorestore":
                            argv = [tool, f"--uri={params.uri}", f"--collection={dumped.name}"]
                            argv += ["--gzip"] if dumped.bson.name.endswith(".gz") else []
                            run_tool(ctx, [*argv, str(dumped.bson)], f"mongorestore {dumped.name}")
                            restored[dumped.name] = file_counts[dumped.name]
                            bar.advance(file_counts[dumped.name])
                        else:
                            count, made = restore_native(
                                db, dumped, server, warn, bar.advance, ctx.check_stop
                            )
                            restored[dumped.name] = count
                            indexes[dumped.name] = made
                        ctx.log.info("restored", collection=dumped.name, documents=restored[dumped.name])
                current = ""
            except (PyMongoError, OSError, DumpError, StepError) as exc:
                raise self._half_done(ctx, exc, restored, current, chosen) from exc
            except Interrupted as exc:
                half_done = self._half_done(ctx, exc, restored, current, chosen)
                ctx.log.warning("restore interrupted", state=str(half_done))
                raise
            record("")
            with ctx.progress_bar("verifying", len(chosen)):
                verified, found, mismatched = _verify_each(db, chosen, file_counts)
            problems = list(mismatched.values())
            if mismatched:
                # No longer vouched for (written to since?): a later attempt must not take
                # them for its own. Without drop it refuses them; with drop it replaces them.
                for name in mismatched:
                    restored.pop(name, None)
                record("")
            outputs: dict[str, Any] = {
                "restored": found,
                "total": sum(found.values()),
                "verified": verified,
                "dropped": sorted(dropped),
                "left_alone": left_alone,
                "indexes": indexes,
                "database": db.name,
                "warnings": warnings,
            }
            if problems:
                outputs["verified"] = "failed"
                raise StepError(
                    "restored data does not match the backup: " + "; ".join(problems[:3]),
                    outputs=outputs,
                )
            return outputs
        finally:
            client.close()

    @staticmethod
    def _half_done(
        ctx: StepContext[Any],
        exc: Exception,
        restored: dict[str, int],
        current: str,
        chosen: list[DumpedCollection],
    ) -> StepError:
        todo = [d.name for d in chosen if d.name not in restored and d.name != current]
        parts = [f"restore failed at collection {current}: {ctx.redact(str(exc))}"]
        parts.append(f"restored: {', '.join(restored) or 'none'}")
        parts.append(f"{current} is half-restored")
        if todo:
            parts.append(f"not restored yet: {', '.join(todo)}")
        parts.append(
            "run the restore again: it keeps the collections it restored and restores the others "
            "(the half-restored one anew)"
        )
        return StepError("; ".join(parts), outputs={"restored": restored, "verified": "none"})

    def preview(self, ctx: StepContext[MongoRestore.Params]) -> str:
        params = ctx.params
        folder = ctx.path(params.from_)
        if not folder.exists():
            return f"would restore from {folder} (not there yet) into {database_name(params.uri)}"
        try:
            source, chosen, file_counts = self._prepare(ctx)
        except StepError as exc:
            return f"would REFUSE: {exc}"
        lines = [f"dump {source.folder} checked: {len(chosen)} collections, files intact"]
        lines += [f"warning: {w}" for w in source.warnings]
        client, db = connect(params.uri)
        try:
            existing = set(db.list_collection_names())
            for dumped in chosen:
                action = "drop and restore" if params.drop and dumped.name in existing else "restore"
                holds_data = db[dumped.name].find_one({}, projection={"_id": 1}) is not None
                if not params.drop and dumped.name in existing and holds_data:
                    action = "REFUSE (holds data; drop is false)"
                lines.append(f"  {dumped.name}: {action} {file_counts[dumped.name]} documents")
            alone = sorted(existing - {d.name for d in chosen})
            if alone:
                lines.append(f"left alone: {', '.join(alone)}")
        finally:
            client.close()
        return "\n".join(lines)
