"""The ``mongo.backup`` step type: a verified dump in mongodump's layout, plus a manifest."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pymongo.database import Database
from pymongo.errors import PyMongoError

from migration.errors import StepError
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.mongo.backup_dump import Dump, StartGate
from migration.steps.mongo.common import (
    connect,
    detect_server,
    free_disk_bytes,
    human_bytes,
    server_info,
    user_collections,
)
from migration.steps.mongo.dumpfmt import (
    BACKUP_NAME,
    DUMP_DIR,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    STATS_NAME,
    DumpError,
    backup_folder_name,
    fsync_dir,
    iso_utc,
    write_json,
)
from migration.steps.mongo.parallel import DEFAULT_PARALLEL_COLLECTIONS, Cancelled, run_each
from migration.steps.mongo.tools import find_tool
from migration.steps.registry import register

DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def collection_sizes(db: Database[Any], names: list[str]) -> dict[str, tuple[int, int]]:
    """name -> (count, bytes) from collStats: fast, and close enough for estimates."""
    sizes = {}
    for name in names:
        stats = db.command("collStats", name)
        sizes[name] = (int(stats.get("count", 0)), int(stats.get("size", 0)))
    return sizes


def select_collections(db: Database[Any], wanted: list[str] | None) -> list[str]:
    """All user collections, or the named ones (each must exist)."""
    present = user_collections(db)
    if wanted is None:
        return present
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise StepError(f"collections not found in database {db.name}: {', '.join(missing)}")
    return sorted(set(wanted))


def prune_backups(out: Path, current: str, keep: int) -> list[str]:
    """Remove ``backup-*`` folders in ``out`` beyond the newest ``keep``; never ``current``."""
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and BACKUP_NAME.match(p.name))
    older = [name for name in reversed(names) if name != current]
    doomed = older[max(0, keep - 1) :]
    for name in doomed:
        shutil.rmtree(out / name)
    return sorted(doomed)


@register
class MongoBackup(Step["MongoBackup.Params"]):
    """Back up a database: a dump in mongodump's layout, checked and with a manifest.

    Writes ``<out>/backup-<UTC timestamp>/mongodb-dump/<db>/<collection>.bson`` and
    ``.metadata.json`` (``.gz`` with ``gzip``), ``stats.json`` and
    ``backup-manifest.json`` (per collection: count, bytes, SHA-256; ``totalRecords``,
    server version, created_at). File names are mongodump's: ``url.QueryEscape`` of the
    collection name, long ones cut as mongodump cuts them (docs/backups.md). The
    native tool streams raw BSON in ``_id`` order, never decoding documents, so
    memory stays flat. Everything is written into a
    ``.partial`` folder renamed at the very end; a failed backup is removed, and
    says so. Counts taken before and after the dump must agree with what was
    written: a difference means something is still writing (stop the application).
    ``parallel_collections`` (default 4, as mongodump's ``--numParallelCollections``)
    collections are dumped at once, each into its own file; the manifest is the same
    whatever order they finish in. ``verify`` (what each proves and costs:
    docs/backups.md): ``counts`` (always done: exact counts before and after equal
    the documents dumped), ``checksums`` (also read every file back from disk as soon
    as it is closed, while the others are dumped: count and SHA-256 as recorded) or
    ``restore`` (also restore into a scratch database on the same server, compare
    checksums, drop it). Checksums of what is written are computed on the fly.
    ``keep: N`` prunes older ``backup-*`` folders in ``out``, never this one.

    Outputs: ``path`` (the backup folder holding the manifest), ``total_records``,
    ``collections`` (collection name -> documents), ``bytes`` (BSON bytes dumped),
    ``disk_bytes`` (on disk), ``verified`` (the verification done), ``pruned``.

    Example:
        ```yaml
        - id: backup
          uses: mongo.backup
          with:
            uri: "{{ vars.db }}"
            out: backups
            verify: checksums
            keep: 5
        ```
    """

    name = "mongo.backup"
    outside_effects = False
    writes_folders = ("out",)
    # The dump stays on the disk of the host that made it (see migration.hosts).
    host_local_outputs: ClassVar[dict[str, str]] = {"path": "file"}
    outputs = {
        "path": "the backup folder, holding backup-manifest.json (what mongo.restore takes as from)",
        "total_records": "documents backed up, all collections",
        "collections": "collection name -> documents",
        "bytes": "BSON bytes dumped",
        "disk_bytes": "bytes of the backup folder on disk",
        "verified": "the verification done: counts, checksums or restore",
        "manifest": "path of backup-manifest.json",
        "database": "database name",
        "pruned": "older backup folders removed by keep",
    }

    class Params(StepParams):
        uri: str = Field(description="connection string naming the database")
        out: str = Field(description="folder that receives backup-<timestamp>/")
        collections: list[str] | None = Field(default=None, description="default: all")
        tool: Literal["native", "mongodump"] = "native"
        verify: Literal["counts", "checksums", "restore"] = Field(
            default="counts",
            description="counts: exact counts before/after; checksums: also read each file back; "
            "restore: also restore into a scratch database and compare",
        )
        gzip: bool = False
        keep: int | None = Field(default=None, ge=1, description="backups to keep in out")
        parallel_collections: int = Field(
            default=DEFAULT_PARALLEL_COLLECTIONS,
            ge=1,
            le=64,
            description="collections dumped at once (mongodump --numParallelCollections)",
        )

    def run(self, ctx: StepContext[MongoBackup.Params]) -> dict[str, Any]:
        params = ctx.params
        tool = find_tool(ctx, "mongodump") if params.tool == "mongodump" else ""
        client, db = connect(params.uri)
        # A dump of production is readable by its owner only (0700 folders, 0600 files).
        umask = os.umask(0o077)
        try:
            return self._backup(ctx, db, tool)
        finally:
            os.umask(umask)
            client.close()

    def _backup(self, ctx: StepContext[MongoBackup.Params], db: Database[Any], tool: str) -> dict[str, Any]:
        params = ctx.params
        info = server_info(db.client)
        names = select_collections(db, params.collections)
        out = ctx.path(params.out)
        out.mkdir(parents=True, exist_ok=True)
        _, free = free_disk_bytes(out)
        sizes = collection_sizes(db, names)
        estimate = sum(size for _, size in sizes.values())
        if estimate > free:
            ctx.log.warning(
                "backup may not fit",
                free=human_bytes(free),
                estimated=human_bytes(estimate),
                out=str(out),
            )
        for leftover in sorted(out.glob("backup-*" + PARTIAL_SUFFIX)):
            ctx.log.warning("unfinished backup left by an earlier run", folder=str(leftover))
        # Where a find reads one snapshot taken when it starts (FerretDB 1.x), the
        # collections dumped from the start take their "before" count from their own
        # find, and the others are counted meanwhile (StartGate); elsewhere every exact
        # count comes before the dump, as mongo.backup always did.
        snapshots = not tool and detect_server(db.client).ferretdb1
        first = names[: params.parallel_collections] if snapshots else []
        later = [name for name in names if name not in first]
        before: dict[str, int] = {}
        gate: StartGate | None = None
        if first:
            gate = StartGate(len(first))
            self._count_meanwhile(ctx, db, later, before, gate)
        else:
            before = self._counts(ctx, db, names)
        moment = datetime.now(UTC)
        final = out / backup_folder_name(moment)
        while final.exists() or final.with_name(final.name + PARTIAL_SUFFIX).exists():
            moment += timedelta(milliseconds=1)
            final = out / backup_folder_name(moment)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        partial.mkdir()
        ctx.log.info("backup started", folder=str(final), collections=len(names))
        dump = Dump(ctx, db, partial, tool)
        dump.gate, dump.gated = gate, set(first)
        try:
            check_files = params.verify in ("checksums", "restore")
            # The bar's total: the exact counts where they come first, collStats' otherwise.
            total = sum(sizes[name][0] for name in names) if gate else sum(before.values())
            with ctx.progress_bar("backup", total or None) as bar:
                entries = dump.all(names, bar.advance, params.parallel_collections, check_files)
            for name in first:
                before[name] = entries[name]["count"]  # the count of the find's snapshot
            after = self._counts(ctx, db, names)
            changed = [
                f"{name} (before {before[name]}, dumped {entries[name]['count']}, after {after[name]})"
                for name in names
                if not before[name] == entries[name]["count"] == after[name]
            ]
            if changed:
                raise StepError(
                    "documents changed during the backup: " + ", ".join(changed[:5]) + "; "
                    "something is still writing: stop the application and run the backup again"
                )
            if params.verify == "restore":
                dump.verify_by_restore(db, entries, params.parallel_collections)
            manifest = self._manifest(db.name, info, tool, params, moment, entries)
            counts = {name: entry["count"] for name, entry in entries.items()}
            write_json(
                partial / STATS_NAME,
                {"database": db.name, "collections": counts, "totalRecords": sum(counts.values())},
            )
            write_json(partial / MANIFEST_NAME, manifest)
            fsync_dir(dump.db_dir)
            fsync_dir(partial)
            os.rename(partial, final)
            fsync_dir(out)
        except BaseException as exc:
            if gate is not None:
                gate.abandoned = True
            replacement = self._failed(ctx, exc, partial, out, dump.written)
            if replacement is exc:
                raise
            raise replacement from exc
        pruned = prune_backups(out, final.name, params.keep) if params.keep else []
        if pruned:
            ctx.log.info("pruned old backups", removed=pruned, kept=params.keep)
        ctx.log.info("backup completed", folder=str(final), total_records=sum(counts.values()))
        return {
            "path": str(final),
            "total_records": sum(counts.values()),
            "collections": counts,
            "bytes": sum(entry["bytes"] for entry in entries.values()),
            "disk_bytes": sum(p.stat().st_size for p in final.rglob("*") if p.is_file()),
            "verified": params.verify,
            "manifest": str(final / MANIFEST_NAME),
            "database": db.name,
            "pruned": pruned,
        }

    @staticmethod
    def _counts(ctx: StepContext[MongoBackup.Params], db: Database[Any], names: list[str]) -> dict[str, int]:
        """Exact counts (a full read each on FerretDB), several collections at once."""
        counts = run_each(
            names,
            lambda name, _: int(db[name].count_documents({})),
            ctx.params.parallel_collections,
            ctx.check_stop,
        )
        return dict(zip(names, counts, strict=True))

    @staticmethod
    def _count_meanwhile(
        ctx: StepContext[MongoBackup.Params],
        db: Database[Any],
        names: list[str],
        into: dict[str, int],
        gate: StartGate,
    ) -> None:
        """Exact counts of ``names`` in a thread of their own; the gate opens when they are in."""

        def stop() -> None:
            if gate.abandoned:
                raise Cancelled

        def work() -> None:
            try:
                counts = run_each(
                    names,
                    lambda name, _: int(db[name].count_documents({})),
                    ctx.params.parallel_collections,
                    stop,
                )
            except BaseException as exc:
                gate.arrive(exc)
                return
            into.update(zip(names, counts, strict=True))
            gate.arrive()

        threading.Thread(target=work, name="backup-counts", daemon=True).start()

    @staticmethod
    def _manifest(
        database: str,
        info: dict[str, Any],
        tool: str,
        params: MongoBackup.Params,
        moment: datetime,
        entries: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "database": database,
            "created_at": iso_utc(moment),
            "server_version": info["version"],
            "ferretdb": info["ferretdb"],
            "tool": "mongodump" if tool else "native",
            "gzip": params.gzip,
            "dump_dir": f"{DUMP_DIR}/{database}",
            "verified": params.verify,
            "totalRecords": sum(entry["count"] for entry in entries.values()),
            "totalBytes": sum(entry["bytes"] for entry in entries.values()),
            "collections": entries,
        }

    @staticmethod
    def _failed(
        ctx: StepContext[Any], exc: BaseException, partial: Path, out: Path, written: int
    ) -> BaseException:
        """Remove the partial backup and say so in the error."""
        try:
            shutil.rmtree(partial)
            note = f"the unfinished backup {partial.name} was removed"
        except OSError as cleanup:
            note = f"the unfinished backup {partial} could not be removed ({cleanup}); delete it"
        ctx.log.warning("backup failed", note=note)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return StepError(
                f"disk full while writing the backup in {out} ({os.strerror(exc.errno or 0)}, "
                f"after {human_bytes(written)}); {note}"
            )
        if isinstance(exc, StepError):
            return StepError(f"{exc}; {note}", outputs=exc.outputs)
        if isinstance(exc, (OSError, PyMongoError, DumpError)):
            return StepError(f"backup failed: {ctx.redact(str(exc))}; {note}")
        return exc

    def preview(self, ctx: StepContext[MongoBackup.Params]) -> str:
        params = ctx.params
        lines: list[str] = []
        if params.tool == "mongodump":
            try:
                find_tool(ctx, "mongodump")
            except StepError as exc:
                lines.append(f"WARNING: {exc}")
        client, db = connect(params.uri)
        try:
            names = select_collections(db, params.collections)
            sizes = collection_sizes(db, names)
        finally:
            client.close()
        out = ctx.path(params.out)
        probe, free = free_disk_bytes(out)
        estimate = sum(size for _, size in sizes.values())
        lines.append(
            f"would dump {len(names)} collections of {db.name} "
            f"({sum(c for c, _ in sizes.values())} documents, about {human_bytes(estimate)}) "
            f"into {out}/backup-<timestamp>/ with tool {params.tool}, verify {params.verify}"
            + (", gzip" if params.gzip else "")
        )
        lines += [
            f"  {name}: {count} documents, {human_bytes(size)}" for name, (count, size) in sizes.items()
        ]
        lines.append(f"free disk at {probe}: {human_bytes(free)}")
        if estimate > free:
            lines.append(f"WARNING: free disk at {probe}: {human_bytes(free)} < data {human_bytes(estimate)}")
        if params.keep and out.is_dir():
            names_on_disk = sorted(p.name for p in out.iterdir() if BACKUP_NAME.match(p.name))
            doomed = list(reversed(names_on_disk))[params.keep - 1 :]
            if doomed:
                lines.append(f"would prune {len(doomed)} older backups: {', '.join(sorted(doomed))}")
        return "\n".join(lines)
