"""Writing one backup's collections, several at once, and checking what was written.

Split from :mod:`backup` (the step: folders, counts, manifest, cleanup). Each
collection is dumped by one worker thread into its own file; the manifest entries
come back in collection-name order whatever order the workers finished in.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymongo.database import Database

from migration.errors import StepError
from migration.steps.base import StepContext
from migration.steps.mongo.checksums import collection_digest, count_in_buffer, raw_batches
from migration.steps.mongo.common import detect_server
from migration.steps.mongo.dumpfmt import (
    DUMP_DIR,
    BsonWriter,
    DumpedCollection,
    bson_file_name,
    dumped_files,
    metadata_file_name,
    metadata_text,
    read_metadata,
    scan_bson_file,
    write_text,
)
from migration.steps.mongo.parallel import Workers, run_each
from migration.steps.mongo.restore_data import restore_native, verify_collection
from migration.steps.mongo.tools import run_tool


def metadata_of(db: Database[Any], name: str) -> tuple[str, list[Any], list[str]]:
    """(``.metadata.json`` text, index specs, index names) of one collection."""
    # The name is checked too: a server may ignore listCollections' filter
    # (mongo-java-server does), and another collection's options must not be taken.
    listed = db.list_collections(filter={"name": name})
    spec = next((entry for entry in listed if entry.get("name") == name), None) or {}
    uuid = (spec.get("info") or {}).get("uuid")
    indexes = list(db[name].list_indexes())
    text = metadata_text(
        name,
        indexes,
        uuid=uuid.hex() if isinstance(uuid, bytes) else getattr(uuid, "hex", "") or "",
        options=dict(spec.get("options") or {}),
    )
    return text, indexes, [str(index.get("name")) for index in indexes]


class StartGate:
    """Holds the first dumps at their first batch until every "before" figure is taken.

    Used where a ``find`` reads one snapshot of the collection, taken when it starts
    (FerretDB 1.x: tests/test_mongo_backup_counts.py pins it): the collections dumped
    from the start (the first ``parallel_collections``) get their "before" count from
    their own ``find``, and the exact counts of the others run meanwhile, in their own
    thread. No batch is written, and no progress shown, before all of these are taken;
    from then on a write is caught exactly as when every count came before the dump.
    """

    def __init__(self, finds: int) -> None:
        self._lock = threading.Lock()
        self._pending = finds + 1  # the finds, and the counts of the other collections
        self._open = threading.Event()
        self._failure: BaseException | None = None
        self.abandoned = False  # the backup failed: the counts stop at their next collection

    def arrive(self, failure: BaseException | None = None) -> None:
        with self._lock:
            if failure is not None and self._failure is None:
                self._failure = failure
            self._pending -= 1
            if self._pending <= 0 or failure is not None:
                self._open.set()

    def wait(self, check: Callable[[], None]) -> None:
        """Until everything arrived (``check`` between waits: another worker's failure, a signal)."""
        while not self._open.wait(0.05):
            check()
        if self._failure is not None:
            raise self._failure

    def pass_through(self, check: Callable[[], None]) -> None:
        self.arrive()
        self.wait(check)


class Dump:
    """One backup being written into ``<out>/backup-<ts>.partial``."""

    def __init__(self, ctx: StepContext[Any], db: Database[Any], partial: Path, tool: str) -> None:
        self.ctx = ctx
        self.db = db
        self.partial = partial
        self.tool = tool
        self.gzip = bool(ctx.params.gzip)
        self.db_dir = partial / DUMP_DIR / db.name
        self.db_dir.mkdir(parents=True)
        self.written = 0
        # Collections whose first find opens the start gate (see StartGate), and the gate.
        self.gated: set[str] = set()
        self.gate: StartGate | None = None

    def relative(self, path: Path) -> str:
        return path.relative_to(self.partial).as_posix()

    def all(
        self, names: list[str], advance: Callable[[int], None], parallel: int, check_files: bool
    ) -> dict[str, dict[str, Any]]:
        """Dump every collection, ``parallel`` at a time; entries in ``names`` order.

        With ``check_files`` each file is read back from disk as soon as it is closed,
        while the other collections are still being dumped.
        """

        def one(name: str, shared: Workers) -> dict[str, Any]:
            step = shared.locked(advance)
            entry = self.mongodump(name, step, shared) if self.tool else self.native(name, step, shared)
            if check_files:
                self.verify_file(self.dumped({name: entry})[0])
            self.ctx.log.info("dumped", collection=name, documents=entry["count"])
            return entry

        entries = run_each(names, one, parallel, self.ctx.check_stop)
        return dict(zip(names, entries, strict=True))

    def native(self, name: str, advance: Callable[[int], None], shared: Workers) -> dict[str, Any]:
        """Stream the collection's raw BSON batches in ``_id`` order into its file.

        Per batch, not per document: the server's bytes are written and hashed as whole
        batches; only the count walks the documents' length prefixes.
        """
        text, _, index_names = metadata_of(self.db, name)
        meta_path = self.db_dir / metadata_file_name(name, self.gzip)
        write_text(meta_path, text, self.gzip)
        path = self.db_dir / bson_file_name(name, self.gzip)
        writer = BsonWriter(path, self.gzip)
        count = 0
        try:
            gate = self.gate if name in self.gated else None
            started = (lambda: gate.pass_through(shared.check)) if gate is not None else None
            for batch in raw_batches(self.db, name, started):
                writer.write(batch)
                documents = count_in_buffer(batch)
                count += documents
                with shared.lock:
                    self.written += len(batch)
                advance(documents)
                shared.check()
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return {
            "count": count,
            "bytes": writer.bytes,
            "sha256": writer.sha256,
            "checksum": writer.sha256,
            "file": self.relative(path),
            "file_bytes": path.stat().st_size,
            "metadata": self.relative(meta_path),
            "indexes": index_names,
        }

    def mongodump(self, name: str, advance: Callable[[int], None], shared: Workers) -> dict[str, Any]:
        """Run mongodump for one collection, then read its file back for the manifest."""
        argv = [self.tool, f"--uri={self.ctx.params.uri}", f"--collection={name}"]
        argv += [f"--out={self.partial / DUMP_DIR}"] + (["--gzip"] if self.gzip else [])
        run_tool(self.ctx, argv, f"mongodump {name}")
        path, meta_path = dumped_files(self.db_dir, name, self.gzip)
        scan = scan_bson_file(path)
        # mongodump writes in natural order; the collection checksum is over _id order.
        _, checksum = collection_digest(self.db, name)
        advance(scan.count)
        with shared.lock:
            self.written += scan.bytes
        indexes = read_metadata(meta_path).get("indexes", [])
        return {
            "count": scan.count,
            "bytes": scan.bytes,
            "sha256": scan.sha256,
            "checksum": checksum,
            "file": self.relative(path),
            "file_bytes": path.stat().st_size,
            "metadata": self.relative(meta_path),
            "indexes": [str(index.get("name")) for index in indexes],
        }

    def dumped(self, entries: dict[str, dict[str, Any]]) -> list[DumpedCollection]:
        return [
            DumpedCollection(
                name=name,
                bson=self.partial / entry["file"],
                metadata=self.partial / entry["metadata"],
                count=entry["count"],
                sha256=entry["sha256"],
                checksum=entry["checksum"],
            )
            for name, entry in entries.items()
        ]

    @staticmethod
    def verify_file(dumped: DumpedCollection) -> None:
        """Read one file back from disk: framing, count and SHA-256 as recorded."""
        scan = scan_bson_file(dumped.bson)
        if (scan.count, scan.sha256) != (dumped.count, dumped.sha256):
            raise StepError(f"backup file {dumped.bson.name} reads back differently")
        assert dumped.metadata is not None
        read_metadata(dumped.metadata)

    def verify_by_restore(self, client_db: Database[Any], entries: dict[str, Any], parallel: int) -> None:
        """Restore into a scratch database on the same server, compare, drop it."""
        client = client_db.client
        scratch_name = f"{client_db.name[:40]}_verify_{secrets.token_hex(4)}"
        scratch = client[scratch_name]
        server = detect_server(client)
        if server.statements_per_command:
            self.ctx.log.info(
                "FerretDB 1.x workaround: inserts capped",
                server=server.name,
                statements_per_command=server.statements_per_command,
            )
        chosen = self.dumped(entries)
        self.ctx.log.info("verify by restore", scratch_database=scratch_name)

        def warn(message: str) -> None:
            self.ctx.log.warning("verify", note=message)

        problems: list[str] = []
        try:
            total = sum(d.count or 0 for d in chosen)
            with self.ctx.progress_bar("verify: restoring", total or None) as bar:

                def one(dumped: DumpedCollection, shared: Workers) -> None:
                    restore_native(scratch, dumped, server, warn, shared.locked(bar.advance), shared)
                    _, problem, _ = verify_collection(scratch, dumped, {}, "checksums", False)
                    if problem:
                        with shared.lock:
                            problems.append(problem)

                run_each(chosen, one, parallel, self.ctx.check_stop)
            if problems:
                raise StepError("verify by restore failed: " + "; ".join(sorted(problems)[:3]))
        finally:
            client.drop_database(scratch_name)
