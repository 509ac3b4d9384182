"""``run.py --compare``: ours against what a user would pick instead, in one run.

Backup and restore of a database of two collections (``--docs`` documents each):
``mongo.backup`` / ``mongo.restore`` (verification on, 4 collections at once, as the
peers) against ``mongodump`` / ``mongorestore`` when they are on ``PATH`` (skipped
with a note otherwise) and against the naive loop (``find`` + ``bson.encode`` per
document; ``bson.decode`` + ``insert_many``). Each tool runs as its own process, as
a user runs it; the figures of one repetition are interleaved so load from a
neighbour hits them alike. The server is named beside every figure.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import COLLECTION, Figure, dataset_file, drop_database, run_child, say, seed
from sections import SOURCE, TARGET, Setup

SECOND = COLLECTION + "_copy"


@dataclass
class Row:
    work: str
    ours: Figure
    peers: list[Figure] = field(default_factory=list)


def _cpu_us_per_doc(figure: Figure) -> str:
    if not figure.cpu or not figure.docs:
        return ""
    return f"{statistics.median(figure.cpu) / figure.docs * 1e6:.1f}"


def _seed_two(setup: Setup) -> Path:
    path = dataset_file(setup.docs, setup.cache)
    say(f"compare: seeding 2 x {setup.docs:,} documents into {SOURCE}")
    seed(setup.server, SOURCE, path)
    seed(setup.server, SOURCE, path, collection=SECOND)
    return path


def backup_and_restore(setup: Setup) -> list[Row]:
    """Backup and restore rows; the last kept backup feeds the restores."""
    _seed_two(setup)
    n = 2 * setup.docs
    out = setup.work / "compare-backups"
    ours_b = Figure("compare", "mongo.backup (verify: checksums, parallel_collections 4)", n)
    ours_counts = Figure("compare", "mongo.backup (verify: counts)", n)
    dump = Figure("compare", "mongodump (whole database, --numParallelCollections 4)", n)
    naive_b = Figure("compare", "naive loop: find() + bson.encode per document", n)
    ours_r = Figure("compare", "mongo.restore (verify: checksums, parallel_collections 4)", n)
    ours_rc = Figure("compare", "mongo.restore (verify: counts: one count a collection)", n)
    ours_ri = Figure("compare", "mongo.restore (verify: inserts: the server's acknowledgements, no read)", n)
    mrestore = Figure("compare", "mongorestore --drop (4 collections at once)", n)
    naive_r = Figure("compare", "naive loop: bson.decode per document + insert_many", n)
    bare = Figure("compare", "bare insert_many of raw batches, one collection (pymongo's floor)", setup.docs)
    kept: str | None = None
    for k in range(setup.repeat):
        say(f"compare: backup, repetition {k + 1}/{setup.repeat}")
        last = k == setup.repeat - 1
        result = run_child("backup", url=setup.url(SOURCE), out=str(out), verify="checksums", keep=last)
        ours_b.add(result)
        kept = result["path"] if last else kept
        ours_counts.add(run_child("backup", url=setup.url(SOURCE), out=str(out)))
        naive_b.add(run_child("naive_backup", url=setup.url(SOURCE), out=str(out)))
        if setup.tools.get("mongodump"):
            dump.add(run_child("mongodump_db", url=setup.url(SOURCE), out=str(out)))
    assert kept is not None
    dump_dir = Path(kept) / "mongodb-dump"
    cap = 20 if setup.server.ferretdb else 1000  # FerretDB 1.x: < 50 statements a command
    for k in range(setup.repeat):
        say(f"compare: restore, repetition {k + 1}/{setup.repeat}")
        ours_r.add(run_child("restore", url=setup.url(TARGET), **{"from": kept}))
        ours_rc.add(run_child("restore", url=setup.url(TARGET), verify="counts", **{"from": kept}))
        ours_ri.add(run_child("restore", url=setup.url(TARGET), verify="inserts", **{"from": kept}))
        files = str(dump_dir / SOURCE)
        naive_r.add(run_child("naive_restore", url=setup.url(TARGET), batch_size=cap, **{"from": files}))
        one = str(dump_dir / SOURCE / f"{COLLECTION}.bson")
        bare.add(run_child("insert", url=setup.url(TARGET), file=one, batch_size=cap))
        if setup.tools.get("mongorestore"):
            args = {"from": str(dump_dir), "source_db": SOURCE, "target_db": TARGET}
            mrestore.add(run_child("mongorestore_db", url=setup.url(TARGET), **args))
    for figure in (dump, mrestore):
        if not figure.samples:
            tool = "mongodump" if figure is dump else "mongorestore"
            figure.note = f"skipped: {tool} is not on PATH (install MongoDB Database Tools to compare)"
    drop_database(setup.server, TARGET)
    shutil.rmtree(out, ignore_errors=True)
    return [
        Row("backup, 2 collections", ours_b, [dump, naive_b]),
        Row("backup, 2 collections", ours_counts, []),
        Row("restore of that backup", ours_r, [mrestore, naive_r]),
        Row("restore of that backup", ours_rc, [bare]),
        Row("restore of that backup", ours_ri, [naive_r]),
    ]


def transform(setup: Setup) -> list[Row]:
    """mongo.transform (bank-details recipe) against the naive find + update_one loop."""
    from sections import _transform_once

    n = setup.transform_docs
    path = dataset_file(n, setup.cache)
    ours = Figure("compare", "mongo.transform, recipe split_swift_bic_iban", n)
    naive = Figure("compare", "naive loop: find, then update_one per document", n)
    for k in range(setup.repeat):
        say(f"compare: transform, repetition {k + 1}/{setup.repeat} ({n:,} documents)")
        ours.add(_transform_once(setup, path, "transform"))
        naive.add(_transform_once(setup, path, "naive"))
    return [Row(f"transform, {n:,} documents", ours, [naive])]


def table(server: str, rows: list[Row]) -> list[str]:
    """``| server | work | ours | s | peer | s | ratio | client CPU us/doc |`` lines."""
    lines = [
        "| server | work | ours | seconds | client CPU µs/doc | peer | peer seconds | "
        "peer client CPU µs/doc | ratio (peer time / ours, >1 = ours faster) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        ours = row.ours
        ours_cells = f"{ours.name} | {ours.median:.2f} | {_cpu_us_per_doc(ours)}"
        if not row.peers:
            lines.append(f"| {server} | {row.work} | {ours_cells} | | | | |")
        for peer in row.peers:
            if peer.samples:
                ratio = f"{peer.median / ours.median:.2f}x"
                lines.append(
                    f"| {server} | {row.work} | {ours_cells} | {peer.name} | {peer.median:.2f} | "
                    f"{_cpu_us_per_doc(peer)} | {ratio} |"
                )
            else:
                lines.append(f"| {server} | {row.work} | {ours_cells} | {peer.name} | {peer.note} | | |")
    return lines


def figures(rows: list[Row]) -> list[Figure]:
    seen: list[Figure] = []
    for row in rows:
        for figure in (row.ours, *row.peers):
            if figure not in seen:
                seen.append(figure)
    return seen


def as_dict(server: str, rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {
            "server": server,
            "work": row.work,
            "ours": row.ours.as_dict(),
            "peers": [peer.as_dict() for peer in row.peers],
        }
        for row in rows
    ]
