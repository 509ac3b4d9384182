"""The ``mongo.restore`` step type: check a dump, then restore it, then verify it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field
from pymongo import uri_parser
from pymongo.errors import PyMongoError

from migration.errors import Interrupted, StepError
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.mongo.common import connect, database_name, detect_server
from migration.steps.mongo.dumpfmt import DumpedCollection, DumpError, DumpSource, locate_dump
from migration.steps.mongo.parallel import DEFAULT_PARALLEL_COLLECTIONS, Workers, run_each
from migration.steps.mongo.restore_data import (
    INSERT_BATCH_DOCS as INSERT_BATCH_DOCS,
)
from migration.steps.mongo.restore_data import (
    check_files,
    has_dbhash,
    restore_native,
    select,
    verify_collection,
)
from migration.steps.mongo.restore_data import (
    verify_restored as verify_restored,
)
from migration.steps.mongo.tools import find_tool, run_tool
from migration.steps.registry import register


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
    (``verify: checksums``, the default: checksums over the documents in ``_id``
    order, by the server's ``dbHash`` where it has one, else by reading it back;
    ``verify: counts``: one exact count; ``verify: inserts``: the server's
    acknowledgements only, no read; what each proves and costs: docs/backups.md).
    At every level the documents the server acknowledged must be the dump's count.
    ``parallel_collections`` (default 4, as mongorestore) collections are restored at
    once, each verified as soon as it is in, while the others are still being
    restored; ``insertion_workers`` threads insert into one collection (mongorestore's
    ``--numInsertionWorkersPerCollection``).
    Interrupted (a crash, a kill, the server going away) it resumes collection by
    collection: what an earlier attempt restored whole is kept, the collections it
    had half-restored (every one in flight) are redone, and collections it wrote
    itself are never refused as "already holding data".

    Outputs: ``restored`` (collection name -> documents), ``total``, ``verified``
    (``counts+checksums``, or ``counts`` for a dump without manifest or with
    ``verify: counts``, ``inserts`` with ``verify: inserts``), ``verified_by`` (name ->
    ``dbHash``, ``read-back``, ``count`` or ``inserts``), ``dropped``, ``left_alone``,
    ``indexes`` (name -> index names made), ``warnings``.

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
    outside_effects = False
    undo_verb = "restore"
    outputs = {
        "restored": "collection name -> documents",
        "total": "documents restored",
        "verified": "counts+checksums, counts (a dump without manifest or verify: counts), "
        "inserts (verify: inserts), failed or none",
        "verified_by": "collection name -> how it was verified: dbHash, read-back, count or inserts",
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
        verify: Literal["checksums", "counts", "inserts"] = Field(
            default="checksums",
            description="checksums: prove every document is the dump's (dbHash where the server "
            "has it, else a read-back); counts: one count per collection; inserts: the server "
            "acknowledged every document, no read",
        )
        parallel_collections: int = Field(
            default=DEFAULT_PARALLEL_COLLECTIONS,
            ge=1,
            le=64,
            description="collections restored at once (mongorestore --numParallelCollections)",
        )
        insertion_workers: int = Field(
            default=1,
            ge=1,
            le=64,
            description="threads inserting into one collection "
            "(mongorestore --numInsertionWorkersPerCollection)",
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

            in_flight: set[str] = set()  # being restored now, by this attempt
            verified_by: dict[str, str] = {}
            found: dict[str, int] = {}
            mismatched: dict[str, str] = {}
            dbhash = params.verify == "checksums" and has_dbhash(db)

            def record() -> None:
                # ``current``: one collection in flight (the first), ``partial``: the others
                # in flight and those earlier attempts left half-written. A resume treats
                # both as its own, half-restored, to redo.
                current = min(in_flight) if in_flight else ""
                ctx.progress(
                    source=str(source.folder),
                    target=target,
                    done=sorted(restored),
                    current=current,
                    partial=sorted((partial | in_flight) - {current}),
                    indexes=indexes,
                    dropped=dropped,
                )

            def restore_one(
                dumped: DumpedCollection, shared: Workers, advance: Callable[[int], None]
            ) -> None:
                name = dumped.name
                made: list[str] = []
                acknowledged: int | None = None
                if name not in done:
                    with shared.lock:
                        shared.check()
                        in_flight.add(name)
                        partial.discard(name)
                        replace = name in existing and (params.drop or name in ours)
                        if replace and name not in ours and name not in dropped:
                            dropped.append(name)  # data from before the restore (drop: true)
                        record()  # durable before the collection is touched
                    if replace:
                        db.drop_collection(name)
                    if tool:
                        argv = [tool, f"--uri={params.uri}", f"--collection={name}"]
                        argv += ["--gzip"] if dumped.bson.name.endswith(".gz") else []
                        run_tool(ctx, [*argv, str(dumped.bson)], f"mongorestore {name}")
                        count = file_counts[name]
                        advance(count)
                    else:
                        batch = INSERT_BATCH_DOCS
                        workers = params.insertion_workers
                        count, made, acknowledged = restore_native(
                            db, dumped, server, warn, advance, shared, batch, workers
                        )
                    ctx.log.info("restored", collection=name, documents=count)
                else:
                    count = file_counts[name]
                    advance(count)  # restored whole by an earlier attempt
                # The verification of this collection overlaps the restore of the others.
                seen, problem, how = verify_collection(
                    db, dumped, file_counts, params.verify, dbhash, acknowledged
                )
                with shared.lock:
                    found[name] = seen
                    verified_by[name] = how
                    if name not in done:
                        in_flight.discard(name)
                        if not tool:
                            indexes[name] = made
                    if problem:
                        mismatched[name] = problem
                        restored.pop(name, None)
                    else:
                        restored[name] = count

            try:
                with ctx.progress_bar("restoring", sum(file_counts.values()) or None) as bar:
                    run_each(
                        chosen,
                        lambda dumped, shared: restore_one(dumped, shared, shared.locked(bar.advance)),
                        params.parallel_collections,
                        ctx.check_stop,
                    )
            except (PyMongoError, OSError, DumpError, StepError) as exc:
                raise self._half_done(ctx, exc, restored, sorted(in_flight), chosen) from exc
            except Interrupted as exc:
                half_done = self._half_done(ctx, exc, restored, sorted(in_flight), chosen)
                ctx.log.warning("restore interrupted", state=str(half_done))
                raise
            # No longer vouched for (written to since?): a later attempt must not take
            # mismatched collections for its own. Without drop it refuses them; with drop
            # it replaces them.
            record()
            problems = [mismatched[d.name] for d in chosen if d.name in mismatched]
            with_checksums = params.verify == "checksums" and all(d.checksum is not None for d in chosen)
            verified = "inserts" if params.verify == "inserts" else "counts"
            verified = "counts+checksums" if with_checksums else verified
            found = {d.name: found[d.name] for d in chosen}
            outputs: dict[str, Any] = {
                "restored": found,
                "total": sum(found.values()),
                "verified": verified,
                "verified_by": dict(sorted(verified_by.items())),
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
        in_flight: list[str],
        chosen: list[DumpedCollection],
    ) -> StepError:
        todo = [d.name for d in chosen if d.name not in restored and d.name not in in_flight]
        where = ", ".join(in_flight) or "its start"
        parts = [f"restore failed at collection {where}: {ctx.redact(str(exc))}"]
        parts.append(f"restored: {', '.join(sorted(restored)) or 'none'}")
        if in_flight:
            parts.append(f"{', '.join(in_flight)} {'is' if len(in_flight) == 1 else 'are'} half-restored")
        if todo:
            parts.append(f"not restored yet: {', '.join(todo)}")
        parts.append(
            "run the restore again: it keeps the collections it restored and restores the others "
            "(the half-restored ones anew)"
        )
        return StepError("; ".join(parts), outputs={"restored": restored, "verified": "none"})

    def preview(self, ctx: StepContext[MongoRestore.Params]) -> str:
        params = ctx.params
        if "<steps." in params.from_:  # a backup this run takes first: the dry run names it
            return f"would restore from {params.from_} into {database_name(params.uri)}"
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
