"""The measured sections: backup, restore, transform, sweep (batch sizes, workers,
write concerns) and memory. Each returns a list of :class:`harness.Figure`.

Competing figures are interleaved within each repetition (A, B, A, B, ...), so
a burst of load from a neighbour on this shared machine hits all of them alike
and their ratios, taken in the same run, stay meaningful.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import COLLECTION, Figure, Server, dataset_file, drop_database, run_child, say, seed

BATCH_SIZES = (100, 500, 1000, 5000)


@dataclass
class Setup:
    server: Server
    docs: int
    transform_docs: int
    sweep_docs: int
    repeat: int
    work: Path
    cache: Path
    million: bool = False
    tools: dict[str, bool] = field(default_factory=dict)
    # Filled by the backup section for the restore section.
    backup_path: str | None = None

    def url(self, database: str) -> str:
        return self.server.database_url(database)


SOURCE = "bench_source"
TARGET = "bench_target"
SCRATCH = "bench_scratch"


def _source(setup: Setup, docs: int) -> Path:
    path = dataset_file(docs, setup.cache)
    say(f"seeding {docs:,} documents into {SOURCE}.{COLLECTION}")
    seed(setup.server, SOURCE, path)
    return path


def backup(setup: Setup) -> list[Figure]:
    """mongo.backup (native) vs mongodump vs the bare read it cannot beat."""
    _source(setup, setup.docs)
    n = setup.docs
    read = Figure("backup", "bare read: find_raw_batches in _id order, nothing written (the limit)", n)
    native = Figure("backup", "mongo.backup tool: native, verify: counts", n)
    checked = Figure("backup", "mongo.backup tool: native, verify: checksums", n)
    count = Figure("backup", "one exact count_documents({}) (the backup takes two)", n)
    dump = Figure("backup", "mongodump --collection (MongoDB Database Tools)", n)
    lookup = Figure("backup", "one find_one({_id}) on this collection (latency; updates in notes)", 1)
    out = setup.work / "backups"
    for k in range(setup.repeat):
        say(f"backup: repetition {k + 1}/{setup.repeat}")
        read.add(run_child("read", url=setup.url(SOURCE)))
        last = k == setup.repeat - 1  # its backup is kept for the restore section
        result = run_child("backup", url=setup.url(SOURCE), out=str(out), keep=last)
        native.add(result)
        if last:
            setup.backup_path = result["path"]
        if setup.tools.get("mongodump"):
            dump.add(run_child("mongodump", url=setup.url(SOURCE), out=str(out)))
    # Once each: they explain the figures above rather than compete with them.
    checked.add(run_child("backup", url=setup.url(SOURCE), out=str(out), verify="checksums"))
    count.add(run_child("count", url=setup.url(SOURCE)))
    lookup.add(run_child("lookup", url=setup.url(SOURCE)))
    native.extra["ratio_to_bare_read"] = round(native.median / read.median, 2)
    checked.extra["ratio_to_bare_read"] = round(checked.median / read.median, 2)
    figures = [read, native, checked, count, lookup]
    if dump.samples:
        native.extra["ratio_to_mongodump"] = round(native.median / dump.median, 2)
        figures.append(dump)
    else:
        dump.note = "not measured: mongodump is not on PATH (see scripts/mongotools.py)"
        figures.append(dump)
    return figures


def restore(setup: Setup) -> list[Figure]:
    """mongo.restore (check, insert, verify) vs mongorestore vs a bare insert_many."""
    if setup.backup_path is None:
        _source(setup, setup.docs)
        out = setup.work / "backups"
        setup.backup_path = run_child("backup", url=setup.url(SOURCE), out=str(out), keep=True)["path"]
    n = setup.docs
    bson_file = Path(setup.backup_path) / "mongodb-dump" / SOURCE / f"{COLLECTION}.bson"
    native = Figure("restore", "mongo.restore tool: native (check files, insert, verify checksums)", n)
    bare = Figure("restore", "bare insert_many of raw batches of 1000 (the limit)", n)
    tool = Figure("restore", "mongorestore --drop (MongoDB Database Tools)", n)
    for k in range(setup.repeat):
        say(f"restore: repetition {k + 1}/{setup.repeat}")
        native.add(run_child("restore", url=setup.url(TARGET), **{"from": setup.backup_path}))
        bare.add(run_child("insert", url=setup.url(SCRATCH), file=str(bson_file)))
        if setup.tools.get("mongorestore"):
            dump_dir = str(Path(setup.backup_path) / "mongodb-dump")
            tool.add(run_child("mongorestore", url=setup.url(TARGET), **{"from": dump_dir}))
    drop_database(setup.server, TARGET)
    drop_database(setup.server, SCRATCH)
    native.extra["ratio_to_bare_insert"] = round(native.median / bare.median, 2)
    if tool.samples:
        native.extra["ratio_to_mongorestore"] = round(native.median / tool.median, 2)
    else:
        tool.note = "not measured: mongorestore is not on PATH (see scripts/mongotools.py)"
    return [native, bare, tool]


def _transform_once(setup: Setup, path: Path, operation: str, **arguments: Any) -> dict[str, Any]:
    seed(setup.server, SCRATCH, path)
    log_dir = setup.work / "transform-logs"
    log_dir.mkdir(exist_ok=True)
    result = run_child(operation, url=setup.url(SCRATCH), log_dir=str(log_dir), **arguments)
    shutil.rmtree(log_dir, ignore_errors=True)
    return result


TRANSFORM_WORKERS = 3


def transform(setup: Setup) -> list[Figure]:
    """mongo.transform (1 and 3 workers) vs the naive loop vs one server-side update_many.

    Also the client CPU per document of each (the workers' processes included) and
    the bank-details recipe's own share of it.
    """
    n = setup.transform_docs
    path = dataset_file(n, setup.cache)
    step = Figure("transform", "mongo.transform, recipe split_swift_bic_iban, batch_size 500", n)
    workers = Figure("transform", f"mongo.transform, the same, workers {TRANSFORM_WORKERS}", n)
    naive = Figure("transform", "naive loop: find, then update_one per document", n)
    empty = Figure("transform", "update_many: $set/$unset of the empty values only (server side)", n)
    every = Figure("transform", "update_many: the same $set/$unset on every document (write floor)", n)
    recipe = Figure("transform", "the recipe alone (CPU seconds of its calls, no server)", n)
    chunk = 20 if setup.server.ferretdb else 1000
    floor = Figure("transform", f"bulk_write floor: unordered UpdateOne by _id, {chunk} a command", n)
    migrated: dict[str, set[Any]] = {"step": set(), "workers": set(), "naive": set()}
    for k in range(setup.repeat):
        say(f"transform: repetition {k + 1}/{setup.repeat} ({n:,} documents)")
        result = _transform_once(setup, path, "transform")
        step.add(result)
        migrated["step"].add(result.get("migrated"))
        step.extra["outputs"] = {key: result.get(key) for key in ("total", "migrated", "invalid", "errors")}
        result = _transform_once(setup, path, "transform", workers=TRANSFORM_WORKERS)
        workers.add(result)
        migrated["workers"].add(result.get("migrated"))
        result = _transform_once(setup, path, "naive")
        naive.add(result)
        migrated["naive"].add(result.get("migrated"))
        empty.add(_transform_once(setup, path, "update_many", which="empty"))
        every.add(_transform_once(setup, path, "update_many", which="all"))
        recipe.add(run_child("recipe", file=str(path)))
        result = _transform_once(setup, path, "bulk_floor", chunk=chunk)
        floor.add(result)
        floor.cpu[-1] = result["write_cpu_seconds"]  # the writes alone, not reading the ids
    drop_database(setup.server, SCRATCH)
    if not migrated["step"] == migrated["workers"] == migrated["naive"]:
        step.note = f"WARNING: migrated counts differ: {migrated}"
    step.extra["speedup_over_naive"] = round(naive.median / step.median, 2)
    workers.extra["speedup_over_one_worker"] = round(step.median / workers.median, 2)
    step.extra["ratio_floor_time_to_step_time"] = round(floor.median / step.median, 2)
    every.extra["speedup_over_naive"] = round(naive.median / every.median, 2)
    for figure in (step, workers, naive, floor):
        if figure.cpu:
            figure.extra["cpu_us_per_doc"] = round(statistics.median(figure.cpu) * 1e6 / n, 1)
    recipe.extra["cpu_us_per_doc"] = round(recipe.median * 1e6 / n, 1)
    empty.note = "covers only the documents whose value is null, missing or empty"
    return [step, workers, naive, floor, empty, every, recipe]


def sweep(setup: Setup) -> list[Figure]:
    """Batch sizes, worker counts and write concerns, one repetition each (cheap, indicative)."""
    n = setup.sweep_docs
    path = _source(setup, n)
    out = setup.work / "sweep-backups"
    figures: list[Figure] = []
    for size in BATCH_SIZES:
        say(f"sweep: batch size {size}")
        read = Figure("sweep", f"bare read, batch_size {size}", n)
        read.add(run_child("read", url=setup.url(SOURCE), batch_size=size))
        made = Figure("sweep", f"mongo.backup, read batch {size}", n)
        made.add(run_child("backup", url=setup.url(SOURCE), out=str(out), batch_size=size))
        insert = Figure("sweep", f"bare insert_many, batch {size}", n)
        insert.add(run_child("insert", url=setup.url(SCRATCH), file=str(path), batch_size=size))
        figures += [read, made, insert]
    if setup.backup_path is None or n != setup.docs:
        setup_path = run_child("backup", url=setup.url(SOURCE), out=str(out), keep=True)["path"]
    else:
        setup_path = setup.backup_path
    for size in BATCH_SIZES:
        restored = Figure("sweep", f"mongo.restore, insert batch {size}", n)
        restored.add(run_child("restore", url=setup.url(TARGET), batch_size=size, **{"from": setup_path}))
        figures.append(restored)
    tpath = dataset_file(setup.transform_docs, setup.cache)
    for size in BATCH_SIZES:
        say(f"sweep: transform batch_size {size}")
        step = Figure("sweep", f"mongo.transform, batch_size {size}", setup.transform_docs)
        step.add(_transform_once(setup, tpath, "transform", batch_size=size))
        figures.append(step)
    for workers in (1, 2, 4):
        parallel = Figure("sweep", f"read by {workers} worker(s), disjoint _id ranges", n)
        parallel.add(run_child("parallel_read", url=setup.url(SOURCE), workers=workers))
        figures.append(parallel)
    for concern in ("w=1", "w=majority&journal=true"):
        insert = Figure("sweep", f"bare insert_many batch 1000, {concern}", n)
        insert.add(run_child("insert", url=setup.url(SCRATCH) + "?" + concern, file=str(path)))
        figures.append(insert)
    drop_database(setup.server, TARGET)
    drop_database(setup.server, SCRATCH)
    return figures


def memory(setup: Setup, previous: list[Figure]) -> list[Figure]:
    """Peak RSS of backup and transform at two sizes (and 1M with --million): flat in N?"""
    figures: list[Figure] = []
    floor = Figure("memory", "child floor: imports + one connection, no work", 0)
    floor.add(run_child("noop", url=setup.url(SOURCE)))
    figures.append(floor)
    backup_sizes = sorted(
        {max(1000, setup.docs // 10), setup.docs} | ({1_000_000} if setup.million else set())
    )
    out = setup.work / "memory-backups"
    for n in backup_sizes:
        reuse = next(
            (f for f in previous if f.name.startswith("mongo.backup tool: native, verify: counts")), None
        )
        figure = Figure("memory", f"mongo.backup at {n:,} documents", n)
        if reuse is not None and reuse.docs == n and reuse.rss_kb:
            figure.samples, figure.rss_kb, figure.bytes = reuse.samples, reuse.rss_kb, reuse.bytes
            figure.note = "from the backup section"
        else:
            _source(setup, n)
            figure.add(run_child("backup", url=setup.url(SOURCE), out=str(out)))
        figures.append(figure)
    sizes = sorted({max(100, setup.transform_docs // 4), setup.transform_docs})
    if setup.million and not setup.server.ferretdb:
        sizes.append(1_000_000)
    for n in sizes:
        figure = Figure("memory", f"mongo.transform at {n:,} documents", n)
        figure.add(_transform_once(setup, dataset_file(n, setup.cache), "transform"))
        figures.append(figure)
    # Beyond what FerretDB lets us rewrite: the same step over documents already in
    # their after-state reads, plans and logs every one of them and writes none.
    migrated = {max(1000, setup.docs // 10), setup.docs} | ({1_000_000} if setup.million else set())
    for n in sorted(migrated):
        figure = Figure("memory", f"mongo.transform over {n:,} already-migrated documents (no writes)", n)
        seed(setup.server, SCRATCH, dataset_file(n, setup.cache))
        run_child("update_many", url=setup.url(SCRATCH), which="all")
        log_dir = setup.work / "transform-logs"
        log_dir.mkdir(exist_ok=True)
        figure.add(run_child("transform", url=setup.url(SCRATCH), log_dir=str(log_dir)))
        shutil.rmtree(log_dir, ignore_errors=True)
        figures.append(figure)
    drop_database(setup.server, SCRATCH)
    return figures
